"""ONNX export with optimum, a parity check against PyTorch, optional int8 quantisation (quantize.py).

The export is built in a hidden staging directory beside --onnx-output, checked there, and only then
swapped in whole (store.replace_directory): a failed export or parity check leaves the previous
ONNX model exactly as it was.
"""
from __future__ import annotations

import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from ..model_dir import disk, store
from ..config import ExportConfig
from ..console import say
from ..model_dir.inspection import check_weights_readable, inspect_model_dir
from ..errors import InputError, ParityError
from ..model_dir.history_file import FORGETTING_FILE, LOSS_CURVE_FILE
from .decoders import OnnxDecoder, TorchDecoder, load_torch_model
from ..model_dir.model_files import context_length, first_line, load_tokenizer, read_json
from .onnx_session import ONNX_FILE, ONNX_SUBDIR, QUANTIZED_ONNX_FILE, onnx_session, quiet_exporters
from .quantize import AGREEMENT_PROMPTS, AGREEMENT_STEPS, Int8Report, build_int8
from ..data.template import TEMPLATE_FILE, template_beside

TASK = "text-generation-with-past"  # one decoder graph with KV-cache inputs (past length 0 on the first step)
# fp32 ORT and PyTorch agree to ~1e-5 on CPU; 1e-3 still catches a broken export or an op that
# drifted after a transformers upgrade (optimum #2023).
PARITY_TOLERANCE = 1e-3
PARITY_PROMPTS = (
    "What is a variable?",
    "Explain in two sentences how a loop works.",
    "Write one line about the sea, the wind and the sails.",
)
PARITY_STEPS = 3  # cached decoding steps checked after each prompt's first (no-past) pass
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json",
                   "merges.txt", "added_tokens.json")
# Beside some tokenizers only: sentencepiece's model (Llama 2), the chat template transformers saves apart.
OPTIONAL_TOKENIZER_FILES = ("tokenizer.model", "chat_template.jinja", "chat_template.json")
MODEL_CARD = "README.md"
# Copied as training wrote them; the card shows the two charts.
CARRIED_FILES = (TOKENIZER_FILES + OPTIONAL_TOKENIZER_FILES
                 + (TEMPLATE_FILE, MODEL_CARD, LOSS_CURVE_FILE, FORGETTING_FILE))


@dataclass(frozen=True)
class ParityReport:
    """How closely the ONNX model reproduces the PyTorch model's logits."""

    max_abs_diff: float
    tolerance: float
    prompts: int
    positions: int  # logit rows compared: every prompt position, then each cached step

    def passed(self) -> bool:
        """True when the largest logit difference is within the tolerance."""
        return bool(np.isfinite(self.max_abs_diff)) and self.max_abs_diff <= self.tolerance

    def summary(self) -> str:
        """One line for the terminal."""
        verdict = "within" if self.passed() else "OVER"
        return (f"max |logit diff| {self.max_abs_diff:.1e}, {verdict} the {self.tolerance:.0e} limit, on "
                f"{self.positions} positions of {self.prompts} prompts (first pass + {PARITY_STEPS} cached steps)")


@dataclass(frozen=True)
class ExportResult:
    """What `export` wrote and how well it matches the trained model."""

    onnx_dir: Path
    files: dict[str, int] = field(default_factory=dict)  # path under onnx_dir ("onnx/model.onnx") -> bytes
    parity: ParityReport | None = None
    seconds: float = 0.0
    int8: Int8Report | None = None  # with --quantize

    @property
    def max_abs_diff(self) -> float | None:
        """Largest fp32 logit difference between ONNX and PyTorch."""
        return None if self.parity is None else self.parity.max_abs_diff

    @property
    def int8_agreement(self) -> float | None:
        """Top-1 agreement of the int8 model with fp32, or None without --quantize."""
        return None if self.int8 is None else self.int8.agreement


def megabytes(size: int) -> str:
    """A file size the way the terminal shows it."""
    return f"{size / 1e6:.1f} MB"


