"""Data-parallel training with torchrun on CPU (gloo): one model, one history entry, the documented steps."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil

from conftest import REPO, write_qa
from mtn_sails import store
from mtn_sails.detector import check_model_exists
from mtn_sails.distributed import optimizer_steps
from mtn_sails.history import load_history

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
