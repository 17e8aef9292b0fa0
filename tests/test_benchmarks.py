"""The benchmark scripts keep running: train_speed.py in its smallest form, and run.py's bookkeeping."""
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


def test_run_flattens_figures_and_lists_every_script():
    run = _load("run")
    figures: dict = {}
    run.flatten({"a": {"b": 1.5, "ok": True, "name": "x"}, "rows": [{"loss": 2}], "machine": {"nproc": 2}},
                "bench", figures)
    assert figures == {"bench.a.b": 1.5, "bench.a.ok": True, "bench.rows.0.loss": 2}
    scripts = {p.stem for p in (REPO / "benchmarks").glob("*.py")
               if 'if __name__ == "__main__":' in p.read_text(encoding="utf-8")} - {"run"}
    assert set(run.discover()) == scripts
    assert {"train_speed", "tokenize_scale"} <= scripts
