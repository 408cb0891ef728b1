"""A training run's folder: one run at a time, earlier runs kept apart, and the state that resumes a run.

Holds the lock a run takes on its folder (`.lock`, created exclusively, naming the process; the lock
of a process that no longer runs is taken over), the check of what an earlier run left there
(refused, or moved into `replaced-<time>/` with `--overwrite`, never mixed with the new run's files),
the removal of temporary files a killed process left behind, leaving the folder as it was found when
a run stops before it saved anything (`RunFolder.abandon`), checks that an output folder can be
made and written before any model loads, and the training state saved beside each step checkpoint:
`<checkpoint>.state.safetensors` (slider weights in float32, optimizer tensors, random generator
states) and `<checkpoint>.state.json` (step, scheduler and optimizer settings, Python's random state,
the config it was trained with). Never pickle. No model loading or training here.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import re
import shutil
import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import InputError
from .files import atomic_path, atomic_tensor_path, write_text_atomic

logger = logging.getLogger(__name__)

LOCK_NAME = ".lock"
STATE_JSON = ".state.json"
STATE_TENSORS = ".state.safetensors"
STATE_VERSION = 1
_STEP_FILE = re.compile(r"^(?P<name>.+)_(?P<step>\d+)steps\.safetensors$")
# Config keys that may differ when a run is resumed: they change how it is watched, not what it learns.
RESUME_FREE_KEYS = ("logging", "sample")  # what is logged or previewed does not change the training


# --------------------------------------------------------------------------------------------------
# Output folders: can they be made and written?
# --------------------------------------------------------------------------------------------------


def _reason(error: OSError) -> str:
    if error.errno == errno.ENAMETOOLONG:
        return "the name is too long for the file system"
    if error.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return "it is not writable (permission denied or a read-only file system)"
    if error.errno == errno.ENOSPC:
        return "the disk is full"
    if error.errno == errno.ENOTDIR:
        return "a part of the path is a file, not a folder"
    return error.strerror or type(error).__name__


def check_writable_folder(folder: str | Path, what: str, fix: str) -> Path:
    """Check that `folder` can be created and a file written in it, leaving nothing behind.

    Folders this check creates are removed again; the command creates them for real when it
    writes. A path through a file, a read-only folder or a name too long is an InputError naming
    the path, why, and `fix`.
    """
    folder = Path(folder)
    try:
        for parent in (folder, *folder.parents):
            if parent.exists() and not parent.is_dir():
                raise InputError(f"{what} '{folder}' cannot be made: '{parent}' is a file, not a folder; {fix}")
        created = [p for p in (folder, *folder.parents) if not p.exists()]
    except OSError as error:
        raise InputError(f"{what} '{folder}' cannot be written: {_reason(error)}; {fix}") from None
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with atomic_path(folder / "write-check") as temporary:
            Path(temporary).write_bytes(b"")
            raise _Probed
    except _Probed:
        pass
    except OSError as error:
        raise InputError(f"{what} '{folder}' cannot be written: {_reason(error)}; {fix}") from None
    finally:
        for path in created:  # deepest first
            try:
                path.rmdir()
            except OSError:
                break
    return folder


class _Probed(Exception):
    """Leaves `atomic_path` without renaming the probe into place, so it is removed."""


# --------------------------------------------------------------------------------------------------
# The lock: one run per folder
# --------------------------------------------------------------------------------------------------


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    except OSError:
        return False
    return True


def _lock_holder(path: Path) -> dict | None:
    try:
        holder = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return holder if isinstance(holder, dict) else None


class RunLock:
    """`<folder>/.lock`, created with O_EXCL and holding the process id, host and command line."""

    def __init__(self, folder: Path, what: str = "run folder", fix: str = "choose another --name or --output_dir"):
        self.folder = Path(folder)
        self.path = self.folder / LOCK_NAME
        self.held = False
        self.what, self.fix = what, fix

    def acquire(self) -> "RunLock":
        self.folder.mkdir(parents=True, exist_ok=True)
        record = json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S"),
                             "command": " ".join(sys.argv)})
        for _ in range(3):
            try:
                handle = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
            except FileExistsError:
                holder = _lock_holder(self.path)
                if holder is not None and self._is_running(holder):
                    raise InputError(
                        f"{self.what} '{self.folder}' is in use by process {holder.get('pid')} on {holder.get('host')} "
                        f"(started {holder.get('started')}: {holder.get('command')}); wait for it to finish, "
                        f"or {self.fix}"
                    ) from None
                # A lock left by a process that no longer runs (or unreadable, half written): take it over.
                logger.info("taking over the stale lock %s", self.path)
                try:
                    self.path.unlink()
                except FileNotFoundError:
                    pass
                continue
            with os.fdopen(handle, "w", encoding="utf-8") as stream:
                stream.write(record)
            self.held = True
            return self
        raise InputError(f"{self.what} '{self.folder}' is being locked by another run at the same moment; try again")

    @staticmethod
    def _is_running(holder: dict) -> bool:
        pid = holder.get("pid")
        if not isinstance(pid, int):
            return False
        if holder.get("host") != socket.gethostname():
            return True  # another machine's process: it cannot be checked from here, so it counts as running
        return pid != os.getpid() and _alive(pid)

    def release(self) -> None:
        if self.held:
            holder = _lock_holder(self.path)
            if holder is not None and holder.get("pid") == os.getpid():
                try:
                    self.path.unlink()
                except FileNotFoundError:
                    pass
            self.held = False

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


# --------------------------------------------------------------------------------------------------
# What an earlier run left in the folder
# --------------------------------------------------------------------------------------------------


def remove_leftovers(folder: Path) -> list[Path]:
    """Delete the hidden temporary files (`.*.tmp`) a killed process left; call while holding the lock."""
    removed = []
    for path in sorted(folder.glob(".*.tmp")):
        try:
            path.unlink()
            removed.append(path)
        except OSError:
            continue
    if removed:
        logger.info("removed %d temporary files left by an interrupted run in %s", len(removed), folder)
    return removed


def run_files(folder: Path, name: str) -> list[Path]:
    """The sliders, checkpoints and training states of run `name` in `folder`."""
    if not folder.is_dir():
        return []
    found = []
    for path in folder.iterdir():
        if not path.is_file() or not path.name.startswith(f"{name}_"):
            continue
        if path.name.endswith((".safetensors", STATE_JSON)):
            found.append(path)
    return sorted(found)


def move_aside(folder: Path) -> Path | None:
    """Move everything of an earlier run in `folder` into `folder/replaced-<time>/`; None when there was nothing."""
    entries = [p for p in folder.iterdir() if p.name != LOCK_NAME and not p.name.startswith("replaced-")]
    if not entries:
        return None
    target = folder / time.strftime("replaced-%Y%m%d-%H%M%S")
    suffix = 1
    while target.exists():
        target = folder / f"{time.strftime('replaced-%Y%m%d-%H%M%S')}-{suffix}"
        suffix += 1
    target.mkdir()
    for entry in entries:
        shutil.move(str(entry), str(target / entry.name))
    return target


# --------------------------------------------------------------------------------------------------
# Training state: what resuming needs
# --------------------------------------------------------------------------------------------------


def state_paths(checkpoint: Path) -> tuple[Path, Path]:
    """(`<stem>.state.json`, `<stem>.state.safetensors`) beside a step checkpoint."""
    stem = checkpoint.name[: -len(".safetensors")]
    return checkpoint.with_name(stem + STATE_JSON), checkpoint.with_name(stem + STATE_TENSORS)


def checkpoint_path(folder: Path, name: str, step: int) -> Path:
    return folder / f"{name}_{step}steps.safetensors"


@dataclass
class ResumePoint:
    """The latest complete checkpoint of a run: its step, slider file and training state."""

    step: int
    checkpoint: Path
    state_json: Path
    state_tensors: Path
    state: dict


def _flatten(value: Any, prefix: str, tensors: dict) -> Any:
    """JSON-able copy of `value`: tensors go into `tensors` under a dotted key, tuples are marked."""
    import torch

    if isinstance(value, torch.Tensor):
        tensors[prefix] = value.detach().to("cpu").clone().contiguous()
        return {"__tensor__": prefix}
    if isinstance(value, dict):
        return {"__dict__": [[_flatten(k, f"{prefix}.k{i}", tensors), _flatten(v, f"{prefix}.{i}", tensors)]
                             for i, (k, v) in enumerate(value.items())]}
    if isinstance(value, tuple):
        return {"__tuple__": [_flatten(v, f"{prefix}.{i}", tensors) for i, v in enumerate(value)]}
    if isinstance(value, list):
        return [_flatten(v, f"{prefix}.{i}", tensors) for i, v in enumerate(value)]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"training state value of type {type(value).__name__} at '{prefix}' cannot be saved")


def _unflatten(value: Any, tensors: dict) -> Any:
    if isinstance(value, dict):
        if "__tensor__" in value:
            return tensors[value["__tensor__"]]
        if "__tuple__" in value:
            return tuple(_unflatten(v, tensors) for v in value["__tuple__"])
        if "__dict__" in value:
            return {_unflatten(k, tensors): _unflatten(v, tensors) for k, v in value["__dict__"]}
        return {k: _unflatten(v, tensors) for k, v in value.items()}
    if isinstance(value, list):
        return [_unflatten(v, tensors) for v in value]
    return value


def write_state(checkpoint: Path, parts: dict[str, Any], info: dict[str, Any]) -> tuple[Path, Path]:
    """Write the training state beside `checkpoint`: tensors first, the JSON last (it marks the state complete).

    `parts` maps a name to a nested value of tensors, dicts, lists, tuples and plain values (an
    optimizer's state_dict, random states); `info` is plain JSON (step, config).
    """
    from safetensors.torch import save_file

    json_path, tensor_path = state_paths(checkpoint)
    tensors: dict = {}
    layout = {name: _flatten(value, name, tensors) for name, value in parts.items()}
    with atomic_tensor_path(tensor_path) as temporary:
        save_file(tensors, temporary, metadata={"format": "sliders-training-state"})
    write_text_atomic(json_path, json.dumps({"version": STATE_VERSION, **info, "layout": layout}) + "\n")
    return json_path, tensor_path


def read_state(point: ResumePoint) -> dict[str, Any]:
    """The `parts` that `write_state` was given, tensors restored."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        tensors = load_file(str(point.state_tensors))
    except (SafetensorError, OSError, ValueError) as error:
        raise InputError(
            f"training state '{point.state_tensors}' cannot be read ({error}); resume from an earlier checkpoint "
            "by moving this one away, or start again with --overwrite"
        ) from None
    try:
        return {name: _unflatten(value, tensors) for name, value in point.state["layout"].items()}
    except KeyError as error:
        raise InputError(f"training state '{point.state_tensors}' lacks tensor {error}; it does not belong to "
                         f"'{point.state_json}'; start again with --overwrite") from None


def _read_json(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    if not isinstance(data, dict) or data.get("version") != STATE_VERSION or not isinstance(data.get("layout"), dict):
        return None
    return data


def latest_resume_point(folder: Path, name: str) -> ResumePoint | None:
    """The step checkpoint of the highest step whose slider and both state files are complete."""
    points = []
    for path in folder.glob(f"{name}_*steps.safetensors") if folder.is_dir() else ():
        match = _STEP_FILE.match(path.name)
        if not match or match["name"] != name:
            continue
        json_path, tensor_path = state_paths(path)
        if not (json_path.is_file() and tensor_path.is_file()):
            continue
        points.append((int(match["step"]), path, json_path, tensor_path))
    for step, path, json_path, tensor_path in sorted(points, reverse=True):
        state = _read_json(json_path)
        if state is not None and state.get("step") == step:
            return ResumePoint(step, path, json_path, tensor_path, state)
        logger.warning("skipping the incomplete training state %s", json_path)
    return None


def config_differences(saved: dict, current: dict, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two config dicts (sections in RESUME_FREE_KEYS ignored)."""
    keys = []
    for key in sorted(set(saved) | set(current)):
        dotted = f"{prefix}{key}"
        if not prefix and key in RESUME_FREE_KEYS:
            continue
        a, b = saved.get(key), current.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            keys += config_differences(a, b, f"{dotted}.")
        elif a != b:
            keys.append(f"{dotted} ({a!r} then, {b!r} now)")
    return keys


# --------------------------------------------------------------------------------------------------
# The run folder, prepared before any model loads
# --------------------------------------------------------------------------------------------------


# The files a run writes besides its sliders: at its start (`config.yaml`) and end (`stats.json`).
RUN_RECORDS = ("config.yaml", "stats.json")


@dataclass
class RunFolder:
    """A run folder checked and locked for one run; `resume` is set when continuing an earlier run.

    It remembers the folder as the run found it (`created`: the folders that did not exist yet;
    `before`: the names in it; `records`: the run records there, to put back), so that a run stopped
    before it saved anything can leave it as it was (`abandon`).
    """

    path: Path
    lock: RunLock
    resume: ResumePoint | None = None
    replaced: Path | None = None
    name: str = ""
    created: tuple[Path, ...] = ()  # deepest first
    before: frozenset[str] | None = None  # None until recorded: then nothing is undone
    records: dict[str, bytes] = field(default_factory=dict)

    def release(self) -> None:
        self.lock.release()

    def saved_anything(self) -> bool:
        """Whether the run wrote a slider, checkpoint or training state that was not here before."""
        before = self.before or frozenset()
        return any(path.name not in before for path in run_files(self.path, self.name))

    def abandon(self) -> None:
        """Unlock the folder and, when the run saved nothing, leave it as the run found it.

        For a run stopped before its first slider or checkpoint (a signal during set-up): the files
        it added are removed, the records it rewrote are put back, an earlier run that `--overwrite`
        moved aside is moved back, and the folders it created are removed. A run that saved something
        keeps everything (the message of its stop says what).
        """
        try:
            if not self.saved_anything():
                self._undo()
        finally:
            self.release()
        for folder in self.created:  # deepest first; a folder with anything in it stays
            try:
                folder.rmdir()
            except OSError:
                break

    def _undo(self) -> None:
        if self.before is None or not self.path.is_dir():
            return
        for entry in self.path.iterdir():
            # replaced-<time> folders hold earlier runs: never removed here, even one made just now.
            if entry.name in self.before or entry.name == LOCK_NAME or entry.name.startswith("replaced-"):
                continue
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
        for name, data in self.records.items():
            path = self.path / name
            if not path.is_file() or path.read_bytes() != data:
                with atomic_path(path) as temporary:
                    Path(temporary).write_bytes(data)
        if self.replaced is not None and self.replaced.is_dir():
            for entry in self.replaced.iterdir():
                if not (self.path / entry.name).exists():
                    shutil.move(str(entry), str(self.path / entry.name))
            try:
                self.replaced.rmdir()
            except OSError:
                logger.warning("kept %s: some of its files are also in %s", self.replaced, self.path)


def prepare_run_folder(
    folder: Path, name: str, config_dict: dict, prompts_json: str, *, overwrite: bool, resume: bool
) -> RunFolder:
    """Check, lock and clear a run folder before the model loads.

    Without `overwrite` or `resume`, any slider, checkpoint or training state of run `name` already
    in the folder is refused. With `overwrite`, the earlier run's files are moved into
    `replaced-<time>/`. With `resume`, the latest complete checkpoint is found and its config and
    prompts compared with this run's. Leftover temporary files are removed in every case.
    """
    if overwrite and resume:
        raise InputError("--overwrite and --resume contradict each other: --resume continues the run, "
                         "--overwrite starts it again; pass one")
    fix = "choose another --output_dir (save.path) or --name"
    check_writable_folder(folder, "run folder", fix)
    lock = RunLock(folder)
    run = RunFolder(folder, lock, name=name, created=tuple(p for p in (folder, *folder.parents) if not p.exists()))
    try:
        try:
            lock.acquire()
        except OSError as error:
            raise InputError(f"run folder '{folder}' cannot be written: {_reason(error)}; {fix}") from None
        remove_leftovers(folder)
        run.records = {n: (folder / n).read_bytes() for n in RUN_RECORDS if (folder / n).is_file()}
        run.before = frozenset(p.name for p in folder.iterdir())
        existing = run_files(folder, name)
        last = folder / f"{name}_last.safetensors"
        if resume:
            run.resume = _resume_point(folder, name, config_dict, prompts_json, last)
        elif existing and not overwrite:
            shown = last if last in existing else existing[-1]
            raise InputError(
                f"'{shown}' already exists (run '{name}' was trained here before); pass --resume to continue it, "
                f"--overwrite to start again (the old files are moved into a replaced-<time> folder), or {fix}"
            )
        elif overwrite and existing:
            run.replaced = move_aside(folder)
            logger.info("moved the earlier run's files into %s", run.replaced)
            run.records = {}  # they were moved aside with the rest, and come back with it
            run.before = frozenset(p.name for p in folder.iterdir())
        return run
    except BaseException:  # refused, or a signal: the folder is left as it was found
        run.abandon()
        raise


def _resume_point(folder: Path, name: str, config_dict: dict, prompts_json: str, last: Path) -> ResumePoint:
    if last.exists():
        raise InputError(f"run '{name}' already finished ('{last}' exists); nothing to resume. To train again, "
                         "pass --overwrite or choose another --name")
    point = latest_resume_point(folder, name)
    if point is None:
        raise InputError(f"run folder '{folder}' holds no resumable checkpoint of '{name}' (a "
                         f"{name}_<step>steps.safetensors with its {STATE_JSON} and {STATE_TENSORS}); "
                         "run without --resume to start it")
    differences = config_differences(point.state.get("config", {}), config_dict)
    if differences:
        raise InputError(f"--resume: the config differs from the one '{point.checkpoint.name}' was trained with: "
                         f"{'; '.join(differences)}; give the same config and flags as the first run")
    if point.state.get("prompts") != prompts_json:
        raise InputError(f"--resume: the prompts (or image folders) differ from those '{point.checkpoint.name}' "
                         "was trained with; give the same prompts file and flags as the first run")
    iterations = config_dict.get("train", {}).get("iterations")
    if isinstance(iterations, int) and point.step >= iterations:
        raise InputError(f"--resume: '{point.checkpoint.name}' is at step {point.step}, the end of the run's "
                         f"{iterations} iterations; nothing to resume")
    return point
