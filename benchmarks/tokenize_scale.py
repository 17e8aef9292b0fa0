"""Tokenising at scale: time and peak memory of a 1,000,000-record file through mtn_sails's data path.

    python benchmarks/tokenize_scale.py                          # 100,000, 300,000 and 1,000,000 records
    python benchmarks/tokenize_scale.py --records 20000          # a quick form (one size)
    python benchmarks/tokenize_scale.py --json-out tokenize_scale.json

Writes question/answer JSONL records (varied lengths, a long tail) into a temporary directory: with
`--text real` (default) each question is an Alpaca instruction and each answer a lognormal number of
sentences drawn from the Alpaca outputs and C4 web documents in tests/fixtures (real English: 8,000+ distinct
sentences), with `--text words` sentences of a 150-word list. The tokenizer is GPT-2's own
(`--tokenizer gpt2`, 50,257 tokens, benchmarks/gpt2_vocab.py: what distilgpt2 users tokenise with), or a
scratch byte-level BPE (`--tokenizer trained`: `mtn_sails.training.scratch.train_tokenizer`, vocabulary
--vocab-size, on the first --tokenizer-records records). Then, per size, a child process does what a
training session does with the file before the Trainer starts:

    sha256 -> tokenized.records_dataset (the file streamed into Arrow rows) -> split_dataset (10% held out)
    -> tokenized.tokenize(train, held-out, tokenizer, template, --max-length)   (datasets.map, batches of 1000)

with HF_DATASETS_CACHE in a fresh temporary directory (its size on disk is reported, then it is deleted).
Peak resident memory of the child is the larger of psutil polling (every 50 ms) and the kernel's ru_maxrss
for that child (os.wait4); the child also reports its RSS after its imports and the tokenizer load
(`baseline`), so peak - baseline is what the data costs. Flat memory: the peak barely moves from 100k to 1M.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import FIXTURES as REALDATA, REPO, load_average, machine, script_parser, write_json
from gpt2_vocab import gpt2_tokenizer

DEFAULT_SIZES = (100_000, 300_000, 1_000_000)
FLAT_RSS_RATIO = 1.5  # "flat": the largest file's peak RSS within 1.5x of the smallest's

WORDS = ("the a an of to in for on with by from as at is are was be can will should how what why when which "
         "data model training function variable loop list string number file server request response error "
         "value python database query table index memory network user password system process thread cache "
         "test build deploy release version update install package library module class object method "
         "argument return result output input example simple important different common useful quickly "
         "carefully usually often always never first second next last each every other same new old large "
         "small fast slow good better best token batch layer gradient optimizer schedule checkpoint").split()
STARTS = ("What is", "How do I", "Why does", "When should I use", "Can you explain", "How can I fix",
          "What is the difference between", "Is it possible to")


def write_records(path: Path, records: int, seed: int = 0) -> int:
    """`records` question/answer JSONL lines (answers: lognormal sentence count, a long tail); returns bytes."""
    rng = random.Random(seed)
    with open(path, "w", encoding="utf-8") as handle:
        for _ in range(records):
            question = f"{rng.choice(STARTS)} {' '.join(rng.choices(WORDS, k=rng.randint(2, 20)))}?"
            sentences = max(1, int(rng.lognormvariate(1.2, 0.8)))
            answer = " ".join(" ".join(rng.choices(WORDS, k=rng.randint(5, 18))).capitalize() + "."
                              for _ in range(sentences))
            handle.write(json.dumps({"question": question, "answer": answer}) + "\n")
    return path.stat().st_size


def real_sentences() -> tuple[list[str], list[str]]:
    """(questions, sentences) from the real files the tests carry: Alpaca instructions, and the sentences of
    Alpaca outputs and C4 web documents."""
    import re

    alpaca = json.loads((REALDATA / "alpaca_en_demo.json").read_text(encoding="utf-8"))
    with open(REALDATA / "c4_demo.jsonl", encoding="utf-8") as handle:
        documents = [json.loads(line)["text"] for line in handle]
    questions = [r["instruction"] + (f"\n{r['input']}" if r.get("input") else "") for r in alpaca]
    split = re.compile(r"(?<=[.!?])\s+")
    sentences = [s.strip() for text in [r["output"] for r in alpaca] + documents for s in split.split(text)]
    return questions, [s for s in sentences if len(s) > 1]


def write_real_records(path: Path, records: int, seed: int = 0) -> int:
    """`records` question/answer JSONL lines of real English (answers: lognormal sentence count); returns bytes."""
    rng = random.Random(seed)
    questions, sentences = real_sentences()
    with open(path, "w", encoding="utf-8") as handle:
        for _ in range(records):
            answer = " ".join(rng.choices(sentences, k=max(1, int(rng.lognormvariate(1.2, 0.8)))))
            handle.write(json.dumps({"question": rng.choice(questions), "answer": answer}) + "\n")
    return path.stat().st_size


def head(source: Path, target: Path, lines: int) -> None:
    """The first `lines` lines of `source` into `target`."""
    with open(source, encoding="utf-8") as src, open(target, "w", encoding="utf-8") as dst:
        for line, _ in zip(src, range(lines)):
            dst.write(line)


def rss_parts(pid: int) -> dict[str, int]:
    """RssAnon / RssFile / RssShmem of a process in bytes (Linux /proc; empty elsewhere)."""
    parts = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(("RssAnon:", "RssFile:", "RssShmem:")):
                key, value = line.split(":")
                parts[key] = int(value.split()[0]) * 1024
    except OSError:
        pass
    return parts


def directory_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


# ---------------------------------------------------------------------------------------------- the child


def child(data_file: str, tokenizer_dir: str, max_length: int) -> int:
    """The measured process: the session's data path on one file; prints its figures as one JSON line."""
    import psutil

    marks = {}
    started = time.perf_counter()
    from transformers import AutoTokenizer

    from mtn_sails.data.files import file_sha256
    from mtn_sails.data.template import PromptTemplate
    from mtn_sails.training.tokenizing import records_dataset, split_dataset, tokenize

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    marks["imports_and_tokenizer_s"] = time.perf_counter() - started
    baseline = psutil.Process().memory_info().rss
    t = time.perf_counter()
    sha = file_sha256(data_file)
    marks["sha256_s"] = time.perf_counter() - t
    t = time.perf_counter()
    rows = records_dataset(data_file, sha)
    marks["records_dataset_s"] = time.perf_counter() - t
    t = time.perf_counter()
    train_rows, held_out = split_dataset(rows, 0.1, 42)
    marks["split_s"] = time.perf_counter() - t
    t = time.perf_counter()
    data = tokenize(train_rows, held_out, tokenizer, PromptTemplate(), max_length)
    marks["tokenize_s"] = time.perf_counter() - t
    t = time.perf_counter()
    tokens = 0
    for batch in data.train.select_columns(["length"]).iter(batch_size=100_000):
        tokens += sum(batch["length"])
    marks["count_tokens_s"] = time.perf_counter() - t
    print(json.dumps({"records": len(rows), "train_examples": len(data.train),
                      "eval_examples": len(data.eval) if data.eval is not None else 0, "train_tokens": tokens,
                      "vocab_size": len(tokenizer), "baseline_rss_bytes": baseline,
                      "own_peak_rss_bytes": psutil.Process().memory_info().rss, "notes": data.notes,
                      **{k: round(v, 3) for k, v in marks.items()}}))
    return 0


