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

import os
import shutil
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from filelock import FileLock, Timeout

from ..errors import InputError, LockedError, SailsError
from .disk import is_write_fault


@dataclass(frozen=True)
class OsRules:
    """What the store may rely on from the operating system (chosen by `os.name`)."""

    fsync_directories: bool  # whether a directory can be opened and fsynced to make renames in it durable
    fsync_file_flags: int  # how a file is opened to fsync it
    unlink_lock_while_held: bool  # whether the store deletes the lock file itself, before unlocking
    open_files_block_renames: bool  # whether a directory holding a file open elsewhere can be renamed

    @property
    def rename_attempts(self) -> int:
        """Tries of one rename: where open files block it, a scanner's brief hold is waited out (1.6 s)."""
        return 6 if self.open_files_block_renames else 1


def os_rules(os_name: str = os.name) -> OsRules:
    """The store's rules for `os_name` ('posix' or 'nt')."""
    if os_name == "nt":
        return OsRules(
            # A directory cannot be opened as a file descriptor on Windows (os.open raises), so it cannot be
            # fsynced; NTFS journals its metadata, so a rename survives a crash whole or not at all, which
            # is what the swap needs (recover() handles both outcomes).
            fsync_directories=False,
            # os.fsync is FlushFileBuffers there, which needs a handle opened for writing.
            fsync_file_flags=os.O_RDWR,
            # An open file cannot be deleted on Windows; filelock deletes the lock file after closing it,
            # and its open refuses a file pending deletion, so no one locks a file that is going away.
            unlink_lock_while_held=False,
            # A directory holding a file another program has open (a virus scanner reading a file just
            # written, `generate` reading the model) cannot be renamed; a scanner lets go within a second.
            open_files_block_renames=True,
        )
    # POSIX: fsync of a directory makes the renames in it durable; a read-only descriptor can be fsynced;
    # a file can be deleted while it is open and locked; a rename does not care about open files.
    return OsRules(fsync_directories=True, fsync_file_flags=os.O_RDONLY, unlink_lock_while_held=True,
                   open_files_block_renames=False)


RULES = os_rules()


def sibling(target: str | Path, purpose: str) -> Path:
    """A hidden path next to `target` for one purpose (staging, old, work, lock)."""
    target = Path(target)
    return target.parent / f".{target.name}.{purpose}"


def _fsync_tree(directory: Path) -> None:
    for path in sorted(directory.rglob("*"), reverse=True):
        if path.is_dir():
            _fsync_dir(path)
        else:
            descriptor = os.open(path, RULES.fsync_file_flags)
            try:
                os.fsync(descriptor)
            finally:
                os.close(descriptor)
    _fsync_dir(directory)


def _fsync_dir(directory: Path) -> None:
    if not RULES.fsync_directories:
        return
    descriptor = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _rename(source: Path, destination: Path) -> None:
    """os.rename of a directory to a name that does not exist, waiting out a brief sharing violation.

    Never a rename over an existing directory: POSIX allows it only onto an empty one, Windows not at all,
    so every swap frees the name first (the two-rename path).
    """
    for attempt in range(RULES.rename_attempts):
        try:
            os.rename(source, destination)
            return
        except PermissionError:
            if attempt + 1 == RULES.rename_attempts:
                raise
            time.sleep(0.05 * 2 ** attempt)  # 0.05 s doubling: 1.6 s in all


def _cannot_replace(target: Path, error: PermissionError) -> SailsError:
    if RULES.open_files_block_renames:
        return LockedError(f"cannot replace {target}: another program has a file in it open; close it and "
                           "run again (the previous version is unchanged)")
    return InputError(f"cannot replace {target}: {error.strerror or error} (the previous version is unchanged)")


def recover(target: str | Path) -> str | None:
    """Finish or undo an interrupted swap of `target`; returns what was done, or None."""
    target = Path(target)
    old = sibling(target, "old")
    if not old.exists():
        return None
    if target.exists():
        shutil.rmtree(old)
        return f"removed the leftover of a completed update ({old})"
    _rename(old, target)
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
        try:
            _rename(target, old)
        except PermissionError as error:  # nothing has changed yet
            raise _cannot_replace(target, error) from None
    try:
        _rename(new, target)
    except OSError:
        if had_target:  # undo step 2 now; were this to fail too, recover() restores it at the next start
            _rename(old, target)
        raise
    _fsync_dir(target.parent)
    if had_target:
        if keep_old_as is not None:
            _rename(old, keep_old_as)
        else:
            # The swap is done: a file another program holds open (Windows) only delays the cleanup,
            # and recover() removes a leftover `.NAME.old` at the next start.
            shutil.rmtree(old, ignore_errors=True)


def fresh_staging(target: str | Path, purpose: str = "staging") -> Path:
    """An empty hidden sibling directory to write a new version of `target` into."""
    staging = sibling(target, purpose)
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    return staging


_HOLDER_OFFSET = 1  # the holder's text starts after byte 0, the byte Windows' LockFileEx locks (unreadable to others)
_LOCK_ATTEMPTS = 5  # a holder that releases while we open its file is waited for, not reported as a session


