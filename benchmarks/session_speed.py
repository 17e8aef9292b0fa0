"""Whole-session speed as a user waits for it: `python main.py train` against TRL's SFTTrainer and the tutorial recipe.

    python benchmarks/session_speed.py --json-out benchmarks/results/session_speed.json   # 48 records, 3 rounds
    python benchmarks/session_speed.py --model-shape real-base --records 20 --arms trl sails  # SmolLM2-135M-Instruct
    python benchmarks/session_speed.py --records 999 --rounds 1 --arms recipe sails       # the full Alpaca demo
    python benchmarks/session_speed.py --quick                                            # tiny shape, ~1 minute

Every program starts from one model directory: distilgpt2's shape (6 blocks, 768 wide, 1,024 positions,
gelu_new as its config has it) with random weights, and GPT-2's own 50,257-token tokenizer
(benchmarks/gpt2_vocab.py), saved as safetensors; or with --model-shape real-base the real base
(SmolLM2-135M-Instruct, `make real-base`) as it comes. The data is the first --records records of
tests/fixtures/alpaca_en_demo.json. Arms, each one whole process from start to exit:

  trl          benchmarks/_trl_session.py: TRL's SFTTrainer, prompt-completion rows, completion-only loss,
               dynamic padding, bf16 where the product would pick it, one save (the peer a user would pick)
  recipe       benchmarks/_recipe_session.py: pad to --max-length, LM collator, Trainer defaults, save
  sails        `python main.py train --model-name MODEL --max-length --batch-size --epochs` with every
               other option at its default: what a user runs (held-out split, evaluation, probe, history,
               charts, model card and the final save included)
  sails+fp32   the same with `--precision fp32`, beside `sails` when the default picks bf16 (--levers)
  sails+bf16   the same with `--precision bf16` (--levers)
  sails+padded the same with `--pad-examples`: one padded row per example, as before a batch's examples
               shared rows (--levers)
  sails+no-session-0  the same with `--base-prompts 0`: a first session from a pretrained base without
               session 0 (the base answering the bundled prompts first), what that costs (--levers)
  sails+continuing  a second session: `sails` on the next --records records of the demo, into a copy
               (made before the clock starts) of a directory one default session trained before the
               rounds, so it measures and replays the first session and the base's session 0

Every round runs each arm once, the arm that starts rotating between rounds; the headline is the median
over rounds of TRL's seconds over sails's (and the recipe's), the best round beside it. Each arm also reports its
training loss (the Trainer's mean over the session's steps: bf16 against fp32 on the same records), its
peak resident memory, and for sails the seconds the session itself reports (training_history.json's duration_s),
so the rest is process start-up (imports, model load) and exit, with the session's stages (phase_s) and the
share of the whole process its training steps took (train_share: phase_s train over process seconds).

MFU of the whole process: the training FLOPs of what an arm learns from, over its process seconds,
against the best `torch.matmul` FLOP/s of the precision it computed in (fp32, or bf16 where sails picked
it), measured in the same run after the rounds (common.matmul_peak_flops). A token costs 6 x
non-embedding parameters + 12 x layers x width x its example's length (attention), and each position
the loss scores another 6 x vocabulary x width (the output layer): every real token for the recipe,
whose LM collator scores prompts too, the answer tokens for sails. The recipe learns from every record,
sails from the 90% it trains on after its held-out split, both counted by mtn_sails's own tokenisation.
Padding, evaluation, the probe, saving and start-up are all in the seconds and none in the FLOPs.
"""
from __future__ import annotations

import datetime
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import (GPT2_SHAPES as SHAPES, N_POSITIONS, PAIRS_FILE, REPO, interleaved_rounds, machine,
                    matmul_peak_flops, non_embedding_params, peak_sizes, ratio_statistics, script_parser, write_json)

PEERS = ("trl", "recipe")
HELPERS = {"trl": "_trl_session.py", "recipe": "_recipe_session.py"}
REAL_BASE = "real-base"
LEVERS = {"sails+fp32": ["--precision", "fp32"], "sails+bf16": ["--precision", "bf16"],
          "sails+padded": ["--pad-examples"], "sails+no-session-0": ["--base-prompts", "0"]}
