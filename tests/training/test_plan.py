"""The guide's detection rules and training plan, tested without training."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from mtn_sails.config import (CONTINUE_LEARNING_RATE, SCRATCH_CONTINUE_LEARNING_RATE, SCRATCH_LEARNING_RATE,
                              STANDARD_LEARNING_RATE)
from mtn_sails.model_dir.inspection import check_model_exists, check_weights_readable, inspect_model_dir
from mtn_sails.training.plan import plan_training
from mtn_sails.errors import CorruptModelError


def fake_model(directory: Path, weights: str = "model.safetensors") -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text("{}")
    (directory / weights).write_bytes(b"x")
    return directory


def fake_onnx(directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "model.onnx").write_bytes(b"onnx")
    return directory


def test_guide_rule_config_and_weights(tmp_path):
    assert not check_model_exists(tmp_path / "missing")
    assert check_model_exists(fake_model(tmp_path / "a"))
    assert check_model_exists(fake_model(tmp_path / "b", "pytorch_model.bin"))
    only_config = tmp_path / "c"
    only_config.mkdir()
    (only_config / "config.json").write_text("{}")
    assert not check_model_exists(only_config)


def test_sharded_weights_count_and_missing_shards_do_not(tmp_path):
    directory = tmp_path / "sharded"
    directory.mkdir()
    (directory / "config.json").write_text("{}")
    shards = {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}
    (directory / "model.safetensors.index.json").write_text(json.dumps({"weight_map": shards}))
    (directory / shards["a"]).write_bytes(b"x")
    state = inspect_model_dir(directory)
    assert state.status == "incomplete" and state.missing == (shards["b"],)
    (directory / shards["b"]).write_bytes(b"x")
    assert check_model_exists(directory)


def test_scenario_1_fresh_start(tmp_path):
    plan = plan_training(str(tmp_path / "trained_model"), None, None)
    assert not plan.continues and plan.source == "distilgpt2"
    assert plan.learning_rate == STANDARD_LEARNING_RATE == 5e-5
    assert plan.messages == ("🆕 No existing model found. Training from base model 'distilgpt2'",
                             "📚 Using standard learning rate (5e-05) for initial training")


def test_scenario_2_trained_model_continues_at_lower_rate(tiny_model_copy):
    plan = plan_training(str(tiny_model_copy), None, None)
    assert plan.continues and plan.source == str(tiny_model_copy)
    assert plan.learning_rate == CONTINUE_LEARNING_RATE == 1e-5
    assert plan.messages == (f"🔄 Found existing trained model at {tiny_model_copy}",
                             "🔄 Continuing training from previous checkpoint...",
                             "📚 Using lower learning rate (1e-05) for fine-tuning to preserve existing knowledge")


def test_scenario_3_both_exist_pipeline_messages(tiny_model_copy, tmp_path):
    onnx = fake_onnx(tmp_path / "onnx_model")
    plan = plan_training(str(tiny_model_copy), None, None, onnx_output=str(onnx))
    assert plan.continues and plan.learning_rate == 1e-5
    assert plan.messages[:2] == (f"🔄 Found existing ONNX model at {onnx}",
                                 f"🔄 Found existing trained model at {tiny_model_copy}")


def test_scenario_4_onnx_only_trains_from_base(tmp_path):
    onnx = fake_onnx(tmp_path / "onnx_model")
    plan = plan_training(str(tmp_path / "trained_model"), None, None, onnx_output=str(onnx))
    assert not plan.continues and plan.learning_rate == 5e-5 and plan.source == "distilgpt2"
    assert plan.messages[0] == f"🔄 Found existing ONNX model at {onnx}"
    assert plan.messages[1].startswith("⚠️  Source trained model not found")


def test_scenario_5_incomplete_model_is_a_fresh_start_that_keeps_the_files(tmp_path):
    directory = tmp_path / "trained_model"
    directory.mkdir()
    (directory / "config.json").write_text("{}")
    plan = plan_training(str(directory), None, None)
    assert not plan.continues and plan.learning_rate == 5e-5
    assert "missing model.safetensors or pytorch_model.bin" in plan.messages[0]
    assert plan.backup_existing


def test_explicit_learning_rate_wins_but_detection_still_loads(tiny_model_copy):
    plan = plan_training(str(tiny_model_copy), None, 2e-5)
    assert plan.continues and plan.source == str(tiny_model_copy) and plan.learning_rate == 2e-5
    assert plan.messages[-1] == "📚 Using learning rate (2e-05) from --learning-rate"


def test_explicit_model_name_loads_it_and_keeps_existing(tiny_model_copy):
    plan = plan_training(str(tiny_model_copy), "gpt2", None)
    assert not plan.continues and plan.source == "gpt2" and plan.learning_rate == 5e-5
    assert plan.backup_existing
    assert any("kept as a backup" in message for message in plan.messages)


def test_scratch_base_uses_measured_rates_with_the_guide_ratio(tmp_path, tiny_model_copy):
    fresh = plan_training(str(tmp_path / "new"), "scratch", None)
    assert fresh.learning_rate == SCRATCH_LEARNING_RATE
    (tiny_model_copy / "training_history.json").write_text(json.dumps({"sessions": [{"base_model": "scratch"}]}))
    again = plan_training(str(tiny_model_copy), None, None)
    assert again.learning_rate == SCRATCH_CONTINUE_LEARNING_RATE == pytest.approx(SCRATCH_LEARNING_RATE / 5)


def test_truncated_safetensors_is_corrupt(tiny_model_copy):
    weights = tiny_model_copy / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(CorruptModelError, match="truncated"):
        plan_training(str(tiny_model_copy), None, None)


def test_unreadable_bin_is_corrupt(tmp_path):
    directory = fake_model(tmp_path / "m", "pytorch_model.bin")
    (directory / "pytorch_model.bin").write_bytes(b"not a torch file at all")
    with pytest.raises(CorruptModelError, match="unreadable"):
        check_weights_readable(directory)


def test_real_weights_are_readable(tiny_model_dir):
    check_weights_readable(tiny_model_dir)
