"""Beyond GPT-2 on the CPU: LoRA against full fine-tuning, gradient checkpointing, and a Llama at SmolLM2-135M's
shape through a whole session, its export and generation.

    python benchmarks/families.py --json-out benchmarks/results/families.json   # the BENCHMARKS.md tables
    python benchmarks/families.py --quick                                        # tiny shapes (~1-2 min)
    python benchmarks/families.py --no-training --json-out benchmarks/results/families_session.json  # SmolLM2 session

Training arms. Two shapes with random weights (no hub): `distilgpt2` (GPT-2, 6 layers x 768, 12 heads,
50,257-row embedding and tied head, GPT-2's Conv1D layers) and `smollm2-135m` (Llama: 30 layers x 576,
9 heads and 3 key/value heads, MLP 1536, 49,152-row tied embedding: SmolLM2-135M's config). The
tokenizer is the test suite's Llama/GPT-2 one trained on the corpus (tests/model_families.py), so
token ids stay far below the vocabulary; the embedding keeps its full size. Each arm runs in its own
process (peak memory is the process's own): `full` trains every weight, `lora` rank 8 / alpha 16 on
every linear layer of the blocks (mtn_sails.training.lora, what `--method lora` does), each also with
`--gradient-checkpointing` (non-reentrant, as recipes.py enables it). Same records
(tests/fixtures/alpaca_en_demo.json through the product template, `--max-length`), same batches, the
product's padding collator and length grouping; the first optimizer step is a warm-up and left out;
tokens/s counts real (unpadded) tokens. Memory: the process's peak RSS, and the training's share of it
(peak minus the RSS after the model and data were loaded, just before training: gradients, optimizer
state, activations).

Session. `python main.py pipeline` on examples/programming_basics.json from a saved random Llama at
SmolLM2-135M's shape, 1 epoch, `--quantize`: wall time, the session's own duration (history), the
export's, the peak RSS of the process. Then 64 greedy tokens (eos ignored) after the templated prompt,
onnxruntime (fp32 and int8, generate's session settings) against PyTorch (generate --backend torch's
model), the backends taking turns over --rounds rounds; the median round's tokens/s.
"""
from __future__ import annotations

import argparse
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


from common import REPO, load_average, machine, peak_rss_bytes, script_parser, write_json

# name: (family, shape for tests/model_families.model_config, positions)
SHAPES = {
    "distilgpt2": ("gpt2", {"hidden": 768, "layers": 6, "heads": 12, "vocab": 50257}, 1024),
    "smollm2-135m": ("llama", {"hidden": 576, "layers": 30, "heads": 9, "kv_heads": 3, "intermediate": 1536,
                               "tied": True, "vocab": 49152}, 8192),
    "tiny-gpt2": ("gpt2", {"hidden": 64, "layers": 2, "heads": 4}, 256),
    "tiny-llama": ("llama", {"hidden": 64, "layers": 2, "heads": 4, "kv_heads": 2}, 256),
}
ARMS = ("full", "lora", "full+checkpointing", "lora+checkpointing")
LORA_RANK, LORA_ALPHA = 8, 16.0  # --lora-rank / --lora-alpha defaults
QUESTION = "What is a variable in programming?"


def rss_mb() -> float:
    """This process's resident memory now, MB."""
    import psutil

    return psutil.Process().memory_info().rss / 1e6


def build_model(shape_name: str, seed: int = 0):
    """(model, tokenizer): a random model of the named shape and its family's tokenizer trained on the corpus."""
    import torch
    from model_families import FAMILIES, corpus, model_config, train_tokenizer
    from transformers import AutoModelForCausalLM

    family, shape, positions = SHAPES[shape_name]
    tokenizer = train_tokenizer(FAMILIES[family], corpus(), vocab_size=2000)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token  # as load_start_model does
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(model_config(FAMILIES[family], tokenizer, positions, **shape)), tokenizer


