"""Load a data file (.json, .jsonl, .txt) and normalise every record shape into one `Record` type."""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from .errors import DataFormatError, InputError, ValidationFailed

SUPPORTED_SUFFIXES = (".json", ".jsonl", ".txt")
JSONL_SUFFIXES = (".jsonl", ".ndjson")
ROLES = ("system", "user", "assistant")
# ShareGPT speaker names -> the OpenAI/TRL roles used everywhere else.
SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                  "model": "assistant", "bot": "assistant", "system": "system"}
# Pair shapes in the order they are recognised: (shape name, prompt key, response key).
PAIR_SHAPES = (
    ("prompt/completion", "prompt", "completion"),
    ("question/answer", "question", "answer"),
    ("input/output", "input", "output"),
)
SHAPE_HELP = ("a string, {text}, prompt/completion, question/answer, input/output, "
              "instruction/input/output (Alpaca), messages (role/content) or conversations (from/value)")


@dataclass(frozen=True)
class Turn:
    """One message of a chat."""

    role: str  # system | user | assistant
    content: str


@dataclass(frozen=True)
class Record:
    """One training example, whatever shape it came in."""

    index: int  # position in the file, 0-based
    kind: str  # "text" (loss on everything) | "pair" | "chat" (loss on the responses)
    shape: str  # the shape it was read from, e.g. "alpaca", "question/answer", "messages"
    text: str = ""
    prompt: str = ""
    response: str = ""
    turns: tuple[Turn, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        if self.kind not in ("text", "pair", "chat"):
            raise ValueError(f"unknown record kind {self.kind!r}")

    def fields(self) -> list[tuple[str, str]]:
        """(name, text) of every text field, for checks that look at all of them."""
        if self.kind == "text":
            return [("text", self.text)]
        if self.kind == "pair":
            return [("prompt", self.prompt), ("response", self.response)]
        return [(f"turn {i} ({t.role})", t.content) for i, t in enumerate(self.turns)]

    def all_text(self) -> str:
        """Every text field joined, for length and duplicate checks."""
        return "\n".join(text for _, text in self.fields())


class RecordError(ValidationFailed):
    """A record whose shape or fields cannot be used; names the record."""

    def __init__(self, index: int, message: str, code: str) -> None:
        self.index = index
        self.reason = message
        self.code = code  # the quality check it fails (quality.CHECKS)
        super().__init__(f"record {index}: {message}")


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
                          f"got {_type_name(value)}")


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


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return "a string" if isinstance(value, str) else type(value).__name__


def _text_field(index: int, obj: dict, key: str, optional: bool = False) -> str:
    value = obj.get(key)
    if value is None and optional:
        return ""
    if not isinstance(value, str):
        raise RecordError(index, f"field '{key}' must be a string, got {_type_name(value)}", "not-a-string")
    if not value.strip() and not optional:
        raise RecordError(index, f"field '{key}' is empty", "empty-field")
    return value


def _chat(index: int, obj: dict, key: str, role_key: str, content_key: str, shape: str) -> Record:
    messages = obj[key]
    if not isinstance(messages, list) or not messages:
        raise RecordError(index, f"'{key}' must be a non-empty array of messages", "chat-format")
    turns = []
    for position, message in enumerate(messages):
        if not isinstance(message, dict):
            raise RecordError(index, f"{key}[{position}] must be an object, got {_type_name(message)}",
                              "chat-format")
        speaker = message.get(role_key)
        role = SHAREGPT_ROLES.get(str(speaker).lower()) if shape == "conversations" else speaker
        if role not in ROLES:
            raise RecordError(index, f"{key}[{position}] has unknown {role_key} {speaker!r}", "chat-format")
        content = _text_field(index, message, content_key)
        turns.append(Turn(role, content))
    _check_turn_order(index, turns)
    return Record(index=index, kind="chat", shape=shape, turns=tuple(turns))


def _check_turn_order(index: int, turns: list[Turn]) -> None:
    roles = [turn.role for turn in turns]
    if "assistant" not in roles:
        raise RecordError(index, "chat has no assistant turn", "chat-no-assistant")
    body = roles[1:] if roles[0] == "system" else roles
    for position, role in enumerate(body):
        expected = "user" if position % 2 == 0 else "assistant"
        if role != expected:
            raise RecordError(index, f"chat roles do not alternate user/assistant: {roles}", "chat-roles")


def normalise(index: int, obj: Any) -> Record:
    """One raw record as a `Record`, or a RecordError naming its index and keys."""
    if isinstance(obj, str):
        if not obj.strip():
            raise RecordError(index, "text is empty", "empty-field")
        return Record(index=index, kind="text", shape="text", text=obj)
    if not isinstance(obj, dict):
        raise RecordError(index, f"expected an object or a string, got {_type_name(obj)}", "unknown-shape")
    if "messages" in obj:
        return _chat(index, obj, "messages", "role", "content", "messages")
    if "conversations" in obj:
        return _chat(index, obj, "conversations", "from", "value", "conversations")
    if "instruction" in obj and "output" in obj:
        instruction = _text_field(index, obj, "instruction")
        extra = _text_field(index, obj, "input", optional=True)
        prompt = f"{instruction}\n\n{extra}" if extra.strip() else instruction
        return Record(index=index, kind="pair", shape="alpaca", prompt=prompt,
                      response=_text_field(index, obj, "output"))
    for shape, prompt_key, response_key in PAIR_SHAPES:
        if prompt_key in obj and response_key in obj:
            return Record(index=index, kind="pair", shape=shape,
                          prompt=_text_field(index, obj, prompt_key),
                          response=_text_field(index, obj, response_key))
    if "text" in obj:
        return Record(index=index, kind="text", shape="text", text=_text_field(index, obj, "text"))
    keys = sorted(obj)[:8]
    raise RecordError(index, f"unknown record shape with keys {keys}; expected {SHAPE_HELP}", "unknown-shape")


def scan(path: str | os.PathLike) -> Iterator[Record | RecordError]:
    """Every record of the file, or the RecordError that stops it from being one (files stream)."""
    first: Record | None = None
    for index, obj in enumerate(iter_raw(path)):
        try:
            record = normalise(index, obj)
        except RecordError as error:
            yield error
            continue
        if first is None:
            first = record
        elif record.shape != first.shape:
            keys = sorted(obj)[:8] if isinstance(obj, dict) else "a string"
            yield RecordError(index, f"shape '{record.shape}' (keys {keys}) differs from record "
                                     f"{first.index}'s '{first.shape}'; a file holds one shape", "mixed-shapes")
            continue
        yield record


def load_records(path: str | os.PathLike) -> Iterator[Record]:
    """Every record of the file; raises the first problem found."""
    count = 0
    for item in scan(path):
        if isinstance(item, RecordError):
            raise item
        count += 1
        yield item
    if count == 0:
        raise ValidationFailed(f"{path}: no records")


def record_to_json(record: Record) -> dict[str, Any]:
    """The record in a shape `normalise` reads back to the same training example."""
    if record.kind == "text":
        return {"text": record.text}
    if record.kind == "pair":
        return {"prompt": record.prompt, "completion": record.response}
    return {"messages": [{"role": t.role, "content": t.content} for t in record.turns]}
