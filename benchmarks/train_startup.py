"""Start-up of a training process: `python main.py train` from process start to each line it prints, and its imports.

    python benchmarks/train_startup.py                      # examples/programming_basics.json, scratch small, 1 epoch
    python benchmarks/train_startup.py --json-out train_startup.json

The command runs as users run it, unchanged (cold HF_DATASETS_CACHE): every line of its output is stamped
with the seconds since the process was started, so the stages are the ones the product prints (the
"🚀 Training on" line comes after imports, the data file, the plan, the tokenizer, the model and the
tokenising; the epoch line after the first epoch). A second run under `python -X importtime` gives the
import tree, summed per top-level package (importtime's own bookkeeping slows imports a little).
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import REPO, load_average, machine, script_parser, write_json

TRAINING_LINE = "🚀 Training on"


def command(work: Path) -> list[str]:
    """The training command timed: a small scratch model on the programming example, one epoch."""
    return [sys.executable, "-u", str(REPO / "main.py"), "train", "--data-file",
            str(REPO / "examples" / "programming_basics.json"), "--model-name", "scratch", "--scratch-size", "small",
            "--epochs", "1", "--output-dir", str(work / "startup_model")]


def stamped_lines(argv: list[str], env: dict[str, str]) -> tuple[list[dict], float]:
    """Every output line with the seconds since the process started, and the seconds to its exit."""
    started = time.perf_counter()
    process = subprocess.Popen(argv, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True, encoding="utf-8")
    lines = [{"at_s": round(time.perf_counter() - started, 2), "line": line.rstrip()} for line in process.stdout
             if line.strip()]
    if process.wait() != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({process.returncode}): " + "\n".join(
            entry["line"] for entry in lines[-20:]))
    return lines, round(time.perf_counter() - started, 2)


def import_times(argv: list[str], env: dict[str, str]) -> dict[str, float]:
    """Self time of every imported module under -X importtime, summed per top-level package."""
    done = subprocess.run([argv[0], "-X", "importtime", *argv[1:]], cwd=REPO, env=env, capture_output=True,
                          text=True, check=True)
    imports: dict[str, float] = {}
    for line in done.stderr.splitlines():
        if not line.startswith("import time:") or "|" not in line:
            continue
        own, _cumulative, name = line[len("import time:"):].split("|")
        try:
            package = name.strip().split(".")[0]
            imports[package] = imports.get(package, 0.0) + int(own) / 1e6
        except ValueError:  # the header line
            continue
    return imports


def run() -> dict:
    """Both runs; the report as a dict."""
    work = Path(tempfile.mkdtemp(prefix="train_startup_"))
    try:
        argv = command(work)
        env = dict(os.environ, HF_DATASETS_CACHE=str(work / "cache"), PYTHONPATH=str(REPO))
        report: dict = {"machine": machine(), "command": "python main.py " + " ".join(argv[3:-2])}
        lines, exit_s = stamped_lines(argv, env)
        training = next((entry["at_s"] for entry in lines if entry["line"].startswith(TRAINING_LINE)), None)
        report.update(lines=lines, to_first_line_s=lines[0]["at_s"] if lines else None, to_training_line_s=training,
                      to_exit_s=exit_s)
        shutil.rmtree(work / "startup_model", ignore_errors=True)
        imports = import_times(argv, dict(env, HF_DATASETS_CACHE=str(work / "cache2")))
        top = sorted(imports.items(), key=lambda item: -item[1])[:10]
        report.update(imports_s=round(sum(imports.values()), 2),
                      imports_top_self_s={name: round(seconds, 2) for name, seconds in top})
        report["machine"]["load_average_at_end"] = load_average()
        return report
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    """Parse, run, print, write the JSON."""
    parser = script_parser(__doc__)
    parser.add_argument("--quick", action="store_true", help="the same run (it is already small); for run.py")
    parser.add_argument("--json-out", metavar="FILE", help="also write every number as JSON")
    args = parser.parse_args(argv)
    report = run()
    print(f"{report['command']}: training line after {report['to_training_line_s']} s, exit after "
          f"{report['to_exit_s']} s")
    for entry in report["lines"]:
        print(f"  {entry['at_s']:>6.2f} s  {entry['line']}")
    print(f"imports {report['imports_s']} s under -X importtime; self time per package:", report["imports_top_self_s"])
    write_json(args.json_out, report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
