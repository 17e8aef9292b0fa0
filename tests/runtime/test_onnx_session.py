"""onnx_runtime: the one place sessions are made, and what generate does without onnxruntime."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from helpers import REPO
from mtn_sails.runtime.onnx_session import ONNX_FILE, QUANTIZED_ONNX_FILE, model_file, onnx_session, physical_cores


def test_model_file_prefers_onnx_folder_and_still_finds_a_graph_at_the_root(tmp_path):
    assert model_file(tmp_path) == tmp_path / ONNX_FILE  # nothing there: the path to name in a message
    (tmp_path / "model.onnx").write_bytes(b"old layout")
    (tmp_path / "model_quantized.onnx").write_bytes(b"old layout")
    assert model_file(tmp_path) == tmp_path / "model.onnx"
    assert model_file(tmp_path, int8=True) == tmp_path / "model_quantized.onnx"
    (tmp_path / "onnx").mkdir()
    (tmp_path / ONNX_FILE).write_bytes(b"new layout")
    assert model_file(tmp_path) == tmp_path / "onnx" / "model.onnx"
    assert model_file(tmp_path, int8=True) == tmp_path / "model_quantized.onnx"
    (tmp_path / QUANTIZED_ONNX_FILE).write_bytes(b"new layout")
    assert model_file(tmp_path, int8=True) == tmp_path / "onnx" / "model_quantized.onnx"


def test_physical_cores_is_a_usable_thread_count():
    assert 1 <= physical_cores() <= (os.cpu_count() or 1)


@pytest.mark.slow
def test_session_runs_on_the_cpu_with_the_threads_asked_for(exported):
    _, onnx_dir, _ = exported
    session = onnx_session(onnx_dir / ONNX_FILE, threads=1)
    assert session.get_providers() == ["CPUExecutionProvider"]
    assert session.get_session_options().intra_op_num_threads == 1
    assert onnx_session(onnx_dir / ONNX_FILE).get_session_options().intra_op_num_threads == physical_cores()


@pytest.mark.slow
def test_generate_without_onnxruntime_says_the_package_is_missing_not_to_re_export(exported):
    """A missing package escapes as ModuleNotFoundError (the CLI names it), never 'cannot load, re-export'."""
    _, onnx_dir, _ = exported
    script = (
        "import io, sys\n"
        "sys.modules['onnxruntime'] = None  # as if it were not installed\n"
        "from mtn_sails.config import GenerateConfig\n"
        "from mtn_sails.runtime.generation import generate\n"
        "try:\n"
        f"    generate(GenerateConfig(prompt='hi', onnx_output={str(onnx_dir)!r}), stream=io.StringIO())\n"
        "except ModuleNotFoundError as error:\n"
        "    print('missing', error.name)\n")
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "missing onnxruntime"
