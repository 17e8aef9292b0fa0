"""The base model's own chat template: records rendered through it with the loss on the assistant's tokens.

A tokenizer's `chat_template` is jinja. It renders through jinja2 alone, as transformers'
`apply_chat_template` does (same environment, filters and globals), so `generate` renders prompts
without importing transformers. Which characters are the assistant's comes from the template's
`{% generation %}` markers where it has them, else from the difference between the conversation
rendered up to an assistant turn's cue and up to that turn's end. The token that ends an assistant
turn (`<|im_end|>`, `<|eot_id|>`) becomes the tokenizer's eos, so it is learned as the stop and
`generate`, the ONNX export and the web page stop there.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Sequence

from .errors import InputError
from .records import Record, Turn, record_to_json
from .template import PromptTemplate, Segment

CHAT_KIND = "chat"
PLACEHOLDER = "MTNSAILSCONTENT"  # stands for the user's text when the prompt pattern is rendered
ANSWER_MARK = "MTNSAILSANSWER"  # an assistant answer, to find what the template writes after one
GENERATION_TAG = re.compile(r"{%-?\s*generation\s*-?%}")


def _tojson(value: Any, ensure_ascii: bool = False, indent: int | None = None, separators=None,
            sort_keys: bool = False) -> str:
    # transformers' tojson: jinja2's own escapes <, >, & and ' for HTML, which a prompt must not get.
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _raise_exception(message: str):
    from jinja2.exceptions import TemplateError

    raise TemplateError(message)


@functools.lru_cache(maxsize=8)
def compiled(source: str):
    """(template, generation tracker) for a chat template's jinja source, compiled once."""
    from jinja2 import nodes
    from jinja2.ext import Extension, loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class GenerationTracker(Extension):
        """`{% generation %}...{% endgeneration %}`: records the character span of what the block writes."""

        tags = {"generation"}
        spans: list[tuple[int, int]] | None = None
        rendered: list[str] = []

        def parse(self, parser):
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            return nodes.CallBlock(self.call_method("_track"), [], [], body).set_lineno(lineno)

        def _track(self, caller) -> str:
            text = caller()
            if GenerationTracker.spans is not None:
                start = sum(map(len, GenerationTracker.rendered))  # the output so far: chunks stream in order
                GenerationTracker.spans.append((start, start + len(text)))
            return text

    environment = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                                extensions=[GenerationTracker, loopcontrols])
    environment.filters["tojson"] = _tojson
    environment.globals["raise_exception"] = _raise_exception
    environment.globals["strftime_now"] = lambda format: datetime.now().strftime(format)
    return environment.from_string(source), GenerationTracker


def render_chat(source: str, messages: Sequence[dict], tools: Sequence[dict] | None = None,
                add_generation_prompt: bool = False, special_tokens: dict[str, str] | None = None,
                track: bool = False) -> tuple[str, list[tuple[int, int]]]:
    """(text, spans of the {% generation %} blocks) of `messages` rendered by the jinja `source`."""
    template, tracker = compiled(source)
    context = {"messages": list(messages), "tools": list(tools) if tools else None,
               "add_generation_prompt": add_generation_prompt, **(special_tokens or {})}
    chunks: list[str] = []
    tracker.spans, tracker.rendered = ([] if track else None), chunks
    try:
        for chunk in template.generate(**context):
            chunks.append(chunk)
        return "".join(chunks), list(tracker.spans or [])
    finally:
        tracker.spans, tracker.rendered = None, []


@functools.lru_cache(maxsize=8)
def accepts_tools(source: str) -> bool:
    """Whether the template reads a `tools` variable (else tools go into the system message)."""
    from jinja2 import meta

    template, _ = compiled(source)
    return "tools" in meta.find_undeclared_variables(template.environment.parse(source))


