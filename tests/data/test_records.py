"""The stored form of records: what the model directory's held-out and replay slices hold, old and new."""
from __future__ import annotations

import json

import pytest
from test_shapes import PREFERENCE, SHAPES

from mtn_sails.model_dir import store
from mtn_sails.data.files import Record, Turn, load_records, normalise, record_to_json
from mtn_sails.training.tokenizing import iter_records, records_to_dataset

# Lines as the code before tool calling wrote them (data.record_to_json of that version), one per kind.
SLICE_WRITTEN_BEFORE = [
    '{"text": "Paris is the capital of France."}',
    '{"prompt": "What is the capital of France?", "completion": "Paris."}',
    '{"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Capital of Italy?"}, '
    '{"role": "assistant", "content": "Rome."}]}',
]


def test_slices_written_before_tool_calling_still_load(tmp_path):
    (tmp_path / store.REPLAY_DIR).mkdir()
    for session, line in enumerate(SLICE_WRITTEN_BEFORE, start=1):
        store.slice_path(tmp_path, store.REPLAY_DIR, session).write_text(line + "\n", encoding="utf-8")
    slices = store.read_slices(tmp_path, store.REPLAY_DIR)
    assert slices == {
        1: [Record(0, "text", "text", text="Paris is the capital of France.")],
        2: [Record(0, "pair", "prompt/completion", prompt="What is the capital of France?", response="Paris.")],
        3: [Record(0, "chat", "messages", turns=(Turn("system", "Be brief."), Turn("user", "Capital of Italy?"),
                                                  Turn("assistant", "Rome.")))],
    }
    # ...and today's code writes those kinds exactly as before.
    assert [json.dumps(record_to_json(records[0])) for records in slices.values()] == SLICE_WRITTEN_BEFORE


def _same_example(stored: Record, original: Record) -> bool:
    if original.kind == "chat" or stored.kind == "chat":
        as_turns = original.turns or (Turn("user", original.prompt), Turn("assistant", original.response))
        return stored.turns == as_turns
    return (stored.kind, stored.text, stored.prompt, stored.response) == (
        original.kind, original.text, original.prompt, original.response)


@pytest.mark.parametrize("name", sorted(SHAPES) + [f"preference: {name}" for name in sorted(PREFERENCE)])
def test_every_shape_is_stored_as_the_same_training_example(name):
    record = SHAPES[name][1] if name in SHAPES else PREFERENCE[name.removeprefix("preference: ")][1]
    assert _same_example(normalise(0, record_to_json(record)), record)


def test_a_slice_of_alpaca_with_and_without_history_holds_one_shape(tmp_path):
    data = tmp_path / "alpaca.json"
    data.write_text(json.dumps([{"instruction": "Capital of Italy?", "output": "Rome."},
                                {"instruction": "And of Spain?", "output": "Madrid.",
                                 "history": [["Capital of France?", "Paris."]]}]), encoding="utf-8")
    records = list(load_records(data))
    assert [r.kind for r in records] == ["pair", "chat"]
    store.write_slice(tmp_path, store.REPLAY_DIR, 1, records, limit=10, seed=0)
    stored = store.read_slices(tmp_path, store.REPLAY_DIR)[1]
    assert all(_same_example(s, r) for s, r in zip(stored, records))


def test_tool_turns_and_weights_survive_the_arrow_rows():
    records = [SHAPES[name][1] for name in ("sharegpt tools", "openai weights", "openai parallel tool calls")]
    assert list(iter_records(records_to_dataset(records))) == records
