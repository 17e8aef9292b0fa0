"""The prompt template: each documented shape rendered to exact segments, and the loss mask they give."""
from __future__ import annotations

import json

import pytest
from test_shapes import SHAPES, WEATHER_TOOL

from mtn_sails.data.files import Record, Turn, normalise
from mtn_sails.data.template import TEMPLATE_FILE, PromptTemplate
from mtn_sails.training.scoring import IGNORE_INDEX
from mtn_sails.training.tokenizing import tokenize_segments

EOS = 0
TEMPLATE = PromptTemplate()


def rendered(name: str) -> list[tuple[str, bool, bool]]:
    """(text, is_target, ends_turn) of each segment of a documented example."""
    return [(s.text, s.is_target, s.ends_turn) for s in TEMPLATE.render(SHAPES[name][1])]


def learned_text(record: Record) -> str:
    """The text whose tokens carry the loss (one token per character here), eos written <eos>."""
    segments = TEMPLATE.render(record)
    example = tokenize_segments(segments, [[ord(c) for c in s.text] for s in segments], EOS, max_length=10**6)
    assert len(example["labels"]) == len(example["input_ids"])
    return "".join("<eos>" if label == EOS else chr(label) for label in example["labels"] if label != IGNORE_INDEX)


TOOLS_LINE = json.dumps(WEATHER_TOOL)
CALL = '<tool_call>\n{"name": "get_current_weather", "arguments": {"location": "Paris"}}\n</tool_call>'


def test_sharegpt_tool_call_renders_tools_in_the_system_part_the_call_as_target_the_result_as_context():
    assert rendered("sharegpt tools") == [
        ("### System:\nYou are a weather assistant.\n\n", False, False),
        (f"### Tools:\n{TOOLS_LINE}\n\n", False, False),
        ("### Instruction:\nWhat is the weather in Paris?\n\n### Response:\n", False, False),
        (CALL, True, True),
        ('\n\n### Tool result:\n{"temperature": 21, "unit": "celsius"}\n\n### Response:\n', False, False),
        ("It is 21 degrees celsius in Paris.", True, True),
    ]
    assert learned_text(SHAPES["sharegpt tools"][1]) == CALL + "<eos>It is 21 degrees celsius in Paris.<eos>"


def test_parallel_calls_after_text_are_one_assistant_turn_and_results_share_one_cue():
    rome = CALL.replace("Paris", "Rome")
    assert rendered("openai parallel tool calls")[1:] == [
        ("### Instruction:\nWeather in Paris and Rome?\n\n### Response:\n", False, False),
        ("Let me check both.\n", True, False),
        (CALL + "\n" + rome, True, True),
        ("\n\n### Tool result:\n18\n\n", False, False),
        ("### Tool result:\n25\n\n### Response:\n", False, False),
        ("Paris 18, Rome 25.", True, True),
    ]
    assert learned_text(SHAPES["openai parallel tool calls"][1]) == (
        f"Let me check both.\n{CALL}\n{rome}<eos>Paris 18, Rome 25.<eos>")


def test_weight_0_message_is_seen_but_not_learned():
    assert rendered("openai weights") == [
        ("### System:\nMarv is a factual chatbot that is also sarcastic.\n\n", False, False),
        ("### Instruction:\nWhat's the capital of France?\n\n### Response:\n", False, False),
        ("Paris", False, True),
        ("\n\n### Instruction:\nCan you be more sarcastic?\n\n### Response:\n", False, False),
        ("Paris, as if everyone doesn't know that already.", True, True),
    ]
    assert learned_text(SHAPES["openai weights"][1]) == "Paris, as if everyone doesn't know that already.<eos>"


@pytest.mark.parametrize("name, learned", [
    ("trl tools", '<tool_call>\n{"name": "control_light", "arguments": {"room": "living room", "state": "on"}}\n'
                  '</tool_call><eos>Done!<eos>'),
    ("openai tools", '<tool_call>\n{"name": "get_current_weather", "arguments": {"location": "San Francisco, USA", '
                     '"format": "celsius"}}\n</tool_call><eos>It is 21 degrees celsius in San Francisco, CA<eos>'),
    ("llamafactory messages", '<tool_call>\n{"name": "get_current_weather", "arguments": {"location": "Oslo"}}\n'
                              '</tool_call><eos>It is -3 °C.<eos>'),
    ("alpaca system history", "Paris.<eos>Madrid.<eos>Rome.<eos>"),  # history answers are learned too
    ("openai content parts", "Blue.<eos>"),
    ("trl conversational prompt/completion", "It is blue.<eos>"),
])
def test_what_each_shape_learns(name, learned):
    assert learned_text(SHAPES[name][1]) == learned


