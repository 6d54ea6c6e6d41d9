"""Builds the installable Blender extension: dist/blender_microexp-<version>.zip.

The zip root holds blender_manifest.toml beside the package's own files (__init__.py, core/, ...),
which is how Blender expects an extension (the manifest sits next to __init__.py).
Usage: python tools/build_extension.py [--out DIR]
"""

from __future__ import annotations

import argparse
import sys
import tomllib
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "blender_microexp"
MANIFEST = ROOT / "blender_manifest.toml"
LICENSE = ROOT / "LICENSE"
ZIP_DATE = (2026, 1, 1, 0, 0, 0)
SKIP_DIRS = {"__pycache__", ".mypy_cache", ".pytest_cache", ".ruff_cache"}
SKIP_SUFFIXES = {".pyc", ".pyo", ".orig", ".rej"}


class BuildError(Exception):
    """The extension cannot be built; the message is one sentence."""


def package_files(package: Path = PACKAGE) -> list[Path]:
    """The package's files to ship, sorted (no caches, no compiled files)."""
    out = []
    for path in sorted(package.rglob("*")):
        rel = path.relative_to(package)
        if any(part in SKIP_DIRS or part.startswith(".") for part in rel.parts):
            continue
        if path.is_file() and path.suffix not in SKIP_SUFFIXES:
            out.append(path)
    return out


def read_manifest(manifest: Path = MANIFEST) -> dict[str, object]:
    try:
        data = tomllib.loads(manifest.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise BuildError(f"{manifest} cannot be read ({exc}).") from None
    for key in ("schema_version", "id", "version", "name", "tagline", "maintainer", "type",
                "blender_version_min", "license"):
        if key not in data:
            raise BuildError(f"{manifest} lacks the required field '{key}'.")
    return data


def build(out_dir: Path = ROOT / "dist") -> Path:
    """Write the zip and return its path."""
    manifest = read_manifest()
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / f"{manifest['id']}-{manifest['version']}.zip"
    partial = target.with_suffix(".zip.part")
    files = [(MANIFEST, "blender_manifest.toml"), (LICENSE, "LICENSE")]
    files += [(path, path.relative_to(PACKAGE).as_posix()) for path in package_files()]
    try:
        with zipfile.ZipFile(partial, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            for path, name in files:
                # A fixed date: the same sources give the same zip, byte for byte.
                info = zipfile.ZipInfo(name, date_time=ZIP_DATE)
                info.compress_type = zipfile.ZIP_DEFLATED
                info.external_attr = 0o644 << 16
                zf.writestr(info, path.read_bytes())
        partial.replace(target)
    except OSError as exc:
        partial.unlink(missing_ok=True)
        raise BuildError(f"Could not write {target} ({exc.strerror or exc}).") from None
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "dist", help="output folder (default: dist/)")
    args = parser.parse_args(argv)
    try:
        target = build(args.out)
    except BuildError as exc:
        print(f"build-extension: {exc}", file=sys.stderr)
        return 1
    print(target)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
