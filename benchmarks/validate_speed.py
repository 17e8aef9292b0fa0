"""How fast `validate` is on a large JSONL file, and how much memory it takes.

    python benchmarks/validate_speed.py                      # 1,000,000 records (the goal: < 60 s, < 1 GB RSS)
    python benchmarks/validate_speed.py --records 20000      # a quick check
    python benchmarks/validate_speed.py --json-out validate_speed.json

Writes a file of question/answer records (varied lengths; 3% repeat an earlier record, which validate
reports as about 2.5% exact and 0.5% near duplicates; a sprinkle of HTML entities, placeholders,
emails and mojibake so every check has work to do) into a temporary directory, runs
`python main.py validate --data-file F --json` in a subprocess and reports its wall time, records
per second and peak resident memory (psutil polling, plus the kernel's ru_maxrss).
"""
from __future__ import annotations

import datetime
import json
import os
import platform
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

from common import REPO, cpu_model, peak_rss_bytes, script_parser, write_json

GOAL_SECONDS = 60.0
GOAL_RSS_MB = 1024.0

WORDS = ("the a an of to in for on with by from as at is are was be can will should how what why when "
         "which data model training function variable loop list string number file server request "
         "response error value python database query table index memory network user password "
         "system process thread cache test build deploy release version update install package "
         "library module class object method argument return result output input example simple "
         "important different common useful quickly carefully usually often always never first "
         "second next last each every other same new old large small fast slow good better best").split()
QUESTION_STARTS = ("What is", "How do I", "Why does", "When should I use", "Can you explain",
                   "What is the difference between", "How can I fix", "Is it possible to")
EXTRAS = ("Contact me at jane.doe{n}@example.com for details.", "Use &amp; and &lt;tags&gt; carefully.",
          "The cafÃ© server returned an error.", "Fill in {{{{name}}}} before sending.")


def _sentence(rng: random.Random, words: int) -> str:
    text = " ".join(rng.choice(WORDS) for _ in range(words))
    return text[0].upper() + text[1:] + rng.choice((".", ".", ".", "!", "?"))


def _record(rng: random.Random, n: int) -> dict:
    question = f"{rng.choice(QUESTION_STARTS)} {' '.join(rng.choice(WORDS) for _ in range(rng.randint(2, 25)))}?"
    sentences = max(1, int(rng.lognormvariate(1.3, 0.8)))  # median ~4 sentences, a long tail
    answer = " ".join(_sentence(rng, rng.randint(5, 20)) for _ in range(sentences))
    if rng.random() < 0.01:
        answer += " " + rng.choice(EXTRAS).format(n=n)
    return {"question": question, "answer": answer}


def write_dataset(path: Path, records: int, seed: int = 0) -> int:
    """Write `records` JSONL question/answer records to `path`; returns the file size in bytes."""
    rng = random.Random(seed)
    recent: list[dict] = []
    with open(path, "w", encoding="utf-8") as handle:
        for n in range(records):
            roll = rng.random()
            if recent and roll < 0.02:  # exact duplicate of an earlier record
                record = rng.choice(recent)
            elif recent and roll < 0.03:  # near duplicate: same words, different case and punctuation
                original = rng.choice(recent)
                record = {"question": original["question"].upper(),
                          "answer": original["answer"].replace(".", "!")}
            else:
                record = _record(rng, n)
                if len(recent) < 1000:
                    recent.append(record)
                elif rng.random() < 0.01:
                    recent[rng.randrange(1000)] = record
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")
    return path.stat().st_size


def run_validate(data_file: Path) -> dict:
    """Run `main.py validate --json` in a subprocess; wall time, peak RSS and its report."""
    command = [sys.executable, str(REPO / "main.py"), "validate", "--data-file", str(data_file), "--json"]
    start = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=REPO)
    watched = psutil.Process(process.pid)
    peak_rss = 0
    while process.poll() is None:
        try:
            peak_rss = max(peak_rss, watched.memory_info().rss)
        except psutil.Error:
            break
        time.sleep(0.05)
    stdout, stderr = process.communicate()
    wall = time.perf_counter() - start
    kernel_peak = peak_rss_bytes(children=True)  # the kernel's own peak: polling can miss a spike
    if process.returncode not in (0, 3):
        raise SystemExit(f"validate failed with exit {process.returncode}: {stderr.decode()[-2000:]}")
    return {"wall_s": wall, "peak_rss_bytes": max(peak_rss, kernel_peak), "exit_code": process.returncode,
            "report": json.loads(stdout)}


def main(argv: list[str] | None = None) -> int:
    """Generate the data, time `validate`, print the figures; exit 1 when a goal is missed at full size."""
    parser = script_parser(__doc__, epilog=True)
    parser.add_argument("--records", type=int, default=1_000_000, help="records to generate (default 1,000,000)")
    parser.add_argument("--seed", type=int, default=0, help="random seed of the generated data")
    parser.add_argument("--json-out", help="also write the figures to this JSON file")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="mtn-sails-bench-") as tmp:
        data_file = Path(tmp) / "qa.jsonl"
        start = time.perf_counter()
        size = write_dataset(data_file, args.records, args.seed)
        generate_s = time.perf_counter() - start
        result = run_validate(data_file)

    report = result["report"]
    figures = {
        "date": datetime.date.today().isoformat(),
        "records": args.records,
        "file_mb": round(size / 1e6, 1),
        "wall_s": round(result["wall_s"], 2),
        "records_per_s": round(args.records / result["wall_s"]),
        "peak_rss_mb": round(result["peak_rss_bytes"] / 2**20, 1),
        "exit_code": result["exit_code"],
        "score": report["score"],
        "findings": {f["code"]: f["count"] for f in report["findings"]},
        "generate_s": round(generate_s, 1),
        "cpu": cpu_model(),
        "nproc": os.cpu_count(),
        "python": platform.python_version(),
    }
    print(f"records        {figures['records']:,} ({figures['file_mb']} MB JSONL)")
    print(f"wall time      {figures['wall_s']} s  (goal < {GOAL_SECONDS:.0f} s)")
    print(f"throughput     {figures['records_per_s']:,} records/s")
    print(f"peak RSS       {figures['peak_rss_mb']} MB  (goal < {GOAL_RSS_MB:.0f} MB)")
    print(f"report         score {figures['score']}, findings {figures['findings']}")
    print(f"machine        {figures['nproc']} CPUs, {figures['cpu']}, Python {figures['python']}")
    write_json(args.json_out, figures)
    missed = figures["wall_s"] >= GOAL_SECONDS or figures["peak_rss_mb"] >= GOAL_RSS_MB
    return 1 if missed and args.records >= 1_000_000 else 0


if __name__ == "__main__":
    raise SystemExit(main())
