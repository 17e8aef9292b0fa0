"""The int8 model of `export --quantize`: onnxruntime's int8 quantisation, shipped only when its greedy choices
are fp32's.

Forms, tried in order, the first that passes the gate shipped:
- the fused graph in 8-bit weight blocks (Llama, Qwen2): onnxruntime-genai's model builder writes the model as
  one fused attention, norm and rotary node per layer (fused_graph.py), then its MatMuls become MatMulNBits as
  below. On SmolLM2-135M it decodes 1.8x the optimum graph in the same blocks (BENCHMARKS.md).
- 8-bit weight blocks (MatMulNBits, blocks of WEIGHT_BLOCK along the input): each block of weights has its own
  scale, and activations are rounded to int8 per block of each row as well, so a few outlier activations cost
  only their own block. Only graphs whose projections are MatMul nodes (Llama, Qwen2, GPT-NeoX): the quantiser
  leaves Gemm (GPT-2's projections) alone.
- dynamic int8, the whole graph: per-tensor activation scales, set by the tensor's largest value.
- dynamic int8 with the MLP output projections kept in fp32: the input of a transformer MLP's output projection
  (after the gate or GELU) carries a few outliers far above the rest.
- dynamic int8 with 7-bit weights (onnxruntime's reduce_range): without VNNI the CPU sums u8 x s8 products in
  pairs in 16 bits, which saturates at full-range weights; 7-bit weights keep every pair sum in range.
The gate has two parts. Top-1 agreement, each step fed fp32's choice, on the gate prompts' positions
(MIN_INT8_AGREEMENT); and the answers themselves: free-running greedy, each answer's first ANSWER_START tokens
must be fp32's on all but MAX_CHANGED_STARTS of the gate prompts. Agreement alone let through an int8 model that
answered "What is the capital of France?" with "L'Étoile, la Marseur..." at 0.97: one position of 128, but the
whole answer. Which form passes depends on the CPU as well as the model: on SmolLM2-135M the dynamic forms agree
at about nine in ten on an AVX-512 VNNI Xeon and at one in four on an AVX2-only EPYC (BENCHMARKS.md, "int8 on
the real base"); the export measures on the machine it runs on and writes no int8 model at all when no form
passes: a faster model that says something else is not what was trained.
"""
from __future__ import annotations

import shutil
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from .decode_loop import decode
from .decoders import OnnxDecoder
from .fused_graph import build_fused_graph, builds_fused, for_decoding
from .onnx_session import ONNX_FILE, QUANTIZED_ONNX_FILE, onnx_session, quiet_exporters

MIN_INT8_AGREEMENT = 0.9  # share of greedy steps where int8's top token is fp32's
# Chosen on the real base's gate prompts (the optimum 8-bit form changed two answers from their first token and
# agreed at 0.95; the fused one changed none); reported on held-out questions in BENCHMARKS.md.
ANSWER_START = 4  # tokens of each free-running answer that must be fp32's
MAX_CHANGED_STARTS = 1  # gate answers allowed to start differently: one near-tie is not a changed model
AGREEMENT_PROMPTS = (
    "What is a variable?",
    "Explain in two sentences how a loop works.",
    "Write one line about the sea, the wind and the sails.",
    "What is the capital of France?",
    "Give three tips for staying healthy.",
    "Translate 'good morning' into Spanish.",
    "Write a Python function that adds two numbers.",
    "Why is the sky blue?",
)
AGREEMENT_STEPS = 16  # greedy steps after each prompt: 128 positions in all
# The MLP output projection's name in each family's exported graph: Llama/Qwen2, GPT-2, GPT-NeoX (Pythia).
MLP_OUTPUT_PROJECTIONS = ("/mlp/down_proj/", "/mlp/c_proj/", "/mlp/dense_4h_to_h/")
WEIGHT_BLOCK = 32  # chosen on the gate prompts of the real base: 0.97 agreement to 0.95 at 128, speed within 5%
FUSED_BLOCKS = "fused graph, 8-bit weight blocks"
WEIGHT_BLOCKS, WHOLE_GRAPH, MLP_OUTPUT_FP32 = ("8-bit weight blocks", "dynamic, whole graph",
                                              "dynamic, MLP output projections kept in fp32")
SEVEN_BIT = "dynamic, 7-bit weights"  # onnxruntime's reduce_range: no 16-bit saturation on CPUs without VNNI


