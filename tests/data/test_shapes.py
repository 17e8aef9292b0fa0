"""Every record shape the fine-tuning projects document, written by hand from their docs, read into turns.

Sources: LLaMA-Factory data/README.md (Alpaca with system/history, ShareGPT with function_call/observation
and tools, preference and KTO columns) and its newer messages format (content parts with "value",
loss_weight); OpenAI's chat fine-tuning guide (tool_calls, tool messages, tools, parallel_tool_calls,
weight, content parts); TRL's dataset formats guide (tool calling, conversational prompt/completion,
preference with explicit and implicit prompts, unpaired preference).
"""
from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mtn_sails.data.files import Record, RecordError, SkippedRecord, Turn, load_records, normalise, scan

WEATHER_TOOL = {"name": "get_current_weather", "description": "Get the current weather",
                "parameters": {"type": "object", "properties": {"location": {"type": "string"}},
                               "required": ["location"]}}

# --- LLaMA-Factory ---------------------------------------------------------------------------

SHAREGPT_TOOLS = {
    "conversations": [
        {"from": "human", "value": "What is the weather in Paris?"},
        {"from": "function_call", "value": '{"name": "get_current_weather", "arguments": {"location": "Paris"}}'},
        {"from": "observation", "value": '{"temperature": 21, "unit": "celsius"}'},
        {"from": "gpt", "value": "It is 21 degrees celsius in Paris."},
    ],
    "system": "You are a weather assistant.",
    "tools": json.dumps([WEATHER_TOOL]),
}
ALPACA_HISTORY = {
    "instruction": "And the capital of Italy?", "input": "", "output": "Rome.",
    "system": "Answer in one word.",
    "history": [["What is the capital of France?", "Paris."], ["And of Spain?", "Madrid."]],
}
LLAMAFACTORY_MESSAGES = {"messages": [  # the newer format: content parts with "value", loss_weight per message
    {"role": "user", "content": [{"type": "text", "value": "Weather in Oslo?"}], "loss_weight": 0.0},
    {"role": "assistant", "content": [{"type": "tool_call", "value": json.dumps(
        {"name": "get_current_weather", "arguments": {"location": "Oslo"}})}], "loss_weight": 1.0},
    {"role": "tool", "content": [{"type": "text", "value": "-3 celsius"}], "loss_weight": 0.0},
    {"role": "assistant", "content": [{"type": "text", "value": "It is "}, {"type": "text", "value": "-3 °C."}],
     "loss_weight": 1.0},
]}

# --- OpenAI chat fine-tuning ------------------------------------------------------------------

OPENAI_TOOLS = {
    "messages": [
        {"role": "user", "content": "What is the weather in San Francisco?"},
        {"role": "assistant", "tool_calls": [{"id": "call_id", "type": "function", "function": {
            "name": "get_current_weather", "arguments": '{"location": "San Francisco, USA", "format": "celsius"}'}}]},
        {"role": "tool", "tool_call_id": "call_id", "content": "21.0"},
        {"role": "assistant", "content": "It is 21 degrees celsius in San Francisco, CA"},
    ],
    "tools": [{"type": "function", "function": WEATHER_TOOL}],
    "parallel_tool_calls": False,
}
OPENAI_PARALLEL = {
    "messages": [
        {"role": "user", "content": "Weather in Paris and Rome?"},
        {"role": "assistant", "content": "Let me check both.", "tool_calls": [
            {"id": "a", "type": "function", "function": {"name": "get_current_weather", "arguments": '{"location": "Paris"}'}},
            {"id": "b", "type": "function", "function": {"name": "get_current_weather", "arguments": '{"location": "Rome"}'}}]},
        {"role": "tool", "tool_call_id": "a", "content": "18"},
        {"role": "tool", "tool_call_id": "b", "content": "25"},
        {"role": "assistant", "content": "Paris 18, Rome 25."},
    ],
    "tools": [{"type": "function", "function": WEATHER_TOOL}],
}
OPENAI_WEIGHTS = {"messages": [
    {"role": "system", "content": "Marv is a factual chatbot that is also sarcastic."},
    {"role": "user", "content": "What's the capital of France?"},
    {"role": "assistant", "content": "Paris", "weight": 0},
    {"role": "user", "content": "Can you be more sarcastic?"},
    {"role": "assistant", "content": "Paris, as if everyone doesn't know that already.", "weight": 1},
]}
OPENAI_PARTS = {"messages": [
    {"role": "user", "content": [{"type": "text", "text": "Name a colour"}, {"type": "text", "text": " of the sky."}]},
    {"role": "assistant", "content": [{"type": "text", "text": "Blue."}]},
]}

