"""Chats into turns: OpenAI/TRL `messages` and ShareGPT `conversations`, with tool calls, parts and loss weights.

Tool calling as each project documents it: OpenAI chat fine-tuning (`tool_calls` on assistant messages,
`tool` messages, `tools` and `parallel_tool_calls` on the record; the older `function_call`/`functions`),
TRL (the same with `arguments` as an object), ShareGPT/LLaMA-Factory (`function_call` and `observation`
turns, `tools` as a JSON string) and LLaMA-Factory's newer messages (content parts `{"type", "value"}`,
`loss_weight`). Every call becomes `{"name", "arguments"}`, one JSON object per line of a "tool_call" turn.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import InputError
from .records import ASSISTANT_SIDE, NO_LOSS, Record, RecordError, Turn, json_lines, type_name

# ShareGPT speaker names (any case) -> turn roles.
SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                  "model": "assistant", "bot": "assistant", "system": "system",
                  "function_call": "tool_call", "observation": "tool", "tool": "tool"}
MESSAGE_ROLES = {"system": "system", "user": "user", "assistant": "assistant", "tool": "tool",
                 "function": "tool"}  # "function": the tool result of OpenAI's older function calling
NON_TEXT_PARTS = ("image", "image_url", "input_image", "audio", "input_audio", "video", "video_url",
                  "file", "input_file")
MEDIA_KEYS = ("images", "videos", "audios")  # LLaMA-Factory's multimodal columns
WEIGHT_KEYS = ("weight", "loss_weight")  # OpenAI, LLaMA-Factory
TEXT_ONLY = "this product trains text-only models"


@dataclass(frozen=True)
class ChatFormat:
    """Where a chat shape keeps its messages, speakers and text."""

    key: str
    role_key: str
    content_key: str
    roles: dict[str, str]

    def role_of(self, speaker: Any) -> str | None:
        """The turn role of a speaker name, None when unknown."""
        if self.role_key == "from":  # ShareGPT names are matched in any case
            return self.roles.get(str(speaker).lower())
        return self.roles.get(speaker) if isinstance(speaker, str) else None


MESSAGES = ChatFormat("messages", "role", "content", MESSAGE_ROLES)
CONVERSATIONS = ChatFormat("conversations", "from", "value", SHAREGPT_ROLES)


def _loads(text: str) -> Any:
    """The JSON value of `text`; a ValueError saying "not valid JSON (why)" when it has none."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"not valid JSON ({error.msg})") from None
    except (RecursionError, ValueError):  # nested too deeply, an integer over 4300 digits
        raise ValueError("not valid JSON") from None


def tools_of(value: Any, where: str = "'tools'") -> list[dict]:
    """The tool definitions of a `tools` value (an array, or a JSON string holding one); ValueError if malformed."""
    if value is None or value == "" or value == []:
        return []
    if isinstance(value, str):
        try:
            value = _loads(value)
        except ValueError as error:
            raise ValueError(f"{where} is {error}") from None
    if not isinstance(value, list):
        raise ValueError(f"{where} must be an array of tool definitions, got {type_name(value)}")
    for position, tool in enumerate(value):
        if tool_name(tool) is None:
            raise ValueError(f"{where}[{position}] is not a tool definition with a name")
    return value


def tool_name(tool: Any) -> str | None:
    """The name of a tool definition ({"name"} or OpenAI's {"type": "function", "function": {"name"}})."""
    if not isinstance(tool, dict):
        return None
    inner = tool.get("function") if isinstance(tool.get("function"), dict) else tool
    name = inner.get("name")
    return name if isinstance(name, str) and name.strip() else None


def read_tools_file(path: str | os.PathLike) -> list[dict]:
    """The tool definitions in a JSON file (an array, or an object with a `tools` array), for `generate`."""
    try:
        value = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as error:
        raise InputError(f"{path}: cannot read ({error.strerror or error})") from None
    except ValueError as error:
        raise InputError(f"{path}: not a JSON file of tools ({error})") from None
    try:
        tools = tools_of(value.get("tools") if isinstance(value, dict) else value, where=str(path))
    except ValueError as error:
        raise InputError(str(error)) from None
    if not tools:
        raise InputError(f"{path}: holds no tools")
    return tools


