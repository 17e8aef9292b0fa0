"""The int8 model of `export --quantize`: real onnxruntime quantisation, shipped only when it agrees with fp32."""
from __future__ import annotations

import shutil

import numpy as np
import pytest

from mtn_sails.runtime.decoders import OnnxDecoder
from mtn_sails.runtime.onnx_session import ONNX_FILE, QUANTIZED_ONNX_FILE, onnx_session
from mtn_sails.runtime.quantize import (AGREEMENT_STEPS, MAX_CHANGED_STARTS, MLP_OUTPUT_PROJECTIONS, WHOLE_GRAPH,
                                        Int8Report, build_int8, greedy_agreement, quantize_int8, same_starts)

pytestmark = pytest.mark.slow
PROMPTS = [[5, 9, 14, 3], [7, 2, 30]]


@pytest.fixture
def onnx_copy(exported, tmp_path):
    """A private copy of the exported tiny GPT-2 (fp32 and int8)."""
    target = tmp_path / "onnx_model"
    shutil.copytree(exported[1], target)
    return target


def test_the_mlp_output_projections_stay_fp32_and_the_rest_is_int8(onnx_copy):
    import onnx

    graph = onnx.load(quantize_int8(onnx_copy, MLP_OUTPUT_PROJECTIONS)).graph
    projections = {node.op_type for node in graph.node if "/mlp/c_proj/" in node.name}
    assert projections & {"MatMul", "Gemm"} and "MatMulInteger" not in projections
    assert any(node.op_type == "MatMulInteger" and "/mlp/c_fc/" in node.name for node in graph.node)


def test_agreement_counts_every_greedy_step_and_a_model_agrees_with_itself(onnx_copy):
    fp32 = OnnxDecoder(onnx_session(onnx_copy / ONNX_FILE))
    same = OnnxDecoder(onnx_session(onnx_copy / ONNX_FILE))
    assert greedy_agreement(fp32, same, PROMPTS) == (1.0, len(PROMPTS) * AGREEMENT_STEPS)


class Shifted(OnnxDecoder):
    """fp32 whose top token is always the next id: a model that never agrees."""

    def forward(self, input_ids: np.ndarray) -> np.ndarray:
        return np.roll(super().forward(input_ids), 1, axis=-1)


def test_agreement_falls_when_the_candidate_says_something_else(onnx_copy):
    fp32 = OnnxDecoder(onnx_session(onnx_copy / ONNX_FILE))
    agreement, _ = greedy_agreement(fp32, Shifted(onnx_session(onnx_copy / ONNX_FILE)), PROMPTS)
    assert agreement == 0.0


def test_answers_start_the_same_only_when_the_candidate_picks_the_same_tokens(onnx_copy):
    fp32 = OnnxDecoder(onnx_session(onnx_copy / ONNX_FILE))
    assert same_starts(fp32, OnnxDecoder(onnx_session(onnx_copy / ONNX_FILE)), PROMPTS, None) == len(PROMPTS)
    assert same_starts(fp32, Shifted(onnx_session(onnx_copy / ONNX_FILE)), PROMPTS, None) == 0


def test_a_form_that_changes_more_answers_than_allowed_fails_the_gate_at_any_agreement():
    changed = lambda count: Int8Report(0.99, 128, WHOLE_GRAPH, False, same_starts=8 - count, answers=8)  # noqa: E731
    assert changed(MAX_CHANGED_STARTS).passes() and not changed(MAX_CHANGED_STARTS + 1).passes()
    assert not Int8Report(0.8, 128, WHOLE_GRAPH, False, same_starts=8, answers=8).passes()
    assert "6 of 8 answers start as fp32's" in changed(2).summary("")


def test_an_int8_model_under_the_threshold_is_not_written(onnx_copy):
    report = build_int8(onnx_copy, PROMPTS, None, min_agreement=1.01)  # no model agrees more than always
    assert not report.shipped and report.forms_tried == 3  # GPT-2's Gemm: no weight blocks
    assert not (onnx_copy / QUANTIZED_ONNX_FILE).exists() and (onnx_copy / ONNX_FILE).is_file()
    assert not list((onnx_copy / "onnx").glob(".model_prepared*"))
    assert report.summary("").startswith("⚠️  int8 not written: its top-1 next token agrees with fp32 at only")


def test_an_int8_model_that_agrees_is_written_whole_graph_first(onnx_copy):
    (onnx_copy / QUANTIZED_ONNX_FILE).unlink()
    report = build_int8(onnx_copy, PROMPTS, None, min_agreement=0.0)
    assert report.shipped and report.form == WHOLE_GRAPH and (onnx_copy / QUANTIZED_ONNX_FILE).is_file()
    assert report.summary("1 MB vs 4 MB").startswith(f"🔢 int8: top-1 next token agrees with fp32 at ")
