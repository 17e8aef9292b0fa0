"""The base model's chat template: rendered exactly as transformers renders it, the loss on exactly the
assistant's tokens (generation markers, else prefix difference), tools passed through, the choice stored."""
from __future__ import annotations

import functools
import json

import pytest
from model_families import (CHATML_GENERATION_TEMPLATE, FAMILIES, LLAMA3_CHAT_TEMPLATE, QWEN2_CHAT_TEMPLATE, corpus,
                            train_tokenizer)
from test_shapes import SHAPES, WEATHER_TOOL

from mtn_sails.data.chat_template import conversation, render_chat
from mtn_sails.data.files import Record, Turn
from mtn_sails.errors import InputError
from mtn_sails.data.template import PromptTemplate, align_eos, chat_template_of, settle_template
from mtn_sails.training.scoring import IGNORE_INDEX
from mtn_sails.training.tokenizing import tokenize_records

TEMPLATES = {"qwen2": ("qwen2", QWEN2_CHAT_TEMPLATE), "llama3": ("llama", LLAMA3_CHAT_TEMPLATE),
             "chatml-generation": ("qwen2", CHATML_GENERATION_TEMPLATE)}
CHAT = [{"role": "user", "content": "What is SQL?"}, {"role": "assistant", "content": "A query language."},
        {"role": "user", "content": "And HTTP?"}, {"role": "assistant", "content": "The web's protocol."}]
CHAT_RECORD = Record(0, "chat", "messages", turns=tuple(Turn(m["role"], m["content"]) for m in CHAT))


@functools.cache
def tokenizer(name: str):
    """A fresh tokenizer of the template's family with that chat template (callers must not change it)."""
    family, template = TEMPLATES[name]
    return train_tokenizer(FAMILIES[family], corpus(), chat_template=template)


def learned(record: Record, name: str) -> tuple[str, dict]:
    """(the text of the tokens that carry the loss, the example) for `record` through template `name`."""
    tok = tokenizer(name)
    template = chat_template_of(tok)
    align_eos(_Model(), tok, template)
    example = tokenize_records([record], tok, template, 4096)[0]
    learned_ids = [i for i, label in zip(example["input_ids"], example["labels"]) if label != IGNORE_INDEX]
    return tok.decode(learned_ids), example


class _Model:
    """Stands in for a model's config when only the tokenizer matters."""

    class config:  # noqa: N801
        eos_token_id = None

    generation_config = None


@pytest.mark.parametrize("name", TEMPLATES)
@pytest.mark.parametrize("messages, tools", [
    (CHAT, None), (CHAT[:1], None), ([{"role": "system", "content": "Be brief."}] + CHAT, None),
    (conversation(SHAPES["openai parallel tool calls"][1])[0], [WEATHER_TOOL]),
])
def test_renders_exactly_as_transformers_apply_chat_template(name, messages, tools):
    tok = tokenizer(name)
    template = chat_template_of(tok)
    for generation_prompt in (False, True):
        expected = tok.apply_chat_template(messages, tools=tools, tokenize=False,
                                           add_generation_prompt=generation_prompt)
        assert render_chat(template.source, messages, tools, generation_prompt, template.special_tokens)[0] == expected
    assert template.prompt("What is SQL?") == tok.apply_chat_template(CHAT[:1], tokenize=False,
                                                                      add_generation_prompt=True)
    assert template.user.format(content="What is SQL?") == template.prompt("What is SQL?")  # for the web page


def test_chatml_learns_each_answer_and_its_im_end_nothing_else():
    text, example = learned(CHAT_RECORD, "qwen2")
    assert text == "A query language.<|im_end|>The web's protocol.<|im_end|>"
    tok = tokenizer("qwen2")
    whole = tok.apply_chat_template(CHAT, tokenize=True)
    assert whole[:len(example["input_ids"])] == example["input_ids"]  # the same tokens as the template's own
    assert tok.decode(whole[len(example["input_ids"]):]) == "\n"  # only the newline after the last turn is left out