def conversation(record: Record) -> tuple[list[dict], list[dict], list[bool]]:
    """(OpenAI-format messages, tools, whether each message carries the loss) of a pair or chat record.

    Tool-call arguments become objects (templates write them with `tojson`), and an assistant's text
    followed by its tool calls is one message, as the OpenAI format has it.
    """
    if record.kind == "pair":
        record = dataclasses.replace(record, kind="chat", turns=(Turn("user", record.prompt),
                                                                 Turn("assistant", record.response)))
    data = record_to_json(record)
    messages: list[dict] = []
    targets: list[bool] = []
    for message in data["messages"]:
        trained = message.pop("weight", 1) != 0 and message["role"] == "assistant"
        for call in message.get("tool_calls", []):
            call["function"]["arguments"] = json.loads(call["function"]["arguments"])
        previous = messages[-1] if messages else None
        if (previous is not None and "tool_calls" in message and previous["role"] == "assistant"
                and "tool_calls" not in previous and targets[-1] == trained):
            previous["tool_calls"] = message["tool_calls"]
            continue
        messages.append(message)
        targets.append(trained)
    return messages, data.get("tools", []), targets


@dataclass(frozen=True)
class ChatTemplate(PromptTemplate):
    """The base tokenizer's chat template, with what rendering it needs; `user` holds the one-question
    prompt pattern (`{content}` for the question) for readers of prompt_template.json that render no jinja."""

    name: str = "chat-template"
    kind: str = CHAT_KIND
    source: str = ""  # the jinja template
    special_tokens: dict[str, str] = field(default_factory=dict)  # bos_token, eos_token... as the template reads them
    end_of_turn: str | None = None  # the token closing an assistant turn: the tokenizer's eos while training

    def _render(self, messages, tools, add_generation_prompt=False, track=False) -> tuple[str, list]:
        return render_chat(self.source, messages, tools, add_generation_prompt, self.special_tokens, track)

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
            text, spans = self.assistant_spans(messages, tools)
        except Exception as error:  # jinja's TemplateError, or a template indexing what a record lacks
            raise InputError(f"record {record.index}: the base model's chat template cannot render it "
                             f"({type(error).__name__}: {error}); train with --template plain") from None
        assistant = [target for message, target in zip(messages, targets) if message["role"] == "assistant"]
        shift = len(self.with_bos(text)) - len(text)  # a BOS the tokenizer adds and the template does not write
        spans = [(start + shift, end + shift) for start, end in spans]
        return split_segments(self.with_bos(text), spans, assistant, self.end_of_turn)

    def assistant_spans(self, messages: list[dict], tools) -> tuple[str, list[tuple[int, int]]]:
        """The rendered conversation and the character span of each assistant message in it."""
        count = sum(message["role"] == "assistant" for message in messages)
        if GENERATION_TAG.search(self.source):
            text, spans = self._render(messages, tools, track=True)
            if len(spans) == count:
                return text, spans
        text, _ = self._render(messages, tools)
        spans = []
        for position, message in enumerate(messages):
            if message["role"] != "assistant":
                continue
            before, _ = self._render(messages[:position], tools, add_generation_prompt=True)
            through, _ = self._render(messages[:position + 1], tools)
            if not (through.startswith(before) and text.startswith(through)):
                raise ValueError("the conversation does not render turn by turn (each turn's text must "
                                 "extend the one before)")
            spans.append((len(before), len(through)))
        return text, spans

    def prompt(self, user_text: str, system: str | None = None, tools: Sequence[dict[str, Any]] | None = None) -> str:
        """The chat template's rendering of one user message (and system, tools), ready for the answer."""
        messages = [{"role": "system", "content": system}] if system else []
        messages.append({"role": "user", "content": user_text})
        messages, tools = self._with_tools(messages, tools or [])
        try:
            return self.with_bos(self._render(messages, tools, add_generation_prompt=True)[0])
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


def find_end_of_turn(source: str, special_tokens: dict[str, str], candidates: Sequence[str]) -> str | None:
    """The special token the template writes right after an assistant answer (`<|im_end|>`), if any."""
    messages = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": ANSWER_MARK}]
    text, _ = render_chat(source, messages, special_tokens=special_tokens)
    after = text[text.find(ANSWER_MARK) + len(ANSWER_MARK):] if ANSWER_MARK in text else ""
    found = [(after.find(token), token) for token in candidates if token and token in after]
    return min(found)[1] if found else None


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
