"""The fused fp32 graph of a Llama or Qwen2 model, written by onnxruntime-genai's model builder.

optimum's export spells attention out op by op (about 7,400 nodes for SmolLM2-135M); the builder writes one
GroupQueryAttention, SkipSimplifiedLayerNormalization and RotaryEmbedding node per layer (about 340 nodes), with
the same inputs and outputs less position_ids, and its logits match optimum's to about 1e-4 (BENCHMARKS.md,
"int8 forms on the real base"). The int8 model is quantised from it: fewer, larger kernels decode faster. The
fp32 model.onnx of an export stays optimum's (DESIGN.md), so fused graphs are only ever an int8 model's source;
that int8 model gives the logits of the last position only (what decoding reads: the output layer is a fifth of a
64-token prompt's work) and is marked for OnnxDecoder's in-place cache.
onnxruntime-genai is pinned at 0.13.0: its later builders import classes that need a newer transformers.
"""
from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

from .decoders import SHARED_CACHE
from .onnx_session import quiet_exporters

FUSED_ARCHITECTURES = ("LlamaForCausalLM", "Qwen2ForCausalLM")  # the builder's decoders that match our families
FUSED_ONNX_FILE = "model.onnx"


def builds_fused(model_dir: Path) -> bool:
    """Whether the model in `model_dir` is of a family the builder writes a fused graph for."""
    config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    return bool(config.get("architectures")) and config["architectures"][0] in FUSED_ARCHITECTURES


def build_fused_graph(model_dir: Path, work_dir: Path) -> Path:
    """Write the fused fp32 graph of the safetensors model in `model_dir` into `work_dir`; its path."""
    from onnxruntime_genai.models.builder import create_model

    work_dir.mkdir(parents=True, exist_ok=True)
    # The builder prints a line per tensor and a progress bar: none of it is for users.
    with quiet_exporters(), contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        create_model(model_dir.name, str(model_dir), str(work_dir), "fp32", "cpu", str(work_dir / "cache"),
                     hf_token="false", hf_remote=False)
    return work_dir / FUSED_ONNX_FILE


def for_decoding(model) -> None:
    """Make the fused graph `model` (an onnx ModelProto) compute the logits of the last position only, and mark it
    for the in-place cache."""
    from onnx import TensorProto, helper

    graph = model.graph
    head = next(node for node in graph.node if "logits" in node.output)
    last = head.input[0] + "/last_position"
    graph.initializer.extend([helper.make_tensor(name, TensorProto.INT64, [1], [value]) for name, value in
                              (("last_position/starts", -1), ("last_position/ends", 2**62), ("last_position/axes", 1))])
    graph.node.insert(list(graph.node).index(head), helper.make_node(
        "Slice", [head.input[0], "last_position/starts", "last_position/ends", "last_position/axes"], [last],
        name="/last_position/Slice"))
    head.input[0] = last
    logits = next(output for output in graph.output if output.name == "logits")
    logits.type.tensor_type.shape.dim[1].Clear()
    logits.type.tensor_type.shape.dim[1].dim_value = 1
    model.metadata_props.add(key=SHARED_CACHE, value="1")
