"""Load a data file (.json, .jsonl, .txt) and normalise every record shape into one `Record` type."""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Iterator

from ..errors import DataFormatError, InputError, ValidationFailed
from .records import (Record, RecordError, SkippedRecord, Turn, record_to_json,  # noqa: F401 (the data API)
                      type_name)
from .shapes import normalise

SUPPORTED_SUFFIXES = (".json", ".jsonl", ".txt")
JSONL_SUFFIXES = (".jsonl", ".ndjson")


def check_data_path(path: str | os.PathLike) -> Path:
    """The data file as a Path, or an InputError saying why it cannot be read."""
    path = Path(path)
    try:
        if not path.exists():
            if path.is_symlink():
                raise InputError(f"{path}: broken symlink or symlink loop")
            raise InputError(f"{path}: no such file")
        if path.is_dir():
            raise InputError(f"{path}: is a directory, expected a .json, .jsonl or .txt file")
        path.stat()
    except OSError as error:  # symlink loops, permissions
        raise InputError(f"{path}: cannot read ({error.strerror or error})") from None
    if path.suffix.lower() not in SUPPORTED_SUFFIXES + JSONL_SUFFIXES:
        raise InputError(f"{path}: unsupported file type '{path.suffix or '(none)'}'; "
                         "use .json, .jsonl or .txt")
    return path


def file_sha256(path: str | os.PathLike) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _decode(raw: bytes, path: Path, line: int | None = None) -> str:
    where = f"{path}" + (f":{line}" if line is not None else "")
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")) or (len(raw) > 1 and raw[1:2] == b"\x00" and raw[:1] != b"\x00"):
        raise DataFormatError(f"{where}: file is UTF-16; save it as UTF-8")
    if b"\x00" in raw:
        raise DataFormatError(f"{where}: binary data (NUL bytes); expected UTF-8 text")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise DataFormatError(f"{where}: not UTF-8 (invalid byte at offset {error.start}); "
                              "save the file as UTF-8") from None


def _parse_json(text: str, path: Path, line_offset: int = 0) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        line = error.lineno + line_offset
        raise DataFormatError(f"{path}:{line}:{error.colno}: invalid JSON: {error.msg}") from None
    except RecursionError:
        where = f"{path}:{line_offset + 1}" if line_offset else f"{path}"
        raise DataFormatError(f"{where}: JSON nested too deeply to read") from None
    except ValueError as error:  # e.g. an integer over 4300 digits (sys.get_int_max_str_digits())
        where = f"{path}:{line_offset + 1}" if line_offset else f"{path}"
        raise DataFormatError(f"{where}: invalid JSON: {error}") from None


def _read_file(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as error:
        raise InputError(f"{path}: cannot read ({error.strerror or error})") from None


def _records_of_json(path: Path) -> Iterator[Any]:
    value = _parse_json(_decode(_read_file(path), path), path)
    if isinstance(value, list):
        yield from value
        return
    if isinstance(value, dict):
        arrays = [key for key, item in value.items() if isinstance(item, list)]
        if len(arrays) == 1:
            yield from value[arrays[0]]
            return
        if arrays:
            raise DataFormatError(f"{path}: the top-level object holds several arrays {arrays}; "
                                  "keep only the one with the records")
    raise DataFormatError(f"{path}: expected a JSON array of records (or an object holding one), "
                          f"got {type_name(value)}")


def _reject_utf16(path: Path) -> None:
    with open(path, "rb") as handle:
        head = handle.read(2)
    # Only the UTF-16 test of _decode: decoding two bytes alone would reject a UTF-8 BOM (EF BB BF).
    if head in (b"\xff\xfe", b"\xfe\xff") or (head[1:2] == b"\x00" and head[:1] != b"\x00"):
        raise DataFormatError(f"{path}: file is UTF-16; save it as UTF-8")


def _records_of_jsonl(path: Path) -> Iterator[Any]:
    _reject_utf16(path)
    with open(path, "rb") as handle:
        for number, raw in enumerate(handle, start=1):
            if not raw.strip():
                continue
            text = _decode(raw, path, number).rstrip("\r\n")
            yield _parse_json(text, path, line_offset=number - 1)


def _records_of_txt(path: Path) -> Iterator[str]:
    """Paragraphs separated by blank lines; each becomes one plain-text record."""
    _reject_utf16(path)
    paragraph: list[str] = []
    with open(path, "rb") as handle:
        for number, raw in enumerate(handle, start=1):
            line = _decode(raw, path, number)
            if line.strip():
                paragraph.append(line.rstrip("\r\n"))
            elif paragraph:
                yield "\n".join(paragraph)
                paragraph = []
    if paragraph:
        yield "\n".join(paragraph)


def iter_raw(path: str | os.PathLike) -> Iterator[Any]:
    """The file's raw records (JSON values or text paragraphs), streamed where the format allows."""
    path = check_data_path(path)
    suffix = path.suffix.lower()
    if suffix == ".txt":
        return _records_of_txt(path)
    if suffix in JSONL_SUFFIXES:
        return _records_of_jsonl(path)
    return _records_of_json(path)


def scan(path: str | os.PathLike, preference_as: str | None = None
         ) -> Iterator[Record | RecordError | SkippedRecord]:
    """Every record of the file, the RecordError that stops it from being one, or why it was skipped (streams).

    `preference_as="chosen"` trains preference data on its chosen side instead of refusing it.
    """
    first: Record | None = None
    for index, obj in enumerate(iter_raw(path)):
        try:
            record = normalise(index, obj, preference_as)
        except RecordError as error:
            yield error
            continue
        if isinstance(record, SkippedRecord):
            yield record
            continue
        if first is None:
            first = record
        elif record.shape != first.shape:
            keys = sorted(obj)[:8] if isinstance(obj, dict) else "a string"
            yield RecordError(index, f"shape '{record.shape}' (keys {keys}) differs from record "
                                     f"{first.index}'s '{first.shape}'; a file holds one shape", "mixed-shapes",
                              record.shape)
            continue
        yield record


def load_records(path: str | os.PathLike, preference_as: str | None = None) -> Iterator[Record]:
    """Every record of the file (skipped ones left out); raises the first problem found."""
    count = 0
    for item in scan(path, preference_as):
        if isinstance(item, RecordError):
            raise item
        if isinstance(item, SkippedRecord):
            continue
        count += 1
        yield item
    if count == 0:
        raise ValidationFailed(f"{path}: no records")
