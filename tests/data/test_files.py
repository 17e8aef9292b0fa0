"""The data loader: every record shape normalised, every kind of bad input one clear line and exit code."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mtn_sails.cli import main
from mtn_sails.data.files import Record, RecordError, Turn, load_records, normalise, scan
from mtn_sails.errors import (EXIT_INVALID_DATA, EXIT_UNUSABLE_INPUT, DataFormatError, InputError,
                              SailsError, ValidationFailed)
from helpers import REPO



def write(directory: Path, name: str, content: str | bytes) -> Path:
    path = directory / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    return path


def write_json(directory: Path, name: str, value) -> Path:
    return write(directory, name, json.dumps(value))


def write_jsonl(directory: Path, name: str, values) -> Path:
    return write(directory, name, "".join(json.dumps(v) + "\n" for v in values))


# --- every shape ------------------------------------------------------------------------------

@pytest.mark.parametrize("raw, expected", [
    ("Plain text.", Record(0, "text", "text", text="Plain text.")),
    ({"text": "Plain text."}, Record(0, "text", "text", text="Plain text.")),
    ({"prompt": "P", "completion": "C"}, Record(0, "pair", "prompt/completion", prompt="P", response="C")),
    ({"question": "Q", "answer": "A"}, Record(0, "pair", "question/answer", prompt="Q", response="A")),
    ({"input": "I", "output": "O"}, Record(0, "pair", "input/output", prompt="I", response="O")),
    ({"instruction": "Do it", "input": "", "output": "Done"},
     Record(0, "pair", "alpaca", prompt="Do it", response="Done")),
    ({"instruction": "Translate", "input": "chat", "output": "cat"},
     Record(0, "pair", "alpaca", prompt="Translate\n\nchat", response="cat")),
    ({"instruction": "No input key", "output": "fine"},
     Record(0, "pair", "alpaca", prompt="No input key", response="fine")),
    ({"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                   {"role": "assistant", "content": "Hello"}]},
     Record(0, "chat", "messages", turns=(Turn("system", "Be brief."), Turn("user", "Hi"),
                                          Turn("assistant", "Hello")))),
    ({"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello"},
                        {"from": "human", "value": "Bye"}, {"from": "gpt", "value": "Bye!"}]},
     Record(0, "chat", "conversations", turns=(Turn("user", "Hi"), Turn("assistant", "Hello"),
                                               Turn("user", "Bye"), Turn("assistant", "Bye!")))),
])
def test_every_shape_is_normalised(tmp_path, raw, expected):
    assert normalise(0, raw) == expected
    # The same record read from each file format.
    assert list(load_records(write_json(tmp_path, "a.json", [raw]))) == [expected]
    assert list(load_records(write_jsonl(tmp_path, "a.jsonl", [raw]))) == [expected]


def test_extra_keys_are_ignored():
    record = normalise(4, {"question": "Q", "answer": "A", "id": 7, "source": "faq"})
    assert (record.index, record.prompt, record.response) == (4, "Q", "A")


def test_txt_paragraphs_become_records(tmp_path):
    path = write(tmp_path, "notes.txt", "First line\nsame paragraph\n\n\n  \nSecond one\r\n\r\nThird")
    assert [r.text for r in load_records(path)] == ["First line\nsame paragraph", "Second one", "Third"]
    assert [r.index for r in load_records(path)] == [0, 1, 2]


def test_json_object_holding_one_array(tmp_path):
    path = write_json(tmp_path, "wrapped.json", {"version": 2, "data": [{"text": "a"}, {"text": "b"}]})
    assert [r.text for r in load_records(path)] == ["a", "b"]


def test_json_object_with_several_arrays_is_refused(tmp_path):
    path = write_json(tmp_path, "two.json", {"train": [{"text": "a"}], "test": [{"text": "b"}]})
    with pytest.raises(DataFormatError, match="several arrays"):
        list(load_records(path))


@pytest.mark.parametrize("name", ["bom.json", "bom.jsonl", "bom.txt"])
def test_utf8_bom_is_accepted(tmp_path, name):
    body = {"bom.json": '[{"text": "café"}]', "bom.jsonl": '{"text": "café"}\n', "bom.txt": "café\n"}[name]
    path = write(tmp_path, name, b"\xef\xbb\xbf" + body.encode("utf-8"))
    assert [r.text for r in load_records(path)] == ["café"]


def test_txt_starting_with_a_multibyte_character(tmp_path):
    path = write(tmp_path, "zh.txt", "中文文本\n\n第二段\n")  # the file's first bytes are E4 B8 AD
    assert [r.text for r in load_records(path)] == ["中文文本", "第二段"]


def test_jsonl_blank_lines_are_skipped(tmp_path):
    path = write(tmp_path, "gaps.jsonl", '{"text": "a"}\n\n   \n{"text": "b"}\n')
    assert [(r.index, r.text) for r in load_records(path)] == [(0, "a"), (1, "b")]


def test_scan_reports_bad_records_and_goes_on(tmp_path):
    path = write_jsonl(tmp_path, "mixed.jsonl", [{"text": "a"}, {"text": None}, {"text": "c"}])
    items = list(scan(path))
    assert isinstance(items[1], RecordError) and items[1].index == 1
    assert [i.text for i in items if isinstance(i, Record)] == ["a", "c"]


def test_load_records_raises_the_first_problem(tmp_path):
    with pytest.raises(RecordError, match="record 1: field 'text' must be a string, got null"):
        list(load_records(write_jsonl(tmp_path, "a.jsonl", [{"text": "a"}, {"text": None}])))
    with pytest.raises(ValidationFailed, match="no records"):
        list(load_records(write_json(tmp_path, "empty.json", [])))


# --- bad records: exit 3 with the record named -------------------------------------------------

@pytest.mark.parametrize("records, expected", [
    ([{"text": None}], "record 0: field 'text' must be a string, got null"),
    ([{"question": "Q", "answer": 42}], "record 0: field 'answer' must be a string, got a number"),
    ([{"prompt": {"a": 1}, "completion": "C"}], "record 0: field 'prompt' must be a string, got an object"),
    ([42], "record 0: expected an object or a string, got a number"),
    ([None], "record 0: expected an object or a string, got null"),
    ([{"question": "  ", "answer": "A"}], "record 0: field 'question' is empty"),
    ([""], "record 0: text is empty"),
    ([{"text": "ok"}, {"title": "T", "body": "B"}], "record 1: unknown record shape with keys ['body', 'title']"),
    ([{"text": "ok"}, {"question": "Q", "answer": "A"}], "record 1: shape 'question/answer'"),
    ([{"messages": [{"role": "user", "content": "Hi"}]}], "record 0: chat has no assistant turn"),
    ([{"messages": [{"role": "assistant", "content": "Hi"}, {"role": "user", "content": "Yo"}]}],
     "record 0: chat roles do not alternate"),
    ([{"conversations": [{"from": "alien", "value": "Hi"}]}], "record 0: conversations[0] has unknown from"),
])
def test_bad_records_fail_validation_naming_the_record(tmp_path, capsys, records, expected):
    path = write_json(tmp_path, "bad.json", records)
    assert main(["validate", "--data-file", str(path)]) == EXIT_INVALID_DATA
    assert expected in capsys.readouterr().out


# --- malformed tool calls and other chat content: one line each, exit 3, nothing trained --------

def _ask(*turns: dict, **record) -> dict:
    return {"messages": [{"role": "user", "content": "Weather in Paris?"}, *turns], **record}


def _call(name: str = "get_weather", arguments='{"city": "Paris"}', **extra) -> dict:
    return {"type": "function", "function": {"name": name, "arguments": arguments}, **extra}


TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]
ANSWER = {"role": "assistant", "content": "It is 21 degrees."}
MALFORMED = {  # name -> (record, the line that names it)
    "arguments not JSON": (_ask({"role": "assistant", "tool_calls": [_call(arguments='{"city": Paris}')]},
                                {"role": "tool", "content": "21"}, ANSWER),
                           "record 0: messages[1]: the arguments of tool call 'get_weather' are not valid JSON "
                           "(Expecting value)"),
    "arguments not an object": (_ask({"role": "assistant", "tool_calls": [_call(arguments="[1, 2]")]},
                                     {"role": "tool", "content": "21"}, ANSWER),
                                "the arguments of tool call 'get_weather' must be a JSON object, got an array"),
    "sharegpt call not JSON": ({"conversations": [{"from": "human", "value": "Weather?"},
                                                  {"from": "function_call", "value": "get_weather(Paris)"},
                                                  {"from": "observation", "value": "21"},
                                                  {"from": "gpt", "value": "21 degrees."}]},
                               "record 0: conversations[1]: the tool call is not valid JSON (Expecting value)"),
    "call with no name": (_ask({"role": "assistant", "tool_calls": [{"type": "function", "function": {}}]}),
                          "record 0: messages[1] has a tool call with no name"),
    "tool result with no call before it": (_ask({"role": "tool", "content": "21"}, ANSWER),
                                           "record 0: messages[1] is a tool result with no tool call before it"),
    "sharegpt observation first": ({"conversations": [{"from": "observation", "value": "21"},
                                                      {"from": "gpt", "value": "21 degrees."}]},
                                   "record 0: conversations[0] is a tool result with no tool call before it"),
    "call with no result": (_ask({"role": "assistant", "tool_calls": [_call()]}, ANSWER),
                            "record 0: the tool call before messages[2] has no tool result after it"),
    "answer to a call never made": (_ask({"role": "assistant", "tool_calls": [_call(id="call_1")]},
                                         {"role": "tool", "tool_call_id": "call_2", "content": "21"}, ANSWER),
                                    "record 0: messages[2] answers tool call 'call_2', which the assistant did not make"),
    "unknown tool": (_ask({"role": "assistant", "tool_calls": [_call(name="get_wether")]},
                          {"role": "tool", "content": "21"}, ANSWER, tools=TOOLS),
                     "record 0: messages[1] calls tool 'get_wether', which is not in the record's tools"),
    "tools not JSON": ({"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello"}],
                        "tools": "[{name: get_weather}]"},
                       "record 0: 'tools' is not valid JSON (Expecting property name enclosed in double quotes)"),
    "parallel calls refused by the record": (
        _ask({"role": "assistant", "tool_calls": [_call(), _call()]}, {"role": "tool", "content": "21"},
             {"role": "tool", "content": "21"}, ANSWER, parallel_tool_calls=False),
        "record 0: messages[1] makes 2 tool calls but 'parallel_tool_calls' is false"),
    "unknown role": (_ask({"role": "robot", "content": "Beep."}), "record 0: messages[1] has unknown role 'robot'"),
    "unknown sharegpt speaker": ({"conversations": [{"from": "human", "value": "Hi"},
                                                    {"from": "function_response", "value": "21"}]},
                                 "record 0: conversations[1] has unknown from 'function_response'"),
    "image part": ({"messages": [{"role": "user", "content": [{"type": "text", "text": "What is this?"},
                                                              {"type": "image_url", "image_url": {"url": "a.png"}}]},
                                 ANSWER]},
                   "record 0: messages[0].content[1] is image_url content; this product trains text-only models"),
    "images column": ({"conversations": [{"from": "human", "value": "<image>What is this?"},
                                         {"from": "gpt", "value": "A cat."}], "images": ["cat.png"]},
                      "record 0: the record has images; this product trains text-only models"),
    "weight not 0 or 1": (_ask({"role": "assistant", "content": "21", "weight": 0.5}),
                          "record 0: messages[1] has weight 0.5; a message is trained fully (1) or not at all (0)"),
    "loss on a user message": (_ask({"role": "assistant", "content": "21"}, {"role": "user", "content": "Thanks",
                                                                             "loss_weight": 1.0}),
                               "record 0: messages[2] is a user message with loss_weight 1; only assistant messages carry the loss"),
    "every weight 0": (_ask({"role": "assistant", "content": "21", "weight": 0}),
                       "record 0: every assistant message has loss weight 0: there is nothing to learn"),
    "history not pairs": ({"instruction": "And Italy?", "output": "Rome.", "history": [["France?"]]},
                          "record 0: history[0] must be an [instruction, response] pair of strings"),
    "preference data": ({"prompt": "The sky is", "chosen": " blue.", "rejected": " green."},
                        "record 0: preference data (chosen/rejected, for DPO or ORPO)"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_chats_fail_validation_with_one_line(tmp_path, capsys, case):
    record, line = MALFORMED[case]
    path = write_jsonl(tmp_path, "bad.jsonl", [record])
    assert main(["validate", "--data-file", str(path)]) == EXIT_INVALID_DATA
    assert line in capsys.readouterr().out
    with pytest.raises(RecordError) as info:
        list(load_records(path))
    assert line in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_chats_stop_train_with_one_line_and_nothing_written(tiny_model_dir, tmp_path, capsys, case):
    record, line = MALFORMED[case]
    path = write_jsonl(tmp_path, "bad.jsonl", [record])
    output = tmp_path / "trained_model"
    assert main(["train", "--data-file", str(path), "--output-dir", str(output),
                 "--model-name", str(tiny_model_dir)]) == EXIT_INVALID_DATA
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and line in err[0], err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.jsonl"]


# --- unusable files: one line, exit 2, no traceback --------------------------------------------

def _bad_files(directory: Path) -> dict[str, tuple[Path, str]]:
    """name -> (file, a fragment of the one-line error)."""
    loop = directory / "loop.json"
    os.symlink(loop, loop)
    (directory / "folder.json").mkdir()
    return {
        "missing": (directory / "missing.json", "no such file"),
        "directory": (directory / "folder.json", "is a directory"),
        "symlink loop": (loop, "symlink"),
        "binary": (write(directory, "junk.json", bytes(range(256)) * 8), "binary data"),
        "utf-16": (write(directory, "u16.json", '[{"text": "hi"}]'.encode("utf-16")), "UTF-16"),
        "not utf-8": (write(directory, "latin1.jsonl", '{"text": "caf\xe9"}\n'.encode("latin-1")), "not UTF-8"),
        "truncated json": (write(directory, "cut.json", '[{"text": "a"},\n {"text": "b'), "cut.json:2:"),
        "broken jsonl line": (write(directory, "broken.jsonl", '{"text": "a"}\n{"text": "b" oops}\n{"text": "c"}\n'),
                              "broken.jsonl:2:"),
        "deep nesting": (write(directory, "deep.json", "[" * 200_000 + "]" * 200_000), "nested too deeply"),
        "deep jsonl line": (write(directory, "deep.jsonl", '{"text": "a"}\n' + "[" * 200_000 + "]" * 200_000),
                            "deep.jsonl:2: JSON nested too deeply"),
        "wrong suffix": (write(directory, "data.csv", "a,b\n"), "unsupported file type '.csv'"),
        "scalar json": (write(directory, "scalar.json", "42"), "expected a JSON array"),
    }


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory):
    return _bad_files(tmp_path_factory.mktemp("bad"))


@pytest.mark.parametrize("case", ["missing", "directory", "symlink loop", "binary", "utf-16", "not utf-8",
                                  "truncated json", "broken jsonl line", "deep nesting", "deep jsonl line",
                                  "wrong suffix", "scalar json"])
def test_unusable_file_is_one_line_and_exit_2(bad_files, capsys, case):
    path, fragment = bad_files[case]
    assert main(["validate", "--data-file", str(path)]) == EXIT_UNUSABLE_INPUT
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and fragment in lines[0], captured.err


def test_unusable_files_print_no_traceback_from_the_real_command(bad_files):
    for case, (path, fragment) in bad_files.items():
        result = subprocess.run([sys.executable, str(REPO / "main.py"), "validate", "--data-file", str(path)],
                                capture_output=True, text=True, cwd=REPO, timeout=60)
        assert result.returncode == EXIT_UNUSABLE_INPUT, (case, result.stderr)
        assert "Traceback" not in result.stderr and fragment in result.stderr, (case, result.stderr)


def test_line_of_an_unclosed_jsonl_record_is_its_own(tmp_path):
    """A JSONL line cut short (the usual way they break) is reported at its own line, not the next."""
    path = write(tmp_path, "cut.jsonl", '{"text": "a"}\n{"text": "b"\n{"text": "c"}\n')
    with pytest.raises(DataFormatError, match=r"cut.jsonl:2:"):
        list(load_records(path))


@pytest.mark.parametrize("name, content", [
    ("huge_int.json", "[" + "1" * 5000 + "]"),  # past Python's 4300-digit int limit: a ValueError
    ("sharegpt.json", '[{"conversations": [{"from": ["human"], "value": "hi"}]}]'),  # unhashable speaker
    ("nan.json", '[{"text": NaN}]'),
])
def test_odd_json_is_a_sails_error_not_a_crash(tmp_path, name, content):
    path = write(tmp_path, name, content)
    try:
        items = list(scan(path))
    except SailsError:
        return
    assert all(isinstance(item, (Record, RecordError)) for item in items)


# --- fuzz: anything a user can write gives records or a SailsError ----------------------------

KEYS = ["text", "prompt", "completion", "question", "answer", "input", "output", "instruction",
        "messages", "conversations", "role", "content", "from", "value", "system",
        "tools", "tool_calls", "function", "name", "arguments", "type", "weight", "history", "chosen",
        "rejected", "label", "images"]
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20)
    | st.sampled_from(["user", "assistant", "system", "human", "gpt", "", "tool", "function_call",
                       "observation", "text", "image_url", '{"name": "f", "arguments": {}}']),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(
        st.sampled_from(KEYS) | st.text(max_size=5), children, max_size=4),
    max_leaves=12)
jsonl_lines = st.lists(json_values.map(json.dumps) | st.text(max_size=30), max_size=6).map("\n".join)
file_contents = st.one_of(
    st.tuples(st.sampled_from([".json", ".jsonl", ".txt"]), st.binary(max_size=200)),
    st.tuples(st.just(".json"), st.lists(json_values, max_size=5).map(json.dumps)),
    st.tuples(st.just(".json"), json_values.map(json.dumps)),
    st.tuples(st.just(".jsonl"), jsonl_lines),
    st.tuples(st.just(".txt"), st.text(max_size=200)),
)


def check_loader(directory: str, suffix: str, content: str | bytes) -> None:
    path = Path(directory) / f"fuzz{suffix}"
    path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8", "surrogatepass"))
    try:
        items = list(scan(path))
    except SailsError:
        return
    assert all(isinstance(item, (Record, RecordError)) for item in items)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(file_contents)
def test_fuzz_loader_yields_records_or_raises_sails_error(case):
    with tempfile.TemporaryDirectory() as directory:
        check_loader(directory, *case)


def test_sails_error_family():
    assert issubclass(DataFormatError, InputError) and issubclass(RecordError, ValidationFailed)
    error = RecordError(3, "field 'x' is empty", "empty-field")
    assert error.index == 3 and error.code == "empty-field" and str(error) == "record 3: field 'x' is empty"
