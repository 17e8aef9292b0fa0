"""Generation on the real base against llama.cpp, the CPU runtime people pick for small models.

    make real-base && python benchmarks/llama_cpp_speed.py --json-out benchmarks/results/llama_cpp_speed.json
    python benchmarks/llama_cpp_speed.py --quick      # one round of 16 new tokens (the first run builds llama.cpp)

SmolLM2-135M-Instruct as it comes (`make real-base`): llama.cpp (llama-cpp-python, built from source once by
_llama_cpp.py, its version in the JSON) on the GGUF file the base ships (Q4_1) and on that file requantised to
Q8_0 by llama.cpp's own quantiser, beside the product's `generate` decoder on onnxruntime on the export
`export --quantize` writes of the same model (fp32, and the int8 form it ships). Every arm gets the same token
ids, chat-templated prompts of 64 and 512 tokens (an instruction and a web document cut to length), batch 1,
greedy, exactly --new-tokens new tokens, one thread per physical core; per arm: time to first token (prompt
included) for each prompt, decode tokens/s after it, the peak resident memory of its process (each arm runs in
a process of its own, loaded once), and how many of its first tokens match onnxruntime fp32's. Rounds
interleave the arms, the order rotated; figures are medians of rounds.
"""
from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

from common import FIXTURES, arm_statistics, interleaved_rounds, load_average, machine, script_parser, write_json
from tools.benchmark_tables import generation_table
from tools.real_base import real_base_dir, real_base_gguf

WORKER = Path(__file__).with_name("_generation_worker.py")
PROMPT_LENGTHS = (64, 512)
INSTRUCTION = "Write a short story inspired by this text:\n\n"
REFERENCE = "onnxruntime fp32 (generate)"


class Worker:
    """One runtime in its own process: requests in on stdin, answers out on stdout."""

    def __init__(self, runtime: str, model: Path, threads: int) -> None:
        self.process = subprocess.Popen([sys.executable, str(WORKER), runtime, str(model), str(threads)],
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.answer()  # loaded

    def answer(self) -> dict:
        """The worker's next line."""
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"generation worker {self.process.args[2:4]} exited with {self.process.wait()}")
        return json.loads(line)

    def generate(self, prompt_ids: list[int], new_tokens: int) -> dict:
        """One greedy run of exactly `new_tokens`."""
        self.process.stdin.write(json.dumps({"prompt_ids": prompt_ids, "new_tokens": new_tokens}) + "\n")
        self.process.stdin.flush()
        return self.answer()

    def close(self) -> int:
        """Ends the worker; its peak resident bytes."""
        self.process.stdin.close()
        peak = self.answer()["peak_rss_bytes"]
        self.process.wait()
        return peak


def chat_prompts(tokenizer, lengths: tuple[int, ...]) -> dict[int, list[int]]:
    """Per length, the token ids of a chat-templated request of about that many tokens (never more)."""
    document = json.loads((FIXTURES / "c4_demo.jsonl").read_text().splitlines()[0])["text"]
    content = tokenizer.encode(INSTRUCTION + " ".join([document] * 4), add_special_tokens=False)
    templated = lambda count: tokenizer.apply_chat_template(  # noqa: E731
        [{"role": "user", "content": tokenizer.decode(content[:count])}], add_generation_prompt=True)
    prompts = {}
    for length in lengths:
        count = length
        while len(templated(count)) > length:
            count -= 1
        prompts[length] = templated(count)
    return prompts


def arm_models(onnx_dir: Path) -> dict[str, tuple[str, Path]]:
    """Arm name -> (runtime, model file); the int8 arm only where the export shipped an int8 model."""
    from _llama_cpp import requantised
    from mtn_sails.runtime.onnx_session import model_file

    shipped = real_base_gguf()
    arms = {"llama.cpp Q4_1 (the shipped file)": ("llama.cpp", shipped),
            "llama.cpp Q8_0 (requantised from it)": ("llama.cpp", requantised(shipped, "Q8_0")),
            REFERENCE: ("onnxruntime", model_file(onnx_dir))}
    int8 = model_file(onnx_dir, int8=True)
    if int8.exists():
        arms["onnxruntime int8 (generate, the form export ships)"] = ("onnxruntime", int8)
    return arms


def matching_prefix(tokens: list[int], reference: list[int]) -> int:
    """How many leading tokens agree."""
    return next((index for index, (a, b) in enumerate(zip(tokens, reference)) if a != b), min(len(tokens),
                                                                                          len(reference)))


