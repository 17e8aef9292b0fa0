"""Generation speed on CPU: PyTorch eager vs onnxruntime (fp32 and int8), against the memory-bandwidth bound.

    python benchmarks/generate_speed.py                         # 64 new tokens, 10 rounds
    python benchmarks/generate_speed.py --quick                 # 16 new tokens, 2 rounds, no levers
    python benchmarks/generate_speed.py --rounds 5 --no-levers --json-out benchmarks/results/generate_speed.json

Builds a distilgpt2-shaped GPT-2 (6 layers, 768 wide, 12 heads, vocabulary 50257; random weights, a
scratch byte-level BPE tokenizer: no hub), saves it to a temporary directory, exports it with the
project's exporter (`--quantize`, parity checked), then decodes greedily, batch 1, from a 32-token
prompt:

- PyTorch eager: `model.generate(use_cache=True)`, and the `generate --backend torch` loop;
- onnxruntime: the `generate` decoder (hand-written loop, IO binding, ORT_ENABLE_ALL, one thread per
  physical core) on model.onnx and model_quantized.onnx;
- the levers tried on the fp32 model: graph optimisation level, intra-op threads, IO binding vs plain
  `session.run` with numpy past, optimum's `ORTModelForCausalLM.generate`, and onnxruntime's
  transformer fusions (FastGelu, SkipLayerNormalization).

Decoding one token reads every weight matrix once, so the ceiling is memory bandwidth / bytes of
weights read per token; the bandwidth is measured in the same run (numpy reads of a 512 MB array,
one thread per core, once per round). Each round runs every candidate once, so a disturbed minute
hits them all alike; a candidate's figure is its median round, with its best round (the one least
disturbed by other processes on a shared machine) beside it. The int8 top-1 agreement the export
reports here is on random weights, whose next-token distribution is almost flat: the agreement on a
trained model is measured by benchmarks/int8_agreement.py.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable

import numpy as np

from common import GENERATION_SHAPE as SHAPE, build_generation_model, load_average, machine, script_parser, write_json
from mtn_sails.config import ExportConfig
from mtn_sails.runtime.export import export
from mtn_sails.runtime.onnx_session import quiet_exporters
from mtn_sails.runtime.generation import (ONNX_FILE, QUANTIZED_ONNX_FILE, OnnxDecoder, TorchDecoder, decode,
                                          load_torch_model, onnx_session, physical_cores)

GOAL_RATIO = 1.5  # onnxruntime fp32 tokens/s over PyTorch eager
PROMPT_TOKENS = 32
PYTORCH = "PyTorch eager, model.generate(use_cache=True)"
ONNX_FP32 = "onnxruntime fp32, generate.py (IO binding, ENABLE_ALL, 1 thread/core)"


def best_seconds(run: Callable[[], object], repeats: int) -> tuple[float, object]:
    """(fastest wall time, last result) over `repeats` runs after one warm-up."""
    result = run()
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        result = run()
        best = min(best, time.perf_counter() - started)
    return best, result


def memory_bandwidth(megabytes: int = 512, repeats: int = 5) -> dict:
    """Read bandwidth (GB/s) with one thread and with one thread per physical core, and copy bandwidth."""
    data = np.ones(megabytes * 2**20 // 8)
    copy = np.empty_like(data)
    single, _ = best_seconds(lambda: data.sum(), repeats)
    cores = physical_cores()
    parts = np.array_split(data, cores)
    with ThreadPoolExecutor(cores) as pool:  # numpy reductions release the GIL
        parallel, _ = best_seconds(lambda: list(pool.map(np.sum, parts)), repeats)
    copied, _ = best_seconds(lambda: np.copyto(copy, data), repeats)
    return {"read_1_thread_gbs": data.nbytes / single / 1e9, "read_all_cores_gbs": data.nbytes / parallel / 1e9,
            "copy_gbs": 2 * data.nbytes / copied / 1e9}  # copy moves the bytes twice (read + write)


def weights_read_per_token(onnx_path: Path) -> int:
    """Bytes of initializers a decoding step reads: all of them except the rows-only Gather tables."""
    import onnx

    model = onnx.load(str(onnx_path))
    sizes = {init.name: len(init.raw_data) or onnx.numpy_helper.to_array(init).nbytes
             for init in model.graph.initializer}
    users: dict[str, set[str]] = {}
    for node in model.graph.node:
        for name in node.input:
            if name in sizes:
                users.setdefault(name, set()).add(node.op_type)
    return sum(size for name, size in sizes.items() if users.get(name, {"Gather"}) != {"Gather"})


class PlainRunDecoder(OnnxDecoder):
    """The IO-binding lever switched off: `session.run` with numpy inputs, past copied out and back in."""

    def reset(self) -> None:
        self.past = [value.numpy() for value in self._empty_past]
        self.length = 0

    def forward(self, input_ids: np.ndarray) -> np.ndarray:
        total = self.length + input_ids.shape[1]
        feeds = {"input_ids": input_ids, "attention_mask": np.ones((1, total), dtype=np.int64),
                 "position_ids": np.arange(self.length, total, dtype=np.int64)[None, :]}
        feeds = {name: value for name, value in feeds.items() if name in self.input_names}
        feeds.update(zip(self.past_names, self.past))
        outputs = self.session.run(None, feeds)
        self.past = outputs[1:]
        self.length = total
        return outputs[0]


def session(path: Path, level: str = "ALL", threads: int | None = None):
    """An InferenceSession with one lever changed from generate.py's settings."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, f"ORT_ENABLE_{level}")
    options.intra_op_num_threads = threads or physical_cores()
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def fuse_transformer_ops(source: Path, target: Path) -> None:
    """onnxruntime's offline GPT-2 fusions (FastGelu, SkipLayerNormalization; attention is not matched)."""
    from onnxruntime.transformers.optimizer import optimize_model

    with quiet_exporters():
        optimized = optimize_model(str(source), model_type="gpt2", num_heads=SHAPE["n_head"],
                                   hidden_size=SHAPE["n_embd"], opt_level=1)
        optimized.save_model_to_file(str(target))


