"""A machine's write faults (full disk, file-size limit, read-only or forbidden directory) as one line and exit 6,
and the room a session checks for before it trains. Torch-free: it reads only errors, sizes and limits.

Libraries wrap the OSError: safetensors raises `SafetensorError: Error while serializing: I/O error: No space
left on device (os error 28)`, torch.save `RuntimeError: [enforce fail at inline_container.cc:672] . unexpected
pos ...` with no errno at all; both are recognised here, by the errno in the chain or by the message.
"""
from __future__ import annotations

import errno
import os
import re
import shutil
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from ..errors import CannotWriteError, SailsError

STOPPED_SHORT = 0  # a write that stopped short and kept no errno (torch.save)
REASONS = {
    errno.ENOSPC: "no space left on the device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EFBIG: "file too large",
    errno.EROFS: "read-only file system",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    STOPPED_SHORT: "the write stopped short (a full disk or a file-size limit)",
}
FAULT_ERRNOS = frozenset(REASONS) - {STOPPED_SHORT}
# How torch's zip writer reports a short write (it keeps no errno): the two lines it raises, and its file name.
TORCH_SHORT_WRITE = ("inline_container.cc", "unexpected pos", "PytorchStreamWriter failed writing",
                     "iostream error")
OS_ERROR_CODE = re.compile(r"os error (\d+)|\bcode: (\d+)")  # Rust's io::Error, as safetensors prints it
# Faults no read can cause, also found by their text (pyarrow's IO errors carry the text, not always the errno).
WRITE_ONLY_FAULTS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS)
CHECKPOINT_FACTOR = 3  # a Trainer checkpoint: the weights and Adam's two moments, each the weights' size
CHECKPOINTS_AT_ONCE = 2  # save_total_limit=1 removes the previous checkpoint only once the next is written
MARGIN = 32 << 20  # history, card, plots, configs and the tokenizer (a large vocabulary's runs to megabytes)


def _chain(error: BaseException) -> Iterator[BaseException]:
    """`error` and the exceptions it was raised from or during."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def fault_errno(error: BaseException) -> int | None:
    """The write fault behind `error` (an errno of REASONS, or STOPPED_SHORT), looking through the exceptions
    it was raised from or during; None when it is no write fault."""
    for current in _chain(error):
        if isinstance(current, OSError) and current.errno in FAULT_ERRNOS:
            return current.errno
        message = str(current)
        match = OS_ERROR_CODE.search(message)
        if match and int(match.group(1) or match.group(2)) in FAULT_ERRNOS:
            return int(match.group(1) or match.group(2))
        if isinstance(current, RuntimeError) and any(sign in message for sign in TORCH_SHORT_WRITE):
            return STOPPED_SHORT
        named = next((code for code in WRITE_ONLY_FAULTS if os.strerror(code) in message), None)
        if named is not None:
            return named
    return None


def is_write_fault(error: BaseException) -> bool:
    """True when `error` is a full disk, a file-size limit, or a directory the process may not write."""
    return fault_errno(error) is not None


def file_size_limit() -> int | None:
    """This process's file-size limit in bytes (`ulimit -f`), or None when there is none (or no such limit,
    as on Windows)."""
    try:
        import resource
    except ImportError:
        return None
    soft, _ = resource.getrlimit(resource.RLIMIT_FSIZE)
    return None if soft == resource.RLIM_INFINITY else soft


def size_text(size: int) -> str:
    """A byte count as the terminal shows it."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if size >= scale:
            return f"{size / scale:.1f} {unit}"
    return f"{size} bytes"


def tree_bytes(path: Path) -> int:
    """The bytes of every file under `path` (0 when it does not exist)."""
    if path.is_file():
        return path.stat().st_size
    return sum(item.stat().st_size for item in path.rglob("*") if item.is_file()) if path.is_dir() else 0


def weight_bytes(model_dir: Path) -> int:
    """The bytes of a model directory's weight files (0 when it holds none)."""
    if not model_dir.is_dir():
        return 0
    return sum(item.stat().st_size for pattern in ("*.safetensors", "*.bin") for item in model_dir.glob(pattern))


def session_bytes(weights: int, other_files: int = 0, checkpoints_at_once: int = CHECKPOINTS_AT_ONCE) -> int:
    """Free space a session needs beside its output directory: Trainer checkpoints (weights and Adam's two
    moments), or one checkpoint and the new weights in staging, whichever is more; plus its other files."""
    peak = max(checkpoints_at_once * CHECKPOINT_FACTOR, CHECKPOINT_FACTOR + 1) * weights
    return peak + other_files + MARGIN