@dataclass
class _ChatReader:
    """Reads one chat's messages into turns, checking tool calls as it goes."""

    index: int
    fmt: ChatFormat
    shape: str
    tool_names: set[str]
    parallel: bool
    turns: list[Turn] = field(default_factory=list)
    open_call_ids: set[str] = field(default_factory=set)

    def fail(self, message: str, code: str) -> RecordError:
        return RecordError(self.index, message, code, self.shape)

    def read(self, position: int, message: Any, trained: bool = True) -> None:
        """Append the turns of message `position`; `trained=False` gives its assistant turns no loss."""
        where = f"{self.fmt.key}[{position}]"
        if not isinstance(message, dict):
            raise self.fail(f"{where} must be an object, got {type_name(message)}", "chat-format")
        speaker = message.get(self.fmt.role_key)
        role = self.fmt.role_of(speaker)
        if role is None:
            raise self.fail(f"{where} has unknown {self.fmt.role_key} {speaker!r}", "chat-format")
        trained = self._weight(where, message, role) and trained
        text, calls = self._content(where, message, role)
        previous = self.turns[-1].base_role if self.turns else None
        if previous == "tool_call" and role != "tool":
            raise self.fail(f"the tool call before {where} has no tool result after it", "tool-format")
        if role == "tool":
            self._tool_result(where, message, previous)
            self.turns.append(Turn("tool", text))
            return
        if role == "tool_call":  # ShareGPT function_call: the text is the call(s)
            role, text, calls = "assistant", "", self._calls_from_value(where, text)
        calls += self._message_calls(where, message) if role == "assistant" else []
        if calls and role != "assistant":
            raise self.fail(f"{where} is a {role} message with tool calls; only the assistant calls tools",
                            "tool-format")
        if not text.strip() and not calls:
            raise self.fail(f"field '{self.fmt.content_key}' is empty", "empty-field")
        mark = "" if trained else NO_LOSS
        if text.strip():
            self.turns.append(Turn(role + (mark if role in ASSISTANT_SIDE else ""), text))
        if calls:
            if not self.parallel and len(calls) > 1:
                raise self.fail(f"{where} makes {len(calls)} tool calls but 'parallel_tool_calls' is false",
                                "tool-format")
            self.turns.append(Turn("tool_call" + mark, json_lines(calls)))

    def _weight(self, where: str, message: dict, role: str) -> bool:
        """Whether the message is trained: False for weight 0; only 0 and 1 exist, and 1 only on the assistant."""
        for key in WEIGHT_KEYS:
            if key not in message:
                continue
            weight = message[key]
            if isinstance(weight, bool) or not isinstance(weight, (int, float)) or weight not in (0, 1):
                raise self.fail(f"{where} has {key} {weight!r}; a message is trained fully (1) or not at all (0)",
                                "chat-format")
            if weight == 1 and role not in ASSISTANT_SIDE:
                raise self.fail(f"{where} is a {role} message with {key} 1; only assistant messages carry the loss",
                                "chat-format")
            return weight == 1
        return True

    def _content(self, where: str, message: dict, role: str) -> tuple[str, list[dict]]:
        """(text, tool calls) of the message content: a string, or parts whose text parts are joined."""
        key = self.fmt.content_key
        value = message.get(key)
        if isinstance(value, str):
            return value, []
        if value is None and (role == "assistant" and self._has_calls(message) or role == "tool"):
            return "", []
        if not isinstance(value, list):
            raise self.fail(f"field '{key}' must be a string, got {type_name(value)}", "not-a-string")
        texts: list[str] = []
        calls: list[dict] = []
        for number, part in enumerate(value):
            part_where = f"{where}.{key}[{number}]"
            kind = part.get("type") if isinstance(part, dict) else None
            if kind == "text":
                text = part.get("text", part.get("value"))
                if not isinstance(text, str):
                    raise self.fail(f"{part_where} must hold its text as a string, got {type_name(text)}",
                                    "not-a-string")
                texts.append(text)
            elif kind in ("tool_call", "tool_calls") and role == "assistant":  # LLaMA-Factory's newer messages
                calls += self._calls_from_value(part_where, part.get("value"))
            elif kind in NON_TEXT_PARTS:
                raise self.fail(f"{part_where} is {kind} content; {TEXT_ONLY} (drop the {kind} parts or the "
                                "record)", "non-text-content")
            else:
                raise self.fail(f"{part_where} is not a text part ({{\"type\": \"text\", \"text\": ...}}); "
                                f"got type {kind!r}", "chat-format")
        return "".join(texts), calls

    @staticmethod
    def _has_calls(message: dict) -> bool:
        return bool(message.get("tool_calls") or message.get("function_call"))

    def _message_calls(self, where: str, message: dict) -> list[dict]:
        """The calls of OpenAI/TRL `tool_calls` and of OpenAI's older single `function_call`."""
        raw = message.get("tool_calls")
        if raw is not None and not isinstance(raw, list):
            raise self.fail(f"'tool_calls' of {where} must be an array, got {type_name(raw)}", "tool-format")
        raw = list(raw or []) + ([message["function_call"]] if message.get("function_call") is not None else [])
        return [self._call(where, call) for call in raw]

    def _calls_from_value(self, where: str, value: Any) -> list[dict]:
        """The calls in a ShareGPT function_call value: a JSON object or array of them (or the value itself)."""
        if isinstance(value, str):
            try:
                value = _loads(value)
            except ValueError as error:
                raise self.fail(f"{where}: the tool call is {error}", "tool-format") from None
        return [self._call(where, call) for call in (value if isinstance(value, list) else [value])]

    def _call(self, where: str, raw: Any) -> dict:
        """One call as {"name", "arguments"}, its arguments parsed and checked to be a JSON object."""
        inner = raw.get("function") if isinstance(raw, dict) and isinstance(raw.get("function"), dict) else raw
        name = tool_name(inner)
        if name is None:
            raise self.fail(f"{where} has a tool call with no name", "tool-format")
        arguments = inner.get("arguments", {})
        if isinstance(arguments, str):
            try:
                arguments = _loads(arguments) if arguments.strip() else {}
            except ValueError as error:
                raise self.fail(f"{where}: the arguments of tool call '{name}' are {error}", "tool-format") from None
        if not isinstance(arguments, dict):
            raise self.fail(f"{where}: the arguments of tool call '{name}' must be a JSON object, got "
                            f"{type_name(arguments)}", "tool-format")
        if self.tool_names and name not in self.tool_names:
            raise self.fail(f"{where} calls tool '{name}', which is not in the record's tools", "tool-format")
        if isinstance(raw, dict) and isinstance(raw.get("id"), str):
            self.open_call_ids.add(raw["id"])
        return {"name": name, "arguments": arguments}

    def _tool_result(self, where: str, message: dict, previous: str | None) -> None:
        if previous not in ("tool_call", "tool"):
            raise self.fail(f"{where} is a tool result with no tool call before it", "tool-format")
        call_id = message.get("tool_call_id")
        if isinstance(call_id, str) and self.open_call_ids and call_id not in self.open_call_ids:
            raise self.fail(f"{where} answers tool call '{call_id}', which the assistant did not make",
                            "tool-format")


