"""CPU levers outside the data path, each setting in its own process: intra-op threads and bf16.

    python benchmarks/cpu_threads.py                         # distilgpt2 shape, 8 x 256 tokens, quiet and busy
    python benchmarks/cpu_threads.py --quick                 # small shape, 8 x 128, one round
    python benchmarks/cpu_threads.py --json-out cpu_threads.json

train_speed.py and train_levers.py run their arms as threads of one process, which cannot hold different thread counts:
torch.set_num_threads is per calling thread for OpenMP loops but process-wide for the oneDNN/MKL matmuls.
So here every setting (threads, precision, machine load) is a fresh child process that does what a
session's Trainer step does on the CPU: forward with labels, backward, fused AdamW step, on the same
random batch of 8 x --seq tokens, in a GPT-2 of the chosen shape whose config went through
`mtn_sails.training.trainer.use_fused_activation`, under `torch.autocast("cpu", torch.bfloat16)` for bf16 (what
`--precision bf16` makes the Trainer do). The first step is warm-up; the best of the rest counts. Rounds
interleave the settings so drift hits all of them alike. "busy" rows run while --busy processes spin a
Python loop each: another job holding a core, as on a shared machine or a laptop in use.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

from common import GPT2_SHAPES, N_POSITIONS, REPO, load_average, machine, script_parser, write_json

SHAPES = {name: GPT2_SHAPES[name] for name in ("distilgpt2", "small")}
VOCAB = 16000  # as train_speed's scratch tokenizer
BATCH = 8


def child(threads: int, precision: str, shape: str, seq: int, steps: int) -> dict:
    """Time `steps` training steps in this process (run with --child); the step times in seconds."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    from mtn_sails.training.start_model import use_fused_activation

    torch.set_num_threads(threads)
    config = GPT2Config(vocab_size=VOCAB, n_positions=N_POSITIONS, **SHAPES[shape], loss_type="ForCausalLM")
    use_fused_activation(config)
    torch.manual_seed(0)
    model = GPT2LMHeadModel(config).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-5, fused=True)
    ids = torch.randint(0, VOCAB, (BATCH, seq), generator=torch.Generator().manual_seed(0))
    times = []
    for _ in range(steps):
        started = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - started)
    return {"step_s": times}


def run_setting(threads: int, precision: str, args) -> list[float]:
    """One child process for one setting; its step times."""
    command = [sys.executable, __file__, "--child", str(threads), precision, args.model_shape, str(args.seq),
               str(args.steps)]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "TOKENIZERS_PARALLELISM": "false"}
    done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=REPO, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])["step_s"]


def run(args) -> dict:
    import torch

    from mtn_sails.training.trainer import cpu_has_native_bf16

    default_threads = torch.get_num_threads()  # one per physical core: what a session uses
    thread_counts = sorted({1, default_threads}, reverse=True)
    loads = [0] + ([args.busy] if args.busy else [])
    settings = [(load, threads, precision) for load in loads for threads in thread_counts
                for precision in ("fp32", "bf16")]
    times: dict[tuple, list[float]] = {setting: [] for setting in settings}
    report = {"machine": {**machine("torch"), "native_bf16": cpu_has_native_bf16()},
              "settings": {"shape": args.model_shape, "batch": BATCH, "seq": args.seq, "steps": args.steps,
                           "rounds": args.rounds, "busy_processes": args.busy}}
    for round_index in range(args.rounds):
        for load in loads:
            spinners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(load)]
            try:
                for setting in settings:
                    if setting[0] == load:
                        print(f"[cpu_threads] round {round_index + 1}: busy {load}, {setting[1]} thread(s), "
                              f"{setting[2]}", flush=True)
                        times[setting] += run_setting(setting[1], setting[2], args)[1:]  # first step: warm-up
            finally:
                for spinner in spinners:
                    spinner.kill()
                    spinner.wait()
    rows = []
    for load, threads, precision in settings:
        best = min(times[(load, threads, precision)])
        baseline = min(times[(load, default_threads, "fp32")])
        rows.append({"busy_processes": load, "threads": threads, "precision": precision, "best_step_s": round(best, 3),
                     "tokens_per_s": round(BATCH * args.seq / best, 1),
                     "vs_default_fp32_same_load": round(baseline / best, 3),
                     "step_s": [round(t, 3) for t in times[(load, threads, precision)]]})
    report["rows"] = rows
    report["machine"]["load_average_at_end"] = load_average()
    return report


def print_report(report: dict) -> None:
    print(f"\nmachine: {report['machine']}\nsettings: {report['settings']}")
    print("| machine | threads | precision | best step s | tokens/s | vs default threads, fp32, same load |")
    print("|---|---|---|---|---|---|")
    for row in report["rows"]:
        load = f"busy ({row['busy_processes']} spinning)" if row["busy_processes"] else "quiet"
        print(f"| {load} | {row['threads']} | {row['precision']} | {row['best_step_s']} | {row['tokens_per_s']} | "
              f"{row['vs_default_fp32_same_load']}x |")


def main(argv: list[str] | None = None) -> int:
    parser = script_parser(__doc__)
    parser.add_argument("--model-shape", choices=sorted(SHAPES), default=None,
                        help="GPT-2 shape (default distilgpt2; --quick: small)")
    parser.add_argument("--seq", type=int, default=None, help="tokens per example (default 256; --quick 128)")
    parser.add_argument("--steps", type=int, default=3, help="steps per process, the first one warm-up")
    parser.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default 2; --quick 1)")
    parser.add_argument("--busy", type=int, default=1, help="spinning processes for the busy rows (0: none)")
    parser.add_argument("--quick", action="store_true", help="small shape, 8 x 128, one round")
    parser.add_argument("--json-out", metavar="FILE", help="also write every number as JSON")
    parser.add_argument("--child", nargs=5, metavar=("THREADS", "PRECISION", "SHAPE", "SEQ", "STEPS"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        threads, precision, shape, seq, steps = args.child
        print(json.dumps(child(int(threads), precision, shape, int(seq), int(steps))))
        return 0
    args.model_shape = args.model_shape or ("small" if args.quick else "distilgpt2")
    args.seq = args.seq or (128 if args.quick else 256)
    args.rounds = args.rounds or (1 if args.quick else 2)
    if args.steps < 2:
        parser.error("--steps must be at least 2 (the first is warm-up)")
    report = run(args)
    print_report(report)
    write_json(args.json_out, report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