def _existing(path: Path) -> Path:
    path = path.resolve()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _files(directories: tuple[Path, ...]) -> list[Path]:
    return [item for directory in directories if directory.is_dir() for item in directory.rglob("*") if item.is_file()]


def culprit(error: BaseException, directories: tuple[Path, ...], limit: int | None) -> tuple[str, bool]:
    """(what could not be written, whether a file met the file-size limit). A library that names no file
    (safetensors, torch.save) gets the file under `directories` cut at the limit, else the directory written last
    (a failed safetensors write removes its file, so the newest file left is not always the one that failed)."""
    named = next((e.filename for e in _chain(error)
                  if isinstance(e, OSError) and isinstance(e.filename, (str, os.PathLike))), None)
    if named is not None:
        return str(named), False
    files = _files(directories)
    at_limit = [item for item in files if limit is not None and item.stat().st_size >= limit]
    if at_limit:
        return str(max(at_limit, key=lambda item: item.stat().st_mtime_ns)), True
    newest = max(files, key=lambda item: item.stat().st_mtime_ns, default=None)
    return (f"a file in {newest.parent}" if newest else "a file"), False


def shortfall(needed: int, free: int, largest_file: int, limit: int | None) -> str | None:
    """Why a command that needs `needed` bytes free and writes files of up to `largest_file` cannot run, given the
    `free` bytes and the file-size `limit`; None when it can."""
    if free < needed:
        return f"not enough space: {size_text(free)} free (free some, or choose another directory)"
    if limit is not None and limit < largest_file:
        return (f"cannot write a {size_text(largest_file)} file: the file-size limit (ulimit -f) is {size_text(limit)} "
                "(raise it with ulimit -f unlimited)")
    return None


@dataclass
class Writes:
    """The writes of one command into a sibling of `target` (the model or ONNX directory it replaces whole):
    what they need, where their half-written files are, and their faults as one line."""

    target: Path
    scratch: tuple[Path, ...] = ()  # where this command's new files are written (staging, work directory)
    needed: int | None = None  # free bytes the command needs, once known
    largest_file: int | None = None  # the largest file it must write, once known

    def place(self) -> Path:
        """The directory (on the file system) the command writes in."""
        return _existing(self.target.parent)

    def needs(self) -> str:
        """What the command needs, for the error line."""
        if self.needed is None:
            return ""
        files = f" and files of up to {size_text(self.largest_file)}" if self.largest_file else ""
        return f"; this needs about {size_text(self.needed)} free in {self.place()}{files}"

    def check_room(self, needed: int, largest_file: int) -> None:
        """Refuse at once, before anything long runs, when the free space or the file-size limit is too small."""
        self.needed, self.largest_file = needed, largest_file
        problem = shortfall(needed, shutil.disk_usage(self.place()).free, largest_file, file_size_limit())
        if problem is not None:
            raise CannotWriteError(f"{problem} in {self.place()}{self.needs()}; {self.unchanged()}")

    def unchanged(self) -> str:
        """The clause that tells the user their model is safe."""
        return f"{self.target} was left as it was" if self.target.exists() else f"nothing was written to {self.target}"

    def fault(self, error: BaseException) -> CannotWriteError | None:
        """`error` as the one line of a write fault, or None when it is none (call it before cleaning up, so that
        the half-written file can be named)."""
        if isinstance(error, SailsError):
            return None
        code = fault_errno(error)
        if code is None:
            return None
        limit = file_size_limit()
        what, cut_at_limit = culprit(error, self.scratch, limit)
        if code == STOPPED_SHORT and cut_at_limit:
            code = errno.EFBIG
        elif code == STOPPED_SHORT and shutil.disk_usage(self.place()).free < MARGIN:
            code = errno.ENOSPC
        reason = REASONS[code]
        if code == errno.EFBIG and limit is not None:
            reason += f": the file-size limit (ulimit -f) is {size_text(limit)}"
        elif code == errno.ENOSPC:
            reason += f" ({size_text(shutil.disk_usage(self.place()).free)} free)"
        return CannotWriteError(f"cannot write {what}: {reason}{self.needs()}; {self.unchanged()}")

    @contextmanager
    def translated(self) -> Iterator["Writes"]:
        """Turn a write fault inside the block into CannotWriteError (exit 6); anything else passes unchanged."""
        try:
            yield self
        except Exception as error:
            fault = self.fault(error)
            if fault is None:
                raise
            raise fault from None