@dataclass(frozen=True)
class Int8Report:
    """How the int8 model was built, how often it picks fp32's next token and how many answers start as fp32's."""

    agreement: float  # of the shipped form, else of the form that agreed best
    positions: int
    form: str  # FUSED_BLOCKS, WEIGHT_BLOCKS, WHOLE_GRAPH, MLP_OUTPUT_FP32 or SEVEN_BIT
    shipped: bool  # model_quantized.onnx was written
    min_agreement: float = MIN_INT8_AGREEMENT
    forms_tried: int = 1
    same_starts: int = 0  # gate answers whose first ANSWER_START tokens are fp32's
    answers: int = 0

    def passes(self) -> bool:
        """Whether the form agrees often enough and changes no more answers than the gate allows."""
        return self.agreement >= self.min_agreement and self.answers - self.same_starts <= MAX_CHANGED_STARTS

    def summary(self, sizes: str) -> str:
        """One line for the terminal; `sizes` compares the int8 and fp32 files."""
        measured = (f"{self.agreement:.0%} of {self.positions} greedy positions, {self.same_starts} of "
                    f"{self.answers} answers start as fp32's")
        if not self.shipped:
            return (f"⚠️  int8 not written: its top-1 next token agrees with fp32 at only {measured} (needed: "
                    f"{self.min_agreement:.0%}, all but {MAX_CHANGED_STARTS}; best of {self.forms_tried} forms: "
                    f"{self.form}); generate and the web page use fp32")
        return f"🔢 int8: top-1 next token agrees with fp32 at {measured}, {self.form} ({sizes})"


@contextmanager
def prepared_for_quantization(onnx_dir: Path) -> Iterator[Path]:
    """The fp32 graph pre-processed for quantisation, in a hidden file removed afterwards."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    source = onnx_dir / ONNX_FILE
    prepared = source.parent / ".model_prepared.onnx"
    try:
        with quiet_exporters():
            # Pre-processing folds the Transpose that optimum puts between the tied embedding and
            # lm_head into a constant; without it the quantised embedding is dequantised whole on
            # every step and the int8 model decodes slower than fp32 (BENCHMARKS.md).
            quant_pre_process(source, prepared, skip_symbolic_shape=True, save_as_external_data=_external(onnx_dir),
                              all_tensors_to_one_file=True)
        yield prepared
    finally:
        for leftover in source.parent.glob(".model_prepared.onnx*"):
            leftover.unlink()


def _external(onnx_dir: Path) -> bool:
    """Whether the export keeps its weights beside the graph (models over 2 GB)."""
    source = onnx_dir / ONNX_FILE
    return source.with_name(source.name + "_data").exists()


def quantize_int8(onnx_dir: Path, keep_fp32: Sequence[str] = (), prepared: Path | None = None,
                  reduce_range: bool = False) -> Path:
    """Write model_quantized.onnx: int8 weights (7-bit with `reduce_range`), dynamic int8 activations, nodes whose
    names contain one of `keep_fp32` left in fp32; from `prepared` (prepared_for_quantization) when given."""
    if prepared is None:
        with prepared_for_quantization(onnx_dir) as prepared_now:
            return quantize_int8(onnx_dir, keep_fp32, prepared_now, reduce_range)
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    target = onnx_dir / QUANTIZED_ONNX_FILE
    with quiet_exporters():
        graph = onnx.load(str(prepared), load_external_data=False).graph
        named = [node.name for node in graph.node if any(part in node.name for part in keep_fp32)]
        # quantize_dynamic first rewrites each Gemm (GPT-2's projections) as NAME_MatMul + Add, and only then
        # looks the nodes up in nodes_to_exclude.
        excluded = named + [name + "_MatMul" for name in named]
        # Per-channel weights keep top-1 agreement with fp32 better than per-tensor (int8_agreement benchmark).
        quantize_dynamic(prepared, target, weight_type=QuantType.QInt8, per_channel=True, reduce_range=reduce_range,
                         nodes_to_exclude=excluded, use_external_data_format=_external(onnx_dir))
    return target


def quantize_weight_blocks(onnx_dir: Path, source: Path, block_size: int = WEIGHT_BLOCK, bits: int = 8,
                           keep_fp32: Sequence[str] = (), fused: bool = False) -> Path:
    """Write model_quantized.onnx from the graph `source` (prepared_for_quantization, or a fused graph when
    `fused`, made for decoding first): every MatMul with constant weights, bar those whose names contain one of
    `keep_fp32`, as MatMulNBits (`bits`-bit weights in blocks of `block_size`, int8 activations per block)."""
    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    target = onnx_dir / QUANTIZED_ONNX_FILE
    with quiet_exporters():
        graph = onnx.load(str(source))
        if fused:
            for_decoding(graph)
        excluded = [node.name for node in graph.graph.node if any(part in node.name for part in keep_fp32)]
        quantizer = MatMulNBitsQuantizer(graph, bits=bits, block_size=block_size, is_symmetric=False,
                                         accuracy_level=4, nodes_to_exclude=excluded)
        quantizer.process()
        quantizer.model.topological_sort()
        # Weights beside the graph under the name transformers.js and quantize_dynamic use (save_model_to_file's
        # is "model_quantized.onnx.data").
        onnx.save_model(quantizer.model.model, str(target), save_as_external_data=_external(onnx_dir),
                        all_tensors_to_one_file=True, location=target.name + "_data")
    return target


def has_gemm_weights(prepared: Path) -> bool:
    """Whether some projection of the graph is a Gemm (GPT-2), which weight blocks do not quantise."""
    import onnx

    return any(node.op_type == "Gemm" for node in onnx.load(str(prepared), load_external_data=False).graph.node)


def greedy_agreement(reference: OnnxDecoder, candidate: OnnxDecoder, prompts: Sequence[Sequence[int]],
                     steps: int = AGREEMENT_STEPS) -> tuple[float, int]:
    """(share of positions where `candidate`'s top token is `reference`'s, positions): the last prompt position
    and `steps - 1` greedy steps after it, both fed the reference's choice so one tie cannot derail the rest."""
    agree = positions = 0
    for ids in prompts:
        reference.reset()
        candidate.reset()
        step_input = np.array([list(ids)], dtype=np.int64)
        for _ in range(steps):
            expected = int(np.argmax(reference.forward(step_input)[0, -1]))
            agree += int(np.argmax(candidate.forward(step_input)[0, -1]) == expected)
            positions += 1
            step_input = np.array([[expected]], dtype=np.int64)
    return (agree / positions if positions else 0.0), positions


