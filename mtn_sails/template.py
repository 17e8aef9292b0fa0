"""The one prompt template: renders records for training and prompts for generation, stored with the model."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from .data import Record, Turn
from .errors import InputError

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
    # Between an assistant's eos and the next user turn.
    turn_separator: str = "\n\n"

    def render(self, record: Record) -> list[Segment]:
        """The record as segments: the prompt side without loss, responses (and plain text) with it."""
        if record.kind == "text":
            return [Segment(record.text, is_target=True, ends_turn=True)]
        if record.kind == "pair":
            turns = (Turn("user", record.prompt), Turn("assistant", record.response))
        else:
            turns = record.turns
        segments: list[Segment] = []
        for turn in turns:
            if turn.role == "system":
                segments.append(Segment(self.system.format(content=turn.content), is_target=False))
            elif turn.role == "user":
                prefix = self.turn_separator if segments and segments[-1].ends_turn else ""
                segments.append(Segment(prefix + self.user.format(content=turn.content), is_target=False))
            else:
                segments.append(Segment(turn.content, is_target=True, ends_turn=True))
        return segments

    def prompt(self, user_text: str, system: str | None = None) -> str:
        """The text to feed the model so that it answers `user_text` as it was trained to."""
        head = self.system.format(content=system) if system else ""
        return head + self.user.format(content=user_text)

    def save(self, directory: str | Path) -> Path:
        """Write the template beside a model; returns the file."""
        path = Path(directory) / TEMPLATE_FILE
        path.write_text(json.dumps(asdict(self), indent=2) + "\n", encoding="utf-8")
        return path

    @classmethod
    def load(cls, directory: str | Path) -> "PromptTemplate":
        """The template stored beside a model, or the default one when none was stored."""
        path = Path(directory) / TEMPLATE_FILE
        if not path.is_file():
            return cls()
        try:
            return cls(**json.loads(path.read_text(encoding="utf-8")))
        except (OSError, ValueError, TypeError):
            raise InputError(f"{path}: unreadable prompt template; restore it or delete it to use the "
                             "default template") from None
