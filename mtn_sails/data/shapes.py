"""Which shape a raw record has and the `Record` it becomes: text, pairs, Alpaca, chats, preference data.

Shapes are recognised by their keys, in the order of `normalise`; docs/DATA_FORMATS.md shows each one
rendered. Preference data (chosen/rejected, KTO labels) is recognised by name and refused, since this
product trains supervised data, unless the user asks to train its chosen side (`--preference-as chosen`).
"""
from __future__ import annotations

from dataclasses import replace
from typing import Any

from ..config import PREFERENCE_SIDES
from .chats import CONVERSATIONS, MEDIA_KEYS, MESSAGES, TEXT_ONLY, check_turn_order, read_chat
from .records import Record, RecordError, SkippedRecord, Turn, type_name

# Pair shapes in the order they are recognised: (shape name, prompt key, response key).
PAIR_SHAPES = (
    ("prompt/completion", "prompt", "completion"),
    ("question/answer", "question", "answer"),
    ("input/output", "input", "output"),
)
CONVERSATIONAL_PAIR = "conversational prompt/completion"  # TRL: prompt and completion as message lists
SHAPE_HELP = ("a string, {text}, prompt/completion, question/answer, input/output, "
              "instruction/input/output (Alpaca), messages (role/content) or conversations (from/value)")
_PREFERENCE = {
    "preference": "preference data (chosen/rejected, for DPO or ORPO); this product trains supervised data: "
                  "pass --preference-as chosen to train on the chosen responses",
    "kto": "unpaired preference data (KTO: a completion labelled true or false); this product trains "
           "supervised data: pass --preference-as chosen to train on the completions labelled true",
}


def text_field(index: int, obj: dict, key: str, optional: bool = False, shape: str = "") -> str:
    """obj[key] as a non-empty string ("" for a missing optional one), or a RecordError naming the field."""
    value = obj.get(key)
    if value is None and optional:
        return ""
    if not isinstance(value, str):
        raise RecordError(index, f"field '{key}' must be a string, got {type_name(value)}", "not-a-string", shape)
    if not value.strip() and not optional:
        raise RecordError(index, f"field '{key}' is empty", "empty-field", shape)
    return value


def preference_kind(obj: dict) -> str | None:
    """"preference" (chosen/rejected), "kto" (a completion with a true/false label) or None."""
    if "chosen" in obj and "rejected" in obj:
        return "preference"
    if "kto_tag" in obj or (isinstance(obj.get("label"), bool) and "completion" in obj):
        return "kto"
    return None


def normalise(index: int, obj: Any, preference_as: str | None = None) -> Record | SkippedRecord:
    """One raw record as a `Record` (or skipped), or a RecordError naming its index and keys."""
    if isinstance(obj, str):
        if not obj.strip():
            raise RecordError(index, "text is empty", "empty-field")
        return Record(index=index, kind="text", shape="text", text=obj)
    if not isinstance(obj, dict):
        raise RecordError(index, f"expected an object or a string, got {type_name(obj)}", "unknown-shape")
    for key in MEDIA_KEYS:
        if obj.get(key):
            raise RecordError(index, f"the record has {key}; {TEXT_ONLY} (drop the '{key}' field, or the record "
                                     "when its text needs them)", "non-text-content")
    kind = preference_kind(obj)
    if kind is None:
        return _supervised(index, obj)
    if preference_as is None:
        raise RecordError(index, _PREFERENCE[kind], "preference-data", kind)
    if preference_as not in PREFERENCE_SIDES:
        raise ValueError(f"preference_as must be one of {PREFERENCE_SIDES}, got {preference_as!r}")
    return _kto_side(index, obj) if kind == "kto" else _chosen_side(index, obj)


def _supervised(index: int, obj: dict) -> Record:
    if "messages" in obj:
        return read_chat(index, obj, MESSAGES, "messages")
    if "conversations" in obj:
        return read_chat(index, obj, CONVERSATIONS, "conversations")
    if "instruction" in obj and "output" in obj:
        return _alpaca(index, obj)
    if "prompt" in obj and "completion" in obj and (isinstance(obj["prompt"], list)
                                                    or isinstance(obj["completion"], list)):
        return _conversational_pair(index, obj)
    for shape, prompt_key, response_key in PAIR_SHAPES:
        if prompt_key in obj and response_key in obj:
            return Record(index=index, kind="pair", shape=shape,
                          prompt=text_field(index, obj, prompt_key, shape=shape),
                          response=text_field(index, obj, response_key, shape=shape))
    if "text" in obj:
        return Record(index=index, kind="text", shape="text", text=text_field(index, obj, "text", shape="text"))
    keys = sorted(obj)[:8]
    raise RecordError(index, f"unknown record shape with keys {keys}; expected {SHAPE_HELP}", "unknown-shape")


