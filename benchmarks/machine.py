"""What every benchmark records about where it ran, and one quiet training session (shared helpers)."""
from __future__ import annotations

import contextlib
import io
import json
import os
import platform
from pathlib import Path


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (or what platform knows)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine() -> dict:
    """What the numbers were measured on (imports torch)."""
    import torch

    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    return {"nproc": os.cpu_count(), "cpu": cpu_model(), "device": device, "torch_threads": torch.get_num_threads(),
            "python": platform.python_version(), "torch": torch.__version__}


def quiet_session(config, verbose: bool = False) -> dict:
    """One real training session (mtn_sails.training.session.train); its history entry, its printout only if verbose."""
    from mtn_sails.training.session import train

    sink = contextlib.nullcontext() if verbose else contextlib.redirect_stdout(io.StringIO())
    with sink:
        return train(config).session


def write_json(path: str | None, report: dict) -> None:
    """Write a benchmark's report as indented JSON when --json-out was given."""
    if path:
        Path(path).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
