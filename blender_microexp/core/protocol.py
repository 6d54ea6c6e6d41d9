"""The job protocol between the add-on and the server: job.json and the NDJSON event stream.

Stdlib only, shared by both sides (the server imports it; the add-on imports it inside Blender).

Events, one JSON object per line on the server's stdout (docs/protocol.md):
  hello     {"type","protocol","server_version","python","torch","device","mediapipe","opencv","tvl1"}
  stage     {"type","name","index","count"}
  progress  {"type","stage","done","total","eta_s"}
  warning   {"type","message"}
  error     {"type","code","message","log"}
  done      {"type","take"}
  cancelled {"type"}
The add-on may write {"type": "cancel"} to the server's stdin.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

PROTOCOL_VERSION = 1
EVENT_TYPES = ("hello", "stage", "progress", "warning", "error", "done", "cancelled")
STAGE_CHOICES = ("coarse", "solve", "dem", "full")
FLOW_CHOICES = ("tvl1", "fast")


class ProtocolError(Exception):
    """A line or job file that does not follow the protocol; the message is one sentence."""


@dataclass
class JobSpec:
    """What one reconstruction job does; written by the add-on as job.json."""

    clip: str
    output: str
    model: str = "builtin"
    """'builtin' or a folder / generic_model.pkl path of the user's FLAME files."""
    frames: tuple[int, int] | None = None
    """Half-open source-frame range [start, stop), or None for the whole clip."""
    flow: str = "fast"
    stages: str = "full"
    cache_dir: str | None = None
    checkpoint: str | None = None
    device: str = "auto"
    time_budget_s: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    protocol: int = PROTOCOL_VERSION

    def to_json(self) -> str:
        d = asdict(self)
        d["frames"] = list(self.frames) if self.frames is not None else None
        return json.dumps(d, indent=1)

    def write(self, path: str | Path) -> Path:
        p = Path(path)
        p.write_text(self.to_json(), encoding="utf-8")
        return p

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> JobSpec:
        if not isinstance(d, dict):
            raise ProtocolError("The job file does not hold a JSON object.")
        if int(d.get("protocol", PROTOCOL_VERSION)) != PROTOCOL_VERSION:
            raise ProtocolError(f"The job speaks protocol {d.get('protocol')}, this server speaks {PROTOCOL_VERSION}.")
        for key in ("clip", "output"):
            if not isinstance(d.get(key), str) or not d[key]:
                raise ProtocolError(f"The job file names no '{key}'.")
        known = {f for f in cls.__dataclass_fields__}
        unknown = set(d) - known
        if unknown:
            raise ProtocolError(f"The job file has unknown keys: {', '.join(sorted(unknown))}.")
        frames = d.get("frames")
        if frames is not None:
            if not (isinstance(frames, (list, tuple)) and len(frames) == 2):
                raise ProtocolError("The job's 'frames' must be [start, stop].")
            frames = (int(frames[0]), int(frames[1]))
        spec = cls(**{**d, "frames": frames})
        if spec.flow not in FLOW_CHOICES:
            raise ProtocolError(f"Unknown flow mode '{spec.flow}' (choose {' or '.join(FLOW_CHOICES)}).")
        if spec.stages not in STAGE_CHOICES:
            raise ProtocolError(f"Unknown stages '{spec.stages}' (choose {', '.join(STAGE_CHOICES)}).")
        return spec

    @classmethod
    def read(cls, path: str | Path) -> JobSpec:
        try:
            d = json.loads(Path(path).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ProtocolError(f"The job file {path} does not exist.") from None
        except json.JSONDecodeError as exc:
            raise ProtocolError(f"The job file {path} is not valid JSON (line {exc.lineno}, column {exc.colno}).") \
                from None
        except UnicodeDecodeError:
            raise ProtocolError(f"The job file {path} is not UTF-8 text.") from None
        except OSError as exc:
            raise ProtocolError(f"The job file {path} cannot be read ({exc.strerror or exc}).") from None
        return cls.from_dict(d)


def encode_event(kind: str, **fields: Any) -> str:
    """One protocol line (without the newline)."""
    if kind not in EVENT_TYPES:
        raise ValueError(f"unknown event type {kind!r}")
    return json.dumps({"type": kind, **fields}, separators=(",", ":"))


def decode_event(line: str) -> dict[str, Any]:
    """Parse one line from the server; anything that is not a protocol event raises ProtocolError."""
    text = line.strip()
    try:
        event = json.loads(text)
    except json.JSONDecodeError:
        raise ProtocolError(f"The server printed something that is not a protocol event: {text[:120]!r}") from None
    if not isinstance(event, dict) or event.get("type") not in EVENT_TYPES:
        raise ProtocolError(f"The server printed an unknown event: {text[:120]!r}")
    return event
