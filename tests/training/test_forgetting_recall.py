"""Answer recall the user sees: each session's probe, answered again after every later session."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from helpers import QA_PAIRS, write_qa
from mtn_sails.model_dir import store
from mtn_sails.cli import main
from mtn_sails.model_dir.history_file import load_history
from mtn_sails.training.probe import score_probe
from test_forgetting import SESSION_2_PAIRS

# Enough passes at a high rate for the tiny model to learn 4 answers word for word (recall 1.0 measured),
# then lose them to 4 others; no checkpoints, which would cost more than the steps.
MEMORISE = ["--epochs", "100", "--learning-rate", "3e-3", "--batch-size", "4", "--max-length", "64",
            "--eval-split", "0", "--replay", "0", "--seed", "7", "--save-steps", "1000"]
FIRST, SECOND = QA_PAIRS[:4], SESSION_2_PAIRS[:4]


def probe_score_of(model_dir: Path, records: list):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from mtn_sails.data.template import PromptTemplate

    model = AutoModelForCausalLM.from_pretrained(model_dir)
    return score_probe(model, AutoTokenizer.from_pretrained(model_dir), PromptTemplate.load(model_dir), records)


@pytest.fixture(scope="module")
def two_sessions(tiny_model_dir, tmp_path_factory):
    """(folder, output dir, copy after session 1, session 2's printout) of two memorising sessions."""
    import io
    from contextlib import redirect_stdout

    root = tmp_path_factory.mktemp("recall")
    first, second = write_qa(root / "s1.json", FIRST), write_qa(root / "s2.json", SECOND)
    output, after_first = root / "trained_model", root / "after_session_1"
    assert main(["train", "--data-file", str(first), "--output-dir", str(output), "--model-name",
                 str(tiny_model_dir), *MEMORISE]) == 0
    shutil.copytree(output, after_first)
    printed = io.TextIOWrapper(io.BytesIO(), encoding="utf-8")  # a terminal that prints emoji
    with redirect_stdout(printed):
        assert main(["train", "--data-file", str(second), "--output-dir", str(output), *MEMORISE]) == 0
    printed.seek(0)
    return root, output, after_first, printed.read()


def test_each_session_stores_a_probe_of_its_trained_answers(two_sessions):
    _, output, _, _ = two_sessions
    probes = store.read_slices(output, store.PROBE_DIR)
    assert sorted(probes) == [1, 2]
    assert {(r.prompt, r.response) for r in probes[1]} == set(FIRST)
    assert {(r.prompt, r.response) for r in probes[2]} == set(SECOND)


def test_recall_before_and_after_equal_separate_evaluations_of_the_saved_models(two_sessions):
    _, output, after_first, _ = two_sessions
    first, second = load_history(output)
    probe = store.read_slices(output, store.PROBE_DIR)[1]
    right_after = probe_score_of(after_first, probe)
    assert first.recall == right_after.recall and first.probe_count == len(FIRST)
    assert first.answer_logprob == pytest.approx(right_after.answer_logprob, rel=1e-4)
    [row] = second.forgetting
    now = probe_score_of(output, probe)
    assert (row.recall_before, row.recall_after) == (first.recall, now.recall)
    assert row.answer_logprob_after == pytest.approx(now.answer_logprob, rel=1e-4)
    assert row.kept == pytest.approx(now.recall / first.recall)
    assert first.recall >= 0.5  # the setting does memorise: the test below sees a real loss
    assert second.recall == probe_score_of(output, store.read_slices(output, store.PROBE_DIR)[2]).recall


def test_a_session_that_loses_earlier_answers_says_which_and_what_would_keep_them(two_sessions):
    _, output, _, printed = two_sessions
    [row] = load_history(output)[1].forgetting
    assert row.kept < 0.9
    warning = next(line for line in printed.splitlines() if line.startswith("⚠️  Session 1 lost answers"))
    assert f"recall {row.recall_before:.2f} -> {row.recall_after:.2f}" in warning
    assert "train it with --replay 0.1 to keep more of them (this session: --replay 0)" in warning
    assert "📊 Forgetting (answer recall and held-out perplexity of earlier sessions, then -> now):" in printed


def test_history_shows_recall_in_the_table_the_rows_and_json(two_sessions, capsys):
    _, output, _, _ = two_sessions
    assert main(["history", "--output-dir", str(output)]) == 0
    out = capsys.readouterr().out
    header = out.splitlines()[1]
    assert "recall" in header.split("  ")
    assert "session 1: recall " in out and "kept " in out and "answer log-prob" in out
    assert main(["history", "--output-dir", str(output), "--json"]) == 0
    stored = json.loads(capsys.readouterr().out)["sessions"]
    assert stored[1]["forgetting"][0]["recall_after"] == load_history(output)[1].forgetting[0].recall_after


def test_training_the_same_file_again_is_said(two_sessions, capsys):
    root, output, _, _ = two_sessions
    copy = root / "again"
    shutil.copytree(output, copy)
    assert main(["train", "--data-file", str(root / "s1.json"), "--output-dir", str(copy), "--epochs", "1",
                 "--max-length", "64", "--eval-split", "0"]) == 0
    assert "ℹ️  this file was trained in session 1;" in capsys.readouterr().out


def test_a_probe_answer_longer_than_the_model_positions_is_scored_not_a_crash(tiny_model_dir, tmp_path):
    from transformers import AutoConfig

    from mtn_sails.data.files import load_records

    positions = AutoConfig.from_pretrained(tiny_model_dir).n_positions
    long_answer = " ".join(["word"] * positions)
    records = list(load_records(write_qa(tmp_path / "long.json", [("Say it all?", long_answer)] + FIRST)))
    score = probe_score_of(tiny_model_dir, records)
    assert score.count == 5 and score.recall is not None and score.answer_logprob is not None


def test_the_card_and_chart_show_recall(two_sessions):
    from mtn_sails.model_dir.history_file import CARD_FILE, FORGETTING_FILE
    from mtn_sails.model_dir.history_table import forgetting_matrix

    _, output, _, _ = two_sessions
    card = (output / CARD_FILE).read_text(encoding="utf-8")
    recall_rows = forgetting_matrix(load_history(output), "recall")
    assert "Answer recall of each session's probe" in card and recall_rows[2] in card
    first, second = load_history(output)
    assert recall_rows[2] == f"| session 1 | {first.recall:.3g} | {second.forgetting[0].recall_after:.3g} |"
    assert (output / FORGETTING_FILE).read_bytes()[:4] == b"\x89PNG"