def _alpaca_prompt(index: int, obj: dict, shape: str) -> str:
    instruction = text_field(index, obj, "instruction", shape=shape)
    extra = text_field(index, obj, "input", optional=True, shape=shape)
    return f"{instruction}\n\n{extra}" if extra.strip() else instruction


def _alpaca(index: int, obj: dict) -> Record:
    """Alpaca: a pair, or a chat when it has a `system` prompt or `history` ([instruction, response] pairs)."""
    prompt = _alpaca_prompt(index, obj, "alpaca")
    response = text_field(index, obj, "output", shape="alpaca")
    system = text_field(index, obj, "system", optional=True, shape="alpaca")
    history = _history(index, obj.get("history"))
    if not system.strip() and not history:
        return Record(index=index, kind="pair", shape="alpaca", prompt=prompt, response=response)
    turns = ([Turn("system", system)] if system.strip() else []) + history
    turns += [Turn("user", prompt), Turn("assistant", response)]
    check_turn_order(index, turns, "alpaca")
    return Record(index=index, kind="chat", shape="alpaca", turns=tuple(turns))


def _history(index: int, history: Any) -> list[Turn]:
    """The turns of Alpaca's `history`: earlier [instruction, response] pairs, each response learned too."""
    if history is None:
        return []
    if not isinstance(history, list):
        raise RecordError(index, f"field 'history' must be an array of [instruction, response] pairs, got "
                                 f"{type_name(history)}", "chat-format", "alpaca")
    turns = []
    for number, pair in enumerate(history):
        if not (isinstance(pair, list) and len(pair) == 2 and all(isinstance(text, str) for text in pair)):
            raise RecordError(index, f"history[{number}] must be an [instruction, response] pair of strings",
                              "chat-format", "alpaca")
        if not all(text.strip() for text in pair):
            raise RecordError(index, f"history[{number}] has an empty instruction or response", "empty-field",
                              "alpaca")
        turns += [Turn("user", pair[0]), Turn("assistant", pair[1])]
    return turns


def _conversational_pair(index: int, obj: dict) -> Record:
    """TRL's conversational prompt/completion: the loss on the completion's messages only."""
    prompt, completion = obj["prompt"], obj["completion"]
    if not (isinstance(prompt, list) and isinstance(completion, list)):
        raise RecordError(index, "a conversational prompt/completion needs both 'prompt' and 'completion' as "
                                 "arrays of messages", "chat-format", CONVERSATIONAL_PAIR)
    return read_chat(index, obj, replace(MESSAGES, key="prompt+completion"), CONVERSATIONAL_PAIR,
                     messages=prompt + completion, untrained=len(prompt))


def _chosen_side(index: int, obj: dict) -> Record:
    """A preference record as the supervised example of its chosen side (the rejected one is dropped)."""
    chosen = obj["chosen"]
    if "conversations" in obj:  # LLaMA-Factory ShareGPT: the chat so far, then one chosen message
        conversations = obj["conversations"]
        messages = conversations + [chosen] if isinstance(conversations, list) else conversations
        return read_chat(index, obj, replace(CONVERSATIONS, key="conversations+chosen"), "preference",
                         messages=messages)
    if "instruction" in obj:  # LLaMA-Factory Alpaca
        return Record(index=index, kind="pair", shape="preference", prompt=_alpaca_prompt(index, obj, "preference"),
                      response=text_field(index, obj, "chosen", shape="preference"))
    prompt = obj.get("prompt")
    if isinstance(prompt, list) or isinstance(chosen, list):  # TRL conversational
        if "prompt" not in obj:
            return read_chat(index, obj, replace(MESSAGES, key="chosen"), "preference", messages=chosen)
        if not (isinstance(prompt, list) and isinstance(chosen, list)):
            raise RecordError(index, "a conversational preference record needs 'prompt' and 'chosen' as arrays of "
                                     "messages", "chat-format", "preference")
        return read_chat(index, obj, replace(MESSAGES, key="prompt+chosen"), "preference",
                         messages=prompt + chosen, untrained=len(prompt))
    if "prompt" not in obj:  # TRL's implicit prompt: the chosen text holds prompt and answer together
        return Record(index=index, kind="text", shape="preference",
                      text=text_field(index, obj, "chosen", shape="preference"))
    return Record(index=index, kind="pair", shape="preference",
                  prompt=text_field(index, obj, "prompt", shape="preference"),
                  response=text_field(index, obj, "chosen", shape="preference"))


def _kto_side(index: int, obj: dict) -> Record | SkippedRecord:
    """A KTO record labelled true as its supervised example; labelled false, skipped."""
    key = "kto_tag" if "kto_tag" in obj else "label"
    label = obj[key]
    if not isinstance(label, bool):
        raise RecordError(index, f"field '{key}' must be true or false, got {type_name(label)}", "unknown-shape",
                          "kto")
    if not label:
        return SkippedRecord(index, f"{key} false")
    record = _supervised(index, {k: v for k, v in obj.items() if k not in ("kto_tag", "label")})
    return replace(record, shape="kto")