# --------------------------------------------------------------------------------------------- the parent


def measure(data_file: Path, tokenizer_dir: Path, max_length: int, work: Path) -> dict:
    """Run the child on one file; wall time, peak RSS and its own figures."""
    import psutil

    cache = work / "hf_datasets_cache"
    env = dict(os.environ, HF_DATASETS_CACHE=str(cache), PYTHONPATH=str(REPO), TOKENIZERS_PARALLELISM="true")
    out_path = work / "child.json"
    started = time.perf_counter()
    with open(out_path, "w") as out:
        process = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--child", str(data_file),
                                    "--tokenizer-dir", str(tokenizer_dir), "--max-length", str(max_length)],
                                   stdout=out, stderr=subprocess.PIPE, env=env, cwd=REPO)
        watched = psutil.Process(process.pid)
        polled = 0
        peak_parts: dict[str, int] = {}
        while True:
            try:
                rss = watched.memory_info().rss + sum(c.memory_info().rss for c in watched.children(recursive=True))
                polled = max(polled, rss)
            except psutil.Error:
                pass
            for key, value in rss_parts(process.pid).items():
                peak_parts[key] = max(peak_parts.get(key, 0), value)
            finished, status, usage = os.wait4(process.pid, os.WNOHANG)
            if finished:
                break
            time.sleep(0.05)
    wall = time.perf_counter() - started
    process.returncode = os.waitstatus_to_exitcode(status)
    stderr = process.stderr.read().decode(errors="replace")
    process.stderr.close()
    if process.returncode != 0:
        raise RuntimeError(f"child failed on {data_file.name} (exit {process.returncode}): {stderr[-2000:]}")
    figures = json.loads(out_path.read_text().strip().splitlines()[-1])
    cache_bytes = directory_bytes(cache) if cache.exists() else 0
    shutil.rmtree(cache, ignore_errors=True)
    peak = max(polled, usage.ru_maxrss * 1024)  # ru_maxrss is in KiB on Linux
    return {"records": figures["records"], "file_mb": round(data_file.stat().st_size / 1e6, 1),
            "wall_s": round(wall, 2), "records_per_s": round(figures["records"] / wall),
            "peak_rss_mb": round(peak / 1e6, 1), "peak_rss_polled_mb": round(polled / 1e6, 1),
            "ru_maxrss_mb": round(usage.ru_maxrss * 1024 / 1e6, 1),
            # RssFile is the memory-mapped Arrow cache pages the process touched: page cache the kernel can drop.
            "peak_rss_anon_mb": round(peak_parts.get("RssAnon", 0) / 1e6, 1),
            "peak_rss_file_mb": round(peak_parts.get("RssFile", 0) / 1e6, 1),
            "baseline_rss_mb": round(figures["baseline_rss_bytes"] / 1e6, 1),
            "data_rss_mb": round((peak - figures["baseline_rss_bytes"]) / 1e6, 1),
            "arrow_cache_mb": round(cache_bytes / 1e6, 1), "train_examples": figures["train_examples"],
            "eval_examples": figures["eval_examples"], "train_tokens": figures["train_tokens"],
            "tokens_per_s": round(figures["train_tokens"] / figures["tokenize_s"]) if figures["tokenize_s"] else None,
            "stages_s": {k: figures[k] for k in ("imports_and_tokenizer_s", "sha256_s", "records_dataset_s", "split_s",
                                                 "tokenize_s", "count_tokens_s")},
            "notes": figures["notes"]}