def run_arm(shape_name: str, arm: str, steps: int, batch_size: int, max_length: int) -> dict:
    """One training arm in this process: tokens/s of the timed steps, parameters, memory."""
    import torch
    from transformers import Trainer, TrainerCallback

    from mtn_sails.data.files import load_records
    from mtn_sails.training.lora import parameter_counts, wrap_lora
    from mtn_sails.data.template import PromptTemplate, bos_text
    from mtn_sails.training.tokenizing import records_to_dataset, tokenize
    from mtn_sails.training.collators import PaddingCollator
    from mtn_sails.training.trainer import TrainSettings, training_arguments

    model, tokenizer = build_model(shape_name)
    if "checkpointing" in arm:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if arm.startswith("lora"):
        model = wrap_lora(model, LORA_RANK, LORA_ALPHA)
    records = list(load_records(REPO / "tests" / "fixtures" / "alpaca_en_demo.json"))[:(steps + 1) * batch_size]
    data = tokenize(records_to_dataset(records), None, tokenizer, PromptTemplate(bos=bos_text(tokenizer)), max_length)
    with tempfile.TemporaryDirectory() as checkpoints:
        settings = TrainSettings(learning_rate=1e-4, epochs=1, batch_size=batch_size, gradient_accumulation_steps=1,
                                 seed=0, checkpoint_dir=Path(checkpoints), device="cpu")
        args, _ = training_arguments(settings, has_eval=False, packed=False)
        args.save_strategy = args.logging_strategy = "no"  # nothing but steps is timed

        class StepClock(TrainerCallback):
            """Times each optimizer step."""

            def __init__(self) -> None:
                self.seconds: list[float] = []

            def on_step_begin(self, *_args, **_kwargs):
                self.started = time.perf_counter()

            def on_step_end(self, *_args, **_kwargs):
                self.seconds.append(time.perf_counter() - self.started)

        tokens: list[int] = []
        model.register_forward_pre_hook(
            lambda _module, _args, kwargs: tokens.append(int(kwargs["attention_mask"].sum())) if model.training
            else None, with_kwargs=True)
        clock = StepClock()
        trainer = Trainer(model=model, args=args, train_dataset=data.train, data_collator=PaddingCollator(
            tokenizer.pad_token_id), callbacks=[clock])
        before = rss_mb()
        trainer.train()
    trainable, total = parameter_counts(model)
    timed_tokens, timed_seconds = sum(tokens[1:]), sum(clock.seconds[1:])
    return {"shape": shape_name, "arm": arm, "steps_timed": len(clock.seconds) - 1, "tokens_timed": timed_tokens,
            "tokens_per_s": round(timed_tokens / timed_seconds, 1), "step_s": [round(s, 3) for s in clock.seconds],
            "trainable_parameters": trainable, "parameters": total, "rss_before_training_mb": round(before, 1),
            "peak_rss_mb": round(peak_rss_bytes() / 1e6, 1),
            "training_memory_mb": round(peak_rss_bytes() / 1e6 - before, 1),
            "torch_threads": torch.get_num_threads()}


def arm_in_process(shape_name: str, arm: str, steps: int, batch_size: int, max_length: int) -> dict:
    """run_arm in a fresh Python process (its peak memory is its own)."""
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        command = [sys.executable, __file__, "--arm", shape_name, arm, "--steps", str(steps),
                   "--batch-size", str(batch_size), "--max-length", str(max_length), "--json-out", out.name]
        done = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
        if done.returncode:
            raise SystemExit(f"arm {shape_name}/{arm} failed:\n{done.stderr[-3000:]}")
        return json.loads(Path(out.name).read_text())


def training_table(shapes: list[str], arms: tuple[str, ...], steps: int, batch_size: int,
                   max_length: int) -> list[dict]:
    """Every arm of every shape, each in its own process."""
    rows = []
    for shape_name in shapes:
        for arm in arms:
            rows.append(arm_in_process(shape_name, arm, steps, batch_size, max_length))
            row = rows[-1]
            print(f"{shape_name:>13} {arm:<20} {row['tokens_per_s']:>8.1f} tokens/s  peak {row['peak_rss_mb']:>7.0f} MB"
                  f"  training {row['training_memory_mb']:>7.0f} MB  trainable {row['trainable_parameters']:,}",
                  flush=True)
    return rows


