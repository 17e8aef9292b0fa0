"""The guide's decision for a session: continue the model in the output directory at the lower rate, or
start from a base; which learning rate, and the messages that say so."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..config import (CONTINUE_LEARNING_RATE, DEFAULT_MODEL_NAME, SCRATCH_CONTINUE_LEARNING_RATE, SCRATCH_LEARNING_RATE,
                      SCRATCH_MODEL_NAME, STANDARD_LEARNING_RATE)
from ..model_dir.inspection import check_weights_readable, has_onnx_model, inspect_model_dir


def _origin(trained_model_dir: Path) -> str | None:
    """The base the existing model descends from, as its history records it."""
    from ..model_dir.history_file import load_history

    sessions = load_history(trained_model_dir)
    return sessions[0].base_model if sessions else None


@dataclass(frozen=True)
class TrainingPlan:
    """What a session loads, at which learning rate, and what it tells the user."""

    source: str  # hub id, local path, or "scratch"
    continues: bool  # True when the existing trained model is loaded
    learning_rate: float
    base_model: str  # what the model's lineage started from (recorded in the history)
    backup_existing: bool  # the directory's current content is kept as a backup, not replaced
    messages: tuple[str, ...]


def _rates(base_model: str) -> tuple[float, float]:
    if base_model == SCRATCH_MODEL_NAME:
        return SCRATCH_LEARNING_RATE, SCRATCH_CONTINUE_LEARNING_RATE
    return STANDARD_LEARNING_RATE, CONTINUE_LEARNING_RATE


def plan_training(output_dir: str, model_name: str | None, learning_rate: float | None,
                  onnx_output: str | None = None, default_model: str = DEFAULT_MODEL_NAME) -> TrainingPlan:
    """The guide's decision: continue the model in `output_dir` at the lower rate, or start from a base."""
    messages: list[str] = []
    if onnx_output is not None and has_onnx_model(onnx_output):
        messages.append(f"🔄 Found existing ONNX model at {onnx_output}")
    state = inspect_model_dir(output_dir)
    explicit_model = model_name is not None and Path(model_name).resolve() != Path(output_dir).resolve()
    base_model = model_name or default_model
    if state.is_valid():
        check_weights_readable(output_dir)
        messages.append(f"🔄 Found existing trained model at {output_dir}")
    if state.is_valid() and not explicit_model:
        origin = _origin(Path(output_dir)) or default_model
        rate = learning_rate if learning_rate is not None else _rates(origin)[1]
        messages.append("🔄 Continuing training from previous checkpoint...")
        messages.append(_rate_message(rate, learning_rate, continues=True))
        return TrainingPlan(output_dir, True, rate, origin, False, tuple(messages))
    if state.is_valid():
        messages.append(f"🆕 Training from '{base_model}' as --model-name asks; the existing model "
                        "will be kept as a backup beside it")
    elif state.status == "incomplete":
        messages.append(f"⚠️  Incomplete model at {output_dir} (missing {', '.join(state.missing)}); "
                        "it will be kept as a backup beside it")
        messages.append(f"🆕 No existing model found. Training from base model '{base_model}'")
    elif onnx_output is not None and has_onnx_model(onnx_output):
        messages.append(f"⚠️  Source trained model not found at {output_dir} (an ONNX model cannot be "
                        f"trained from). Training from base model '{base_model}'")
    else:
        messages.append(f"🆕 No existing model found. Training from base model '{base_model}'")
    rate = learning_rate if learning_rate is not None else _rates(base_model)[0]
    messages.append(_rate_message(rate, learning_rate, continues=False))
    return TrainingPlan(base_model, False, rate, base_model, state.status != "absent", tuple(messages))


def _rate_message(rate: float, explicit: float | None, continues: bool) -> str:
    if explicit is not None:
        return f"📚 Using learning rate ({rate}) from --learning-rate"
    if continues:
        return f"📚 Using lower learning rate ({rate}) for fine-tuning to preserve existing knowledge"
    return f"📚 Using standard learning rate ({rate}) for initial training"
