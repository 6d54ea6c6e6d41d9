"""Job control inside Blender: starts the server for the scene's settings and pumps its events.

The modal operator (timer) and the blocking execute() both drive a JobController, so scripts,
tests and the UI go through the same code. Only this main-thread code touches bpy data.
"""

from __future__ import annotations

import os
import shutil
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import bpy

from ..core import jobs, runner
from ..preferences import server_settings
from . import importer


@dataclass
class Outcome:
    """How a job ended: status 'FINISHED' (imported), 'CANCELLED' or 'ERROR', with one sentence."""

    status: str
    message: str
    result: importer.ImportResult | None = None
    warnings: list[str] = field(default_factory=list)


class JobController:
    """One reconstruction, from job.json to the imported rig."""

    def __init__(self, job: runner.ServerJob, job_dir: Path, frame_start: int, replace: Any,
                 scene_name: str = "") -> None:
        self.job = job
        self.job_dir = job_dir
        self.frame_start = frame_start
        self.scene_name = scene_name  # the take goes to the scene the job was started from
        self.server_warnings: list[str] = []
        # The rig to update, found again at import by what the import stored on it: a Python reference to it
        # dies if the rig is deleted (or the file undone) while the job runs.
        self.replace_name = replace.name if replace is not None else ""
        self.replace_id = (replace.microexp_take.take_id, replace.microexp_take.take_path) if replace else None
        self.progress = jobs.JobProgress()
        self.outcome: Outcome | None = None

    @classmethod
    def start(cls, context: Any, env: dict[str, str] | None = None) -> JobController:
        """Validate the settings, write the job folder and start the server; raises JobSetupError."""
        state = context.window_manager.microexp_job
        if state.running:
            raise jobs.JobSetupError("A reconstruction is already running; cancel it or wait for it to finish.")
        scene_settings = context.scene.microexp
        srv = server_settings(context)
        clip = bpy.path.abspath(scene_settings.clip)
        problem = jobs.clip_problem(clip) or jobs.server_problem(srv.python, srv.server_dir) or srv.model_problem
        if problem:
            raise jobs.JobSetupError(problem)
        replace = None
        if scene_settings.target == "UPDATE":
            replace = scene_settings.target_root
            if replace is None:
                raise jobs.JobSetupError("Choose the rig to update, or set the target to New Rig.")
        frames = None
        if scene_settings.use_frame_range:
            if scene_settings.frame_last < scene_settings.frame_first:
                raise jobs.JobSetupError("The last frame comes before the first; fix the frame range.")
            frames = (scene_settings.frame_first, scene_settings.frame_last + 1)
        checkpoint = None
        if scene_settings.stages == "full" and scene_settings.checkpoint:
            checkpoint = bpy.path.abspath(scene_settings.checkpoint)
            problem = jobs.checkpoint_problem(checkpoint)
            if problem:
                raise jobs.JobSetupError(problem)
        fields: dict[str, Any] = {
            "clip": clip, "model": srv.model, "frames": frames, "flow": scene_settings.flow,
            "stages": scene_settings.stages, "checkpoint": checkpoint,
            "cache_dir": str(Path(srv.cache_dir) / "preprocess"),
        }
        job_dir, job_json, _spec = jobs.prepare_job(srv.cache_dir, fields)
        try:
            job = runner.ServerJob(jobs.server_command(srv.python, job_json), job_dir, srv.server_dir,
                                   env=env if env is not None else dict(os.environ))
        except runner.RunnerError as exc:
            shutil.rmtree(job_dir, ignore_errors=True)  # nothing ran: no job folder to puzzle over
            raise jobs.JobSetupError(str(exc)) from None
        state.running = True
        state.cancel_requested = False
        state.stage = "starting"
        state.progress = 0.0
        state.text = "Starting the server…"
        state.job_dir = str(job_dir)
        state.last_message = ""
        return cls(job, job_dir, scene_settings.frame_start, replace, context.scene.name)

    def cancel(self) -> None:
        self.job.cancel()

    def pump(self, context: Any) -> Outcome | None:
        """Handle what the server said since the last call; returns the outcome once the job ended."""
        if self.outcome is not None:
            return self.outcome
        state = context.window_manager.microexp_job
        if state.cancel_requested and not self.job.cancelling:
            self.job.cancel()
            state.text = "Cancelling…"
        for event in self.job.poll():
            kind = event["type"]
            if kind in ("stage", "progress", "warning"):
                self.progress.update(event)
                message = str(event.get("message", "")) if kind == "warning" else ""
                if message and message not in self.server_warnings:
                    self.server_warnings.append(message)
                state.stage = self.progress.stage
                state.progress = self.progress.factor
                if not self.job.cancelling:
                    state.text = self.progress.text()
            elif kind == "hello":
                state.text = f"Server ready on {event.get('device', '?')}"
            elif kind == "done":
                if state.cancel_requested or self.job.cancelling:  # too late for the server, not for the import
                    self.outcome = Outcome("CANCELLED", "The reconstruction was cancelled; nothing was imported.")
                else:
                    self.outcome = self._import(context, str(event.get("take", "")))
            elif kind == "cancelled":
                self.outcome = Outcome("CANCELLED", "The reconstruction was cancelled; nothing was imported.")
            elif kind == "error":
                message = str(event.get("message", "The server failed.")).rstrip(".")
                log = str(event.get("log") or self.job.log_path)
                text = message + "." if log in message else f"{message} (log: {log})."
                self.outcome = Outcome("ERROR", text)
        if self.outcome is not None:
            self._finish(context)
        return self.outcome

    def _import(self, context: Any, take_path: str) -> Outcome:
        warnings = list(self.server_warnings)
        scene = bpy.data.scenes.get(self.scene_name) if self.scene_name else None
        if scene is not None and scene != context.scene and context.window is not None:
            context.window.scene = scene  # the settings came from there; its fps, range and camera are the take's
            warnings.append(f"Switched back to the scene {scene.name}, where the reconstruction was started, to "
                            f"import the take.")
        replace = None
        if self.replace_id is not None:
            named = bpy.data.objects.get(self.replace_name)  # a duplicated rig shares the take id: the name first
            if named is not None and getattr(named.microexp_take, "is_take_root", False) and \
                    (named.microexp_take.take_id, named.microexp_take.take_path) == self.replace_id:
                replace = named
            else:
                replace = importer.find_imported_root(*self.replace_id)
            if replace is None:
                warnings.append(f"The rig {self.replace_name} was deleted during the reconstruction, so the take "
                                f"was imported as a new rig.")
        try:
            result = importer.import_take(context, take_path, frame_start=self.frame_start, replace=replace)
        except importer.ImportTakeError as exc:
            return Outcome("ERROR", str(exc))
        except Exception:  # a bug, not the user's doing: the console gets the traceback, the panel one sentence
            traceback.print_exc()
            return Outcome("ERROR", f"Importing the take failed unexpectedly; it is still in {take_path} (details "
                                    f"in the system console).")
        if self.replace_id is not None:
            context.scene.microexp.target_root = result.root  # the next run updates the new rig
        verb = "Updated" if result.replaced else "Imported"
        return Outcome("FINISHED", f"{verb} {result.collection.name} ({result.frame_end - result.frame_start + 1} "
                                   f"frames).", result=result, warnings=warnings + result.warnings)

    def _finish(self, context: Any) -> None:
        state = context.window_manager.microexp_job
        state.running = False
        state.cancel_requested = False
        state.progress = 1.0 if self.outcome and self.outcome.status == "FINISHED" else state.progress
        state.last_message = self.outcome.message if self.outcome else ""
        state.text = ""

    def abandon(self, context: Any) -> None:
        """Stop the server now (Blender is unloading the add-on or the file); nothing is imported."""
        self.job.shutdown()
        self.outcome = self.outcome or Outcome("CANCELLED", "The reconstruction was stopped.")
        self._finish(context)
