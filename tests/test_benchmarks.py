"""The benchmark scripts keep running: train_speed.py, session_speed.py and cpu_threads.py in their smallest forms,
run.py's bookkeeping."""
from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", REPO / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_train_speed_smallest_form_writes_its_figures(tmp_path):
    out = tmp_path / "train_speed.json"
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "train_speed.py"), "--model-shape", "tiny",
                           "--steps", "2", "--text-steps", "2", "--max-length", "64", "--limit-records", "48",
                           "--vocab-size", "500", "--no-startup", "--no-levers", "--json-out", str(out)],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["model"]["shape"] == "tiny" and report["model"]["vocab_size"] > 256
    assert report["peak_fp32_matmul_gflops"] > 0
    assert set(report["arms"]) == {"pairs/plain", "pairs/sails", "text/plain", "text/sails"}
    for arm in report["arms"].values():
        assert arm["steps"] == 2
        assert 0 < arm["real_tokens"] <= arm["padded_tokens"]
        for key in ("real_tokens_per_s", "padding_fraction", "mfu", "mfu_with_lm_head", "train_runtime_s"):
            assert arm[key] is not None
        assert set(arm["startup"]) == {"tokenise_s", "trainer_init_s", "train_call_to_first_step_s"}
    assert report["arms"]["pairs/plain"]["padded_tokens"] == 2 * 8 * 64  # padded to max_length, every step
    assert report["arms"]["text/sails"]["padding_fraction"] == 0  # packed blocks
    assert set(report["ratios"]) == {"pairs_sails_over_plain", "text_sails_over_plain"}
    assert {"eval_s", "checkpoint_s", "share_of_epoch"} <= set(report["overheads"])


@pytest.mark.slow
def test_session_speed_quick_form_times_whole_processes_of_both_programs(tmp_path):
    out = tmp_path / "session_speed.json"
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "session_speed.py"), "--quick", "--levers",
                           "--json-out", str(out)], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads(out.read_text())
    [round_] = report["rounds"]
    assert set(round_) - {"order", "load_average"} == {"recipe", "sails", "sails+fp32", "sails+bf16", "sails+padded"}
    assert round_["sails+fp32"]["precision"] == "fp32" and round_["sails+bf16"]["precision"] == "bf16"
    assert round_["sails"]["precision"] == "fp32"  # the quick form's 64-wide model: auto keeps fp32
    for arm in ("recipe", "sails"):
        assert round_[arm]["process_s"] > 0 and round_[arm]["peak_rss_mb"] > 0 and round_[arm]["train_loss"] > 0
    assert 0 < round_["sails"]["session_s"] < round_["sails"]["process_s"]  # the rest is start-up and exit
    mfu = report["whole_process_mfu"]
    assert mfu["recipe"]["examples"] == 16 and mfu["sails"]["examples"] < 16  # sails holds some records out
    assert mfu["sails"]["scored"] < mfu["sails"]["tokens"]  # its loss scores the answers, not the prompts
    assert all(0 < mfu[arm]["mfu"] < 1 for arm in round_ if arm not in ("order", "load_average"))
    assert set(report["recipe_over"]) == {"sails", "sails+fp32", "sails+bf16", "sails+padded"}


@pytest.mark.slow
def test_cpu_threads_smallest_form_times_every_setting_in_its_own_process(tmp_path):
    out = tmp_path / "cpu_threads.json"
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "cpu_threads.py"), "--model-shape", "small",
                           "--seq", "16", "--steps", "2", "--rounds", "1", "--busy", "0", "--json-out", str(out)],
                          cwd=REPO, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(out.read_text())
    settings = {(row["threads"], row["precision"]) for row in report["rows"]}
    assert {(report["machine"]["torch_threads"], "fp32"), (1, "bf16")} <= settings
    for row in report["rows"]:
        assert len(row["step_s"]) == 1 and row["tokens_per_s"] > 0  # the warm-up step is left out
    default_fp32 = [row for row in report["rows"] if row["threads"] == report["machine"]["torch_threads"]
                    and row["precision"] == "fp32"]
    assert default_fp32[0]["vs_default_fp32_same_load"] == 1.0


def test_run_flattens_figures_and_lists_every_script():
    run = _load("run")
    figures: dict = {}
    run.flatten({"a": {"b": 1.5, "ok": True, "name": "x"}, "rows": [{"loss": 2}], "machine": {"nproc": 2}},
                "bench", figures)
    assert figures == {"bench.a.b": 1.5, "bench.a.ok": True, "bench.rows.0.loss": 2}
    scripts = {p.stem for p in (REPO / "benchmarks").glob("*.py") if not p.stem.startswith("_")  # helpers
               and 'if __name__ == "__main__":' in p.read_text(encoding="utf-8")} - {"run"}
    assert set(run.discover()) == scripts
    assert {"train_speed", "tokenize_scale", "cpu_threads"} <= scripts