def run(args) -> dict:
    sizes = sorted(args.records)
    work = Path(tempfile.mkdtemp(prefix="tokenize_scale_"))
    try:
        report = {"machine": machine(), "settings": {"sizes": sizes, "max_length": args.max_length,
                                                     "text": args.text, "tokenizer": args.tokenizer,
                                                     "vocab_size": args.vocab_size,
                                                     "tokenizer_records": args.tokenizer_records}}
        largest = work / f"qa_{sizes[-1]}.jsonl"
        started = time.perf_counter()
        (write_real_records if args.text == "real" else write_records)(largest, sizes[-1], args.seed)
        report["generate_s"] = round(time.perf_counter() - started, 2)
        from mtn_sails.data.files import load_records
        from mtn_sails.training.scratch import train_tokenizer
        from mtn_sails.data.template import PromptTemplate

        started = time.perf_counter()
        if args.tokenizer == "gpt2":
            tokenizer = gpt2_tokenizer()
            report["tokenizer"] = {"name": "GPT-2's own (distilgpt2's)", "vocab_size": len(tokenizer)}
        else:
            template = PromptTemplate()
            sample = (s.text for r, _ in zip(load_records(largest), range(args.tokenizer_records))
                      for s in template.render(r))
            tokenizer = train_tokenizer(sample, args.vocab_size)
            report["tokenizer"] = {"name": "scratch byte-level BPE",
                                   "trained_on_records": min(args.tokenizer_records, sizes[-1]),
                                   "vocab_size": len(tokenizer), "train_s": round(time.perf_counter() - started, 2)}
        tokenizer.save_pretrained(work / "tokenizer")
        del tokenizer
        report["runs"] = []
        for size in sizes:
            data_file = largest if size == sizes[-1] else work / f"qa_{size}.jsonl"
            if data_file != largest:
                head(largest, data_file, size)
            print(f"[tokenize_scale] {size:,} records ...", flush=True)
            report["runs"].append(measure(data_file, work / "tokenizer", args.max_length, work))
            if data_file != largest:
                data_file.unlink()
        peaks = [r["peak_rss_mb"] for r in report["runs"]]
        anon = [r["peak_rss_anon_mb"] for r in report["runs"]]
        report["peak_rss_ratio_largest_over_smallest"] = round(peaks[-1] / peaks[0], 3)
        report["peak_rss_anon_ratio_largest_over_smallest"] = round(anon[-1] / anon[0], 3) if anon[0] else None
        report["flat"] = len(peaks) < 2 or peaks[-1] / peaks[0] <= FLAT_RSS_RATIO
        report["flat_anon"] = len(anon) < 2 or not anon[0] or anon[-1] / anon[0] <= FLAT_RSS_RATIO
        report["machine"]["load_average_at_end"] = load_average()
        return report
    finally:
        shutil.rmtree(work, ignore_errors=True)