def read_chat(index: int, obj: dict, fmt: ChatFormat, shape: str, messages: list | None = None,
              untrained: int = 0) -> Record:
    """A chat record from `obj[fmt.key]` (or `messages`); the first `untrained` messages get no loss."""
    messages = obj[fmt.key] if messages is None else messages
    if not isinstance(messages, list) or not messages:
        raise RecordError(index, f"'{fmt.key}' must be a non-empty array of messages", "chat-format", shape)
    try:
        tools = tools_of(obj.get("tools")) + tools_of(obj.get("functions"), "'functions'")
    except ValueError as error:
        raise RecordError(index, str(error), "tool-format", shape) from None
    reader = _ChatReader(index, fmt, shape, {tool_name(tool) for tool in tools},
                         parallel=obj.get("parallel_tool_calls") is not False)
    for position, message in enumerate(messages):
        reader.read(position, message, trained=position >= untrained)
    turns = reader.turns
    system = obj.get("system") if fmt.role_key == "from" else None  # ShareGPT's system column
    if system is not None and not isinstance(system, str):
        raise RecordError(index, f"field 'system' must be a string, got {type_name(system)}", "not-a-string", shape)
    if system and system.strip() and turns[0].role != "system":
        turns.insert(0, Turn("system", system))
    if tools:
        turns.insert(1 if turns[0].role == "system" else 0, Turn("tools", json_lines(tools)))
    check_turn_order(index, turns, shape)
    return Record(index=index, kind="chat", shape=shape, turns=tuple(turns))


# The turn that may follow each turn (tool results are checked where they are read).
_NEXT = {None: ("system", "user"), "system": ("user",), "user": ("assistant", "tool_call"),
         "assistant": ("user", "tool_call"), "tool_call": ("tool",),
         "tool": ("tool", "assistant", "tool_call", "user")}


def check_turn_order(index: int, turns: list[Turn], shape: str = "") -> None:
    """A RecordError unless the chat is: optional system (and tools), then user, assistant, ... turns."""
    roles = [turn.base_role for turn in turns if turn.base_role != "tools"]
    if not any(role in ASSISTANT_SIDE for role in roles):
        raise RecordError(index, "chat has no assistant turn", "chat-no-assistant", shape)
    if not any(turn.is_target for turn in turns):
        raise RecordError(index, "every assistant message has loss weight 0: there is nothing to learn",
                          "chat-no-assistant", shape)
    previous = None
    for role in roles:
        if role not in _NEXT[previous]:
            raise RecordError(index, f"chat roles do not alternate user/assistant: {roles}", "chat-roles", shape)
        previous = role