# --- TRL ----------------------------------------------------------------------------------------

TRL_TOOLS = {
    "messages": [
        {"role": "user", "content": "Turn on the living room lights."},
        {"role": "assistant", "tool_calls": [{"type": "function", "function": {
            "name": "control_light", "arguments": {"room": "living room", "state": "on"}}}]},
        {"role": "tool", "name": "control_light", "content": "The lights in the living room are now on."},
        {"role": "assistant", "content": "Done!"},
    ],
    "tools": [{"type": "function", "function": {"name": "control_light", "description": "Controls the lights in a room.",
                                                "parameters": {"type": "object", "properties": {
                                                    "room": {"type": "string"}, "state": {"type": "string"}}}}}],
}
TRL_CONVERSATIONAL_PAIR = {"prompt": [{"role": "user", "content": "What color is the sky?"}],
                           "completion": [{"role": "assistant", "content": "It is blue."}]}

CALL_PARIS = '{"name": "get_current_weather", "arguments": {"location": "Paris"}}'
SHAPES = {  # name -> (raw record, expected Record)
    "sharegpt tools": (SHAREGPT_TOOLS, Record(0, "chat", "conversations", turns=(
        Turn("system", "You are a weather assistant."), Turn("tools", json.dumps(WEATHER_TOOL)),
        Turn("user", "What is the weather in Paris?"), Turn("tool_call", CALL_PARIS),
        Turn("tool", '{"temperature": 21, "unit": "celsius"}'), Turn("assistant", "It is 21 degrees celsius in Paris.")))),
    "alpaca system history": (ALPACA_HISTORY, Record(0, "chat", "alpaca", turns=(
        Turn("system", "Answer in one word."), Turn("user", "What is the capital of France?"),
        Turn("assistant", "Paris."), Turn("user", "And of Spain?"), Turn("assistant", "Madrid."),
        Turn("user", "And the capital of Italy?"), Turn("assistant", "Rome.")))),
    "llamafactory messages": (LLAMAFACTORY_MESSAGES, Record(0, "chat", "messages", turns=(
        Turn("user", "Weather in Oslo?"),
        Turn("tool_call", '{"name": "get_current_weather", "arguments": {"location": "Oslo"}}'),
        Turn("tool", "-3 celsius"), Turn("assistant", "It is -3 °C.")))),
    "openai tools": (OPENAI_TOOLS, Record(0, "chat", "messages", turns=(
        Turn("tools", json.dumps({"type": "function", "function": WEATHER_TOOL})),
        Turn("user", "What is the weather in San Francisco?"),
        Turn("tool_call", '{"name": "get_current_weather", "arguments": {"location": "San Francisco, USA", '
                          '"format": "celsius"}}'),
        Turn("tool", "21.0"), Turn("assistant", "It is 21 degrees celsius in San Francisco, CA")))),
    "openai parallel tool calls": (OPENAI_PARALLEL, Record(0, "chat", "messages", turns=(
        Turn("tools", json.dumps({"type": "function", "function": WEATHER_TOOL})),
        Turn("user", "Weather in Paris and Rome?"), Turn("assistant", "Let me check both."),
        Turn("tool_call", CALL_PARIS + "\n" + CALL_PARIS.replace("Paris", "Rome")),
        Turn("tool", "18"), Turn("tool", "25"), Turn("assistant", "Paris 18, Rome 25.")))),
    "openai weights": (OPENAI_WEIGHTS, Record(0, "chat", "messages", turns=(
        Turn("system", "Marv is a factual chatbot that is also sarcastic."), Turn("user", "What's the capital of France?"),
        Turn("assistant:0", "Paris"), Turn("user", "Can you be more sarcastic?"),
        Turn("assistant", "Paris, as if everyone doesn't know that already.")))),
    "openai content parts": (OPENAI_PARTS, Record(0, "chat", "messages", turns=(
        Turn("user", "Name a colour of the sky."), Turn("assistant", "Blue.")))),
    "trl tools": (TRL_TOOLS, Record(0, "chat", "messages", turns=(
        Turn("tools", json.dumps(TRL_TOOLS["tools"][0])), Turn("user", "Turn on the living room lights."),
        Turn("tool_call", '{"name": "control_light", "arguments": {"room": "living room", "state": "on"}}'),
        Turn("tool", "The lights in the living room are now on."), Turn("assistant", "Done!")))),
    "trl conversational prompt/completion": (TRL_CONVERSATIONAL_PAIR, Record(
        0, "chat", "conversational prompt/completion",
        turns=(Turn("user", "What color is the sky?"), Turn("assistant", "It is blue.")))),
}


