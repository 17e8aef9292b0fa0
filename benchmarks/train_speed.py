"""Training speed on CPU: the tutorial recipe (pad every example to 512) against mtn_sails's path, in lockstep.

    python benchmarks/train_speed.py                        # distilgpt2 shape, 28 + 10 steps per arm
    python benchmarks/train_speed.py --quick                # small shape (4x256), 8 + 4 steps per arm
    python benchmarks/train_speed.py --phases pairs --rounds 3 --round-batches 5 \
        --json-out benchmarks/results/train_speed.json      # the headline: median of 3 rounds
    python benchmarks/train_speed.py --model-shape real-base --phases pairs --rounds 3 --round-batches 3 \
        --json-out benchmarks/results/train_speed_real_base.json   # SmolLM2-135M-Instruct (make real-base)

Arms, all fp32 on CPU, same batch size, same --max-length, same number of optimizer steps, each a fresh
copy of one randomly initialised GPT-2 (GPT2Config n_positions=1024, shape from --model-shape). The
distilgpt2 shape uses GPT-2's own tokenizer (`--tokenizer gpt2`, benchmarks/gpt2_vocab.py), so its
embedding and LM head have distilgpt2's 50,257 rows; the other shapes use a byte-level BPE tokenizer
trained here by `mtn_sails.training.scratch.train_tokenizer` on both data files (`--tokenizer trained`, target
vocabulary --vocab-size; the size reached is reported, it sets the LM head's FLOPs).
With `--model-shape real-base` every arm starts from the real base's own weights, with its tokenizer, and
renders records through its chat template, as a session on it does.

  pairs/plain  tests/fixtures/alpaca_en_demo.json rendered with the product's template, tokenised with
               padding="max_length", truncation=True, max_length=512; DataCollatorForLanguageModeling(mlm=False);
               Trainer defaults (random sampler, no group_by_length): what tutorials teach
  pairs/sails  `tokenize` + `run_training` (group_by_length, a batch's examples sharing rows as long as its
               longest), the model's config through `use_fused_activation` as a session loads it
  text/plain   tests/fixtures/c4_demo.jsonl, the same padded recipe (long documents truncated)
  text/sails   the same text through `tokenize` + `run_training`: packed into full blocks of 512

With `--rounds R` each comparison runs R times, the arms taking turns step by step in every round and
the arm that starts alternating between rounds. With `--round-batches K` a pairs round is K batches
that mtn_sails itself forms: its length-grouped order over the whole training split (transformers'
`get_length_grouped_indices`, seed + round), K batches evenly spaced through the first mega-batch (a
random draw of 224 records sorted by length, 28 batches), fed in that order (run_training's retention
sampler, sequential); the tutorial arm trains on the same K x batch records, in random batches padded to
max_length. The headline is the median round (ratio and tokens/s), the best round beside it; the load
average is recorded at each round's ends.

Both data files are split like a session (`split_dataset`, 10% held out) and every arm trains on the same
90%. How an arm is timed and its tokens counted: benchmarks/training_arms.py. MFU = (6 * non-embedding
parameters + 12 * n_layer * n_embd * seq) * real tokens/s / peak, seq = the padded length of the batches
(token-weighted mean), against two peaks: the measured one, the best fp32 `torch.matmul` FLOP/s of large
square matrices in the same run (before and after every round), and the CPU's nominal one
(`common.nominal_peak`, its basis written into the report). mtn_sails's held-out evaluation and
per-epoch checkpoint are off in the timed runs (train_overheads.py times them); the levers are
train_levers.py, the process start-up train_startup.py, thread counts cpu_threads.py.
"""
from __future__ import annotations

import contextlib
import faulthandler
import io
import os
import shutil
import statistics
import tempfile
from pathlib import Path
from typing import Any

from common import (load_average, machine, matmul_peak_flops, median_row, nominal_peak, peak_rss_bytes, peak_sizes,
                    round_order, script_parser, write_json)
from training_arms import (add_model_arguments, arm_report, build_setup, plain_arm, print_arms, print_model,
                           run_lockstep, sails_arm, settle_model_arguments, share_malloc_arena)

