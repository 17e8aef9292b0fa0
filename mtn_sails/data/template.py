"""The product's prompt template: renders records for training and prompts for generation, stored with the model.

A base whose tokenizer has a chat template is trained through that instead (`ChatTemplate`, rendered by
chat_template.py): the loss on exactly the assistant's tokens, and the token that ends an assistant turn
(`<|im_end|>`, `<|eot_id|>`) made the tokenizer's eos, so it is learned as the stop and `generate`, the
ONNX export and the web page stop there. `PromptTemplate.load` gives whichever the model was trained with.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

from .chat_template import accepts_tools, assistant_spans, conversation, find_end_of_turn, render_chat
from ..errors import InputError
from .records import Record, Turn, json_lines

TEMPLATE_FILE = "prompt_template.json"
CHAT_KIND = "chat"
PLACEHOLDER = "MTNSAILSCONTENT"  # stands for the user's text when the prompt pattern is rendered


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
            if fields.get("kind") == CHAT_KIND:
                return ChatTemplate(**fields)
            return cls(**fields)
        except (OSError, ValueError, TypeError, AttributeError):
            raise InputError(f"{path}: unreadable prompt template; restore it or delete it to use the "
                             "default template") from None


@dataclass(frozen=True)
class ChatTemplate(PromptTemplate):
    """The base tokenizer's chat template, with what rendering it needs; `user` holds the one-question
    prompt pattern (`{content}` for the question) for readers of prompt_template.json that render no jinja."""

    name: str = "chat-template"
    kind: str = CHAT_KIND
    source: str = ""  # the jinja template
    special_tokens: dict[str, str] = field(default_factory=dict)  # bos_token, eos_token... as the template reads them
    end_of_turn: str | None = None  # the token closing an assistant turn: the tokenizer's eos while training

    def _with_tools(self, messages: list[dict], tools: Sequence[dict]) -> tuple[list[dict], list[dict] | None]:
        """Tools passed to a template that takes them, else written into the system message."""
        if not tools or accepts_tools(self.source):
            return messages, list(tools) or None
        listed = "Tools:\n" + "\n".join(json.dumps(tool, ensure_ascii=False) for tool in tools)
        if messages and messages[0]["role"] == "system":
            return [{"role": "system", "content": messages[0]["content"] + "\n\n" + listed}] + messages[1:], None
        return [{"role": "system", "content": listed}] + messages, None

    def render(self, record: Record) -> list[Segment]:
        """The record through the chat template: assistant turns as targets, each ended by eos."""
        if record.kind == "text":
            return [Segment(self.with_bos(record.text), is_target=True, ends_turn=True)]
        messages, tools, targets = conversation(record)
        messages, tools = self._with_tools(messages, tools)
        targets = [False] * (len(messages) - len(targets)) + targets  # a system message added for the tools
        try:
            text, spans = assistant_spans(self.source, messages, tools, self.special_tokens)
        except Exception as error:  # jinja's TemplateError, or a template indexing what a record lacks
            raise InputError(f"record {record.index}: the base model's chat template cannot render it "
                             f"({type(error).__name__}: {error}); train with --template plain") from None
        assistant = [target for message, target in zip(messages, targets) if message["role"] == "assistant"]
        shift = len(self.with_bos(text)) - len(text)  # a BOS the tokenizer adds and the template does not write
        spans = [(start + shift, end + shift) for start, end in spans]
        return split_segments(self.with_bos(text), spans, assistant, self.end_of_turn)

    def prompt(self, user_text: str, system: str | None = None, tools: Sequence[dict[str, Any]] | None = None) -> str:
        """The chat template's rendering of one user message (and system, tools), ready for the answer."""
        messages = [{"role": "system", "content": system}] if system else []
        messages.append({"role": "user", "content": user_text})
        messages, tools = self._with_tools(messages, tools or [])
        try:
            return self.with_bos(render_chat(self.source, messages, tools, True, self.special_tokens)[0])
        except Exception as error:
            raise InputError(f"the model's chat template cannot render this prompt ({type(error).__name__}: "
                             f"{error})") from None


def split_segments(text: str, spans: Sequence[tuple[int, int]], trained: Sequence[bool],
                   end_of_turn: str | None) -> list[Segment]:
    """Segments of a rendered conversation: each trained span a target ending its turn; the rest context.

    A trained span's `end_of_turn` token (inside it or right after it) is cut from the text, since the
    eos appended to the target is that token; what follows it goes to the next context segment. Text
    after the last assistant turn is dropped: there is nothing to learn in it.
    """
    segments: list[Segment] = []
    position = 0
    for (start, end), is_target in zip(spans, trained):
        if not is_target:
            continue
        stop = end
        if end_of_turn:
            found = text.rfind(end_of_turn, start, end + len(end_of_turn))
            if found >= 0:
                end, stop = found, found + len(end_of_turn)
        if text[position:start]:
            segments.append(Segment(text[position:start], is_target=False))
        segments.append(Segment(text[start:end], is_target=True, ends_turn=True))
        position = stop
    if not any(segment.is_target for segment in segments):  # nothing learned here: the whole text is context
        return [Segment(text, is_target=False)]
    return segments