CONTINUING = "sails+continuing"
GOAL_SMALL_FILE = 2.5  # issue 20: the whole process on a small file, median of 3 rounds


def build_model(work: Path, shape: str, tokenizer_kind: str, seed: int) -> Path:
    """The model directory both programs start from: `shape` with random weights and its tokenizer."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    if shape == REAL_BASE:
        from tools.real_base import real_base_dir

        return real_base_dir()
    model_dir = work / "model"
    if tokenizer_kind == "gpt2":
        from gpt2_vocab import gpt2_tokenizer

        tokenizer = gpt2_tokenizer()
    else:
        from mtn_sails.data.files import load_records
        from mtn_sails.training.scratch import train_tokenizer
        from mtn_sails.data.template import PromptTemplate

        template = PromptTemplate()
        tokenizer = train_tokenizer((s.text for r in load_records(PAIRS_FILE) for s in template.render(r)), 2000)
    torch.manual_seed(seed)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=len(tokenizer), n_positions=N_POSITIONS, **SHAPES[shape],
                                       activation_function="gelu_new", bos_token_id=tokenizer.eos_token_id,
                                       eos_token_id=tokenizer.eos_token_id))
    model.save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    return model_dir


def data_file(work: Path, records: int, first: int = 0) -> Path:
    """`records` records of the Alpaca demo from the `first`, as a file of their own."""
    path = work / f"alpaca_{first}_{records}.json"
    path.write_text(json.dumps(json.loads(PAIRS_FILE.read_text(encoding="utf-8"))[first:first + records], indent=1),
                    encoding="utf-8")
    return path


def arm_command(arm: str, model_dir: Path, data: Path, output: Path, args) -> list[str]:
    """The command line of one arm."""
    shared = ["--max-length", str(args.max_length), "--batch-size", str(args.batch_size), "--epochs", str(args.epochs)]
    if arm in PEERS:
        return [sys.executable, str(REPO / "benchmarks" / HELPERS[arm]), str(model_dir), str(data), str(output),
                *shared]
    start = [] if arm == CONTINUING else ["--model-name", str(model_dir)]  # a named model would start afresh
    return [sys.executable, str(REPO / "main.py"), "train", "--data-file", str(data), *start,
            "--output-dir", str(output), *shared, *LEVERS.get(arm, [])]


def run_arm(arm: str, command: list[str], output: Path, earlier: Path | None = None) -> dict:
    """Run one arm as its own process (into a copy of `earlier` if given): wall seconds, peak memory, its loss and
    (sails) the session's own seconds and stages."""
    shutil.rmtree(output, ignore_errors=True)
    if earlier is not None:
        shutil.copytree(earlier, output)
    started = time.perf_counter()
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               env={**os.environ, "PYTHONUNBUFFERED": "1"})
    printed = process.stdout.read()
    _, status, usage = os.wait4(process.pid, 0)  # wait4: the child's own peak memory
    wall = time.perf_counter() - started
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        raise RuntimeError(f"{arm} exited {code}:\n{printed[-3000:]}")
    result = {"process_s": round(wall, 2), "peak_rss_mb": round(usage.ru_maxrss / 1024, 1)}
    if arm in PEERS:
        found = re.search(r"'train_runtime': '?([\d.]+)'?.*'train_loss': '?([\d.]+)'?", printed)
        result.update({"train_runtime_s": float(found.group(1)), "train_loss": float(found.group(2))} if found else {})
        precision = re.search(r"^precision: (\w+)$", printed, re.MULTILINE)  # the TRL helper says; the recipe is fp32
        result["precision"] = precision.group(1) if precision else "fp32"
    else:
        from mtn_sails.model_dir.history_file import HISTORY_FILE

        entry = json.loads((output / HISTORY_FILE).read_text())["sessions"][-1]
        result.update({"session_s": entry["duration_s"], "train_loss": entry["train_loss"],
                       "precision": entry["precision"], "steps": entry["steps"], "phase_s": entry["phase_s"],
                       "train_share": round(entry["phase_s"]["train"] / wall, 3)})
    return result


