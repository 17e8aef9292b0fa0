"""Per-epoch overheads of a session on CPU: its held-out evaluation and resumable checkpoint, against its steps.

    python benchmarks/train_overheads.py                    # distilgpt2 shape, 28 steps, then one of each
    python benchmarks/train_overheads.py --quick            # small shape (4x256), 4 steps

mtn_sails's path (`tokenize` + `run_training`, as in train_speed.py's pairs/sails arm) trains --steps
optimizer steps on the Alpaca demo's training split with evaluation and checkpoints off; then the same
Trainer evaluates the held-out 10% once (`trainer.evaluate`) and writes one resumable checkpoint (model
and optimizer state, what save_strategy="epoch" runs). Their share of an epoch is set against an epoch's
steps at the median step time measured here.
"""
from __future__ import annotations

import contextlib
import io
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from common import load_average, machine, script_parser, write_json
from training_arms import add_model_arguments, build_setup, run_lockstep, sails_arm, settle_model_arguments


def overheads(trainer, eval_dataset, steps_per_epoch: int, step_s: float) -> dict:
    """The per-epoch costs the timed runs leave out: held-out evaluation and the resumable checkpoint."""
    started = time.perf_counter()
    trainer.evaluate(eval_dataset)
    eval_s = time.perf_counter() - started
    started = time.perf_counter()
    trainer._save_checkpoint(trainer.model, trial=None)  # what save_strategy="epoch" runs
    checkpoint_s = time.perf_counter() - started
    epoch_s = steps_per_epoch * step_s
    return {"eval_s": round(eval_s, 2), "checkpoint_s": round(checkpoint_s, 2),
            "steps_per_epoch": steps_per_epoch, "epoch_training_s_estimate": round(epoch_s, 1),
            "share_of_epoch": round((eval_s + checkpoint_s) / (epoch_s + eval_s + checkpoint_s), 4)}


def run(args) -> dict:
    """Train, then time one evaluation and one checkpoint; the report as a dict."""
    from mtn_sails.training.tokenizing import tokenize

    work = Path(tempfile.mkdtemp(prefix="train_overheads_"))
    os.environ["HF_DATASETS_CACHE"] = str(work / "hf_datasets")  # a cold cache, removed at the end
    try:
        report = {"machine": machine("torch", "transformers"),
                  "settings": {k: v for k, v in vars(args).items() if k != "json_out"}}
        setup, rows, info = build_setup(args, work)
        report["model"] = info["model"]
        train_rows, held_out = rows["pairs"]
        stats, train = sails_arm(setup, train_rows, "pairs/sails", args.steps)
        print(f"[train_overheads] pairs/sails, {args.steps} steps (load average {load_average()[0]:.1f})", flush=True)
        with contextlib.redirect_stdout(io.StringIO()):  # run_training's epoch lines, the eval-loss line
            trainer, data = run_lockstep({"pairs/sails": (stats, train)})["pairs/sails"]
            eval_data = tokenize(held_out, None, setup.tokenizer, setup.template, args.max_length).train
            per_epoch = -(-len(data.train) // args.batch_size)
            measured = overheads(trainer, eval_data, per_epoch, statistics.median(stats.step_s))
        report["overheads"] = {"eval_records": len(held_out), "steps": stats.steps, **measured}
        report["machine"]["load_average_at_end"] = load_average()
        return report
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    """Parse, run, print, write the JSON."""
    parser = script_parser(__doc__)
    parser.add_argument("--steps", type=int, default=None, help="optimizer steps before timing (default 28, --quick 4)")
    parser.add_argument("--quick", action="store_true", help="small shape, 4 steps")
    add_model_arguments(parser)
    args = parser.parse_args(argv)
    settle_model_arguments(args)
    args.steps = args.steps or (4 if args.quick else 28)
    report = run(args)
    print("per-epoch overheads (pairs/sails):", report["overheads"])
    write_json(args.json_out, report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
