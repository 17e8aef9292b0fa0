"""Training levers on CPU: mtn_sails's path with one change each, in lockstep on identical batches.

    python benchmarks/train_levers.py                       # distilgpt2 shape, 10 steps per arm
    python benchmarks/train_levers.py --quick               # small shape (4x256), 4 steps per arm
    python benchmarks/train_levers.py --steps 6 --json-out benchmarks/results/train_speed_levers.json

Arms (fp32 unless the lever says otherwise), each a fresh copy of one randomly initialised GPT-2 trained
on the Alpaca demo's training split through `tokenize` + `run_training`, every arm on the same batches
(same seed, the product's length-grouped order):

  levers/sails               as a session trains (fused gelu, output layer only at label positions)
  levers/sails+unfused       `gelu_new` as the base config has it (the model not through use_fused_activation)
  levers/sails+bf16          TrainSettings(precision="bf16"), what `--precision bf16` sets: CPU autocast
  levers/sails+full-logits   TrainSettings(logits_on_labels=False): the output layer on every position

Every lever is one of the product's own settings or the start model's config. Thread counts cannot
differ between arms of one process: cpu_threads.py measures them. How an arm is timed and its tokens
counted: benchmarks/training_arms.py; MFU as in train_speed.py.
"""
from __future__ import annotations

import contextlib
import faulthandler
import io
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from common import (load_average, machine, matmul_peak_flops, nominal_peak, peak_rss_bytes, peak_sizes,
                    write_json, script_parser)
from training_arms import (add_model_arguments, arm_report, build_setup, print_arms, print_model, run_lockstep,
                           sails_arm, settle_model_arguments, share_malloc_arena)

LEVERS = ("unfused", "bf16", "full-logits")


def run(args) -> dict:
    """The levers phase; the report as a dict."""
    share_malloc_arena()
    work = Path(tempfile.mkdtemp(prefix="train_levers_"))
    os.environ["HF_DATASETS_CACHE"] = str(work / "hf_datasets")  # a cold cache, removed at the end
    try:
        report: dict[str, Any] = {"machine": machine("torch", "transformers"),
                                  "settings": {k: v for k, v in vars(args).items() if k != "json_out"}}
        peaks = [matmul_peak_flops(peak_sizes(args.model_shape))]
        setup, rows, info = build_setup(args, work)
        report["model"] = info["model"]
        report["nominal_peak"] = nominal_peak()
        train_rows = rows["pairs"][0]
        arms = {"levers/sails": sails_arm(setup, train_rows, "levers/sails", args.steps)}
        for lever in LEVERS:
            arms[f"levers/sails+{lever}"] = sails_arm(setup, train_rows, f"levers/sails+{lever}", args.steps, lever)
        print(f"[train_levers] {', '.join(arms)} in lockstep, {args.steps} steps each "
              f"(load average {load_average()[0]:.1f})", flush=True)
        load_before = load_average()
        with contextlib.redirect_stdout(io.StringIO()):  # run_training's epoch lines
            run_lockstep(arms)
        load_after = load_average()
        peaks.append(matmul_peak_flops(peak_sizes(args.model_shape)))
        peak, nominal = max(peaks), report["nominal_peak"]["gflops"] and report["nominal_peak"]["gflops"] * 1e9
        report["arms"] = {name: arm_report(stats, peak, info["flops_shape"], nominal)
                          for name, (stats, _train) in arms.items()}
        base = report["arms"]["levers/sails"]["real_tokens_per_s"]
        report["ratios"] = {f"{lever}_over_sails": round(report["arms"][f"levers/sails+{lever}"]["real_tokens_per_s"]
                                                         / base, 3) if base else None for lever in LEVERS}
        report.update(peak_fp32_matmul_gflops=round(peak / 1e9, 1),
                      peak_measurements_gflops=[round(p / 1e9, 1) for p in peaks],
                      load_average_before=load_before, load_average_after=load_after,
                      peak_rss_mb=round(peak_rss_bytes() / 2**20, 1))
        report["machine"]["load_average_at_end"] = load_after
        return report
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    """Parse, run, print, write the JSON."""
    parser = script_parser(__doc__)
    parser.add_argument("--steps", type=int, default=None, help="optimizer steps per arm (default 10, --quick 4)")
    parser.add_argument("--quick", action="store_true", help="small shape, 4 steps")
    add_model_arguments(parser)
    args = parser.parse_args(argv)
    faulthandler.enable()  # a crash inside a Trainer thread otherwise leaves no trace
    settle_model_arguments(args)
    args.steps = args.steps or (4 if args.quick else 10)
    report = run(args)
    print_model(report)
    print_arms("", report["arms"])
    print("ratios:", report["ratios"])
    write_json(args.json_out, report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
