"""Checkpoints of the refinement networks: save with their config and model dims, load refusing mismatches."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any

import torch

from server.errors import MicroexpError

FORMAT = "microexp-refine-checkpoint"
VERSION = 1


class CheckpointError(MicroexpError):
    """A checkpoint file is missing, unreadable, or made for another head model."""

    code = "checkpoint"


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> None:
    """Write `payload` (state dicts, optimizer, step, config dict, dims) atomically: temp file, then rename."""
    target = Path(path)
    tmp = target.with_name(target.name + ".tmp")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"format": FORMAT, "version": VERSION, **payload}, tmp)
        os.replace(tmp, target)
    except OSError as exc:
        _remove(tmp)
        raise CheckpointError(f"Cannot write the checkpoint '{target}': {exc.strerror or exc}.") from exc
    except RuntimeError as exc:  # torch's writer says a full disk or an unwritable file this way
        _remove(tmp)
        raise CheckpointError(f"Cannot write the checkpoint '{target}': the disk is full or the folder is not "
                              "writable.") from exc
    except BaseException:
        _remove(tmp)
        raise


def _remove(path: Path) -> None:
    with contextlib.suppress(OSError):
        path.unlink(missing_ok=True)


def load_checkpoint(path: str | Path, dims: dict[str, Any] | None = None) -> dict[str, Any]:
    """Read a checkpoint with weights_only=True; if `dims` is given, refuse one whose n_expression, n_vertices or
    topology differ. Raises CheckpointError with one sentence."""
    source = Path(path)
    if not source.is_file():
        raise CheckpointError(f"The checkpoint '{source}' does not exist.")
    try:
        data = torch.load(source, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle, zip and torch errors all mean the same thing to the user
        raise CheckpointError(f"The checkpoint '{source}' cannot be read: it is not a torch file written by "
                              "'microexp train', or it is damaged.") from exc
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise CheckpointError(f"The file '{source}' is not a micro-expression refinement checkpoint.")
    if dims is not None:
        saved = data.get("dims", {})
        for key in ("n_expression", "n_vertices", "topology"):
            if saved.get(key) != dims.get(key):
                raise CheckpointError(
                    f"The checkpoint '{source}' was trained for a head model with {key} = {saved.get(key)!r}, "
                    f"but this head model has {dims.get(key)!r}."
                )
    return data


def _shape(value: Any) -> str:
    return "x".join(str(n) for n in getattr(value, "shape", ())) or "a scalar"


def load_weights(nets: torch.nn.Module, data: dict[str, Any], path: str | Path) -> None:
    """Load a checkpoint's network weights (`data["nets"]`) into `nets`; weights that do not fit these networks
    (missing, unknown or of another shape) raise CheckpointError with one sentence instead of torch's report."""
    head = f"The checkpoint '{Path(path)}' does not fit this model's networks"
    state = data.get("nets")
    if not isinstance(state, dict) or not state:
        raise CheckpointError(f"{head}: it holds no network weights.")
    own = nets.state_dict()
    missing = [k for k in own if k not in state]
    unknown = [k for k in state if k not in own]
    reshaped = [k for k in own if k in state and tuple(getattr(state[k], "shape", ())) != tuple(own[k].shape)]
    problems = []
    if missing:
        problems.append(f"{len(missing)} of their weights are missing (first '{missing[0]}')")
    if unknown:
        problems.append(f"{len(unknown)} of its weights belong to no layer (first '{unknown[0]}')")
    if reshaped:
        k = reshaped[0]
        problems.append(f"{len(reshaped)} weights have another shape (first '{k}': {_shape(state[k])} in the "
                        f"checkpoint, {_shape(own[k])} here)")
    if problems:
        listed = problems[-1] if len(problems) == 1 else ", ".join(problems[:-1]) + " and " + problems[-1]
        raise CheckpointError(f"{head}: {listed}.")
    try:
        nets.load_state_dict(state)
    except (RuntimeError, TypeError, ValueError, KeyError) as exc:
        raise CheckpointError(f"{head}: its weights cannot be loaded.") from exc