def export_onnx(model_dir: Path, target: Path) -> None:
    """optimum's export of `model_dir` (fp32, KV cache) into the existing directory `target`."""
    from optimum.exporters.onnx import main_export

    try:
        with quiet_exporters():
            # Our parity check replaces optimum's validation: it runs the prompts users will send
            # through the same decode loop `generate` uses, first pass and cached steps alike.
            main_export(str(model_dir), output=target, task=TASK, framework="pt", library_name="transformers",
                        device="cpu", dtype="fp32", do_validation=False, local_files_only=True,
                        trust_remote_code=False)
    except (OSError, ValueError, KeyError, RuntimeError, NotImplementedError) as error:
        if disk.is_write_fault(error):  # export()'s disk.Writes names the file and what is needed
            raise
        raise InputError(f"optimum could not export {model_dir} to ONNX ({first_line(error)})") from None
    graph = Path(ONNX_FILE).name
    if not (target / graph).is_file():
        raise InputError(f"optimum wrote no {graph} for {model_dir}")
    # The graph moves (not copies) under onnx/, its external weights (models over 2 GB) with it:
    # the layout transformers.js loads, which optimum and generate read too (onnx_session.py).
    (target / ONNX_SUBDIR).mkdir()
    for path in target.glob(graph + "*"):
        path.rename(target / ONNX_SUBDIR / path.name)


def align_generation_config(target: Path, eos_token_id: int | None) -> None:
    """Make generation_config.json stop where `generate` stops: at the tokenizer's eos.

    transformers.js and transformers' own `generate` read their eos from this file; writing the one
    our decoding loop uses keeps greedy answers the same in Python, Node and the browser.
    """
    import json

    path = target / "generation_config.json"
    config = read_json(path)
    if eos_token_id is None or config.get("eos_token_id") == eos_token_id:
        return
    config["eos_token_id"] = eos_token_id
    path.write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")


def carry_files(model_dir: Path, target: Path) -> list[str]:
    """Copy the tokenizer, prompt template and model card beside the ONNX model; returns their names."""
    copied = []
    for name in CARRIED_FILES:
        source = model_dir / name
        if source.is_file():
            shutil.copyfile(source, target / name)
            copied.append(name)
    return copied


def check_parity(model_dir: str | Path, onnx_dir: str | Path, prompts: Sequence[str] = PARITY_PROMPTS,
                 tolerance: float = PARITY_TOLERANCE) -> ParityReport:
    """Compare ONNX and PyTorch logits on templated prompts; raises ParityError past `tolerance`.

    Each prompt runs once without a cache (the whole prompt) and then PARITY_STEPS single-token steps
    that feed the KV cache back, so both halves of the exported graph are checked.
    """
    model_dir, onnx_dir = Path(model_dir), Path(onnx_dir)
    tokenizer = load_tokenizer(model_dir, "--output-dir")
    template = template_beside(model_dir)
    torch_decoder = TorchDecoder(load_torch_model(model_dir))
    onnx_decoder = OnnxDecoder(onnx_session(onnx_dir / ONNX_FILE))
    limit = context_length(model_dir) - PARITY_STEPS
    max_diff, positions = 0.0, 0
    for prompt in prompts:
        ids = tokenizer.encode(template.prompt(prompt))[:limit]
        step_input = np.array([ids], dtype=np.int64)
        torch_decoder.reset()
        onnx_decoder.reset()
        for _ in range(PARITY_STEPS + 1):
            expected = torch_decoder.forward(step_input)
            actual = onnx_decoder.forward(step_input)
            diff = float(np.max(np.abs(expected - actual)))
            max_diff = max(max_diff, diff) if np.isfinite(diff) else float("inf")  # NaN must fail, not vanish
            positions += expected.shape[1]
            # Both models are fed PyTorch's greedy choice, so a near-tie cannot make them diverge.
            step_input = np.array([[int(np.argmax(expected[0, -1]))]], dtype=np.int64)
    report = ParityReport(max_diff, tolerance, len(prompts), positions)
    if not report.passed():
        raise ParityError(f"ONNX parity check failed: {report.summary()}")
    return report


def _check_trained_model(model_dir: Path, option_value: str) -> None:
    state = inspect_model_dir(model_dir)
    if state.status == "absent":
        raise InputError(f"no trained model in {option_value} (--output-dir); train one with "
                         "`mtn-sails train --data-file FILE` or `mtn-sails pipeline --data-file FILE`")
    if not state.is_valid():
        raise InputError(f"{option_value} (--output-dir) is not a complete model (missing "
                         f"{', '.join(state.missing)}); train it again with `mtn-sails train`")
    check_weights_readable(model_dir)