def test_generation_markers_give_the_mask_transformers_gives():
    _, example = learned(CHAT_RECORD, "chatml-generation")
    tok = tokenizer("chatml-generation")
    reference = tok.apply_chat_template(CHAT, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
    length = len(example["input_ids"])
    assert reference["input_ids"][:length] == example["input_ids"]
    assert reference["assistant_masks"][:length] == [int(label != IGNORE_INDEX) for label in example["labels"]]
    assert sum(reference["assistant_masks"][length:]) == 0


def test_llama3_template_writes_the_bos_once_and_ends_answers_at_eot():
    tok = train_tokenizer(FAMILIES["llama"], corpus(), chat_template=LLAMA3_CHAT_TEMPLATE)
    template = chat_template_of(tok)
    assert template.bos == "<|begin_of_text|>" and template.end_of_turn == "<|eot_id|>"
    assert align_eos(_Model(), tok, template) == [
        "💬 Assistant turns end with <|eot_id|>: it replaces <|end_of_text|> as the eos, where answers stop"]
    example = tokenize_records([CHAT_RECORD], tok, template, 4096)[0]
    assert example["input_ids"].count(tok.bos_token_id) == 1 and example["input_ids"][0] == tok.bos_token_id
    assert tok.decode([i for i, label in zip(example["input_ids"], example["labels"]) if label != IGNORE_INDEX]) == (
        "A query language.<|eot_id|>The web's protocol.<|eot_id|>")
    prompt_ids = tok(template.prompt("Hi"), add_special_tokens=False)["input_ids"]
    assert prompt_ids.count(tok.bos_token_id) == 1 and prompt_ids[0] == tok.bos_token_id
    text = tokenize_records([Record(0, "text", "text", text="Plain words.")], tok, template, 64)[0]
    assert text["input_ids"][0] == tok.bos_token_id and text["input_ids"][-1] == tok.eos_token_id


def test_tool_calls_are_learned_with_their_arguments_as_objects_and_results_are_context():
    text, _ = learned(SHAPES["sharegpt tools"][1], "qwen2")
    assert text == ('<tool_call>\n{"name": "get_current_weather", "arguments": {"location": "Paris"}}\n</tool_call>'
                    '<|im_end|>It is 21 degrees celsius in Paris.<|im_end|>')
    segments = chat_template_of(tokenizer("qwen2")).render(SHAPES["sharegpt tools"][1])
    assert "<tools>\n" + json.dumps(WEATHER_TOOL) + "\n</tools>" in segments[0].text  # offered in the system turn
    assert "<tool_response>" in segments[2].text and not segments[2].is_target


def test_text_and_tool_calls_of_one_message_are_one_learned_turn_and_weight_0_is_not_learned():
    text, _ = learned(SHAPES["openai parallel tool calls"][1], "qwen2")
    assert text.startswith("Let me check both.\n<tool_call>") and text.count("<|im_end|>") == 2
    text, _ = learned(SHAPES["openai weights"][1], "qwen2")
    assert text == "Paris, as if everyone doesn't know that already.<|im_end|>"


def test_a_template_without_tools_gets_them_in_the_system_message():
    template = chat_template_of(tokenizer("llama3"))
    prompt = template.prompt("Weather in Oslo?", tools=[WEATHER_TOOL])
    assert prompt.startswith("<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nTools:\n"
                             + json.dumps(WEATHER_TOOL))


def test_a_record_the_template_refuses_is_one_line_naming_it_and_the_way_out():
    refusing = "{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}"
    tok = train_tokenizer(FAMILIES["qwen2"], corpus(), chat_template=refusing + CHATML_GENERATION_TEMPLATE)
    record = Record(7, "chat", "messages", turns=(Turn("system", "Be brief."),) + CHAT_RECORD.turns)
    with pytest.raises(InputError, match=r"^record 7: .*System role not supported.*--template plain$"):
        chat_template_of(tok).render(record)


def test_settle_auto_takes_the_chat_template_and_keeps_a_stored_choice():
    chat_tok, plain_tok = tokenizer("qwen2"), train_tokenizer(FAMILIES["llama"], corpus())
    chosen, notes = settle_template("auto", None, chat_tok)
    assert chosen.kind == "chat" and "chat template" in notes[0]
    plain, notes = settle_template("auto", None, plain_tok)
    assert plain == PromptTemplate(bos="<|begin_of_text|>") and notes == []  # Llama's tokenizer adds a BOS
    assert settle_template("auto", plain, chat_tok) == (plain, [])  # a continued model keeps its template
    assert settle_template("chat", chosen, chat_tok) == (chosen, [])
    overridden, notes = settle_template("plain", chosen, chat_tok)
    assert overridden == PromptTemplate() and "replaces the model's stored chat template" in notes[0]
    with pytest.raises(InputError, match="has no chat template; use --template plain"):
        settle_template("chat", None, plain_tok)


def test_the_choice_is_stored_with_the_model_and_loads_back(tmp_path):
    template = chat_template_of(tokenizer("qwen2"))
    template.save(tmp_path)
    loaded = PromptTemplate.load(tmp_path)
    assert loaded == template and loaded.render(CHAT_RECORD) == template.render(CHAT_RECORD)
    assert loaded.prompt("Hi", tools=[WEATHER_TOOL]) == tokenizer("qwen2").apply_chat_template(
        [{"role": "user", "content": "Hi"}], tools=[WEATHER_TOOL], tokenize=False, add_generation_prompt=True)


def test_braces_a_template_writes_survive_the_stored_prompt_pattern():
    tok = train_tokenizer(FAMILIES["qwen2"], corpus(), chat_template="Reply in {JSON}.\n" + CHATML_GENERATION_TEMPLATE)
    template = chat_template_of(tok)
    assert template.user.format(content="a {b}") == template.prompt("a {b}")
    assert template.prompt("a {b}").startswith("Reply in {JSON}.\n<|im_start|>user\na {b}<|im_end|>")
