"""A tokenizer's chat template (jinja) rendered as transformers' `apply_chat_template` renders it.

jinja2 alone (the same sandboxed environment, filters and globals), so `generate` renders prompts
without importing transformers. Which characters are the assistant's comes from the template's
`{% generation %}` markers where it has them, else from the difference between the conversation
rendered up to an assistant turn's cue and up to that turn's end. template.ChatTemplate is the stored
template built on these functions.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import re
from datetime import datetime
from typing import Any, Sequence

from .records import Record, Turn, record_to_json

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


def assistant_spans(source: str, messages: list[dict], tools: Sequence[dict] | None,
                    special_tokens: dict[str, str]) -> tuple[str, list[tuple[int, int]]]:
    """The rendered conversation and the character span of each assistant message in it: the template's
    {% generation %} blocks where it has one per assistant message, else by prefix difference."""
    def render(part, add_generation_prompt=False, track=False):
        return render_chat(source, part, tools, add_generation_prompt, special_tokens, track)

    count = sum(message["role"] == "assistant" for message in messages)
    if GENERATION_TAG.search(source):
        text, spans = render(messages, track=True)
        if len(spans) == count:
            return text, spans
    text, _ = render(messages)
    spans = []
    for position, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        before, _ = render(messages[:position], add_generation_prompt=True)
        through, _ = render(messages[:position + 1])
        if not (through.startswith(before) and text.startswith(through)):
            raise ValueError("the conversation does not render turn by turn (each turn's text must "
                             "extend the one before)")
        spans.append((len(before), len(through)))
    return text, spans


def find_end_of_turn(source: str, special_tokens: dict[str, str], candidates: Sequence[str]) -> str | None:
    """The special token the template writes right after an assistant answer (`<|im_end|>`), if any."""
    messages = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": ANSWER_MARK}]
    text, _ = render_chat(source, messages, special_tokens=special_tokens)
    after = text[text.find(ANSWER_MARK) + len(ANSWER_MARK):] if ANSWER_MARK in text else ""
    found = [(after.find(token), token) for token in candidates if token and token in after]
    return min(found)[1] if found else None
