"""Which learning rate a `--model-name scratch` GPT-2 needs: a sweep, then a continuation at rate/5.

    python benchmarks/scratch_lr.py                         # the BENCHMARKS.md table (CPU: ~10 min)
    python benchmarks/scratch_lr.py --quick                 # tiny only, 3 rates (~1 min)
    python benchmarks/scratch_lr.py --json-out scratch_lr.json

A randomly initialised model barely moves at the guide's 5e-5, so the scratch base has its own rate
(detector.SCRATCH_LEARNING_RATE, with continuation at 1/5 of it). For each scratch size and rate, one
session on --data-file (examples/programming_basics.json) through the real `train()`; the table has
the train loss and the held-out loss and perplexity. Then, for the two best rates of each size, a
second session on --second-file (examples/web_development.json) at rate/5 (the guide's ratio, given
explicitly): how session 1's held-out perplexity moved (the forgetting table) and session 2's own.
Every run has the same seed, so the split, the tokenizer and the initial weights are the same.
"""
from __future__ import annotations

import datetime
import shutil
import tempfile
import time
import warnings
from pathlib import Path


from common import REPO, machine, quiet_session, script_parser, write_json
from mtn_sails.config import TrainConfig

RATES = (5e-5, 2e-4, 5e-4, 1e-3, 2e-3, 5e-3, 1e-2)
QUICK_RATES = (5e-5, 1e-3, 5e-3)
CONTINUE_RATIO = 5  # the guide's 5e-5 -> 1e-5
# The Trainer says this once per checkpoint rotation on some filesystems; it is noise here.
warnings.filterwarnings("ignore", message="mtime may not be reliable")


def sweep(args, work: Path) -> tuple[list[dict], list[dict]]:
    """(first-session rows, continuation rows)."""
    first_rows, continue_rows = [], []
    common = dict(epochs=args.epochs, eval_split=args.eval_split, seed=args.seed, batch_size=args.batch_size,
                  max_length=args.max_length)
    for size in args.sizes:
        size_rows = []
        for rate in args.rates:
            output = work / f"{size}-{rate:g}"
            started = time.perf_counter()
            entry = quiet_session(TrainConfig(data_file=args.data_file, output_dir=str(output), model_name="scratch",
                                        scratch_size=size, learning_rate=rate, **common), args.verbose)
            row = {"size": size, "learning_rate": rate, "train_loss": entry["train_loss"],
                   "held_out_loss": entry["held_out_loss"], "held_out_perplexity": entry["held_out_perplexity"],
                   "steps": entry["steps"], "seconds": round(time.perf_counter() - started, 1)}
            print(f"{size:5} lr {rate:<7g} train loss {row['train_loss']:.3f}  held-out loss "
                  f"{row['held_out_loss']:.3f}  ppl {row['held_out_perplexity']:9.1f}  ({row['seconds']} s)",
                  flush=True)
            size_rows.append(row)
        first_rows += size_rows
        best = sorted(size_rows, key=lambda r: r["held_out_loss"])[:args.continue_best]
        for row in best:
            output = work / f"{size}-{row['learning_rate']:g}"
            kept = work / f"{size}-{row['learning_rate']:g}-after-1"
            shutil.copytree(output, kept)  # the model after session 1, for a re-check of the table's "before"
            rate = row["learning_rate"] / CONTINUE_RATIO
            entry = quiet_session(TrainConfig(data_file=args.second_file, output_dir=str(output), learning_rate=rate,
                                        **common), args.verbose)
            forgetting = entry["forgetting"][0]
            crow = {"size": size, "first_rate": row["learning_rate"], "continue_rate": rate,
                    "session1_ppl_before": forgetting["perplexity_before"],
                    "session1_ppl_after": forgetting["perplexity_after"], "ratio": forgetting["ratio"],
                    "session2_train_loss": entry["train_loss"], "session2_held_out_loss": entry["held_out_loss"],
                    "session2_held_out_perplexity": entry["held_out_perplexity"]}
            print(f"{size:5} lr {row['learning_rate']:<7g} -> {rate:<7g} session 1 ppl "
                  f"{crow['session1_ppl_before']:.1f} -> {crow['session1_ppl_after']:.1f} (x{crow['ratio']:.2f}), "
                  f"session 2 held-out ppl {crow['session2_held_out_perplexity']:.1f}", flush=True)
            continue_rows.append(crow)
    return first_rows, continue_rows


def markdown(first_rows: list[dict], continue_rows: list[dict]) -> str:
    """The two tables as Markdown."""
    lines = ["| size | learning rate | train loss | held-out loss | held-out ppl |", "|---|---|---|---|---|"]
    for row in first_rows:
        lines.append(f"| {row['size']} | {row['learning_rate']:g} | {row['train_loss']:.3f} | "
                     f"{row['held_out_loss']:.3f} | {row['held_out_perplexity']:.1f} |")
    lines += ["", "| size | session 1 rate | session 2 rate | session 1 held-out ppl: before -> after | "
              "session 2 train loss | session 2 held-out ppl |", "|---|---|---|---|---|---|"]
    for row in continue_rows:
        lines.append(f"| {row['size']} | {row['first_rate']:g} | {row['continue_rate']:g} | "
                     f"{row['session1_ppl_before']:.1f} -> {row['session1_ppl_after']:.1f} (x{row['ratio']:.2f}) | "
                     f"{row['session2_train_loss']:.3f} | {row['session2_held_out_perplexity']:.1f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run the sweep and the continuations; print the tables."""
    parser = script_parser(__doc__, epilog=True)
    parser.add_argument("--data-file", default=str(REPO / "examples" / "programming_basics.json"),
                        help="session 1 data (default examples/programming_basics.json)")
    parser.add_argument("--second-file", default=str(REPO / "examples" / "web_development.json"),
                        help="session 2 data (default examples/web_development.json)")
    parser.add_argument("--sizes", nargs="+", default=["tiny", "small"], choices=["tiny", "small", "base"])
    parser.add_argument("--rates", nargs="+", type=float, default=list(RATES), help="first-session rates")
    parser.add_argument("--continue-best", type=int, default=2, help="best rates per size continued at rate/5")
    parser.add_argument("--epochs", type=float, default=3.0)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--eval-split", type=float, default=0.1)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--quick", action="store_true", help="tiny only, rates 5e-5 1e-3 5e-3")
    parser.add_argument("--verbose", action="store_true", help="show each session's own printout")
    parser.add_argument("--json-out", help="also write the figures to this JSON file")
    args = parser.parse_args(argv)
    if args.quick:
        args.sizes, args.rates = ["tiny"], list(QUICK_RATES)

    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="mtn-sails-scratch-lr-") as tmp:
        first_rows, continue_rows = sweep(args, Path(tmp))
    figures = {"date": datetime.date.today().isoformat(), "machine": machine("torch"),
               "settings": {k: v for k, v in vars(args).items() if k not in ("json_out", "verbose")},
               "first_session": first_rows, "continuation": continue_rows,
               "wall_s": round(time.perf_counter() - started, 1)}
    print()
    print(markdown(first_rows, continue_rows))
    m = figures["machine"]
    print(f"\nmachine: {m['nproc']} CPUs, {m['cpu']}, device {m['device']}, torch {m['torch']}; "
          f"{figures['wall_s']} s in all")
    write_json(args.json_out, figures)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