@pytest.mark.parametrize("name", sorted(SHAPES))
def test_documented_shapes_are_read(name, tmp_path):
    raw, expected = SHAPES[name]
    assert normalise(0, raw) == expected
    path = tmp_path / "data.jsonl"
    path.write_text(json.dumps(raw) + "\n", encoding="utf-8")
    assert list(load_records(path)) == [expected]


def test_a_conversational_prompt_keeps_its_assistant_turns_without_loss():
    record = normalise(0, {"prompt": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"},
                                      {"role": "user", "content": "Bye"}],
                           "completion": [{"role": "assistant", "content": "Goodbye"}]})
    assert [t.role for t in record.turns] == ["user", "assistant:0", "user", "assistant"]
    assert [t.is_target for t in record.turns] == [False, False, False, True]


def test_alpaca_without_system_or_history_stays_a_pair():
    plain = {"instruction": "Say hi", "input": "", "output": "Hi", "system": "", "history": []}
    assert normalise(0, plain) == Record(0, "pair", "alpaca", prompt="Say hi", response="Hi")


def test_openai_legacy_function_calling():
    record = normalise(0, {"messages": [
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "function_call": {"name": "get_current_weather", "arguments": '{"location": "Paris"}'}},
        {"role": "function", "name": "get_current_weather", "content": "21"},
        {"role": "assistant", "content": "21 degrees."}], "functions": [WEATHER_TOOL]})
    assert [t.role for t in record.turns] == ["tools", "user", "tool_call", "tool", "assistant"]
    assert record.turns[2].content == CALL_PARIS


# --- preference data: recognised by name, refused or trained on its chosen side -------------------

PREFERENCE = {  # name -> (raw, what --preference-as chosen trains)
    "trl explicit prompt": ({"prompt": "The sky is", "chosen": " blue.", "rejected": " green."},
                            Record(0, "pair", "preference", prompt="The sky is", response=" blue.")),
    "trl implicit prompt": ({"chosen": "The sky is blue.", "rejected": "The sky is green."},
                            Record(0, "text", "preference", text="The sky is blue.")),
    "trl conversational": ({"prompt": [{"role": "user", "content": "What color is the sky?"}],
                            "chosen": [{"role": "assistant", "content": "It is blue."}],
                            "rejected": [{"role": "assistant", "content": "It is green."}]},
                           Record(0, "chat", "preference", turns=(Turn("user", "What color is the sky?"),
                                                                   Turn("assistant", "It is blue.")))),
    "trl conversational implicit": ({"chosen": [{"role": "user", "content": "What color is the sky?"},
                                                {"role": "assistant", "content": "It is blue."}],
                                     "rejected": [{"role": "user", "content": "What color is the sky?"},
                                                  {"role": "assistant", "content": "It is green."}]},
                                    Record(0, "chat", "preference", turns=(Turn("user", "What color is the sky?"),
                                                                            Turn("assistant", "It is blue.")))),
    "llamafactory alpaca": ({"instruction": "Name a primary colour", "input": "", "chosen": "Red.",
                             "rejected": "Pink."},
                            Record(0, "pair", "preference", prompt="Name a primary colour", response="Red.")),
    "llamafactory sharegpt": ({"conversations": [{"from": "human", "value": "Name a primary colour"}],
                               "chosen": {"from": "gpt", "value": "Red."}, "rejected": {"from": "gpt", "value": "Pink."}},
                              Record(0, "chat", "preference", turns=(Turn("user", "Name a primary colour"),
                                                                      Turn("assistant", "Red.")))),
    "trl unpaired": ({"prompt": "The sky is", "completion": " blue.", "label": True},
                     Record(0, "pair", "kto", prompt="The sky is", response=" blue.")),
    "llamafactory kto": ({"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello!"}],
                          "kto_tag": True},
                         Record(0, "chat", "kto", turns=(Turn("user", "Hi"), Turn("assistant", "Hello!")))),
}


@pytest.mark.parametrize("name", sorted(PREFERENCE))
def test_preference_data_is_named_and_refused_unless_asked(name):
    raw, chosen = PREFERENCE[name]
    with pytest.raises(RecordError, match="this product trains supervised data: pass --preference-as chosen") as info:
        normalise(0, raw)
    assert info.value.code == "preference-data" and info.value.shape == chosen.shape
    assert normalise(0, raw, preference_as="chosen") == chosen


