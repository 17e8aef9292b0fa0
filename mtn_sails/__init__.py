"""MTN Sails: continuous fine-tuning of small causal language models, exported to ONNX.

`from mtn_sails import validate, train, pipeline, export, generate, history` gives the Python API
(mtn_sails/api.py), loaded on first use so that importing the package (and `--help`) stays light.
The layers are subpackages, importing only downward: the faces (cli, api, pipeline) -> training / runtime ->
model_dir -> data -> the base modules (config, errors, console).
"""
from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["validate", "train", "pipeline", "export", "generate", "history", "__version__"]
_API = frozenset(__all__) - {"__version__"}


def __getattr__(name: str) -> Any:
    if name in _API:
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module 'mtn_sails' has no attribute {name!r}")