def learned_examples(model_dir: Path, data: Path, args) -> dict[str, list[tuple[int, int]]]:
    """Per arm, (tokens, positions its loss scores) of every example it trains on (the recipe: all records,
    every token scored; TRL: all records, the answer tokens scored; sails: its training split, the answer tokens
    scored)."""
    from transformers import AutoTokenizer

    from mtn_sails.config import TrainConfig
    from mtn_sails.data.files import file_sha256
    from mtn_sails.data.template import settle_template
    from mtn_sails.training.scoring import IGNORE_INDEX
    from mtn_sails.training.tokenizing import records_dataset, split_dataset, tokenize

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    template, _notes = settle_template("auto", None, tokenizer)
    defaults = TrainConfig(data_file=str(data))
    rows = records_dataset(data, file_sha256(data))
    train_rows, _held_out = split_dataset(rows, defaults.eval_split, defaults.seed)
    examples = {}
    for arm, chosen in (("recipe", rows), ("trl", rows), ("sails", train_rows)):
        labels = tokenize(chosen, None, tokenizer, template, args.max_length).train["labels"]
        examples[arm] = [(len(row), len(row) - 1 if arm == "recipe" else sum(t != IGNORE_INDEX for t in row[1:]))
                         for row in labels]
    return examples


def whole_process_mfu(model_dir: Path, data: Path, rounds: list[dict], args) -> dict:
    """Per arm: the training FLOPs of what it learns from over its median process seconds, against the matmul
    peak of the precision it computed in."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir)
    width, layers, vocab = model.config.hidden_size, model.config.num_hidden_layers, model.config.vocab_size
    non_embedding = non_embedding_params(model)
    examples = learned_examples(model_dir, data, args)
    sizes = peak_sizes(args.model_shape)
    used = {r[arm].get("precision", "fp32") for r in rounds for arm in args.arms} | {"fp32"}
    # only the precisions the arms computed in: without native bf16 a 4096-wide bf16 matmul takes minutes
    peaks = {name: matmul_peak_flops(sizes, dtype="bfloat16" if name == "bf16" else "float32") for name in sorted(used)}
    report = {"peak_matmul_gflops": {name: round(peak / 1e9, 1) for name, peak in peaks.items()},
              "non_embedding_params": non_embedding}
    for arm in (arm for arm in args.arms if arm != CONTINUING):  # the continuing arm's data differ (its share says)
        seconds = statistics.median(r[arm]["process_s"] for r in rounds)
        precision = rounds[0][arm].get("precision", "fp32")
        learned = examples[arm if arm in PEERS else "sails"]
        flops = sum(n * 6 * non_embedding + scored * 6 * vocab * width + 12 * layers * width * n * n
                    for n, scored in learned)
        report[arm] = {"tokens": sum(n for n, _ in learned), "scored": sum(s for _, s in learned),
                       "examples": len(learned), "train_tflops": round(flops / 1e12, 2), "precision": precision,
                       "mfu": round(flops / seconds / peaks[precision], 4),
                       "mfu_of_fp32_peak": round(flops / seconds / peaks["fp32"], 4)}
    return report


def first_session(model_dir: Path, data: Path, work: Path, args) -> Path:
    """The directory a default session trained on `data` before the rounds: what the continuing arm continues."""
    output = work / "first-session"
    run_arm("sails", arm_command("sails", model_dir, data, output, args), output)
    return output


def round_ratios(rounds: list[dict], arms: list[str], peer: str) -> dict[str, dict]:
    """Per sails arm: the peer's process seconds over the arm's, median and best over rounds."""
    return {arm: ratio_statistics([r[peer]["process_s"] for r in rounds], [r[arm]["process_s"] for r in rounds])
            for arm in arms if arm not in PEERS and peer in arms}


def run(args) -> dict:
    """Build the start model and the data file, then the rounds."""
    work = Path(args.work_dir)
    model_dir = build_model(work, args.model_shape, args.tokenizer, args.seed)
    data = data_file(work, args.records)
    earlier = first_session(model_dir, data, work, args) if CONTINUING in args.arms else None
    arms = {arm: (lambda arm=arm: run_arm(
        arm, arm_command(arm, model_dir, data_file(work, args.records, args.records) if arm == CONTINUING else data,
                         work / f"out-{arm}", args), work / f"out-{arm}", earlier if arm == CONTINUING else None))
        for arm in args.arms}
    rounds = interleaved_rounds(arms, args.rounds, on_result=lambda index, arm, found: print(
        f"round {index + 1} {arm}: {found}", flush=True))
    ratios = {f"{peer}_over": round_ratios(rounds, args.arms, peer) for peer in PEERS}
    medians = {arm: {key: round(statistics.median(r[arm][key] for r in rounds), 3 if key == "train_share" else 2)
                     for key in rounds[0][arm] if isinstance(rounds[0][arm][key], (int, float))}
               for arm in args.arms}
    mfu = whole_process_mfu(model_dir, data, rounds, args)
    return {"rounds": rounds, "median": medians, **ratios, "whole_process_mfu": mfu,
            "model": {"shape": args.model_shape, **SHAPES.get(args.model_shape, {}), "n_positions": N_POSITIONS,
                      "tokenizer": args.tokenizer} if args.model_shape != REAL_BASE else {"shape": REAL_BASE}}


def main(argv: list[str] | None = None) -> int:
    """Run the rounds and print the medians."""
    parser = script_parser(__doc__, epilog=True)
    parser.add_argument("--records", type=int, default=48, help="the first N Alpaca demo records (999: all)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--arms", nargs="+", default=None, choices=[*PEERS, "sails", *LEVERS, CONTINUING],
                        help="default: trl, recipe and sails, and with --levers every sails+ arm")
    parser.add_argument("--levers", action="store_true",
                        help="also sails with --precision fp32, bf16, --pad-examples, --base-prompts 0, and a "
                             "continuing session")
    parser.add_argument("--model-shape", choices=[*sorted(SHAPES), REAL_BASE], default="distilgpt2",
                        help="a GPT-2 shape with random weights, or the real base as it comes")
    parser.add_argument("--tokenizer", choices=["gpt2", "trained"], default="gpt2",
                        help="GPT-2's own 50,257 tokens, or a 2,000-token BPE trained on the data (--quick)")
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--epochs", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--quick", action="store_true", help="tiny shape, trained tokenizer, 16 records, 1 round")
    parser.add_argument("--work-dir", help="where the model, data and outputs go (default: a temporary directory)")
    parser.add_argument("--json-out", help="also write the figures to this JSON file")
    args = parser.parse_args(argv)
    if args.quick:
        args.model_shape, args.tokenizer, args.records, args.rounds, args.max_length = "tiny", "trained", 16, 1, 128
    args.arms = args.arms or [*PEERS, "sails", *([*LEVERS, CONTINUING] if args.levers else [])]
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="mtn-sails-session-speed-") as scratch:
        args.work_dir = args.work_dir or scratch
        Path(args.work_dir).mkdir(parents=True, exist_ok=True)
        result = run(args)
    result.update({"date": datetime.date.today().isoformat(), "machine": machine("torch"),
                   "settings": {k: v for k, v in vars(args).items() if k not in ("json_out", "work_dir")},
                   "wall_s": round(time.perf_counter() - started, 1)})
    for peer in PEERS:
        for arm, ratio in result[f"{peer}_over"].items():
            print(f"{peer} / {arm}: median {ratio['median']}x (rounds {ratio['rounds']}, best {ratio['best']}x)")
    print(json.dumps(result["median"], indent=1))
    mfu = result["whole_process_mfu"]
    print(f"whole-process MFU against the matmul peak of each arm's precision ({mfu['peak_matmul_gflops']} GFLOP/s): "
          + ", ".join(f"{arm} {mfu[arm]['mfu']:.1%} ({mfu[arm]['precision']})" for arm in args.arms if arm in mfu))
    write_json(args.json_out, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
