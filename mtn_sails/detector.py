"""What a session starts from: model detection (the guide's rules) and the training plan."""
from __future__ import annotations

import json
import struct
import zipfile
from dataclasses import dataclass
from pathlib import Path

from .config import SCRATCH_MODEL_NAME
from .errors import CorruptModelError

CONFIG_FILE = "config.json"
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
INDEX_FILES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")

STANDARD_LEARNING_RATE = 5e-5  # the guide's rate for a first session from a pretrained base
CONTINUE_LEARNING_RATE = 1e-5  # 1/5 of it when continuing, to preserve existing knowledge
# A randomly initialised GPT-2 barely moves at 5e-5; measured in BENCHMARKS.md ("Scratch learning
# rate"), with the guide's 1/5 ratio kept for continuation.
SCRATCH_LEARNING_RATE = 1e-3
SCRATCH_CONTINUE_LEARNING_RATE = SCRATCH_LEARNING_RATE / 5


@dataclass(frozen=True)
class ModelDirState:
    """What a directory holds: a loadable model, nothing, or something incomplete."""

    path: Path
    status: str  # "valid" | "absent" | "incomplete"
    missing: tuple[str, ...] = ()

    def is_valid(self) -> bool:
        """True when the directory holds a complete model."""
        return self.status == "valid"


def _weight_files(path: Path) -> list[Path]:
    """The weight files a model directory relies on (shards listed by an index count)."""
    for index_name in INDEX_FILES:
        index = path / index_name
        if index.is_file():
            try:
                weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
            except (OSError, ValueError, KeyError, TypeError):
                raise CorruptModelError(f"{index}: unreadable shard index") from None
            return [path / name for name in sorted(set(weight_map.values()))]
    return [path / name for name in WEIGHT_FILES if (path / name).is_file()]


def check_model_exists(model_path: str | Path) -> bool:
    """True when the directory has config.json and weights (safetensors, bin, or a sharded index)."""
    return inspect_model_dir(model_path).is_valid()


def inspect_model_dir(model_path: str | Path) -> ModelDirState:
    """The directory's state, by the guide's rule (config.json + weights), sharded weights included."""
    path = Path(model_path)
    if not path.is_dir():
        return ModelDirState(path, "absent")
    has_config = (path / CONFIG_FILE).is_file()
    has_index = any((path / name).is_file() for name in INDEX_FILES)
    weights = _weight_files(path)
    shards_missing = tuple(p.name for p in weights if not p.is_file()) if has_index else ()
    missing = (() if has_config else (CONFIG_FILE,)) + shards_missing
    if not weights:
        missing += (" or ".join(WEIGHT_FILES),)
    if not missing:
        return ModelDirState(path, "valid")
    if not any(path.iterdir()):
        return ModelDirState(path, "absent")
    return ModelDirState(path, "incomplete", missing)


def _check_safetensors(path: Path) -> None:
    size = path.stat().st_size
    with open(path, "rb") as handle:
        head = handle.read(8)
        if len(head) < 8:
            raise CorruptModelError(f"{path}: truncated safetensors file ({size} bytes)")
        (header_length,) = struct.unpack("<Q", head)
        if header_length > size - 8:
            raise CorruptModelError(f"{path}: truncated safetensors file (header of {header_length} bytes, "
                                    f"file of {size})")
        try:
            header = json.loads(handle.read(header_length))
        except ValueError:
            raise CorruptModelError(f"{path}: unreadable safetensors header") from None
    end = max((entry["data_offsets"][1] for key, entry in header.items() if key != "__metadata__"), default=0)
    if 8 + header_length + end > size:
        raise CorruptModelError(f"{path}: truncated safetensors file ({size} bytes, its header needs "
                                f"{8 + header_length + end})")


def _check_torch_bin(path: Path) -> None:
    with open(path, "rb") as handle:
        magic = handle.read(2)
    if magic == b"\x80\x02":  # torch's legacy (pre-1.6) pickle format
        return
    try:
        with zipfile.ZipFile(path) as archive:
            if not any(name.endswith("data.pkl") for name in archive.namelist()):
                raise CorruptModelError(f"{path}: not a PyTorch weights file")
    except (zipfile.BadZipFile, OSError):
        raise CorruptModelError(f"{path}: unreadable PyTorch weights (truncated or not a weights file)") from None


def check_weights_readable(model_path: str | Path) -> None:
    """Raise CorruptModelError when a valid-looking model's weights are truncated or unreadable."""
    path = Path(model_path)
    try:
        for weights in _weight_files(path):
            if weights.name.endswith(".safetensors"):
                _check_safetensors(weights)
            else:
                _check_torch_bin(weights)
    except CorruptModelError as error:
        raise CorruptModelError(f"{error} — the model in {path} was left untouched; restore the file, "
                                "or move the directory away to start fresh") from None


def has_onnx_model(path: str | Path) -> bool:
    """True when the directory holds an exported ONNX model."""
    path = Path(path)
    # graphs under onnx/ (the layout transformers.js loads), or at the root (exports before it)
    return path.is_dir() and (any(path.glob("onnx/*.onnx")) or any(path.glob("*.onnx")))


def _origin(trained_model_dir: Path) -> str | None:
    """The base the existing model descends from, as its history records it."""
    from .history import load_history

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
                  onnx_output: str | None = None, default_model: str = "distilgpt2") -> TrainingPlan:
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
