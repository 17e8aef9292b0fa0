"""MTN Sails: continuous fine-tuning of small causal language models, exported to ONNX.

`from mtn_sails import validate, train, pipeline, export, generate, history` gives the Python API
(mtn_sails/api.py), loaded on first use so that importing the package (and `--help`) stays light.
"""
from __future__ import annotations

import sys
import types
from typing import Any

__version__ = "0.1.0"
__all__ = ["validate", "train", "pipeline", "export", "generate", "history", "__version__"]
_API = frozenset(__all__) - {"__version__"}


class _Package(types.ModuleType):
    def __setattr__(self, name: str, value: Any) -> None:
        # Loading the stage modules `generate` and `history` would bind them over the API functions of
        # the same names; the modules stay reachable through sys.modules and `from .generate import ...`.
        if name in _API and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


def __getattr__(name: str) -> Any:
    if name in _API:
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module 'mtn_sails' has no attribute {name!r}")


sys.modules[__name__].__class__ = _Package
