"""SessionRecord: the one definition of a history entry, reading every file earlier versions wrote."""
from __future__ import annotations

import json
import shutil

import pytest

from helpers import REPO
from mtn_sails.cli import main
from mtn_sails.model_dir.history_file import HISTORY_FILE, load_history, write_history
from mtn_sails.model_dir.session_record import ForgettingRow, SessionRecord

HISTORIES = REPO / "tests" / "fixtures" / "histories"
# Written by the code of the first release: two sessions, and a model whose session 1 was trained by an
# earlier commit (77886c0, no loss curve) and continued by the release.
COMMITTED = sorted(HISTORIES.glob("*.json"))


def test_committed_histories_exist():
    assert {path.stem for path in COMMITTED} == {"two_sessions_v0.1", "continued_across_versions"}


@pytest.mark.parametrize("path", COMMITTED, ids=lambda p: p.stem)
def test_every_committed_history_loads_and_writes_back_byte_for_byte(path, tmp_path):
    shutil.copy(path, tmp_path / HISTORY_FILE)
    sessions = load_history(tmp_path)
    stored = json.loads(path.read_text(encoding="utf-8"))["sessions"]
    assert [session.to_json() for session in sessions] == stored
    assert all(isinstance(row, ForgettingRow) for row in sessions[-1].forgetting)
    write_history(tmp_path, sessions)
    assert json.loads((tmp_path / HISTORY_FILE).read_text(encoding="utf-8"))["sessions"] == stored


@pytest.mark.parametrize("path", COMMITTED, ids=lambda p: p.stem)
def test_history_prints_what_the_first_release_printed(path, tmp_path, capsys):
    model_dir = tmp_path / "trained_model"
    model_dir.mkdir()
    shutil.copy(path, model_dir / HISTORY_FILE)
    assert main(["history", "--output-dir", str(model_dir)]) == 0
    printed = capsys.readouterr().out.splitlines()
    expected = path.with_suffix(".history.txt").read_text(encoding="utf-8").splitlines()
    assert printed[1:] == expected[1:]  # the first line names the directory


def test_an_older_file_lacks_fields_that_read_as_none_and_stay_absent():
    stored = json.loads((HISTORIES / "continued_across_versions.json").read_text(encoding="utf-8"))["sessions"]
    first = SessionRecord.from_json(stored[0])
    assert "loss_curve" not in stored[0] and first.loss_curve is None
    assert "loss_curve" not in first.to_json()


def test_unknown_keys_are_kept_not_dropped():
    stored = {"session": 1, "learning_rate": 1e-5, "from_the_future": {"a": 1},
              "forgetting": [{"session": 0, "ratio": 1.5, "new_metric": 0.25}]}
    record = SessionRecord.from_json(stored)
    assert record.extra == {"from_the_future": {"a": 1}}
    assert record.forgetting[0].extra == {"new_metric": 0.25}
    assert record.to_json() == stored


def test_a_record_reads_like_the_dict_it_is_stored_as():
    record = SessionRecord(session=2, learning_rate=1e-5, forgetting=[ForgettingRow(1, ratio=1.25)])
    assert record["learning_rate"] == 1e-5 and record.get("missing") is None
    assert record["forgetting"][0]["ratio"] == 1.25
    assert record == record.to_json() and dict(record) == record.to_json()


def test_final_train_loss_is_the_last_epoch_not_the_mean():
    curve = [{"step": 5, "epoch": 1.0, "loss": 3.0}, {"step": 10, "epoch": 2.0, "loss": 0.5},
             {"step": 10, "epoch": 2.0, "eval_loss": 0.7}]
    assert SessionRecord(session=1, train_loss=1.75, loss_curve=curve).final_train_loss() == 0.5
    assert SessionRecord(session=1, train_loss=1.75).final_train_loss() == 1.75
