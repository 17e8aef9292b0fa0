"""The pipeline recipe composes the stages: validate -> train -> ONNX export -> parity check, each stage's result
in the PipelineResult; data that fails validation stops it before anything is written."""
from __future__ import annotations

import json

import pytest


def test_the_pipeline_validates_trains_exports_and_checks_parity(tiny_model_dir, qa_file, tmp_path, capsys):
    from mtn_sails.recipes import pipeline
    from mtn_sails.config import PipelineConfig

    output, onnx_dir = tmp_path / "trained_model", tmp_path / "onnx_model"
    result = pipeline(PipelineConfig(data_file=str(qa_file), model_name=str(tiny_model_dir), output_dir=str(output),
                                     onnx_output=str(onnx_dir), epochs=1, max_length=64))
    printed = capsys.readouterr().out
    assert printed.index("📋 Data quality report for") < printed.index("✅ Session 1 saved")  # validated first
    assert result.quality.exit_code(strict=False) == 0
    assert result.session.session.session == 1 and (output / "model.safetensors").is_file()
    assert result.export.onnx_dir == onnx_dir and (onnx_dir / "onnx" / "model.onnx").is_file()
    assert result.export.max_abs_diff is not None and result.export.max_abs_diff <= 1e-3
    history = json.loads((output / "training_history.json").read_text())["sessions"]
    assert len(history) == 1


def test_data_that_fails_validation_stops_the_pipeline_before_anything_is_written(tiny_model_dir, tmp_path):
    from mtn_sails.recipes import pipeline
    from mtn_sails.config import PipelineConfig
    from mtn_sails.errors import ValidationFailed

    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"question": "What?", "answer": ""}]), encoding="utf-8")
    with pytest.raises(ValidationFailed):
        pipeline(PipelineConfig(data_file=str(bad), model_name=str(tiny_model_dir),
                                output_dir=str(tmp_path / "trained_model"), onnx_output=str(tmp_path / "onnx_model")))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.json"]
