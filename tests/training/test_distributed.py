"""Several processes on CPU (gloo): torchrun and accelerate launch write one model and one history entry,
take the documented steps, and measure the model they saved."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil

import pytest

from helpers import QA_PAIRS, REPO, run_cli, write_qa
from mtn_sails.model_dir import store
from mtn_sails.model_dir.inspection import check_model_exists
from mtn_sails.training.distributed import optimizer_steps
from mtn_sails.model_dir.history_file import load_history

TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]


def torchrun_train(data: Path, output: Path, *extra: str) -> list[str]:
    return [*TORCHRUN, str(REPO / "main.py"), "train", "--data-file", str(data), "--output-dir", str(output),
            "--batch-size", "4", "--device", "cpu", *extra]


def test_two_processes_write_one_model_with_the_documented_step_count(tiny_model_dir, tmp_path):
    data = write_qa(tmp_path / "qa.json", repeat=3)  # 36 records: 32 train + 4 held out
    output = tmp_path / "trained_model"
    result = subprocess.run(torchrun_train(data, output, "--model-name", str(tiny_model_dir), "--epochs", "2"),
                            capture_output=True, text=True, timeout=300,
                            env={**os.environ, "PYTHONIOENCODING": "utf-8"})
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.count("Session 1 saved") == 1  # only the main process reports
    assert check_model_exists(output)
    sessions = load_history(output)
    assert len(sessions) == 1
    assert sessions[0]["world_size"] == 2
    assert sessions[0]["steps"] == optimizer_steps(sessions[0]["train_examples"], 4, 2, 1, 2) == 8
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".trained_model.") and p.name != ".trained_model.lock"]


def test_killing_one_rank_leaves_the_model_intact(tiny_model_copy, tmp_path):
    data = write_qa(tmp_path / "qa.json", repeat=10)
    original = (tiny_model_copy / "model.safetensors").read_bytes()
    launcher = subprocess.Popen(torchrun_train(data, tiny_model_copy, "--epochs", "100", "--save-steps", "2"),
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    work = store.sibling(tiny_model_copy, "work")
    try:
        deadline = time.time() + 240
        while store.find_resume_checkpoint(work / "checkpoints") is None:
            assert time.time() < deadline and launcher.poll() is None
            time.sleep(0.05)
        workers = psutil.Process(launcher.pid).children(recursive=True)
        workers[-1].send_signal(signal.SIGKILL)
        assert launcher.wait(timeout=120) != 0
    finally:
        if launcher.poll() is None:
            launcher.kill()
    assert check_model_exists(tiny_model_copy)
    assert (tiny_model_copy / "model.safetensors").read_bytes() == original
    assert len(load_history(tiny_model_copy)) == 0


# accelerate's FSDP, full shard, as `accelerate config` writes it; on the CPU accelerate trains data-parallel
FSDP_CONFIG = """\
compute_environment: LOCAL_MACHINE
distributed_type: FSDP
num_machines: 1
num_processes: 2
mixed_precision: 'no'
fsdp_config:
  fsdp_version: 1
  fsdp_sharding_strategy: FULL_SHARD
  fsdp_auto_wrap_policy: TRANSFORMER_BASED_WRAP
  fsdp_transformer_layer_cls_to_wrap: GPT2Block
  fsdp_state_dict_type: FULL_STATE_DICT
  fsdp_use_orig_params: true
  fsdp_sync_module_states: false  # true asks accelerate for a GPU to broadcast from
  fsdp_cpu_ram_efficient_loading: false  # needs fsdp_sync_module_states
"""


def test_accelerate_launch_with_fsdp_measures_the_saved_model(tiny_model_dir, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from mtn_sails.training.forgetting import measure_forgetting
    from mtn_sails.data.template import PromptTemplate
    from mtn_sails.training.forgetting import evaluate_records

    output = tmp_path / "trained_model"
    first = run_cli("train", "--data-file", str(write_qa(tmp_path / "first.json", repeat=3)), "--output-dir",
                    str(output), "--model-name", str(tiny_model_dir), "--epochs", "1", "--device", "cpu", timeout=300)
    assert first.returncode == 0, first.stderr[-2000:]
    (tmp_path / "fsdp.yaml").write_text(FSDP_CONFIG, encoding="utf-8")
    second = tmp_path / "second.json"
    write_qa(second, [(q, a.upper()) for q, a in QA_PAIRS], repeat=3)
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(tmp_path / "fsdp.yaml"),
              "--main_process_port", "0", *torchrun_train(second, output, "--epochs", "2")[len(TORCHRUN):]]
    result = subprocess.run(launch, capture_output=True, text=True, timeout=300,
                            env={**os.environ, "PYTHONIOENCODING": "utf-8"})
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.count("Session 2 saved") == 1
    assert result.stdout.count("FSDP was configured, but accelerate shards only on GPUs") == 1
    assert check_model_exists(output)
    sessions = load_history(output)
    assert [s.session for s in sessions] == [1, 2] and sessions[1].world_size == 2
    # the rows the launched run stored are what one process measures on the saved model
    model = AutoModelForCausalLM.from_pretrained(output)
    tokenizer, template = AutoTokenizer.from_pretrained(output), PromptTemplate.load(output)
    rows = measure_forgetting(model, tokenizer, template, output, sessions[:1], sessions[1].max_length)
    stored = sessions[1].forgetting
    assert [row.session for row in stored] == [row.session for row in rows] == [1]
    for key in ("loss_after", "recall_after", "answer_logprob_after"):
        assert getattr(stored[0], key) == pytest.approx(getattr(rows[0], key), rel=1e-4), key
    held_out = store.read_slices(output, store.HELD_OUT_DIR)[2]
    own_loss = evaluate_records(model, tokenizer, held_out, template, sessions[1].max_length)
    assert sessions[1].held_out_loss == pytest.approx(own_loss, rel=1e-4)
