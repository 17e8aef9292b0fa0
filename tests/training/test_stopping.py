"""--epochs left out: a session trains until its own answers are recalled, within a cap, and says why it stopped."""
from __future__ import annotations

import contextlib
import io
import json

from helpers import write_qa
from mtn_sails.config import TrainConfig
from mtn_sails.training.stopping import DEFAULT_EPOCHS, EpochPlan, epoch_plan, lr_schedule, stop_message


def test_the_epoch_plan_is_the_given_count_else_until_recalled_within_the_cap():
    assert epoch_plan(4.0, 30.0, 0.95, has_probe=True) == EpochPlan(4.0)
    assert epoch_plan(None, 30.0, 0.95, has_probe=True) == EpochPlan(30.0, 0.95)
    assert epoch_plan(None, 30.0, 0.95, has_probe=False) == EpochPlan(DEFAULT_EPOCHS)  # plain text: nothing to recall
    assert epoch_plan(None, 2.0, 0.95, has_probe=False) == EpochPlan(2.0)


def test_the_stop_line_says_whether_the_target_or_the_cap_ended_the_session():
    plan = EpochPlan(30.0, 0.95)
    assert stop_message(EpochPlan(3.0), [0.5], 3.0) is None
    assert stop_message(plan, [0.2, 0.7, 1.0], 3.0) == \
        "🎯 Stopped after epoch 3: 100% of this session's answers recalled (target 95%)"
    capped = stop_message(plan, [0.1, 0.5], 30.0)
    assert capped.startswith("⏱️  Stopped at the cap of 30 epochs with 50% of this session's answers recalled")
    assert "--max-epochs" in capped


def run_session(tiny_model_dir, tmp_path, **overrides) -> tuple[dict, str]:
    from mtn_sails.training.session import train

    data = write_qa(tmp_path / "qa.json")
    printed = io.StringIO()
    settings = dict(data_file=str(data), output_dir=str(tmp_path / "model"), model_name=str(tiny_model_dir),
                    learning_rate=5e-3, eval_split=0, batch_size=4, max_length=64, save_steps=10**9) | overrides
    with contextlib.redirect_stdout(printed):
        train(TrainConfig(**settings))
    return json.loads((tmp_path / "model" / "training_history.json").read_text())["sessions"][0], printed.getvalue()


def test_a_session_without_epochs_stops_once_its_answers_are_recalled(tiny_model_dir, tmp_path):
    session, printed = run_session(tiny_model_dir, tmp_path, max_epochs=80)
    assert session["stopped"] == "recalled"
    assert session["recall"] >= 0.95
    assert 1 <= session["epochs"] < 80
    assert f"Stopped after epoch {session['epochs']:g}: 100% of this session's answers recalled" in printed
    assert "at most 80 epochs, until 95% of its answers are recalled" in printed


def test_a_session_at_its_cap_says_how_far_it_got(tiny_model_dir, tmp_path):
    session, printed = run_session(tiny_model_dir, tmp_path, max_epochs=1, learning_rate=1e-5)
    assert session["stopped"] == "cap" and session["epochs"] == 1
    assert "Stopped at the cap of 1 epochs" in printed


def test_a_given_epoch_count_is_kept_and_no_stop_line_is_printed(tiny_model_dir, tmp_path):
    session, printed = run_session(tiny_model_dir, tmp_path, epochs=2)
    assert session["epochs"] == 2 and session["stopped"] is None and session["lr_schedule"] == "linear"
    assert "Stopped" not in printed


def test_a_session_that_trains_until_recalled_keeps_its_rate_and_a_fixed_count_decays():
    assert lr_schedule(EpochPlan(30.0, 0.95), None) == "constant"
    assert lr_schedule(EpochPlan(3.0), None) == "linear"
    assert lr_schedule(EpochPlan(30.0, 0.95), "cosine") == "cosine"  # --lr-schedule wins


def test_a_session_without_epochs_records_the_constant_schedule_it_trained_with(tiny_model_dir, tmp_path):
    session, _ = run_session(tiny_model_dir, tmp_path, max_epochs=80)
    assert session["stopped"] == "recalled" and session["lr_schedule"] == "constant"
