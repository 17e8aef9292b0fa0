"""The guide's scenarios end to end through the CLI: real Trainer, real files, tiny models."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers import EXAMPLES, REPO, run_cli, write_qa
from mtn_sails.model_dir import store
from mtn_sails.cli import main
from mtn_sails.model_dir.inspection import check_model_exists
from mtn_sails.model_dir.history_file import load_history

BF16_LOSS_TOLERANCE = 0.01  # relative, per epoch: 2e-4 measured here (tiny model), see BENCHMARKS.md

SESSION_FILES = {"README.md", "config.json", "generation_config.json", "held_out", "merges.txt", "loss_curve.png",
                 "forgetting.png",
                 "model.safetensors", "mtn_sails_config.json", "probe", "prompt_template.json", "replay",
                 "special_tokens_map.json", "tokenizer.json", "tokenizer_config.json",
                 "training_history.json", "vocab.json"}


def train_args(data: Path, output: Path, *extra: str) -> list[str]:
    return ["train", "--data-file", str(data), "--output-dir", str(output), "--epochs", "1",
            "--batch-size", "4", *extra]


def weights_bytes(directory: Path) -> bytes:
    return (directory / "model.safetensors").read_bytes()


def test_scenario_1_then_2_continue_at_the_lower_rate(tiny_model_dir, tmp_path, capsys):
    data = write_qa(tmp_path / "qa.json", repeat=2)
    output = tmp_path / "trained_model"
    assert main(train_args(data, output, "--model-name", str(tiny_model_dir))) == 0
    first = capsys.readouterr().out
    assert f"🆕 No existing model found. Training from base model '{tiny_model_dir}'" in first
    assert "📚 Using standard learning rate (5e-05) for initial training" in first
    assert {p.name for p in output.iterdir()} == SESSION_FILES
    # gelu_new of the base is saved as its fused kernel, the same function (tests/test_trainer.py)
    assert json.loads((output / "config.json").read_text())["activation_function"] == "gelu_pytorch_tanh"
    weights_after_first = weights_bytes(output)

    assert main(train_args(data, output)) == 0
    second = capsys.readouterr().out
    assert f"🔄 Found existing trained model at {output}" in second
    assert "🔄 Continuing training from previous checkpoint..." in second
    assert "📚 Using lower learning rate (1e-05) for fine-tuning to preserve existing knowledge" in second
    assert weights_bytes(output) != weights_after_first
    sessions = load_history(output)
    assert [s["learning_rate"] for s in sessions] == [5e-5, 1e-5]
    assert [s["start_kind"] for s in sessions] == ["base", "continued"]
    assert sessions[1]["start"] == str(output)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".trained_model.") and p.name != ".trained_model.lock"]


def test_explicit_learning_rate_still_continues(tiny_model_copy, qa_file, capsys):
    assert main(train_args(qa_file, tiny_model_copy, "--learning-rate", "2e-5")) == 0
    out = capsys.readouterr().out
    assert "🔄 Continuing training from previous checkpoint..." in out
    assert load_history(tiny_model_copy)[-1]["learning_rate"] == 2e-5


def test_explicit_model_name_keeps_the_existing_model_as_a_backup(tiny_model_dir, tiny_model_copy, qa_file, capsys):
    (tiny_model_copy / "marker.txt").write_text("mine")
    assert main(train_args(qa_file, tiny_model_copy, "--model-name", str(tiny_model_dir))) == 0
    out = capsys.readouterr().out
    backups = list(tiny_model_copy.parent.glob("trained_model.backup-*"))
    assert len(backups) == 1 and (backups[0] / "marker.txt").read_text() == "mine"
    assert f"kept at {backups[0]}" in out
    assert load_history(tiny_model_copy)[-1]["start_kind"] == "base"


def test_scenario_5_incomplete_model_is_a_fresh_start(tiny_model_dir, qa_file, tmp_path, capsys):
    output = tmp_path / "trained_model"
    output.mkdir()
    (output / "config.json").write_text("{}")
    assert main(train_args(qa_file, output, "--model-name", str(tiny_model_dir))) == 0
    out = capsys.readouterr().out
    assert "missing model.safetensors or pytorch_model.bin" in out
    assert "📚 Using standard learning rate (5e-05) for initial training" in out
    assert check_model_exists(output)
    assert list(tmp_path.glob("trained_model.backup-*"))


def test_corrupt_weights_exit_2_and_leave_files_untouched(tiny_model_copy, qa_file):
    weights = tiny_model_copy / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:5000])
    before = {p.name: p.read_bytes() for p in tiny_model_copy.iterdir()}
    result = run_cli(*train_args(qa_file, tiny_model_copy))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "truncated safetensors file" in result.stderr
    assert {p.name: p.read_bytes() for p in tiny_model_copy.iterdir()} == before


def test_default_base_offline_names_the_offline_options(qa_file, tmp_path):
    result = run_cli(*train_args(qa_file, tmp_path / "out"), env={"HF_HUB_OFFLINE": "1"})
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "--model-name PATH" in result.stderr and "--model-name scratch" in result.stderr
    assert not (tmp_path / "out").exists()


def test_plain_terminal_gets_the_messages_without_emoji(tiny_model_copy, qa_file):
    result = run_cli(*train_args(qa_file, tiny_model_copy), env={"PYTHONIOENCODING": "ascii"})
    assert result.returncode == 0, result.stderr
    assert "UnicodeEncodeError" not in result.stderr
    assert f"Found existing trained model at {tiny_model_copy}" in result.stdout
    assert "Using lower learning rate (1e-05)" in result.stdout


def test_history_json_lists_every_session(tiny_model_copy, qa_file, capsys):
    assert main(train_args(qa_file, tiny_model_copy)) == 0
    assert main(train_args(qa_file, tiny_model_copy)) == 0
    capsys.readouterr()
    assert main(["history", "--output-dir", str(tiny_model_copy), "--json"]) == 0
    sessions = json.loads(capsys.readouterr().out)["sessions"]
    assert [s["session"] for s in sessions] == [1, 2]
    for key in ("date", "data_file", "data_sha256", "records", "start", "learning_rate", "epochs", "train_loss",
                "eval_loss", "eval_perplexity", "duration_s", "versions", "forgetting"):
        assert key in sessions[0]
    assert main(["history", "--output-dir", str(tiny_model_copy)]) == 0
    table = capsys.readouterr().out
    assert "2 sessions" in table and "qa.json" in table


def test_newcomer_three_sessions_on_the_examples_with_the_offline_base(tmp_path, capsys):
    output = tmp_path / "trained_model"
    common = ["--output-dir", str(output), "--epochs", "1", "--batch-size", "8", "--max-length", "128"]
    assert main(["train", "--data-file", str(EXAMPLES / "programming_basics.json"), "--model-name", "scratch",
                 "--scratch-size", "tiny", *common]) == 0
    for name in ("web_development.json", "databases.json"):
        assert main(["train", "--data-file", str(EXAMPLES / name), *common]) == 0
    capsys.readouterr()
    sessions = load_history(output)
    rates = [s["learning_rate"] for s in sessions]
    assert rates[0] == pytest.approx(1e-3) and rates[1:] == [pytest.approx(rates[0] / 5)] * 2
    assert [Path(s["data_file"]).name for s in sessions] == ["programming_basics.json", "web_development.json",
                                                             "databases.json"]
    assert [row["session"] for row in sessions[2]["forgetting"]] == [1, 2]


# kill -9 at several moments: the user's model must load afterwards and the next session succeed.

def _spawn_training(data: Path, output: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(REPO / "main.py"), *train_args(data, output, *extra)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env=dict(os.environ, PYTHONIOENCODING="utf-8"))


def _kill_when(process: subprocess.Popen, condition, timeout: float = 120) -> bool:
    deadline = time.time() + timeout
    while time.time() < deadline and process.poll() is None:
        if condition():
            process.send_signal(signal.SIGKILL)
            process.wait()
            return True
        time.sleep(0.002)
    process.wait()
    return False


def _assert_intact_and_trainable(output: Path, original: bytes, data: Path, capsys):
    from transformers import AutoModelForCausalLM

    assert check_model_exists(output)
    assert weights_bytes(output) == original
    AutoModelForCausalLM.from_pretrained(output)
    assert main(train_args(data, output)) == 0
    assert "Found existing trained model" in capsys.readouterr().out


def test_kill_during_training_leaves_the_old_model(tiny_model_copy, tmp_path, capsys):
    data = write_qa(tmp_path / "qa.json", repeat=20)
    original = weights_bytes(tiny_model_copy)
    work = store.sibling(tiny_model_copy, "work")
    process = _spawn_training(data, tiny_model_copy, "--epochs", "50", "--save-steps", "2")
    assert _kill_when(process, lambda: any((work / "checkpoints").glob("checkpoint-*")))
    _assert_intact_and_trainable(tiny_model_copy, original, data, capsys)


def test_kill_during_the_save_leaves_the_old_model(tiny_model_copy, tmp_path, capsys):
    data = write_qa(tmp_path / "qa.json", repeat=3)
    original = weights_bytes(tiny_model_copy)
    staging = store.sibling(tiny_model_copy, "staging")
    for attempt in range(5):  # the save lasts a fraction of a second; try again if the window was missed
        if _kill_when(_spawn_training(data, tiny_model_copy, "--eval-split", "0"), staging.exists):
            break
        original = weights_bytes(tiny_model_copy)
    else:
        pytest.fail("never caught a session during its save")
    assert staging.exists()
    _assert_intact_and_trainable(tiny_model_copy, original, data, capsys)
    assert not staging.exists()


def test_resume_continues_an_interrupted_session_from_its_checkpoint(tiny_model_copy, tmp_path, capsys):
    data = write_qa(tmp_path / "qa.json", repeat=4)
    work = store.sibling(tiny_model_copy, "work")
    process = _spawn_training(data, tiny_model_copy, "--epochs", "4", "--save-steps", "3")
    assert _kill_when(process, lambda: store.find_resume_checkpoint(work / "checkpoints") is not None)
    assert main(train_args(data, tiny_model_copy, "--resume")) == 0
    out = capsys.readouterr().out
    assert "Resuming the interrupted session from checkpoint-" in out
    session = load_history(tiny_model_copy)[-1]
    assert session["start_kind"] == "resumed" and session["epochs"] == 4
    assert session["resumed_from_checkpoint"].startswith("checkpoint-")
    assert main(train_args(data, tiny_model_copy, "--resume")) == 2  # nothing left to resume


def test_a_trained_directory_is_a_plain_transformers_model(tiny_model_copy, qa_file):
    from transformers import pipeline

    assert main(train_args(qa_file, tiny_model_copy, "--quiet")) == 0
    generator = pipeline("text-generation", model=str(tiny_model_copy))
    prompt = "### Instruction:\nWhat is SQL?\n\n### Response:\n"
    output = generator(prompt, max_new_tokens=5, do_sample=False)[0]["generated_text"]
    assert output.startswith(prompt) and len(output) > len(prompt)


def test_bf16_on_the_cpu_is_recorded_and_saves_fp32_weights(tiny_model_copy, qa_file):
    from safetensors import safe_open

    assert main(train_args(qa_file, tiny_model_copy, "--device", "cpu", "--precision", "bf16", "--quiet")) == 0
    assert load_history(tiny_model_copy)[-1]["precision"] == "bf16"
    with safe_open(str(tiny_model_copy / "model.safetensors"), "pt") as weights:
        assert {str(weights.get_tensor(name).dtype) for name in weights.keys()} == {"torch.float32"}
    assert main(train_args(qa_file, tiny_model_copy, "--device", "cpu", "--quiet")) == 0
    assert load_history(tiny_model_copy)[-1]["precision"] == "fp32"


def test_a_bf16_first_session_follows_the_fp32_loss_curve(tiny_model_dir, qa_file, tmp_path):
    curves = {}
    for precision in ("fp32", "bf16"):
        output = tmp_path / precision
        shutil.copytree(tiny_model_dir, output)
        assert main(train_args(qa_file, output, "--device", "cpu", "--precision", precision, "--epochs", "6",
                               "--learning-rate", "3e-3", "--quiet")) == 0
        curves[precision] = [point["loss"] for point in load_history(output)[-1]["loss_curve"] if "loss" in point]
    assert len(curves["bf16"]) == len(curves["fp32"]) == 6
    assert curves["fp32"][-1] < 0.8 * curves["fp32"][0]  # it learned: the curves compared are a descent
    gaps = [abs(b - f) / f for b, f in zip(curves["bf16"], curves["fp32"])]
    print("bf16 / fp32 loss curve, relative gaps:", [f"{gap:.1e}" for gap in gaps])
    assert max(gaps) < BF16_LOSS_TOLERANCE, gaps


def test_examples_sharing_rows_learn_what_padded_rows_learn(tiny_model_dir, qa_file, tmp_path):
    """The default (a batch's examples share rows) against --pad-examples: the same loss curve and held-out loss
    (dropout off: its random draws follow the tensors' shapes, which differ between the layouts)."""
    sessions = {}
    for layout, extra in (("shared", ()), ("padded", ("--pad-examples",))):
        output = tmp_path / layout
        shutil.copytree(tiny_model_dir, output)
        config = json.loads((output / "config.json").read_text())
        config.update(resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
        (output / "config.json").write_text(json.dumps(config))
        assert main(train_args(qa_file, output, "--device", "cpu", "--precision", "fp32", "--epochs", "6",
                               "--learning-rate", "3e-3", "--quiet", *extra)) == 0
        sessions[layout] = load_history(output)[-1]
    curves = {layout: [point["loss"] for point in session["loss_curve"] if "loss" in point]
              for layout, session in sessions.items()}
    assert curves["padded"][-1] < 0.8 * curves["padded"][0]  # it learned: the curves compared are a descent
    assert curves["shared"] == pytest.approx(curves["padded"], rel=1e-4)
    assert sessions["shared"]["eval_loss"] == pytest.approx(sessions["padded"]["eval_loss"], rel=1e-4)
    assert sessions["shared"]["steps"] == sessions["padded"]["steps"]


def test_a_bf16_session_leaves_the_next_session_of_the_process_in_fp32(tiny_model_copy, qa_file, monkeypatch):
    import mtn_sails.training.trainer as trainer_module

    trainers, run_training = [], trainer_module.run_training

    def recorded(*args, **kwargs):
        trainer, outcome = run_training(*args, **kwargs)
        trainers.append(trainer)
        return trainer, outcome

    monkeypatch.setattr(trainer_module, "run_training", recorded)
    for precision in ("bf16", "fp32"):
        assert main(train_args(qa_file, tiny_model_copy, "--device", "cpu", "--precision", precision, "--quiet")) == 0
    # accelerate's autocast flag, per session (its mixed_precision is a process-wide state, so read now)
    assert [trainer.accelerator.native_amp for trainer in trainers] == [True, False]


@pytest.mark.parametrize("device", ["auto", "cpu", "cuda"])
@pytest.mark.parametrize("precision", ["auto", "fp32", "bf16", "fp16"])
def test_every_precision_and_device_runs_or_says_why_in_one_line(tiny_model_copy, qa_file, capsys, device, precision):
    code = main(train_args(qa_file, tiny_model_copy, "--device", device, "--precision", precision, "--quiet"))
    error = capsys.readouterr().err.strip()
    if code == 0:
        assert load_history(tiny_model_copy)[-1]["precision"] in ("fp32", "bf16", "fp16")
    else:
        assert code == 2 and len(error.splitlines()) == 1 and "Traceback" not in error, error


def test_fp16_on_the_cpu_is_refused_before_anything_changes(tiny_model_copy, qa_file, capsys):
    before = weights_bytes(tiny_model_copy)
    assert main(train_args(qa_file, tiny_model_copy, "--device", "cpu", "--precision", "fp16")) == 2
    assert "--precision fp16 needs a CUDA device" in capsys.readouterr().err
    assert weights_bytes(tiny_model_copy) == before
