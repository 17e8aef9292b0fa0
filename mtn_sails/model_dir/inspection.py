"""What a model directory holds: a complete model, nothing, or something incomplete; weights that read."""
from __future__ import annotations

import json
import struct
import zipfile
from dataclasses import dataclass
from pathlib import Path

from ..errors import CorruptModelError

CONFIG_FILE = "config.json"
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
INDEX_FILES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")

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