def prompt_pattern(template: ChatTemplate) -> str:
    """The one-question prompt as a `{content}` pattern (braces doubled, as str.format reads them)."""
    text = template.prompt(PLACEHOLDER)
    if PLACEHOLDER not in text:
        return "{content}"
    return text.replace("{", "{{").replace("}", "}}").replace(PLACEHOLDER, "{content}")


def bos_text(tokenizer) -> str:
    """The BOS token's text when the tokenizer prepends it to what it encodes (Llama), else ""."""
    bos_id = tokenizer.bos_token_id
    if bos_id is None:
        return ""
    encoded = tokenizer("a")["input_ids"]
    plain = tokenizer("a", add_special_tokens=False)["input_ids"]
    return tokenizer.bos_token if encoded[:1] == [bos_id] and plain[:1] != [bos_id] else ""


def chat_template_of(tokenizer) -> ChatTemplate:
    """The tokenizer's chat template with the special tokens it reads and the token ending an assistant turn."""
    source = tokenizer.chat_template
    if isinstance(source, dict):  # several named templates: the default one renders conversations
        source = source.get("default") or next(iter(source.values()))
    special = {name: value for name, value in tokenizer.special_tokens_map.items() if isinstance(value, str)}
    candidates = set(tokenizer.all_special_tokens)
    candidates |= {token.content for token in tokenizer.added_tokens_decoder.values() if token.special}
    template = ChatTemplate(source=source, special_tokens=special, bos=bos_text(tokenizer), system="",
                            end_of_turn=find_end_of_turn(source, special, sorted(candidates)))
    return dataclasses.replace(template, user=prompt_pattern(template))


def has_chat_template(directory: str | Path) -> bool:
    """True when the tokenizer saved in `directory` carries a chat template (its own file or its config)."""
    directory = Path(directory)
    if (directory / "chat_template.jinja").is_file() or (directory / "chat_template.json").is_file():
        return True
    try:
        return "chat_template" in json.loads((directory / "tokenizer_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError, TypeError):
        return False


def template_beside(directory: str | Path) -> PromptTemplate:
    """The template to prompt a model directory with: the one stored with it, else (a model no session trained)
    its tokenizer's chat template, as --template auto would train it, else the product's."""
    directory = Path(directory)
    if (directory / TEMPLATE_FILE).is_file() or not has_chat_template(directory):
        return PromptTemplate.load(directory)
    from transformers import AutoTokenizer

    return chat_template_of(AutoTokenizer.from_pretrained(directory, local_files_only=True))


def settle_template(requested: str, stored: PromptTemplate | None, tokenizer) -> tuple[PromptTemplate, list[str]]:
    """(template, messages) for --template `requested` given a continued model's stored one (or None).

    auto keeps the stored template, else takes the tokenizer's chat template when it has one; chat and
    plain override a stored template of the other kind, and say so.
    """
    has_chat = bool(getattr(tokenizer, "chat_template", None))
    if requested == "auto" and stored is not None:
        return stored, []
    kind = ("chat" if has_chat else "plain") if requested == "auto" else requested
    if stored is not None and stored.kind == kind:
        return stored, []
    if kind == "chat" and not has_chat:
        raise InputError("--template chat: the base model's tokenizer has no chat template; "
                         "use --template plain (or auto)")
    template = chat_template_of(tokenizer) if kind == "chat" else PromptTemplate(bos=bos_text(tokenizer))
    notes = []
    if stored is not None:
        notes.append(f"⚠️  --template {kind} replaces the model's stored {stored.kind} template; this session "
                     "and later ones, generate and the ONNX export use the new one")
    if kind == "chat":
        notes.append("💬 Rendering records with the base model's chat template (loss on the assistant's tokens; "
                     "--template plain for the product template)")
    return template, notes


def align_eos(model, tokenizer, template: PromptTemplate) -> list[str]:
    """Make a chat template's end-of-turn token the tokenizer's and the model's eos; returns what was said."""
    end = getattr(template, "end_of_turn", None)
    if template.kind != CHAT_KIND or not end or tokenizer.eos_token == end:
        return []
    previous = tokenizer.eos_token
    tokenizer.eos_token = end
    model.config.eos_token_id = tokenizer.eos_token_id
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.eos_token_id = tokenizer.eos_token_id
    return [f"💬 Assistant turns end with {end}: it replaces {previous} as the eos, where answers stop"]