def run(quick: bool, rounds: int | None = None, levers: bool | None = None) -> dict:
    """All measurements of one run."""
    import torch

    new_tokens, repeats = (16, 2) if quick else (64, 10)
    repeats = rounds or repeats
    levers = (not quick) if levers is None else levers
    report: dict = {"machine": machine("torch", "onnxruntime"), "settings": {"batch": 1, "prompt_tokens": PROMPT_TOKENS,
                                                       "new_tokens": new_tokens, "repeats": repeats,
                                                       "decoding": "greedy"}}
    report["load_average_before"] = load_average()  # other processes on a shared machine disturb timings
    print(f"machine: {report['machine']}, load average {report['load_average_before']}", flush=True)
    with tempfile.TemporaryDirectory(prefix="mtn-sails-bench-") as tmp:
        trained, onnx_dir = Path(tmp) / "trained_model", Path(tmp) / "onnx_model"
        build_generation_model(trained)
        started = time.perf_counter()
        result = export(ExportConfig(output_dir=str(trained), onnx_output=str(onnx_dir), quantize=True))
        report["export"] = {"seconds": time.perf_counter() - started, "files": result.files,
                            "max_abs_diff": result.max_abs_diff, "int8_top1_agreement": result.int8_agreement,
                            "safetensors_bytes": (trained / "model.safetensors").stat().st_size}
        prompt = np.random.default_rng(0).integers(0, SHAPE["vocab_size"], PROMPT_TOKENS).tolist()
        model = load_torch_model(trained)
        inputs = torch.tensor([prompt])

        def torch_generate() -> list[int]:
            with torch.inference_mode():
                out = model.generate(inputs, attention_mask=torch.ones_like(inputs), max_new_tokens=new_tokens,
                                     min_new_tokens=new_tokens, do_sample=False, use_cache=True,
                                     pad_token_id=0)
            return out[0, PROMPT_TOKENS:].tolist()

        def our_loop(decoder) -> Callable[[], list[int]]:
            return lambda: decode(decoder, prompt, new_tokens, eos_token_id=None).token_ids

        fp32, int8 = onnx_dir / ONNX_FILE, onnx_dir / QUANTIZED_ONNX_FILE
        started = time.perf_counter()
        default_session = onnx_session(fp32)
        report["onnx_session_load_s"] = time.perf_counter() - started
        from optimum.onnxruntime import ORTModelForCausalLM

        def optimum_generate(io_binding: bool) -> Callable[[], list[int]]:
            with quiet_exporters():
                ort_model = ORTModelForCausalLM.from_pretrained(onnx_dir, use_io_binding=io_binding)

            def run_generate() -> list[int]:
                out = ort_model.generate(inputs, attention_mask=torch.ones_like(inputs), max_new_tokens=new_tokens,
                                         min_new_tokens=new_tokens, do_sample=False, pad_token_id=0)
                return out[0, PROMPT_TOKENS:].tolist()
            return run_generate

        def torch_one_thread() -> list[int]:
            threads = torch.get_num_threads()
            torch.set_num_threads(1)
            try:
                return torch_generate()
            finally:
                torch.set_num_threads(threads)

        candidates = {
            PYTORCH: torch_generate,
            "PyTorch eager, generate.py loop": our_loop(TorchDecoder(model)),
            ONNX_FP32: our_loop(OnnxDecoder(default_session)),
            "onnxruntime int8, generate.py": our_loop(OnnxDecoder(onnx_session(int8))),
        }
        if levers:  # the levers, each changed alone from generate.py's settings (fp32 model)
            fused = onnx_dir / "model_fused.onnx"
            fuse_transformer_ops(fp32, fused)
            candidates.update({
                "lever (PyTorch): model.generate on 1 thread": torch_one_thread,
                "lever: graph optimisation BASIC": our_loop(OnnxDecoder(session(fp32, "BASIC"))),
                "lever: graph optimisation EXTENDED": our_loop(OnnxDecoder(session(fp32, "EXTENDED"))),
                "lever: 1 intra-op thread": our_loop(OnnxDecoder(session(fp32, threads=1))),
                "lever: no IO binding (session.run, numpy past)": our_loop(PlainRunDecoder(session(fp32))),
                "lever: ORTModelForCausalLM.generate, io_binding=False": optimum_generate(False),
                "lever: ORTModelForCausalLM.generate, io_binding=True": optimum_generate(True),
                "lever: ORT transformer fusions (FastGelu, SkipLayerNorm)": our_loop(OnnxDecoder(session(fused))),
            })
        # Calling each candidate once here is the warm-up (first-run allocations, lazy initialisation).
        rows = {name: {"seconds": float("inf"), "rounds": [], "tokens": fn()} for name, fn in candidates.items()}
        bandwidths = []
        for round_ in range(repeats):  # rounds interleave the candidates: a noisy minute hits them all
            bandwidths.append(memory_bandwidth(repeats=3))
            for name, fn in candidates.items():
                started = time.perf_counter()
                rows[name]["tokens"] = fn()
                rows[name]["rounds"].append(time.perf_counter() - started)
                rows[name]["seconds"] = min(rows[name]["rounds"])
            print(f"  round {round_ + 1}/{repeats}, best tokens/s so far: "
                  + " | ".join(f"{new_tokens / row['seconds']:.0f}" for row in rows.values()), flush=True)
        for row in rows.values():
            row["tokens_per_s"] = new_tokens / row["seconds"]
            row["median_tokens_per_s"] = new_tokens / float(np.median(row["rounds"]))
        report["bandwidth"] = {key: max(b[key] for b in bandwidths) for key in bandwidths[0]}  # best round

        reference = rows[PYTORCH]["tokens"]
        for row in rows.values():
            row["same_tokens_as_pytorch"] = row.pop("tokens") == reference
        report["rows"] = rows
        bytes_fp32, bytes_int8 = weights_read_per_token(fp32), weights_read_per_token(int8)
    report["load_average_after"] = load_average()
    bandwidth = report["bandwidth"]["read_all_cores_gbs"] * 1e9
    report["bound"] = {"bytes_per_token_fp32": bytes_fp32, "bytes_per_token_int8": bytes_int8,
                       "tokens_per_s_fp32": bandwidth / bytes_fp32, "tokens_per_s_int8": bandwidth / bytes_int8}
    torch_speed = rows[PYTORCH]["tokens_per_s"]
    for name, row in rows.items():
        row["vs_pytorch"] = row["tokens_per_s"] / torch_speed
        row["of_bound"] = row["tokens_per_s"] / (bandwidth / (bytes_int8 if "int8" in name else bytes_fp32))
    report["ratio_onnx_fp32_vs_pytorch"] = rows[ONNX_FP32]["vs_pytorch"]
    report["ratio_onnx_fp32_vs_pytorch_median"] = rows[ONNX_FP32]["median_tokens_per_s"] / rows[PYTORCH]["median_tokens_per_s"]
    report["goal_met"] = report["ratio_onnx_fp32_vs_pytorch_median"] >= GOAL_RATIO  # the median round, not the best
    return report