def test_kto_records_labelled_false_are_skipped_when_training_the_chosen_side(tmp_path):
    path = tmp_path / "kto.jsonl"
    path.write_text("".join(json.dumps({"prompt": f"Q{i}", "completion": f"A{i}", "label": i % 2 == 0}) + "\n"
                            for i in range(4)), encoding="utf-8")
    items = list(scan(path, preference_as="chosen"))
    assert [type(item) for item in items] == [Record, SkippedRecord, Record, SkippedRecord]
    assert [r.prompt for r in load_records(path, preference_as="chosen")] == ["Q0", "Q2"]


def test_a_label_that_is_not_a_boolean_keeps_a_pair_a_pair():
    """A classification-style `label` is not KTO: only a true/false label beside a completion is."""
    assert normalise(0, {"prompt": "P", "completion": "C", "label": "positive"}).shape == "prompt/completion"
    assert normalise(0, {"text": "T", "label": True}).shape == "text"


# --- each shape trains -----------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(SHAPES))
def test_train_runs_on_each_shape(name, tiny_model_dir, tmp_path):
    from mtn_sails.model_dir import store
    from mtn_sails.config import TrainConfig
    from mtn_sails.training.session import train

    raw, expected = SHAPES[name]
    data = tmp_path / "data.jsonl"
    data.write_text(json.dumps(raw) + "\n", encoding="utf-8")
    output = tmp_path / "trained_model"
    train(TrainConfig(data_file=str(data), output_dir=str(output), model_name=str(tiny_model_dir), epochs=1,
                      batch_size=1, learning_rate=1e-3, eval_split=0.0, max_length=128))
    assert (output / "model.safetensors").is_file()
    stored = store.read_slices(output, store.REPLAY_DIR)[1]  # kept for replay, read back as the same example
    assert [r.turns for r in stored] == [expected.turns]


# --- fuzz: any chat a user can write is a record (that renders) or a RecordError ---------------------

_scalars = st.none() | st.booleans() | st.integers(-2, 2) | st.floats(allow_nan=True) | st.text(max_size=12)
_arguments = _scalars | st.sampled_from(['{"city": "Paris"}', "{bad", "[1]", ""]) | st.dictionaries(
    st.text(max_size=4), _scalars, max_size=2)
_calls = st.lists(st.fixed_dictionaries({"type": st.just("function"), "function": st.fixed_dictionaries(
    {}, optional={"name": st.sampled_from(["get_weather", "", "other"]) | _scalars, "arguments": _arguments})},
    optional={"id": st.sampled_from(["a", "b"]) | _scalars}), max_size=2) | _scalars
_parts = st.lists(st.fixed_dictionaries({"type": st.sampled_from(["text", "image_url", "tool_call", "x"]) | _scalars},
                                        optional={"text": _scalars, "value": _scalars}), max_size=2)
_message = st.fixed_dictionaries({}, optional={
    "role": st.sampled_from(["system", "user", "assistant", "tool", "function", "robot", None]),
    "from": st.sampled_from(["human", "gpt", "function_call", "observation", "system", "Human", 7]),
    "content": st.text(min_size=1, max_size=8) | _parts | _scalars,
    "value": st.text(min_size=1, max_size=8) | st.sampled_from(['{"name": "get_weather", "arguments": {}}', "{"]),
    "tool_calls": _calls, "function_call": _calls, "tool_call_id": st.sampled_from(["a", "c"]) | _scalars,
    "weight": _scalars, "loss_weight": _scalars})
_records = st.fixed_dictionaries({}, optional={
    "messages": st.lists(_message, max_size=5) | _scalars, "conversations": st.lists(_message, max_size=5),
    "tools": st.sampled_from([json.dumps([WEATHER_TOOL]), [WEATHER_TOOL], "[x", [{"x": 1}], []]) | _scalars,
    "parallel_tool_calls": _scalars, "system": _scalars, "prompt": st.lists(_message, max_size=2) | _scalars,
    "completion": st.lists(_message, max_size=2) | _scalars, "chosen": st.lists(_message, max_size=2) | _scalars,
    "rejected": _scalars, "label": _scalars, "kto_tag": _scalars, "instruction": _scalars, "output": _scalars,
    "history": st.lists(st.lists(_scalars, max_size=3), max_size=2) | _scalars,
    "images": st.sampled_from([None, [], ["a.png"]])})


