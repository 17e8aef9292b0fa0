"""The Python API: each command as a function that returns a result dataclass instead of printing.

    from mtn_sails import validate, train, pipeline, export, generate, history
    report = validate("data.json")
    session = train("data.json", model_name="scratch", epochs=1)

Each function takes the command's options as keyword arguments (the CLI flags without dashes) or
one config dataclass (`config=TrainConfig(...)`); `verbose=True` prints the same progress lines as
the CLI. Errors are raised as `mtn_sails.errors.SailsError` subclasses.
"""
from __future__ import annotations

import dataclasses
import io
from contextlib import nullcontext
from pathlib import Path
from typing import Any, TypeVar

from .config import (DEFAULT_OUTPUT_DIR, ExportConfig, GenerateConfig, PipelineConfig, TrainConfig,
                     ValidateConfig)
from .console import quiet
from .errors import InputError
from .model_dir.session_record import SessionRecord

Config = TypeVar("Config")


def _config(config_class: type[Config], config: Config | None, options: dict[str, Any]) -> Config:
    """The command's config: the one given, or one built from keyword options (not both)."""
    options = {key: value for key, value in options.items() if value is not None}
    if config is not None:
        if options:
            raise InputError(f"pass either config= or keyword options, not both ({sorted(options)})")
        return config
    known = {f.name for f in dataclasses.fields(config_class)}
    unknown = sorted(set(options) - known)
    if unknown:
        raise InputError(f"unknown option(s) {unknown} for {config_class.__name__}")
    return config_class(**options)


def _output(verbose: bool):
    return nullcontext() if verbose else quiet()


def validate(data_file: str | Path | None = None, *, config: ValidateConfig | None = None, **options: Any):
    """The data-quality report (`QualityReport`) of a data file."""
    from .data.quality import validate_file

    data = str(data_file) if data_file is not None else None
    settled = _config(ValidateConfig, config, {"data_file": data, **options})
    return validate_file(settled.data_file, max_length=settled.max_length, preference_as=settled.preference_as)


def train(data_file: str | Path | None = None, *, config: TrainConfig | None = None, verbose: bool = False,
          **options: Any):
    """One continuous-training session; returns its `SessionResult` (history entry, paths)."""
    from .training.session import train as run_train

    data = str(data_file) if data_file is not None else None
    settled = _config(TrainConfig, config, {"data_file": data, **options})
    with _output(verbose):
        return run_train(settled)


def pipeline(data_file: str | Path | None = None, *, config: PipelineConfig | None = None, verbose: bool = False,
             **options: Any):
    """Validate, train, export and check parity; returns a `PipelineResult`."""
    from .recipes import pipeline as run_pipeline

    data = str(data_file) if data_file is not None else None
    settled = _config(PipelineConfig, config, {"data_file": data, **options})
    with _output(verbose):
        return run_pipeline(settled)


def export(*, config: ExportConfig | None = None, verbose: bool = False, **options: Any):
    """ONNX export of a trained model with the parity check; returns an `ExportResult`."""
    from .runtime.export import export as run_export

    settled = _config(ExportConfig, config, options)
    with _output(verbose):
        return run_export(settled)


def generate(prompt: str | None = None, *, config: GenerateConfig | None = None, verbose: bool = False,
             **options: Any):
    """The model's completion of `prompt` as a `GenerationResult` (text, token counts, speed)."""
    from .runtime.generation import generate as run_generate

    settled = _config(GenerateConfig, config, {"prompt": prompt, **options})
    with _output(verbose):
        return run_generate(settled, stream=io.StringIO())


def history(output_dir: str | Path = DEFAULT_OUTPUT_DIR) -> list[SessionRecord]:
    """The sessions recorded in a model directory, oldest first."""
    from .model_dir.history_file import load_history

    if not Path(output_dir).is_dir():
        raise InputError(f"{output_dir}: no such model directory")
    return load_history(output_dir)