class _LockFileReplaced(Exception):
    """The file we locked is no longer the one at the lock path (its holder deleted it on release)."""


def _same_file(descriptor: int, path: Path) -> bool:
    try:
        return os.path.samestat(os.fstat(descriptor), os.stat(path))
    except OSError:
        return False


def _lock_holder(lock_path: Path) -> str:
    try:
        with open(lock_path, "rb") as handle:
            handle.seek(_HOLDER_OFFSET)
            return handle.read(200).decode("utf-8", "replace").strip() or "another process"
    except OSError:
        return "another process"


def _acquire(target: Path, lock_path: Path) -> tuple[FileLock, int]:
    """Lock `lock_path` at once or raise LockedError; returns the lock and its file descriptor."""
    held: list[int] = []

    def claim(descriptor: int) -> None:
        # Locking the file of a holder that deleted it on release would lock nothing: start again.
        if not _same_file(descriptor, lock_path):
            raise _LockFileReplaced
        os.lseek(descriptor, 0, os.SEEK_SET)
        os.ftruncate(descriptor, 0)
        os.write(descriptor, b"\n" + f"pid {os.getpid()}".encode())
        held.append(descriptor)

    for attempt in range(_LOCK_ATTEMPTS):
        if attempt:
            time.sleep(0.02)
        # fallback_to_soft=False: a soft (existence) lock would survive a kill -9 and block every later session.
        lock = FileLock(lock_path, timeout=0, thread_local=False, fallback_to_soft=False, on_acquired=claim)
        try:
            lock.acquire()
        except (_LockFileReplaced, Timeout):  # Timeout before OSError: it is a TimeoutError
            continue
        except OSError as error:
            if is_write_fault(error):  # a read-only or full directory: the caller's disk.Writes says so
                raise
            raise InputError(f"{lock_path}: cannot lock ({error.strerror or error})") from None
        return lock, held[0]
    raise LockedError(f"{target} is in use by another session ({_lock_holder(lock_path)}); "
                      "wait for it to finish")


def _release(lock: FileLock, descriptor: int, lock_path: Path) -> None:
    try:
        # Deleted while still held, so a session that opened the same file meanwhile finds it gone
        # (claim() above) instead of locking a file no longer at the path.
        if RULES.unlink_lock_while_held and _same_file(descriptor, lock_path):
            lock_path.unlink()
    except OSError:
        pass  # a lock file left behind locks nothing: the next session takes it over
    finally:
        lock.release()  # on Windows filelock deletes the file after closing it


@contextmanager
def locked(target: str | Path) -> Iterator[Path]:
    """Hold the one-session-per-directory lock of `target` (an OS lock: it dies with the process).

    The lock file `.NAME.lock` exists only while a session holds it.
    """
    target = Path(target)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        if is_write_fault(error):
            raise
        raise InputError(f"{target.parent}: cannot create ({error.strerror or error})") from None
    lock_path = sibling(target, "lock")
    lock, descriptor = _acquire(target, lock_path)
    try:
        yield target
    finally:
        _release(lock, descriptor, lock_path)


HELD_OUT_DIR = "held_out"  # one JSONL per session: records never trained on, re-evaluated every session
REPLAY_DIR = "replay"  # one JSONL per session: a sample of its training records, for --replay
PROBE_DIR = "probe"  # one JSONL per session: trained question/answer records whose answers are checked again
SLICE_DIRS = (HELD_OUT_DIR, REPLAY_DIR, PROBE_DIR)
MAX_HELD_OUT_RECORDS = 200  # per session, so re-evaluating every earlier session stays cheap
MAX_REPLAY_RECORDS = 1000  # per session, bounding the model directory's growth


def slice_path(model_dir: str | Path, kind: str, session: int) -> Path:
    """The held-out, replay or probe file of one session inside a model directory."""
    return Path(model_dir) / kind / f"session_{session:03d}.jsonl"


def write_slice(model_dir: str | Path, kind: str, session: int, records: list, limit: int, seed: int) -> Path:
    """Store up to `limit` of `records` (a seeded sample) as the session's slice; returns the file."""
    import json
    import random

    from ..data.files import record_to_json

    chosen = records if len(records) <= limit else random.Random(seed).sample(records, limit)
    path = slice_path(model_dir, kind, session)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as handle:
        for record in chosen:
            handle.write(json.dumps(record_to_json(record), ensure_ascii=False) + "\n")
    return path


def read_slices(model_dir: str | Path, kind: str) -> dict[int, list]:
    """{session number: its stored records} for every slice of `kind` in the model directory."""
    from ..data.files import load_records

    directory = Path(model_dir) / kind
    if not directory.is_dir():
        return {}
    return {int(path.stem.split("_")[1]): list(load_records(path))
            for path in sorted(directory.glob("session_*.jsonl"))}


def copy_slices(source_dir: str | Path, target_dir: str | Path) -> None:
    """Carry earlier sessions' held-out, replay and probe slices into a new model version."""
    for kind in SLICE_DIRS:
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