_good_call = st.fixed_dictionaries({"type": st.just("function"), "function": st.fixed_dictionaries(
    {"name": st.just("get_current_weather"), "arguments": st.sampled_from(['{"city": "Paris"}', {"city": "Rome"}, "{}"])})})
_near_valid_message = st.one_of(
    st.fixed_dictionaries({"role": st.sampled_from(["user", "assistant", "system"]), "content": st.text(min_size=1,
                                                                                                     max_size=6)}),
    st.fixed_dictionaries({"role": st.just("assistant"), "tool_calls": st.lists(_good_call, min_size=1, max_size=2)},
                          optional={"content": st.sampled_from(["", "Let me see.", None]), "weight": st.sampled_from([0, 1])}),
    st.fixed_dictionaries({"role": st.just("tool"), "content": st.text(max_size=6)}))


@st.composite
def _valid_chats(draw) -> dict:
    """Chats that follow the rules: user, then an answer or calls + results + answer, some weights 0."""
    text = st.text(min_size=1, max_size=6).filter(str.strip)
    messages = [{"role": "system", "content": draw(text)}] if draw(st.booleans()) else []
    for _ in range(draw(st.integers(1, 3))):
        messages.append({"role": "user", "content": draw(text)})
        if draw(st.booleans()):
            calls = draw(st.lists(_good_call, min_size=1, max_size=2))
            messages.append({"role": "assistant", "tool_calls": calls, "weight": draw(st.sampled_from([0, 1]))})
            messages += [{"role": "tool", "content": draw(st.text(max_size=6))} for _ in calls]
        messages.append({"role": "assistant", "content": draw(text)})
    return {"messages": messages, "tools": [WEATHER_TOOL]}


_near_valid = st.fixed_dictionaries({"messages": st.lists(_near_valid_message, min_size=1, max_size=6)},
                                    optional={"tools": st.just([WEATHER_TOOL]),
                                              "parallel_tool_calls": st.booleans()})


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_records | _near_valid | _valid_chats(), st.sampled_from([None, "chosen"]))
def test_fuzz_any_record_is_read_and_rendered_or_a_record_error(raw, preference_as):
    from mtn_sails.data.files import record_to_json
    from mtn_sails.data.template import PromptTemplate

    try:
        record = normalise(0, raw, preference_as)
    except RecordError:
        return
    if isinstance(record, Record):
        assert PromptTemplate().render(record)
        stored = normalise(0, record_to_json(record))
        assert stored.turns == record.turns or record.kind != "chat"


def test_a_tools_file_for_generate_is_read_or_refused_in_one_line(tmp_path):
    from mtn_sails.data.chats import read_tools_file
    from mtn_sails.errors import InputError

    good = tmp_path / "tools.json"
    good.write_text(json.dumps({"tools": [{"type": "function", "function": WEATHER_TOOL}]}), encoding="utf-8")
    assert read_tools_file(good) == [{"type": "function", "function": WEATHER_TOOL}]
    for content, message in [("[{name}]", "not a JSON file of tools"), ('[{"description": "x"}]', "is not a tool"),
                             ("[]", "holds no tools")]:
        (tmp_path / "bad.json").write_text(content, encoding="utf-8")
        with pytest.raises(InputError, match=message) as info:
            read_tools_file(tmp_path / "bad.json")
        assert "\n" not in str(info.value)
    with pytest.raises(InputError, match="cannot read"):
        read_tools_file(tmp_path / "missing.json")


def test_preference_data_trains_its_chosen_side_only_when_asked(tiny_model_dir, tmp_path):
    from mtn_sails.model_dir import store
    from mtn_sails.cli import main

    raw, chosen = PREFERENCE["trl explicit prompt"]
    data = tmp_path / "prefs.jsonl"
    data.write_text(json.dumps(raw) + "\n", encoding="utf-8")
    output = tmp_path / "trained_model"
    common = ["--data-file", str(data), "--output-dir", str(output), "--model-name", str(tiny_model_dir),
              "--epochs", "1", "--eval-split", "0", "--max-length", "64"]
    assert main(["validate", "--data-file", str(data)]) == 3
    assert main(["validate", "--data-file", str(data), "--preference-as", "chosen"]) == 0
    assert main(["train", *common]) == 3 and not output.exists()
    assert main(["train", *common, "--preference-as", "chosen"]) == 0
    [stored] = store.read_slices(output, store.REPLAY_DIR)[1]
    assert stored.turns[-1].content == chosen.response