def test_alpaca_history_renders_as_earlier_turns():
    assert "".join(text for text, _, _ in rendered("alpaca system history")) == (
        "### System:\nAnswer in one word.\n\n"
        "### Instruction:\nWhat is the capital of France?\n\n### Response:\nParis."
        "\n\n### Instruction:\nAnd of Spain?\n\n### Response:\nMadrid."
        "\n\n### Instruction:\nAnd the capital of Italy?\n\n### Response:\nRome.")


def test_conversational_prompt_renders_like_the_pair_it_means():
    pair = Record(0, "pair", "prompt/completion", prompt="What color is the sky?", response="It is blue.")
    assert TEMPLATE.render(SHAPES["trl conversational prompt/completion"][1]) == TEMPLATE.render(pair)


def test_a_chat_ending_on_a_tool_result_gets_no_response_cue():
    record = normalise(0, {"messages": [
        {"role": "user", "content": "Lights on"},
        {"role": "assistant", "tool_calls": [{"type": "function", "function": {"name": "on", "arguments": {}}}]},
        {"role": "tool", "content": "ok"}]})
    assert TEMPLATE.render(record)[-1].text == "\n\n### Tool result:\nok\n\n"


def test_prompt_offers_tools_as_training_did():
    prompt = TEMPLATE.prompt("What is the weather in Paris?", system="You are a weather assistant.",
                             tools=[WEATHER_TOOL])
    training = "".join(s.text for s in TEMPLATE.render(SHAPES["sharegpt tools"][1])[:3])
    assert prompt == training
    assert TEMPLATE.prompt("Hi") == "### Instruction:\nHi\n\n### Response:\n"


def test_a_template_stored_before_tool_calling_loads_with_the_tool_parts(tmp_path):
    old = {"name": "mtn-sails-v1", "system": "### System:\n{content}\n\n",
           "user": "### Instruction:\n{content}\n\n### Response:\n", "turn_separator": "\n\n"}
    (tmp_path / TEMPLATE_FILE).write_text(json.dumps(old), encoding="utf-8")
    assert PromptTemplate.load(tmp_path) == PromptTemplate()
    PromptTemplate().save(tmp_path)
    assert PromptTemplate.load(tmp_path) == PromptTemplate()


def test_plain_shapes_render_as_before():
    chat = Record(0, "chat", "messages", turns=(Turn("user", "Hi"), Turn("assistant", "Yo"), Turn("user", "Bye"),
                                                Turn("assistant", "Ciao")))
    assert [(s.text, s.is_target, s.ends_turn) for s in TEMPLATE.render(chat)] == [
        ("### Instruction:\nHi\n\n### Response:\n", False, False), ("Yo", True, True),
        ("\n\n### Instruction:\nBye\n\n### Response:\n", False, False), ("Ciao", True, True)]
    assert [(s.text, s.is_target) for s in TEMPLATE.render(Record(0, "text", "text", text="Plain."))] == [("Plain.", True)]


def test_data_formats_doc_shows_the_exact_segments_the_code_renders():
    """Every JSON record of docs/DATA_FORMATS.md followed by an "Exact segments" list renders to that list."""
    import re

    from helpers import REPO

    doc = (REPO / "docs" / "DATA_FORMATS.md").read_text(encoding="utf-8")
    checked = 0
    for block, after in re.findall(r"```json\n(.*?)```(.*?)(?=```json|\n## |\Z)", doc, flags=re.S):
        listed = re.findall(r"^- (loss|no loss): `(.*?)`( \+ eos)?", after, flags=re.M)
        if not listed:
            continue
        record = normalise(0, json.loads(block))
        expected = [(json.loads(text), kind == "loss", bool(eos)) for kind, text, eos in listed]
        assert [(s.text, s.is_target, s.ends_turn) for s in TEMPLATE.render(record)] == expected, block
        checked += 1
    assert checked >= 8


def test_a_tokenizer_that_adds_bos_gets_it_once_at_the_start_of_each_example_and_prompt():
    llama = PromptTemplate(bos="<s>")
    pair = Record(0, "pair", "question/answer", prompt="Hi", response="Yo")
    assert [s.text for s in llama.render(pair)] == ["<s>### Instruction:\nHi\n\n### Response:\n", "Yo"]
    assert llama.render(Record(0, "text", "text", text="Plain."))[0].text == "<s>Plain."
    assert llama.render(Record(0, "text", "text", text="<s>Already."))[0].text == "<s>Already."  # never twice
    assert llama.prompt("Hi", system="Be brief.") == (
        "<s>### System:\nBe brief.\n\n### Instruction:\nHi\n\n### Response:\n")
    segments = llama.render(pair)
    example = tokenize_segments(segments, [[ord(c) for c in s.text] for s in segments], EOS, max_length=10**6)
    assert [chr(label) for label in example["labels"] if label not in (IGNORE_INDEX, EOS)] == ["Y", "o"]
