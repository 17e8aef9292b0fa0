"""onnxruntime in one place: where an export keeps its graphs and the CPU session generate and export open.

An export holds its graphs under onnx/, configuration, tokenizer and template at its root: the layout
transformers.js loads as it is, and the one optimum's ORTModelForCausalLM finds (it searches
`**/*.onnx` for the standard name). One copy of each graph; exports written before the onnx/ folder
kept them at the root, and `model_file` still finds them there.
"""
from __future__ import annotations

import logging
import os
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

ONNX_SUBDIR = "onnx"
ONNX_FILE = f"{ONNX_SUBDIR}/model.onnx"  # the fp32 model with KV cache (optimum's and transformers.js' name)
QUANTIZED_ONNX_FILE = f"{ONNX_SUBDIR}/model_quantized.onnx"  # the int8 model (transformers.js' dtype "q8")


def model_file(onnx_dir: str | Path, int8: bool = False) -> Path:
    """The fp32 or int8 graph of an export: under onnx/, else at the root (an earlier export's layout)."""
    relative = QUANTIZED_ONNX_FILE if int8 else ONNX_FILE
    path = Path(onnx_dir) / relative
    legacy = Path(onnx_dir) / Path(relative).name
    return legacy if not path.is_file() and legacy.is_file() else path


def physical_cores() -> int:
    """CPU cores this process may use, hyper-threads not counted (the right intra-op thread count)."""
    import psutil

    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, min(usable, psutil.cpu_count(logical=False) or usable))


def onnx_session(model_path: str | Path, threads: int | None = None):
    """An onnxruntime CPU session with the settings benchmarks/generate_speed.py found fastest."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # One thread per physical core (BENCHMARKS.md "Generation speed (CPU)" measures it against one);
    # hyper-threads share a core's memory bandwidth and vector units, so they are not counted.
    options.intra_op_num_threads = threads or physical_cores()
    options.log_severity_level = 3  # errors only: ORT's graph-optimiser notes are not for users
    return ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])


@contextmanager
def quiet_exporters() -> Iterator[None]:
    """Silence the tracer warnings and exporter logging that would bury the few lines users need."""
    import onnxruntime as ort
    from transformers.utils import logging as hf_logging

    loggers = [logging.getLogger(name) for name in ("optimum", "onnxruntime", "torch.onnx")]
    loggers.append(logging.getLogger())  # onnxruntime.quantization logs to the root logger
    levels = [logger.level for logger in loggers]
    verbosity = hf_logging.get_verbosity()
    try:
        hf_logging.set_verbosity_error()
        ort.set_default_logger_severity(3)
        for logger in loggers:
            logger.setLevel(logging.ERROR)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # TracerWarning, opset notes, deprecations
            yield
    finally:
        hf_logging.set_verbosity(verbosity)
        ort.set_default_logger_severity(2)
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)
