"""Printing that never fails on a terminal that cannot show emoji."""
from __future__ import annotations

import os
import re
import shutil
import sys
from contextlib import contextmanager
from typing import Iterator, TextIO

# Emoji and the variation selector that follows some of them; a plain terminal gets the text alone.
_EMOJI = re.compile("[\U0001F300-\U0001FAFF\u2600-\u27BF\u2B00-\u2BFF\uFE0F]+ *")


def can_encode(text: str, stream: TextIO) -> bool:
    """True when `stream` can print `text` as it is."""
    encoding = getattr(stream, "encoding", None) or "ascii"
    try:
        text.encode(encoding)
    except (UnicodeEncodeError, LookupError):
        return False
    return True


def plain(text: str) -> str:
    """`text` without emoji (the fallback for terminals that cannot print them)."""
    return _EMOJI.sub("", text)


_quiet = False  # --quiet and the Python API: progress lines are dropped, results still print
_worker = False  # a data-parallel process other than the main one: nothing prints


def mute(muted: bool = True) -> None:
    """Drop (or restore) progress lines from `say`; results from `show` and `warn` still print."""
    global _quiet
    _quiet = muted


def mute_worker() -> None:
    """Silence this process entirely (every data-parallel process but the main one)."""
    global _worker
    _worker = True


@contextmanager
def quiet() -> Iterator[None]:
    """Drop progress lines for the duration (the Python API returns results instead of printing)."""
    previous = _quiet
    mute(True)
    try:
        yield
    finally:
        mute(previous)


_live_width = 0  # characters of the updating line now on stdout (`live`); 0: none


def _printable(text: str, stream: TextIO) -> str:
    """`text` as `stream` can print it: without emoji, else in ASCII with replacements."""
    if not can_encode(text, stream):
        text = plain(text)
        if not can_encode(text, stream):
            text = text.encode("ascii", "replace").decode("ascii")
    return text


def _clear_live() -> None:
    """Blank the updating line, so that a message takes its place; the next `live` draws it again below."""
    global _live_width
    if _live_width:
        sys.stdout.write("\r" + " " * _live_width + "\r")
        sys.stdout.flush()
        _live_width = 0


def _write(text: str, stream: TextIO) -> None:
    """Print one line to `stream`, on a line of its own even while the updating line is shown."""
    _clear_live()
    print(_printable(text, stream), file=stream, flush=True)


def live(text: str) -> None:
    """Rewrite stdout's current line with `text` (progress on a terminal, updated in place), cut to the terminal's
    width so that it never wraps; muted like `say`."""
    global _live_width
    if _quiet or _worker:
        return
    text = _printable(text, sys.stdout)[:max(20, shutil.get_terminal_size().columns - 1)]
    sys.stdout.write("\r" + text.ljust(_live_width))  # the padding blanks what a longer line left
    sys.stdout.flush()
    _live_width = len(text)


def end_live() -> None:
    """End the updating line with a newline: what it last said stays on the terminal."""
    global _live_width
    if _live_width:
        sys.stdout.write("\n")
        sys.stdout.flush()
        _live_width = 0


def say(text: str, stream: TextIO | None = None) -> None:
    """Print one progress message, dropping emoji where the stream cannot encode them."""
    if not _quiet and not _worker:
        _write(text, stream or sys.stdout)


def show(text: str, stream: TextIO | None = None) -> None:
    """Print part of a command's result (a report, a table): kept under --quiet."""
    if not _worker:
        _write(text, stream or sys.stdout)


def warn(text: str) -> None:
    """Print a message to stderr with the same emoji fallback, even when `say` is muted."""
    _write(text, sys.stderr)


def use_color(stream: TextIO | None = None) -> bool:
    """Colours only on a terminal, and never when NO_COLOR is set."""
    stream = stream or sys.stdout
    return "NO_COLOR" not in os.environ and hasattr(stream, "isatty") and stream.isatty()
