"""Recipes that cross the layers: `pipeline` (validate -> train -> ONNX export -> parity check), composed from
the stages. A module of its own name would shadow the API function `mtn_sails.pipeline`."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from .config import ExportConfig, PipelineConfig, TrainConfig
from .data.quality import print_report, validate_file
from .errors import ValidationFailed


@dataclass
class PipelineResult:
    """What `pipeline` did: the data-quality report, the training session and the ONNX export."""

    quality: Any  # data.quality.QualityReport
    session: Any  # training.session.SessionResult
    export: Any | None  # runtime.export.ExportResult; None on the non-main processes of a distributed run


def pipeline(config: PipelineConfig) -> PipelineResult:
    """validate -> train -> ONNX export -> parity check."""
    from .runtime.export import export
    from .training.distributed import current_processes
    from .training.session import train

    processes = current_processes(config.device)
    report = validate_file(config.data_file, max_length=config.max_length,
                           preference_as=config.preference_as)
    print_report(report, as_json=False, as_result=False)
    if report.exit_code(strict=config.strict):
        raise ValidationFailed(f"{config.data_file} failed validation; fix the errors above "
                               "(docs/DATA_QUALITY_GUIDE.md) and run again")
    train_fields = {f.name: getattr(config, f.name) for f in dataclasses.fields(TrainConfig)}
    result = train(TrainConfig(**train_fields), onnx_output=config.onnx_output)
    exported = None
    if processes.is_main():  # the export and parity check run once, after the distributed training
        exported = export(ExportConfig(output_dir=config.output_dir, onnx_output=config.onnx_output,
                                       quantize=config.quantize))
    return PipelineResult(report, result, exported)
