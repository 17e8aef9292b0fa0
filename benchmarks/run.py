"""Run every benchmark of the project and collect their figures into benchmarks/results.json.

    python benchmarks/run.py --quick        # every benchmark in a small form (under 10 minutes on 2 CPUs)
    python benchmarks/run.py                # the full forms (the BENCHMARKS.md tables; hours on a CPU)
    python benchmarks/run.py --quick --only train_speed tokenize_scale

Each benchmark runs as its own process, one after the other (they all time things, so never two at
once), with `--json-out FILE`; results.json maps "benchmark.metric" to every number in those files
(nested keys joined with dots, list items by index; the `machine` and `settings` parts left out), plus
"run.<benchmark>.ok" and "run.<benchmark>.wall_s". A script in benchmarks/ that is not in the table
below still runs, with `--quick` in the quick form. A benchmark that fails or overruns its time limit is
reported and the others still run; the exit status is then 1. Modules without a `__main__` guard
(shared helpers such as common.py) are not benchmarks.
"""
from __future__ import annotations

import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import REPO, script_parser, write_json

HERE = REPO / "benchmarks"
RESULTS = HERE / "results.json"
SKIPPED_KEYS = {"machine", "settings"}

# name: (quick arguments, full arguments, quick time limit in seconds). The quick forms are smaller than
# some scripts' own --quick so that all of them fit in 10 minutes on the project's 2-CPU machines.
BENCHMARKS: dict[str, tuple[list[str], list[str], int]] = {
    "validate_speed": (["--records", "20000"], [], 120),
    "tokenize_scale": (["--quick"], [], 150),
    "train_speed": (["--quick"], [], 300),
    "train_levers": (["--quick"], [], 150),
    "train_overheads": (["--quick"], [], 120),
    "train_startup": (["--quick"], [], 120),
    "session_speed": (["--quick"], [], 120),
    "cpu_threads": (["--quick"], [], 150),
    "scratch_lr": (["--quick", "--epochs", "1"], [], 150),
    "forgetting": (["--quick", "--size", "tiny", "--epochs", "10", "--pretrain-epochs", "1",
                    "--pretrain-records", "50"], [], 180),
    "generate_speed": (["--quick"], [], 200),
}
QUICK_BUDGET_S = 600


def flatten(value, prefix: str, into: dict) -> None:
    """Every number (and bool) under `value` as into[prefix.key.key...]."""
    if isinstance(value, bool) or (isinstance(value, (int, float)) and value == value):
        into[prefix] = value
    elif isinstance(value, dict):
        for key, item in value.items():
            if key not in SKIPPED_KEYS:
                flatten(item, f"{prefix}.{key}", into)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            flatten(item, f"{prefix}.{index}", into)


def is_benchmark(path: Path) -> bool:
    """A runnable script (it has a __main__ guard), not a helper module such as common.py."""
    return path.stem != "run" and not path.stem.startswith("_") and \
        'if __name__ == "__main__":' in path.read_text(encoding="utf-8")


def discover() -> list[str]:
    """The benchmark scripts in benchmarks/: the known ones first, in the table's order."""
    found = sorted(p.stem for p in HERE.glob("*.py") if is_benchmark(p))
    return [name for name in BENCHMARKS if name in found] + [name for name in found if name not in BENCHMARKS]


def run_one(name: str, quick: bool, limit_s: float | None, json_path: Path) -> tuple[bool, float, str]:
    """(ok, wall seconds, why it failed) of one benchmark."""
    quick_args, full_args, _ = BENCHMARKS.get(name, (["--quick"], [], 120))
    command = [sys.executable, str(HERE / f"{name}.py"), *(quick_args if quick else full_args),
               "--json-out", str(json_path)]
    print(f"\n=== {name}: {' '.join(command[1:])}", flush=True)
    started = time.perf_counter()
    try:
        done = subprocess.run(command, cwd=REPO, timeout=limit_s)
    except subprocess.TimeoutExpired:
        return False, time.perf_counter() - started, f"over its {limit_s:.0f} s limit"
    wall = time.perf_counter() - started
    if done.returncode != 0:
        return False, wall, f"exit {done.returncode}"
    if not json_path.is_file():
        return False, wall, "wrote no JSON"
    return True, wall, ""


def main(argv: list[str] | None = None) -> int:
    parser = script_parser(__doc__)
    parser.add_argument("--quick", action="store_true", help="small forms of every benchmark (< 10 minutes)")
    parser.add_argument("--only", nargs="+", metavar="NAME", help="run only these benchmarks")
    parser.add_argument("--out", default=str(RESULTS), help=f"results file (default {RESULTS.relative_to(REPO)})")
    args = parser.parse_args(argv)
    names = discover()
    if args.only:
        unknown = sorted(set(args.only) - set(names))
        if unknown:
            parser.error(f"no such benchmark: {', '.join(unknown)} (have: {', '.join(names)})")
        names = [name for name in names if name in args.only]

    results: dict = {"run.mode": "quick" if args.quick else "full", "run.date": datetime.date.today().isoformat(),
                     "run.nproc": os.cpu_count(), "run.python": platform.python_version()}
    failures: list[str] = []
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="benchmarks-run-") as tmp:
        for name in names:
            limit = BENCHMARKS.get(name, ([], [], 120))[2] if args.quick else None
            ok, wall, why = run_one(name, args.quick, limit, Path(tmp) / f"{name}.json")
            results[f"run.{name}.ok"] = ok
            results[f"run.{name}.wall_s"] = round(wall, 1)
            if ok:
                flatten(json.loads((Path(tmp) / f"{name}.json").read_text()), name, results)
            else:
                failures.append(f"{name} ({why})")
                print(f"!!! {name} failed: {why}", flush=True)
    total = time.perf_counter() - started
    results["run.total_s"] = round(total, 1)
    write_json(args.out, results, indent=1)
    print(f"\n{len(names) - len(failures)}/{len(names)} benchmarks ran in {total:.0f} s; "
          f"{len(results)} figures in {args.out}")
    if args.quick and total > QUICK_BUDGET_S:
        print(f"note: the quick form took longer than its {QUICK_BUDGET_S} s budget")
    if failures:
        print("failed: " + ", ".join(failures))
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