GOAL_RATIO = 2.0  # pairs/sails real tokens/s over pairs/plain
GOAL_MFU = 0.5


def grouped_batches(lengths: list[int], batch_size: int, batches: int, seed: int) -> list[int]:
    """Record indices of `batches` batches evenly spaced through the first mega-batch of the length-grouped
    order the Trainer's sampler makes (group_by_length), batch after batch."""
    import torch
    from transformers.trainer_pt_utils import get_length_grouped_indices

    order = get_length_grouped_indices(lengths, batch_size, generator=torch.Generator().manual_seed(seed))
    mega = max(1, min(len(lengths) // (batch_size * 4), 50)) * batch_size  # the function's own default
    first = [order[i:i + batch_size] for i in range(0, min(mega, len(order)), batch_size)]
    picks = sorted({round(k * (len(first) - 1) / max(1, batches - 1)) for k in range(batches)})
    return [index for pick in picks for index in first[pick]]


def per_arm_summary(rounds: list[dict]) -> dict[str, dict]:
    """Per arm, the report of its median round by real tokens/s, with the best round and every round beside it."""
    per_arm: dict[str, list[dict]] = {}
    for r in rounds:
        for name, arm in r["arms"].items():
            per_arm.setdefault(name, []).append(arm)
    return {name: {**median_row(arms, "real_tokens_per_s"), "rounds": len(arms),
                   "real_tokens_per_s_best": max(arm["real_tokens_per_s"] for arm in arms),
                   "real_tokens_per_s_rounds": [arm["real_tokens_per_s"] for arm in arms]}
            for name, arms in per_arm.items()}


def summary(rounds: list[dict], phases: list[str], peaks: list[float], info: dict) -> dict:
    """The figures of the rounds run so far: per round, the median round per arm, the ratios."""
    peak = max(peaks)
    nominal = info["nominal_peak"]["gflops"] and info["nominal_peak"]["gflops"] * 1e9
    done = [{**{k: v for k, v in r.items() if k != "stats"},
             "arms": {name: arm_report(s, peak, info["flops_shape"], nominal) for name, s in r["stats"].items()}}
            for r in rounds]
    ratios = {}
    for phase in phases:
        per_round = [r["arms"][f"{phase}/sails"]["real_tokens_per_s"] / r["arms"][f"{phase}/plain"]["real_tokens_per_s"]
                     for r in done if r["phase"] == phase]
        if per_round:
            ratios[f"{phase}_sails_over_plain"] = round(statistics.median(per_round), 3)
            if len(per_round) > 1:
                ratios[f"{phase}_sails_over_plain_best"] = round(max(per_round), 3)
                ratios[f"{phase}_sails_over_plain_rounds"] = [round(x, 3) for x in per_round]
    return {"peak_fp32_matmul_gflops": round(peak / 1e9, 1),
            "peak_measurements_gflops": [round(p / 1e9, 1) for p in peaks],
            "rounds": done, "arms": per_arm_summary(done), "ratios": ratios}


def run(args) -> dict:
    """Every phase's rounds; the report as a dict."""
    from mtn_sails.training.tokenizing import tokenize

    share_malloc_arena()
    work = Path(tempfile.mkdtemp(prefix="train_speed_"))
    os.environ["HF_DATASETS_CACHE"] = str(work / "hf_datasets")  # a cold cache, removed at the end
    try:
        report: dict[str, Any] = {"machine": machine("torch", "transformers"),
                                  "settings": {k: v for k, v in vars(args).items() if k != "json_out"}}
        peaks = [matmul_peak_flops(peak_sizes(args.model_shape))]
        setup, rows, info = build_setup(args, work)
        report["model"] = info["model"]
        info["nominal_peak"] = report["nominal_peak"] = nominal_peak()
        rounds: list[dict[str, Any]] = []  # per phase and round: its arms' stats and the load average
        for phase in args.phases:
            train_rows, steps = rows[phase][0], args.steps if phase == "pairs" else args.text_steps
            sampled = phase == "pairs" and args.round_batches
            if sampled:  # the lengths the product's sampler groups by
                lengths = tokenize(train_rows, None, setup.tokenizer, setup.template, args.max_length).train["length"]
                steps = args.round_batches
            for index in range(args.rounds):
                chosen = train_rows.select(grouped_batches(lengths, args.batch_size, steps, args.seed + index)) \
                    if sampled else train_rows
                made = {f"{phase}/plain": plain_arm(setup, chosen, f"{phase}/plain", steps),
                        f"{phase}/sails": sails_arm(setup, chosen, f"{phase}/sails", steps, sequential=bool(sampled))}
                arms = {name: made[name] for name in round_order(list(made), index)}  # the other arm starts next
                print(f"[train_speed] {phase} round {index + 1}/{args.rounds}: {', '.join(arms)} in lockstep, "
                      f"{steps} steps each (load average {load_average()[0]:.1f})", flush=True)
                load_before = load_average()
                with contextlib.redirect_stdout(io.StringIO()):  # run_training's epoch lines
                    run_lockstep(arms)
                rounds.append({"phase": phase, "round": index + 1, "records": len(chosen), "steps": steps,
                               "first_turn": next(iter(arms)), "load_average_before": load_before,
                               "load_average_after": load_average(),
                               "stats": {name: arm[0] for name, arm in arms.items()}})
                peaks.append(matmul_peak_flops(peak_sizes(args.model_shape)))
                if args.json_out:  # what is measured so far survives a later failure
                    write_json(args.json_out, {**report, "partial": True, **summary(rounds, args.phases, peaks, info)})
        report.update(summary(rounds, args.phases, peaks, info))
        if "pairs/sails" in report["arms"]:
            report["goals"] = {"ratio": GOAL_RATIO, "mfu": GOAL_MFU,
                               "ratio_met": report["ratios"].get("pairs_sails_over_plain", 0) >= GOAL_RATIO,
                               "mfu_met": (report["arms"]["pairs/sails"]["mfu"] or 0) >= GOAL_MFU}
        report["machine"]["load_average_at_end"] = load_average()
        report["peak_rss_mb"] = round(peak_rss_bytes() / 2**20, 1)
        return report
    finally:
        shutil.rmtree(work, ignore_errors=True)


def print_report(report: dict) -> None:
    """The model, every round when there were several, the median round, the ratios."""
    print_model(report)
    several = len(report["rounds"]) > len({r["phase"] for r in report["rounds"]})
    if several:
        for r in report["rounds"]:
            print_arms(f"round {r['round']} ({r['load_average_before'][0]:.1f})", r["arms"])
    print_arms("median round" if several else "", report["arms"])
    print("ratios:", report["ratios"])
    print("start-up per arm:", {name: arm["startup"] for name, arm in report["arms"].items()})


def main(argv: list[str] | None = None) -> int:
    """Parse, run, print, write the JSON."""
    parser = script_parser(__doc__)
    parser.add_argument("--steps", type=int, default=None,
                        help="optimizer steps per pairs arm (default 28: one length-grouping mega-batch of 899 "
                             "records at batch 8; --quick 8)")
    parser.add_argument("--text-steps", type=int, default=None,
                        help="optimizer steps per plain-text arm (default: 10, --quick 4)")
    parser.add_argument("--phases", nargs="+", choices=["pairs", "text"], default=["pairs", "text"],
                        help="which comparisons to run (default both)")
    parser.add_argument("--rounds", type=int, default=1,
                        help="run each comparison this many times, alternating the arm that starts (default 1)")
    parser.add_argument("--round-batches", type=int, default=0,
                        help="pairs rounds: this many of the product's length-grouped batches, evenly spaced "
                             "through a mega-batch (0: --steps on the whole split)")
    parser.add_argument("--quick", action="store_true", help="small shape, 8 + 4 steps")
    add_model_arguments(parser)
    args = parser.parse_args(argv)
    faulthandler.enable()  # a crash inside a Trainer thread otherwise leaves no trace
    settle_model_arguments(args)
    args.steps = args.steps or (8 if args.quick else 28)
    args.text_steps = args.text_steps or (4 if args.quick else 10)
    report = run(args)
    print_report(report)
    write_json(args.json_out, report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
