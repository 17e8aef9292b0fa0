"""The forgetting table and --replay, checked against separate evaluations on tiny real models."""
from __future__ import annotations

import math
import shutil
from pathlib import Path

import pytest

from conftest import QA_PAIRS, write_qa
from mtn_sails import recipes, store
from mtn_sails.config import TrainConfig
from mtn_sails.history import load_history
from mtn_sails.recipes import train
from mtn_sails.template import PromptTemplate

SESSION_2_PAIRS = [
    ("What is a compiler?", "A compiler translates source code into machine code before it runs."),
    ("What is a class?", "A class is a blueprint that describes the data and behaviour of objects."),
    ("What is a tuple?", "A tuple is an ordered collection of items that cannot be changed."),
    ("What is JSON?", "JSON is a text format for structured data made of objects, arrays and values."),
    ("What is a bug?", "A bug is a mistake in a program that makes it behave in an unintended way."),
    ("What is Git?", "Git is a version control system that records changes to files over time."),
    ("What is an API?", "An API is a set of rules that lets one program ask another for data or services."),
    ("What is a server?", "A server is a computer or program that answers requests from other programs."),
]


def session(data: Path, output: Path, model_name: str | None = None, **overrides) -> dict:
    """One real 1-epoch session on the tiny model; its history entry."""
    settings = dict(epochs=1, batch_size=4, max_length=64, eval_split=0.25, seed=7, learning_rate=1e-3)
    return train(TrainConfig(data_file=str(data), output_dir=str(output), model_name=model_name,
                             **{**settings, **overrides})).session


def held_out_loss(model_dir: Path, records: list, max_length: int) -> float:
    """Held-out loss of `records` under the model saved in `model_dir`, evaluated from scratch."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from mtn_sails.trainer import evaluate_records

    model = AutoModelForCausalLM.from_pretrained(model_dir)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    return evaluate_records(model, tokenizer, records, PromptTemplate.load(model_dir), max_length)


def qa_key(record) -> tuple[str, str]:
    return record.prompt, record.response


def test_forgetting_table_matches_separate_evaluations(tiny_model_dir, tmp_path):
    first, second = write_qa(tmp_path / "s1.json"), write_qa(tmp_path / "s2.json", SESSION_2_PAIRS)
    output, after_first = tmp_path / "trained_model", tmp_path / "after_session_1"
    session(first, output, model_name=str(tiny_model_dir))
    shutil.copytree(output, after_first)
    entry = session(second, output)

    sessions = load_history(output)
    assert [s["session"] for s in sessions] == [1, 2] and sessions[1] == entry
    assert sessions[0]["forgetting"] == []
    [row] = entry["forgetting"]
    assert row["session"] == 1
    held_out = store.read_slices(output, store.HELD_OUT_DIR)
    assert sorted(held_out) == [1, 2]
    assert held_out[1] == store.read_slices(after_first, store.HELD_OUT_DIR)[1]  # carried over unchanged
    assert len(held_out[1]) == round(len(QA_PAIRS) * 0.25)

    max_length = entry["max_length"]
    assert row["loss_before"] == sessions[0]["held_out_loss"]
    assert held_out_loss(after_first, held_out[1], max_length) == pytest.approx(row["loss_before"], rel=1e-4)
    assert held_out_loss(output, held_out[1], max_length) == pytest.approx(row["loss_after"], rel=1e-4)
    assert row["loss_after"] != pytest.approx(row["loss_before"], rel=1e-6)  # session 2 did move the model
    assert row["perplexity_before"] == pytest.approx(math.exp(row["loss_before"]), rel=1e-9)
    assert row["perplexity_after"] == pytest.approx(math.exp(row["loss_after"]), rel=1e-9)
    assert row["ratio"] == pytest.approx(row["perplexity_after"] / row["perplexity_before"], rel=1e-9)
    assert held_out_loss(output, held_out[2], max_length) == pytest.approx(entry["held_out_loss"], rel=1e-4)


@pytest.fixture
def spied(monkeypatch) -> list:
    """The retention set-up (replay pool, sampler) of each session, as built for the Trainer."""
    import mtn_sails.retention as retention

    kits: list = []
    prepare = retention.prepare_retention

    def spy(*args, **kwargs):
        kits.append(prepare(*args, **kwargs))
        return kits[-1]

    monkeypatch.setattr(retention, "prepare_retention", spy)
    return kits


def test_replay_draws_only_from_earlier_sessions_afresh_each_epoch(tiny_model_dir, tmp_path, spied):
    first, second = write_qa(tmp_path / "s1.json"), write_qa(tmp_path / "s2.json", SESSION_2_PAIRS)
    output = tmp_path / "trained_model"

    entry = session(first, output, model_name=str(tiny_model_dir), replay=0.5)
    assert entry["replayed_examples"] == 0 and spied[0].per_epoch == 0  # a first session has nothing to replay
    without_replay = tmp_path / "without_replay"
    shutil.copytree(output, without_replay)
    stored_first = store.read_slices(output, store.REPLAY_DIR)[1]

    entry = session(second, output, replay=0.5, replay_draw="epoch", epochs=3)
    kit = spied[-1]
    assert kit.per_epoch == entry["train_examples"] // 2  # 0.5 per new example, rounded down
    from transformers import AutoTokenizer

    from mtn_sails.tokenized import tokenize_records

    template, tokenizer = PromptTemplate.load(output), AutoTokenizer.from_pretrained(output)
    assert kit.pool_examples == tokenize_records(stored_first, tokenizer, template, 64)  # session 1's, nothing else
    drawn = kit.training.sampler.drawn
    assert len(drawn) == 3 and all(len(epoch) == kit.per_epoch for epoch in drawn)
    assert len({tuple(sorted(epoch)) for epoch in drawn}) > 1  # other records in other epochs
    assert entry["replayed_examples"] == 3 * kit.per_epoch
    assert sorted(store.read_slices(output, store.REPLAY_DIR)) == [1, 2]
    assert {qa_key(r) for r in store.read_slices(output, store.REPLAY_DIR)[2]} <= set(SESSION_2_PAIRS)

    entry = session(second, without_replay, replay=0.0)
    assert entry["replayed_examples"] == 0 and spied[-1].pool_examples == [] and spied[-1].training.sampler is None


def test_replay_pool_is_every_earlier_slice(tmp_path):
    from mtn_sails.data import load_records

    model_dir = tmp_path / "model"
    assert recipes.replay_pool(model_dir, 0.5) == {}  # nothing stored yet
    records = list(load_records(write_qa(tmp_path / "qa.json")))
    store.write_slice(model_dir, store.REPLAY_DIR, 1, records, store.MAX_REPLAY_RECORDS, seed=0)
    store.write_slice(model_dir, store.REPLAY_DIR, 3, records[:2], store.MAX_REPLAY_RECORDS, seed=0)
    assert recipes.replay_pool(model_dir, 0.0) == {}
    assert recipes.replay_pool(model_dir, 0.1) == {1: store.read_slices(model_dir, store.REPLAY_DIR)[1],
                                                   3: store.read_slices(model_dir, store.REPLAY_DIR)[3]}
    assert [len(records) for records in recipes.replay_pool(model_dir, 0.1).values()] == [len(records), 2]