def print_report(report: dict) -> None:
    print(f"\ntokenizer: {report['tokenizer']}")
    print(f"{'records':>10} {'file MB':>8} {'wall s':>7} {'rec/s':>7} {'tokens':>12} {'tok/s':>9} "
          f"{'peak RSS MB':>11} {'anon':>6} {'file':>6} {'baseline':>8} {'data':>6} {'Arrow MB':>8}")
    for r in report["runs"]:
        print(f"{r['records']:>10,} {r['file_mb']:>8} {r['wall_s']:>7} {r['records_per_s']:>7,} "
              f"{r['train_tokens']:>12,} {r['tokens_per_s'] or 0:>9,} {r['peak_rss_mb']:>11} "
              f"{r['peak_rss_anon_mb']:>6} {r['peak_rss_file_mb']:>6} "
              f"{r['baseline_rss_mb']:>8} {r['data_rss_mb']:>6} {r['arrow_cache_mb']:>8}")
        print("           stages:", r["stages_s"])
    print(f"peak RSS largest/smallest: {report['peak_rss_ratio_largest_over_smallest']} (flat: {report['flat']}); "
          f"anonymous memory only: {report['peak_rss_anon_ratio_largest_over_smallest']} "
          f"(flat: {report['flat_anon']})")


def main(argv: list[str] | None = None) -> int:
    parser = script_parser(__doc__)
    parser.add_argument("--records", type=int, nargs="+", default=list(DEFAULT_SIZES),
                        help="file sizes in records (default 100000 300000 1000000)")
    parser.add_argument("--quick", action="store_true", help="--records 10000 30000")
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--text", choices=["real", "words"], default="real",
                        help="answers from real English sentences (tests/fixtures) or from a 150-word list")
    parser.add_argument("--tokenizer", choices=["gpt2", "trained"], default="gpt2",
                        help="GPT-2's own tokenizer (50,257 tokens) or a scratch BPE trained on the file")
    parser.add_argument("--vocab-size", type=int, default=8000, help="--tokenizer trained: its vocabulary "
                        "(--scratch-size small's)")
    parser.add_argument("--tokenizer-records", type=int, default=10_000, help="records the tokenizer is trained on")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json-out", metavar="FILE", help="also write every number as JSON")
    parser.add_argument("--child", metavar="FILE", help=argparse.SUPPRESS)
    parser.add_argument("--tokenizer-dir", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return child(args.child, args.tokenizer_dir, args.max_length)
    if args.quick:
        args.records = [10_000, 30_000]
    report = run(args)
    print_report(report)
    write_json(args.json_out, report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