# Where a pipeline's phases end, by the first line that marks each.
PHASES = {"load_and_tokenise_s": "🚀 Training on", "train_s": "   epoch ", "measure_and_save_s": "✅ Session",
          "export_s": "✅ ONNX model ready"}


def phase_times(lines: list[tuple[float, str]], started: float) -> dict:
    """Seconds each phase of a pipeline took, from when its output lines arrived."""
    times, previous = {}, started
    for phase, marker in PHASES.items():
        ends = [at for at, line in lines if line.startswith(marker)]
        end = ends[-1] if phase == "train_s" else ends[0]  # training ends with its last epoch line
        times[phase], previous = round(end - previous, 1), end
    return times


def run_session(shape_name: str, root: Path, records: int, epochs: float, max_length: int, batch_size: int) -> dict:
    """`pipeline` on the first `records` of examples/programming_basics.json from a saved random base of the
    shape: phase times, peak memory, the export's directory."""
    import psutil
    from model_families import save_base

    family, shape, positions = SHAPES[shape_name]
    base = save_base(family, root / "base", positions=positions, **shape)
    trained, onnx = root / "trained_model", root / "onnx_model"
    data = root / "programming_basics.json"
    data.write_text(json.dumps(json.loads((REPO / "examples" / "programming_basics.json").read_text())[:records]))
    command = [sys.executable, str(REPO / "main.py"), "pipeline", "--data-file", str(data), "--model-name", str(base),
               "--output-dir",
               str(trained), "--onnx-output", str(onnx), "--epochs", str(epochs), "--max-length", str(max_length),
               "--batch-size", str(batch_size), "--quantize"]
    started = time.perf_counter()
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               env=dict(os.environ, PYTHONIOENCODING="utf-8"))
    watched, peak = psutil.Process(process.pid), 0
    output, lines = [], []
    for line in process.stdout:  # the child's RSS polled between lines; ru_maxrss of children checked after
        output.append(line)
        lines.append((time.perf_counter(), line))
        try:
            peak = max(peak, watched.memory_info().rss)
        except psutil.NoSuchProcess:
            pass
    process.wait()
    wall = time.perf_counter() - started
    if process.returncode:
        raise SystemExit("".join(output)[-3000:])
    peak = max(peak, peak_rss_bytes(children=True))
    history = json.loads((trained / "training_history.json").read_text())
    session = (history["sessions"] if isinstance(history, dict) else history)[-1]
    export_s = re.search(r"ONNX model ready at .* \(([\d.]+) MB, ([\d.]+) s\)", "".join(output))
    return {"shape": shape_name, "records": records, "wall_s": round(wall, 1), "session_s": session["duration_s"],
            "phases_s": phase_times(lines, started), "probe_count": session.get("probe_count"),
            "steps": session["steps"], "train_loss": session["train_loss"], "export_s": float(export_s.group(2)),
            "onnx_mb": float(export_s.group(1)), "peak_rss_mb": round(peak / 1e6, 1),
            "parity": re.search(r"max \|logit diff\| (\S+),", "".join(output)).group(1),
            "trained": str(trained), "onnx": str(onnx)}