def markdown(report: dict) -> str:
    """The table for BENCHMARKS.md."""
    lines = ["| decoder | tokens/s (median round) | best round | vs PyTorch (median) | vs PyTorch (best) | "
             "of bandwidth bound (best) | same tokens as PyTorch |", "|---|---|---|---|---|---|---|"]
    torch_median = report["rows"][PYTORCH]["median_tokens_per_s"]
    for name, row in report["rows"].items():
        lines.append(f"| {name} | {row['median_tokens_per_s']:.1f} | {row['tokens_per_s']:.1f} | "
                     f"{row['median_tokens_per_s'] / torch_median:.2f}x | {row['vs_pytorch']:.2f}x | "
                     f"{row['of_bound']:.0%} | {'yes' if row['same_tokens_as_pytorch'] else 'no'} |")
    bound, bw, export_ = report["bound"], report["bandwidth"], report["export"]
    files = ", ".join(f"{name} {size / 1e6:.1f} MB" for name, size in export_["files"].items()
                      if name.endswith(".onnx"))
    lines += ["",
              f"Memory bandwidth: {bw['read_all_cores_gbs']:.1f} GB/s read on all cores "
              f"({bw['read_1_thread_gbs']:.1f} GB/s one thread, copy {bw['copy_gbs']:.1f} GB/s). Weights read per "
              f"token: fp32 {bound['bytes_per_token_fp32'] / 1e6:.0f} MB, int8 {bound['bytes_per_token_int8'] / 1e6:.0f} MB"
              f" -> bound {bound['tokens_per_s_fp32']:.0f} tokens/s fp32, {bound['tokens_per_s_int8']:.0f} int8.",
              f"Export (with --quantize and the parity check): {export_['seconds']:.1f} s; {files} "
              f"(safetensors {export_['safetensors_bytes'] / 1e6:.1f} MB); parity max |diff| "
              f"{export_['max_abs_diff']:.1e}; int8 top-1 agreement {export_['int8_top1_agreement']:.0%} (random weights); "
              f"ONNX session load {report['onnx_session_load_s']:.2f} s.",
              f"Load average (1, 5, 15 min) before: {', '.join(f'{x:.2f}' for x in report['load_average_before'])}; "
              f"after: {', '.join(f'{x:.2f}' for x in report['load_average_after'])}.",
              f"onnxruntime fp32 / PyTorch eager: {report['ratio_onnx_fp32_vs_pytorch_median']:.2f}x at the median "
              f"round, {report['ratio_onnx_fp32_vs_pytorch']:.2f}x at the best "
              f"(goal {GOAL_RATIO}x at the median: {'met' if report['goal_met'] else 'NOT met'})."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = script_parser(__doc__)
    parser.add_argument("--quick", action="store_true",
                        help="16 new tokens, 2 rounds, the four main rows only (a smoke run)")
    parser.add_argument("--rounds", type=int, default=None, help="rounds of every candidate (default 10; --quick 2)")
    parser.add_argument("--levers", action=argparse.BooleanOptionalAction, default=None,
                        help="also time the levers (default: on, off with --quick)")
    parser.add_argument("--json-out", metavar="FILE", help="also write every number as JSON")
    args = parser.parse_args(argv)
    report = run(args.quick, args.rounds, args.levers)
    print()
    print(markdown(report))
    write_json(args.json_out, report)
    return 1 if not report["goal_met"] and not args.quick else 0  # a smoke run on a busy machine is not a verdict


if __name__ == "__main__":
    raise SystemExit(main())
