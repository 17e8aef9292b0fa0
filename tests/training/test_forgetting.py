"""The forgetting table and --replay, checked against separate evaluations on tiny real models."""
from __future__ import annotations

import math
import shutil
from pathlib import Path

import pytest

from helpers import QA_PAIRS, REPO, load_benchmark, write_qa
from mtn_sails.model_dir import store
from mtn_sails.config import TrainConfig
from mtn_sails.model_dir.history_file import load_history
from mtn_sails.training.session import replay_pool, train
from mtn_sails.data.template import PromptTemplate

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

    from mtn_sails.training.forgetting import evaluate_records

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
    import mtn_sails.training.retention as retention

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

    from mtn_sails.training.tokenizing import tokenize_records

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


def test_nearest_replay_rehearses_the_stored_answers_whose_prompts_resemble_the_new_session(tiny_model_dir, tmp_path,
                                                                                           spied):
    from mtn_sails.training.nearness import nearness

    output = tmp_path / "trained_model"
    session(write_qa(tmp_path / "s1.json"), output, model_name=str(tiny_model_dir))
    stored = [record.prompt for record in store.read_slices(output, store.REPLAY_DIR)[1]]
    session(write_qa(tmp_path / "s2.json", SESSION_2_PAIRS), output, replay=0.5, replay_select="nearest", epochs=3)
    closeness = nearness(stored, [question for question, _ in SESSION_2_PAIRS])
    near = sorted(range(len(stored)), key=lambda p: -closeness[p])[:max(len(stored) // 4, 3)]
    for drawn in spied[-1].training.sampler.drawn:
        assert sum(p in near for p in drawn) >= round(0.75 * len(drawn))


def test_replay_pool_is_every_earlier_slice(tmp_path):
    from mtn_sails.data.files import load_records

    model_dir = tmp_path / "model"
    assert replay_pool(model_dir, 0.5) == {}  # nothing stored yet
    records = list(load_records(write_qa(tmp_path / "qa.json")))
    store.write_slice(model_dir, store.REPLAY_DIR, 1, records, store.MAX_REPLAY_RECORDS, seed=0)
    store.write_slice(model_dir, store.REPLAY_DIR, 3, records[:2], store.MAX_REPLAY_RECORDS, seed=0)
    assert replay_pool(model_dir, 0.0) == {}
    assert replay_pool(model_dir, 0.1) == {1: store.read_slices(model_dir, store.REPLAY_DIR)[1],
                                                   3: store.read_slices(model_dir, store.REPLAY_DIR)[3]}
    assert [len(records) for records in replay_pool(model_dir, 0.1).values()] == [len(records), 2]


def test_benchmark_splits_facts_and_judges_the_goal_as_the_issue_states(monkeypatch):
    bench = load_benchmark("forgetting", monkeypatch)
    facts = bench.make_facts(3, 6, seed=1)
    assert len({f["question"] for session in facts for f in session}) == 18  # disjoint
    assert bench.make_facts(3, 6, seed=1) == facts
    parts = bench.halves(facts[0])
    assert parts["tune"] == facts[0][0::2] and parts["test"] == facts[0][1::2]

    own = {1: {"tune": 1.0, "test": 0.8}, 2: {"tune": 1.0, "test": 1.0}, 3: {"tune": 1.0, "test": 1.0}}
    final = {1: {"tune": 0.5, "test": 0.8}, 2: {"tune": 1.0, "test": 0.5}, 3: {"tune": 0.75, "test": 1.0}}
    continued = [{"entry": {"train_examples": 10, "epochs": 4, "replayed_examples": 4}, "seconds": 2.0,
                  "cpu_seconds": 1.0, "added_mb": 5},
                 {"entry": {"train_examples": 10, "epochs": 4, "replayed_examples": 0}, "seconds": 4.0,
                  "cpu_seconds": 3.0, "added_mb": 9}]
    run = bench.summarise_order([1, 2, 3], own, final, continued)
    assert run["first_kept_test"] == 1.0 and run["second_kept_test"] == 0.5 and run["last_recall_tune"] == 0.75
    assert run["exposures"] == [0.1, 0.0] and run["seconds_per_session"] == 3.0 and run["added_mb"] == 9
    assert run["cpu_seconds_per_session"] == 2.0

    def summary(kept, kept_min, exposures=0.1, last=1.0, seconds=10.0):
        stat = lambda mean, low: {"mean": mean, "min": low}  # noqa: E731
        return {"first_kept": stat(kept, kept_min), "second_kept": stat(kept, kept_min),
                "last_recall": stat(last, last), "cpu_seconds_per_session": stat(seconds, seconds),
                "exposures_max": exposures}

    reference = summary(0.0, 0.0, exposures=0.0, last=1.0, seconds=10.0)
    assert bench.meets_goal(summary(0.92, 0.86), reference)
    assert not bench.meets_goal(summary(0.92, 0.80), reference)  # one seed under 0.85
    assert not bench.meets_goal(summary(0.95, 0.9, exposures=0.11), reference)  # over the replay budget
    assert not bench.meets_goal(summary(0.95, 0.9, last=0.9), reference)  # new answers 10 points lower
    assert not bench.meets_goal(summary(0.95, 0.9, seconds=16.0), reference)  # over 1.5x the session time


@pytest.mark.slow
def test_forgetting_benchmark_smallest_form_writes_its_figures(tmp_path):
    import json
    import subprocess
    import sys

    out = tmp_path / "forgetting.json"
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "forgetting.py"), "--quick", "--size", "tiny",
                           "--facts", "4", "--epochs", "2", "--pretrain-records", "5", "--pretrain-epochs", "1",
                           "--vocab-size", "400", "--arms", "no-replay", "defaults", "--json-out", str(out)],
                          cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(out.read_text())
    assert set(report["summaries"]) == {"tune", "test"}
    assert set(report["summaries"]["test"]) == {"no-replay", "defaults"}
    for summary in report["summaries"]["test"].values():
        assert {"first_kept", "second_kept", "last_recall", "general_ppl", "seconds_per_session",
                "cpu_seconds_per_session", "added_mb",
                "exposures_max", "meets_goal"} <= set(summary)
    [plain] = report["runs"]["no-replay"]
    assert plain["order"] == [1, 2, 3] and plain["exposures"] == [0.0, 0.0]
    assert report["runs"]["defaults"][0]["exposures"][-1] > 0  # the defaults replay
    assert "Test half:" in done.stdout
