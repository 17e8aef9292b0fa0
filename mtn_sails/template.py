"""The product's prompt template: renders records for training and prompts for generation, stored with the model.

A base whose tokenizer has a chat template is trained through that instead (chat_template.py, a subclass
stored in the same file); `PromptTemplate.load` gives whichever the model was trained with.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

from .errors import InputError
from .records import Record, Turn, json_lines

TEMPLATE_FILE = "prompt_template.json"


@dataclass(frozen=True)
class Segment:
    """A piece of rendered text; `is_target` pieces carry the loss, `ends_turn` ones are followed by eos."""

    text: str
    is_target: bool
    ends_turn: bool = False


@dataclass(frozen=True)
class PromptTemplate:
    """How prompts, responses and chat turns become one training string."""

    name: str = "mtn-sails-v1"
    system: str = "### System:\n{content}\n\n"
    user: str = "### Instruction:\n{content}\n\n### Response:\n"
    # Between an assistant's eos and the next user turn (or tool result).
    turn_separator: str = "\n\n"
    # Tool calling (issue 17): the tools offered, in the system part; each call the assistant makes (with
    # the loss); a tool's result (context), then the cue for the assistant to go on.
    tools: str = "### Tools:\n{content}\n\n"
    tool_call: str = "<tool_call>\n{content}\n</tool_call>"
    tool_result: str = "### Tool result:\n{content}\n\n"
    response_cue: str = "### Response:\n"
    kind: str = "plain"  # "plain": this template; "chat": the base's own (chat_template.ChatTemplate)
    # The BOS token's text when the tokenizer adds one (Llama), written once at the start of each example
    # and prompt so that every path that tokenises without special tokens sees it; "" for GPT-2.
    bos: str = ""

    def render(self, record: Record) -> list[Segment]:
        """The record as segments: the prompt side without loss, responses (and plain text) with it."""
        if record.kind == "text":
            return [Segment(self.with_bos(record.text), is_target=True, ends_turn=True)]
        if record.kind == "pair":
            turns = (Turn("user", record.prompt), Turn("assistant", record.response))
        else:
            turns = record.turns
        segments: list[Segment] = []
        for position, turn in enumerate(turns):
            following = turns[position + 1].base_role if position + 1 < len(turns) else None
            segments.append(self._segment(turn, following, bool(segments) and segments[-1].ends_turn))
        segments[0] = Segment(self.with_bos(segments[0].text), segments[0].is_target, segments[0].ends_turn)
        return segments

    def with_bos(self, text: str) -> str:
        """`text` starting with the BOS text exactly once (when the tokenizer adds a BOS; else as it is)."""
        return text if not self.bos or text.startswith(self.bos) else self.bos + text

    def _segment(self, turn: Turn, following: str | None, after_turn_end: bool) -> Segment:
        """One turn's segment; `following` is the next turn's role, `after_turn_end` whether an eos precedes it."""
        role = turn.base_role
        separator = self.turn_separator if after_turn_end else ""
        if role == "system":
            return Segment(self.system.format(content=turn.content), is_target=False)
        if role == "tools":
            return Segment(self.tools.format(content=turn.content), is_target=False)
        if role == "user":
            return Segment(separator + self.user.format(content=turn.content), is_target=False)
        if role == "tool":
            cue = self.response_cue if following in ("assistant", "tool_call") else ""
            return Segment(separator + self.tool_result.format(content=turn.content) + cue, is_target=False)
        if role == "tool_call":
            calls = "\n".join(self.tool_call.format(content=call) for call in turn.content.splitlines())
            return Segment(calls, is_target=turn.is_target, ends_turn=True)
        if following == "tool_call":  # the text of a message that goes on with tool calls: one turn, one eos
            return Segment(turn.content + "\n", is_target=turn.is_target)
        return Segment(turn.content, is_target=turn.is_target, ends_turn=True)

    def prompt(self, user_text: str, system: str | None = None, tools: Sequence[dict[str, Any]] | None = None) -> str:
        """The text to feed the model so that it answers `user_text` as it was trained to (with `tools` offered)."""
        head = self.system.format(content=system) if system else ""
        head += self.tools.format(content=json_lines(list(tools))) if tools else ""
        return self.with_bos(head + self.user.format(content=user_text))

    def save(self, directory: str | Path) -> Path:
        """Write the template beside a model; returns the file."""
        path = Path(directory) / TEMPLATE_FILE
        path.write_text(json.dumps(asdict(self), indent=2) + "\n", encoding="utf-8")
        return path

    @classmethod
    def load(cls, directory: str | Path) -> "PromptTemplate":
        """The template stored beside a model (a ChatTemplate for a chat-template model), or the default one."""
        path = Path(directory) / TEMPLATE_FILE
        if not path.is_file():
            return cls()
        try:
            fields = json.loads(path.read_text(encoding="utf-8"))
            if fields.get("kind") == "chat":
                from .chat_template import ChatTemplate

                return ChatTemplate(**fields)
            return cls(**fields)
        except (OSError, ValueError, TypeError, AttributeError):
            raise InputError(f"{path}: unreadable prompt template; restore it or delete it to use the "
                             "default template") from None
