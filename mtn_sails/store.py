"""The model directory on disk: one session at a time, written beside it and swapped in whole.

Swap protocol (crash-safe at every step):
  1. the new directory is written completely as a hidden sibling `.NAME.staging` and fsynced;
  2. the current directory is renamed to `.NAME.old`;
  3. the staging directory is renamed to NAME;
  4. `.NAME.old` is removed (or kept as a named backup).
A crash between 2 and 3 leaves NAME missing and `.NAME.old` present: `recover` renames it back, so
the user sees the previous model. Any other crash leaves NAME untouched.
"""
from __future__ import annotations

import errno
import fcntl
import os
import shutil
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from .errors import InputError, LockedError


def sibling(target: str | Path, purpose: str) -> Path:
    """A hidden path next to `target` for one purpose (staging, old, work, lock)."""
    target = Path(target)
    return target.parent / f".{target.name}.{purpose}"


def _fsync_tree(directory: Path) -> None:
    for path in sorted(directory.rglob("*"), reverse=True):
        flags = os.O_RDONLY | (os.O_DIRECTORY if path.is_dir() else 0)
        descriptor = os.open(path, flags)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)
    _fsync_dir(directory)


def _fsync_dir(directory: Path) -> None:
    descriptor = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def recover(target: str | Path) -> str | None:
    """Finish or undo an interrupted swap of `target`; returns what was done, or None."""
    target = Path(target)
    old = sibling(target, "old")
    if not old.exists():
        return None
    if target.exists():
        shutil.rmtree(old)
        return f"removed the leftover of a completed update ({old})"
    os.rename(old, target)
    _fsync_dir(target.parent)
    return f"restored {target} from an interrupted update"


def backup_path(target: str | Path) -> Path:
    """Where a model replaced by an explicit --model-name session is kept."""
    target = Path(target)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = target.parent / f"{target.name}.backup-{stamp}"
    suffix = 1
    while path.exists():
        suffix += 1
        path = target.parent / f"{target.name}.backup-{stamp}-{suffix}"
    return path


def replace_directory(new: str | Path, target: str | Path, keep_old_as: Path | None = None) -> None:
    """Make `new` (a complete directory beside `target`) become `target`, atomically for readers."""
    new, target = Path(new), Path(target)
    _fsync_tree(new)
    old = sibling(target, "old")
    if old.exists():
        shutil.rmtree(old)
    had_target = target.exists()
    if had_target:
        os.rename(target, old)
    os.rename(new, target)
    _fsync_dir(target.parent)
    if had_target:
        if keep_old_as is not None:
            os.rename(old, keep_old_as)
        else:
            shutil.rmtree(old)


def fresh_staging(target: str | Path, purpose: str = "staging") -> Path:
    """An empty hidden sibling directory to write a new version of `target` into."""
    staging = sibling(target, purpose)
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    return staging


@contextmanager
def locked(target: str | Path) -> Iterator[Path]:
    """Hold the one-session-per-directory lock of `target` (an OS lock: it dies with the process)."""
    target = Path(target)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise InputError(f"{target.parent}: cannot create ({error.strerror or error})") from None
    lock_path = sibling(target, "lock")
    handle = open(lock_path, "a+")
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            if error.errno not in (errno.EAGAIN, errno.EACCES):
                raise
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            raise LockedError(f"{target} is in use by another session ({holder}); "
                              "wait for it to finish") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()}")
        handle.flush()
        yield target
    finally:
        handle.close()


HELD_OUT_DIR = "held_out"  # one JSONL per session: records never trained on, re-evaluated every session
REPLAY_DIR = "replay"  # one JSONL per session: a sample of its training records, for --replay
MAX_HELD_OUT_RECORDS = 200  # per session, so re-evaluating every earlier session stays cheap
MAX_REPLAY_RECORDS = 1000  # per session, bounding the model directory's growth


def slice_path(model_dir: str | Path, kind: str, session: int) -> Path:
    """The held-out or replay file of one session inside a model directory."""
    return Path(model_dir) / kind / f"session_{session:03d}.jsonl"


def write_slice(model_dir: str | Path, kind: str, session: int, records: list, limit: int, seed: int) -> Path:
    """Store up to `limit` of `records` (a seeded sample) as the session's slice; returns the file."""
    import json
    import random

    from .data import record_to_json

    chosen = records if len(records) <= limit else random.Random(seed).sample(records, limit)
    path = slice_path(model_dir, kind, session)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as handle:
        for record in chosen:
            handle.write(json.dumps(record_to_json(record), ensure_ascii=False) + "\n")
    return path


def read_slices(model_dir: str | Path, kind: str) -> dict[int, list]:
    """{session number: its stored records} for every slice of `kind` in the model directory."""
    from .data import load_records

    directory = Path(model_dir) / kind
    if not directory.is_dir():
        return {}
    return {int(path.stem.split("_")[1]): list(load_records(path))
            for path in sorted(directory.glob("session_*.jsonl"))}


def copy_slices(source_dir: str | Path, target_dir: str | Path) -> None:
    """Carry earlier sessions' held-out and replay slices into a new model version."""
    for kind in (HELD_OUT_DIR, REPLAY_DIR):
        if (Path(source_dir) / kind).is_dir():
            shutil.copytree(Path(source_dir) / kind, Path(target_dir) / kind, dirs_exist_ok=True)


def find_resume_checkpoint(checkpoints_dir: str | Path) -> Path | None:
    """The newest complete Trainer checkpoint (its trainer_state.json, written last, parses), or None.

    A kill while a checkpoint is being written leaves a partial `checkpoint-N`; the previous one is
    only rotated away once the next is complete, so falling back to it loses no more than one interval.
    """
    import json

    directory = Path(checkpoints_dir)
    if not directory.is_dir():
        return None
    candidates = sorted((p for p in directory.glob("checkpoint-*") if p.name.split("-")[-1].isdigit()),
                        key=lambda p: int(p.name.split("-")[-1]), reverse=True)
    for checkpoint in candidates:
        try:
            json.loads((checkpoint / "trainer_state.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        return checkpoint
    return None