def generation_speed(trained: str, onnx: str, new_tokens: int, rounds: int) -> dict:
    """Tokens/s of onnxruntime (fp32, int8) and PyTorch on the same prompt, taking turns; median round."""
    from mtn_sails.runtime.decoders import OnnxDecoder, TorchDecoder, load_torch_model
    from mtn_sails.model_dir.model_files import load_tokenizer
    from mtn_sails.runtime.onnx_session import model_file, onnx_session
    from mtn_sails.runtime.decode_loop import decode
    from mtn_sails.data.template import PromptTemplate

    prompt = load_tokenizer(onnx, "--onnx-output").encode(PromptTemplate.load(onnx).prompt(QUESTION))
    decoders = {"onnxruntime": OnnxDecoder(onnx_session(model_file(onnx))),
                "onnxruntime_int8": OnnxDecoder(onnx_session(model_file(onnx, int8=True))),
                "torch": TorchDecoder(load_torch_model(trained))}
    speeds: dict[str, list[float]] = {name: [] for name in decoders}
    tokens = {}
    for _ in range(rounds + 1):  # the first round warms every backend up and is left out
        for name, decoder in decoders.items():
            done = decode(decoder, prompt, new_tokens, eos_token_id=None)
            speeds[name].append(len(done.token_ids) / done.seconds)
            tokens[name] = done.token_ids
    median = {name: round(statistics.median(values[1:]), 1) for name, values in speeds.items()}
    return {"prompt_tokens": len(prompt), "new_tokens": new_tokens, "rounds": rounds, "tokens_per_s": median,
            "onnxruntime_over_torch": round(median["onnxruntime"] / median["torch"], 2),
            "int8_over_torch": round(median["onnxruntime_int8"] / median["torch"], 2),
            "greedy_tokens_equal": tokens["onnxruntime"] == tokens["torch"]}


def main(argv: list[str] | None = None) -> int:
    parser = script_parser(__doc__)
    parser.add_argument("--quick", action="store_true", help="tiny shapes, few steps (keeps the script running)")
    parser.add_argument("--steps", type=int, default=6, help="optimizer steps per arm (the first is a warm-up)")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=3, help="generation rounds per backend")
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--no-session", action="store_true", help="training arms only")
    parser.add_argument("--no-training", action="store_true", help="the session and generation only")
    parser.add_argument("--session-records", type=int, default=40,
                        help="records of examples/programming_basics.json the session trains on")
    parser.add_argument("--arm", nargs=2, metavar=("SHAPE", "ARM"), help=argparse.SUPPRESS)  # one arm, in-process
    parser.add_argument("--json-out", metavar="FILE", help="also write every number as JSON")
    args = parser.parse_args(argv)
    if args.arm:
        write_json(args.json_out, run_arm(*args.arm, args.steps, args.batch_size, args.max_length))
        return 0
    shapes = ["tiny-llama"] if args.quick else ["distilgpt2", "smollm2-135m"]
    steps = 3 if args.quick else args.steps
    arms = ("full", "lora+checkpointing") if args.quick else ARMS
    report = {"machine": machine("torch"), "load_average_start": load_average(),
              "settings": {"steps": steps, "batch_size": args.batch_size, "max_length": args.max_length,
                           "lora_rank": LORA_RANK, "lora_alpha": LORA_ALPHA}}
    if not args.no_training:
        report["training"] = training_table(shapes, arms, steps, args.batch_size, args.max_length)
    if not args.no_session:
        root = Path(tempfile.mkdtemp(prefix="families_"))
        try:
            session_shape = "tiny-llama" if args.quick else "smollm2-135m"
            report["session"] = run_session(session_shape, root, 12 if args.quick else args.session_records, 1,
                                            args.max_length, 8)
            print(f"session {session_shape}: {report['session']['wall_s']} s wall, peak "
                  f"{report['session']['peak_rss_mb']} MB, export {report['session']['export_s']} s", flush=True)
            new_tokens, rounds = (16, 1) if args.quick else (args.new_tokens, args.rounds)
            report["generation"] = generation_speed(report["session"]["trained"], report["session"]["onnx"],
                                                    new_tokens, rounds)
            print(f"generation: {report['generation']['tokens_per_s']}, onnxruntime/torch "
                  f"{report['generation']['onnxruntime_over_torch']}x", flush=True)
        finally:
            shutil.rmtree(root, ignore_errors=True)
    report["load_average_end"] = load_average()
    write_json(args.json_out, report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
