"""MTN Sails: continuous fine-tuning of small causal language models, exported to ONNX.

`from mtn_sails import validate, train, pipeline, export, generate, history` gives the Python API
(mtn_sails/api.py); it is loaded on first use so that importing the package stays light.
"""
from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["validate", "train", "pipeline", "export", "generate", "history", "__version__"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module 'mtn_sails' has no attribute {name!r}")
