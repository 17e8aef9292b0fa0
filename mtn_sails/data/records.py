"""The one record type every data shape becomes (`Record`, its `Turn`s), and the errors that name a record."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from ..errors import ValidationFailed

# Turn roles. Assistant-side roles carry the loss; "tools" (the tools offered), "tool" (a tool's result),
# "system" and "user" are context the model reads but does not learn to write.
ROLES = ("system", "tools", "user", "assistant", "tool_call", "tool")
ASSISTANT_SIDE = ("assistant", "tool_call")
# An assistant-side role ending in NO_LOSS is a message given loss weight 0 (OpenAI `weight`, LLaMA-Factory
# `loss_weight`): seen, not learned. Kept in the role string so a turn stays a (role, text) pair, the shape
# stored in the Arrow rows and replay slices.
NO_LOSS = ":0"
# Shapes whose records are pairs or chats (Alpaca with or without history): their pairs are stored as
# two-message chats, so that a stored slice of one file still holds one shape.
SHAPES_OF_BOTH_KINDS = ("alpaca", "preference", "kto")


@dataclass(frozen=True)
class Turn:
    """One message of a chat; an assistant message holding text and tool calls is two turns."""

    role: str  # one of ROLES, assistant-side ones optionally + NO_LOSS
    content: str  # "tools" and "tool_call": one JSON object per line (a tool definition, {"name", "arguments"})

    @property
    def base_role(self) -> str:
        """The role without the no-loss mark."""
        return self.role.removesuffix(NO_LOSS)

    @property
    def is_target(self) -> bool:
        """True when the model learns to write this turn (an assistant-side turn of weight 1)."""
        return self.role in ASSISTANT_SIDE


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


@dataclass(frozen=True)
class SkippedRecord:
    """A record left out on purpose: a KTO record labelled false when training the chosen side."""

    index: int
    reason: str


class RecordError(ValidationFailed):
    """A record whose shape or fields cannot be used; names the record."""

    def __init__(self, index: int, message: str, code: str, shape: str = "") -> None:
        self.index = index
        self.reason = message
        self.code = code  # the quality check it fails (quality_checks.CHECKS)
        self.shape = shape  # the shape it was recognised as, when it was
        super().__init__(f"record {index}: {message}")


def type_name(value: Any) -> str:
    """How a JSON value's type reads in a message: 'null', 'a number', 'an array'..."""
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


def json_lines(values: list[Any]) -> str:
    """One compact JSON value per line (the text of "tools" and "tool_call" turns)."""
    return "\n".join(json.dumps(value, ensure_ascii=False) for value in values)


def record_to_json(record: Record) -> dict[str, Any]:
    """The record in a shape `normalise` reads back to the same training example (OpenAI chat format for chats)."""
    if record.kind == "text":
        return {"text": record.text}
    if record.kind == "pair" and record.shape not in SHAPES_OF_BOTH_KINDS:
        return {"prompt": record.prompt, "completion": record.response}
    if record.kind == "pair":
        return {"messages": [{"role": "user", "content": record.prompt},
                             {"role": "assistant", "content": record.response}]}
    messages: list[dict[str, Any]] = []
    tools: list[Any] = []
    for turn in record.turns:
        role = turn.base_role
        if role == "tools":
            tools += [json.loads(line) for line in turn.content.splitlines()]
            continue
        if role == "tool_call":
            calls = [json.loads(line) for line in turn.content.splitlines()]
            message: dict[str, Any] = {"role": "assistant", "tool_calls": [
                {"type": "function", "function": {"name": call["name"],
                                                  "arguments": json.dumps(call["arguments"], ensure_ascii=False)}}
                for call in calls]}
        else:
            message = {"role": role, "content": turn.content}
        if turn.role.endswith(NO_LOSS):
            message["weight"] = 0
        messages.append(message)
    return {"messages": messages, "tools": tools} if tools else {"messages": messages}