def same_starts(reference: OnnxDecoder, candidate: OnnxDecoder, prompts: Sequence[Sequence[int]],
                eos_token_id: int | None, tokens: int = ANSWER_START) -> int:
    """How many of the free-running greedy answers to `prompts` begin with the same `tokens` tokens."""
    return sum(decode(reference, list(ids), tokens, eos_token_id).token_ids
               == decode(candidate, list(ids), tokens, eos_token_id).token_ids for ids in prompts)


def quantize_fused_blocks(onnx_dir: Path, model_dir: Path) -> Path | None:
    """Write model_quantized.onnx from the fused graph of `model_dir` in 8-bit weight blocks; None when the
    builder cannot write this model (the other forms are tried)."""
    work_dir = onnx_dir / ".fused"
    try:
        return quantize_weight_blocks(onnx_dir, build_fused_graph(model_dir, work_dir), fused=True)
    except ModuleNotFoundError:
        raise  # a requirement missing from the install: the CLI's one-line message says which
    except Exception:  # noqa: BLE001 - a model the builder cannot write still has the other forms
        return None
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)  # the int8 graph holds its weights itself


def build_int8(onnx_dir: Path, prompts: Sequence[Sequence[int]], eos_token_id: int | None,
               model_dir: Path | None = None, min_agreement: float = MIN_INT8_AGREEMENT) -> Int8Report:
    """The int8 model of the export in `onnx_dir`, in the first form that passes the gate on `prompts` (token
    ids); none is left when no form does. `model_dir` (the trained model) lets Llama and Qwen2 try the fused graph."""
    fp32 = OnnxDecoder(onnx_session(onnx_dir / ONNX_FILE))
    best = Int8Report(0.0, 0, WHOLE_GRAPH, False, min_agreement)
    with prepared_for_quantization(onnx_dir) as prepared:  # once for every form
        builders = {FUSED_BLOCKS: lambda: quantize_fused_blocks(onnx_dir, model_dir),
                    WEIGHT_BLOCKS: lambda: quantize_weight_blocks(onnx_dir, prepared),
                    WHOLE_GRAPH: lambda: quantize_int8(onnx_dir, (), prepared),
                    MLP_OUTPUT_FP32: lambda: quantize_int8(onnx_dir, MLP_OUTPUT_PROJECTIONS, prepared),
                    SEVEN_BIT: lambda: quantize_int8(onnx_dir, (), prepared, reduce_range=True)}
        if model_dir is None or not builds_fused(model_dir):
            del builders[FUSED_BLOCKS]
        if has_gemm_weights(prepared):
            del builders[WEIGHT_BLOCKS]
        for tried, (form, build) in enumerate(builders.items(), start=1):
            path = build()
            if path is None:
                continue
            candidate = OnnxDecoder(onnx_session(path))
            agreement, positions = greedy_agreement(fp32, candidate, prompts)
            report = Int8Report(agreement, positions, form, False, min_agreement, tried,
                                same_starts(fp32, candidate, prompts, eos_token_id), len(prompts))
            if report.passes():
                return replace(report, shipped=True)
            best = max(best, report, key=lambda found: (found.same_starts, found.agreement))
    (onnx_dir / QUANTIZED_ONNX_FILE).unlink(missing_ok=True)
    return replace(best, forms_tried=len(builders))