def build_export(model_dir: Path, staging: Path, quantize: bool,
                 tolerance: float) -> tuple[ParityReport, Int8Report | None]:
    """The ONNX export of `model_dir` written into `staging` (graph, tokenizer, template, int8 if asked and it
    agrees with fp32), checked for parity; returns the parity and int8 reports."""
    export_onnx(model_dir, staging)
    carry_files(model_dir, staging)
    tokenizer = load_tokenizer(staging, "--output-dir")
    align_generation_config(staging, tokenizer.eos_token_id)
    parity = check_parity(model_dir, staging, tolerance=tolerance)
    if not quantize:
        return parity, None
    say("🔢 Quantising to int8...")
    template, limit = template_beside(model_dir), context_length(model_dir) - AGREEMENT_STEPS
    prompts = [tokenizer.encode(template.prompt(prompt))[:limit] for prompt in AGREEMENT_PROMPTS]
    return parity, build_int8(staging, prompts, tokenizer.eos_token_id, model_dir)


def export(config: ExportConfig, tolerance: float = PARITY_TOLERANCE) -> ExportResult:
    """Export --output-dir to --onnx-output (staged, parity-checked, swapped in whole)."""
    started = time.perf_counter()
    model_dir, onnx_dir = Path(config.output_dir), Path(config.onnx_output)
    if model_dir.resolve() == onnx_dir.resolve():
        raise InputError("--onnx-output must be a different directory from --output-dir")
    if not model_dir.exists() and not store.sibling(model_dir, "old").exists():
        _check_trained_model(model_dir, config.output_dir)  # raises before anything is written
    weights = disk.weight_bytes(model_dir)
    # fp32 ONNX holds the weights; --quantize adds the pre-processed copy it starts from, the fused graph (Llama,
    # Qwen2: another fp32 copy while it is quantised) and an int8 model of up to a half
    needed = weights * (14 if config.quantize else 4) // 4 + disk.MARGIN
    writes = disk.Writes(onnx_dir, (store.sibling(onnx_dir, "staging"),), needed, weights)
    # The trained model is locked too: no training session may swap it while it is being read.
    with writes.translated(), store.locked(model_dir), store.locked(onnx_dir):
        for directory in (model_dir, onnx_dir):
            recovered = store.recover(directory)
            if recovered:
                say(f"🔄 {recovered[0].upper()}{recovered[1:]}")
        _check_trained_model(model_dir, config.output_dir)
        writes.check_room(needed, weights)
        say(f"📦 Exporting {config.output_dir} to ONNX...")
        staging = store.fresh_staging(onnx_dir)
        try:
            report, int8 = build_export(model_dir, staging, config.quantize, tolerance)
            store.replace_directory(staging, onnx_dir)
        except ParityError as error:
            shutil.rmtree(staging, ignore_errors=True)
            raise ParityError(f"{error}; {config.onnx_output} was left as it was") from None
        except InputError as error:
            shutil.rmtree(staging, ignore_errors=True)
            raise InputError(f"{error}; {config.onnx_output} was left as it was") from None
        except BaseException as error:
            fault = writes.fault(error) if isinstance(error, Exception) else None  # before the file is removed
            shutil.rmtree(staging, ignore_errors=True)
            if fault is not None:
                raise fault from None
            raise
    files = {path.relative_to(onnx_dir).as_posix(): path.stat().st_size
             for path in sorted(onnx_dir.rglob("*")) if path.is_file()}
    result = ExportResult(onnx_dir, files, report, time.perf_counter() - started, int8)
    say(f"🔍 Parity: {report.summary()}")
    if int8 is not None:
        int8_bytes = files.get(QUANTIZED_ONNX_FILE, 0)
        say(int8.summary(f"{megabytes(int8_bytes)} vs {megabytes(files[ONNX_FILE])}"))
    say(f"✅ ONNX model ready at {config.onnx_output} ({megabytes(files[ONNX_FILE])}, {result.seconds:.1f} s)")
    return result