def run(args) -> dict:
    """Export the base, start one worker per arm, interleave the rounds; the report as a dict."""
    from _llama_cpp import VERSION, import_llama_cpp
    from mtn_sails.config import ExportConfig
    from mtn_sails.runtime.export import export
    from mtn_sails.runtime.onnx_session import physical_cores, quiet_exporters
    from transformers import AutoTokenizer

    llama_cpp = import_llama_cpp()
    threads = args.threads or physical_cores()
    tokenizer = AutoTokenizer.from_pretrained(real_base_dir())
    prompts = chat_prompts(tokenizer, PROMPT_LENGTHS)
    report: dict = {"machine": machine("torch", "onnxruntime"), "model": "SmolLM2-135M-Instruct (real base)",
                    "llama_cpp_python": VERSION, "llama_cpp_system_info": llama_cpp.llama_print_system_info().decode(),
                    "settings": {"new_tokens": args.new_tokens, "rounds": args.rounds, "threads": threads,
                                 "prompt_tokens": {str(k): len(v) for k, v in prompts.items()}, "batch": 1,
                                 "decoding": "greedy, fixed length"},
                    "load_average_before": load_average()}
    with tempfile.TemporaryDirectory(prefix="llama_cpp_speed_") as tmp:
        onnx_dir = Path(tmp) / "onnx_model"
        with quiet_exporters():
            exported = export(ExportConfig(output_dir=str(real_base_dir()), onnx_output=str(onnx_dir),
                                           quantize=True))
        int8 = exported.int8
        report["export"] = {"int8_shipped": int8.shipped, "int8_form": int8.form,
                            "int8_agreement": int8.agreement, "int8_positions": int8.positions,
                            "files_mb": {name: round(size / 1e6, 1) for name, size in exported.files.items()
                                         if name.endswith(".onnx")}}
        models = arm_models(onnx_dir)
        report["arms"] = {name: {"runtime": runtime, "model_mb": round(path.stat().st_size / 1e6, 1)}
                          for name, (runtime, path) in models.items()}
        workers = {name: Worker(runtime, path, threads) for name, (runtime, path) in models.items()}
        try:
            for worker in workers.values():  # warm-up: first-run allocations, lazy initialisation
                worker.generate(prompts[PROMPT_LENGTHS[0]], 4)
            arms = {name: (lambda w=worker: {length: w.generate(ids, args.new_tokens)
                                            for length, ids in prompts.items()})
                    for name, worker in workers.items()}
            rounds = interleaved_rounds(arms, args.rounds, on_result=lambda index, name, found: print(
                f"  round {index + 1}: {name}: " + ", ".join(
                    f"{length} -> first {r['first_token_s']:.2f} s" for length, r in found.items()), flush=True))
        finally:
            peaks = {name: worker.close() for name, worker in workers.items()}
    report["load_average_after"] = load_average()
    reference = rounds[-1][REFERENCE][PROMPT_LENGTHS[0]]["token_ids"]
    for name, row in report["arms"].items():
        for length in PROMPT_LENGTHS:
            runs = [r[name][length] for r in rounds]
            row[f"first_token_s_{length}"] = arm_statistics([r["first_token_s"] for r in runs], False, 3)
            row[f"decode_tokens_per_s_{length}"] = arm_statistics(
                [(len(r["token_ids"]) - 1) / (r["seconds"] - r["first_token_s"]) for r in runs], digits=1)
        last = rounds[-1][name][PROMPT_LENGTHS[0]]["token_ids"]
        row.update(peak_rss_mb=round(peaks[name] / 1e6), same_tokens_as_fp32=matching_prefix(last, reference),
                   text=tokenizer.decode(last))
    decode_key = f"decode_tokens_per_s_{PROMPT_LENGTHS[0]}"
    for name, row in report["arms"].items():
        row["decode_vs"] = {other: round(row[decode_key]["median"] / report["arms"][other][decode_key]["median"], 2)
                            for other in report["arms"] if other.startswith("llama.cpp")}
    return report


def main() -> int:
    parser = script_parser(__doc__)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="default: one per physical core")
    parser.add_argument("--quick", action="store_true", help="one round of 16 new tokens")
    parser.add_argument("--json-out", default=None)
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.new_tokens = 1, 16
    report = run(args)
    print(generation_table(report))
    for name, row in report["arms"].items():
        print(f"{name}: {row['text'][:160]!r}")
    write_json(args.json_out, report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
