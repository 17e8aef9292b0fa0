"""A real machine's faults (issue 30): a file-size limit met by each write of a session and an export, and a
read-only output directory. Each is one line, exit 6, no traceback, the model byte for byte as it was, and the
next command, without the fault, works.

The faults are real: `ulimit -f` (RLIMIT_FSIZE, with SIGXFSZ ignored as Python does, so a write fails with EFBIG)
and chmod 0o555. Root writes through chmod, so as root the command runs without CAP_DAC_OVERRIDE (dropped from
its bounding set), which makes the kernel check the directory's mode for root too.
"""
from __future__ import annotations

import ctypes
import hashlib
import os
import resource
import signal
import struct
from pathlib import Path

import pytest

from helpers import run_cli, write_qa
from mtn_sails.errors import EXIT_CANNOT_WRITE

PR_CAPBSET_DROP, CAP_DAC_OVERRIDE = 24, 1  # linux/prctl.h, linux/capability.h


def file_size_limit(limit: int):
    """A preexec_fn: writes past `limit` bytes fail with EFBIG."""
    def limited() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    return limited


def without_dac_override() -> None:
    """A preexec_fn for root: the command and its children no longer write through directory modes."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_CAPBSET_DROP, CAP_DAC_OVERRIDE, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP, CAP_DAC_OVERRIDE) failed: root cannot be made "
                                          "to honour a read-only directory here")


def hashes(directory: Path) -> dict[str, str]:
    """sha256 of every file under `directory`, by relative path."""
    return {path.relative_to(directory).as_posix(): hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted(directory.rglob("*")) if path.is_file()}


def tensor_bytes(weights: Path) -> int:
    """The bytes of a safetensors file's tensors: its size less the header (an 8-byte length, then JSON)."""
    with open(weights, "rb") as handle:
        header = struct.unpack("<Q", handle.read(8))[0]
    return weights.stat().st_size - 8 - header


def assert_one_line_exit_6(done, names: str) -> str:
    output = done.stdout + done.stderr
    assert done.returncode == EXIT_CANNOT_WRITE, output[-3000:]
    assert "Traceback" not in output
    errors = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and names in errors[0], done.stderr[-3000:]
    return errors[0]


def train(model: Path, data: Path, preexec_fn=None, epochs: str = "2"):
    # a checkpoint every epoch: the writes cut here include the checkpoint's
    return run_cli("train", "--data-file", str(data), "--output-dir", str(model), "--epochs", epochs,
                   "--checkpoint-minutes", "0", cwd=model.parent, preexec_fn=preexec_fn)


def assert_next_session_works(model: Path, data: Path) -> None:
    done = train(model, data, epochs="1")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "✅ Session 1 saved" in done.stdout
    assert sorted(p.name for p in model.parent.iterdir() if p.name.startswith(f".{model.name}")) == []


@pytest.fixture
def session(tiny_model_copy, tmp_path):
    """(model directory, data file, its files' hashes, the size of its weights file)."""
    return tiny_model_copy, write_qa(tmp_path / "qa.json"), hashes(tiny_model_copy), \
        (tiny_model_copy / "model.safetensors").stat().st_size


def test_a_file_size_limit_below_the_weights_is_refused_before_training(session):
    model, data, before, _ = session
    limit = tensor_bytes(model / "model.safetensors") // 2
    done = train(model, data, file_size_limit(limit))
    line = assert_one_line_exit_6(done, "the file-size limit (ulimit -f)")
    assert "🚀 Training" not in done.stdout  # refused before the Trainer ran
    assert f"in {model.parent}" in line and line.endswith(f"{model} was left as it was")
    assert hashes(model) == before
    assert_next_session_works(model, data)


def test_the_checkpoints_weights_cut_by_the_limit(session):
    """Past the precheck (the limit is above the tensors' bytes), the checkpoint's model.safetensors, a few bytes
    of header longer, fails inside safetensors, which names no file."""
    model, data, before, weights_file = session
    done = train(model, data, file_size_limit(weights_file - 1))
    line = assert_one_line_exit_6(done, f"{model.parent / ('.' + model.name + '.work')}/checkpoints/checkpoint-")
    assert "file too large" in line and "needs about" in line and line.endswith(f"{model} was left as it was")
    assert hashes(model) == before
    assert_next_session_works(model, data)


def test_the_checkpoints_optimizer_state_cut_by_the_limit(session):
    """Adam's two moments are twice the weights: torch.save stops short there, with no errno of its own."""
    model, data, before, weights_file = session
    done = train(model, data, file_size_limit(weights_file + weights_file // 2))
    line = assert_one_line_exit_6(done, "optimizer.pt")
    assert "file too large: the file-size limit (ulimit -f) is" in line
    assert hashes(model) == before
    assert_next_session_works(model, data)


def test_an_export_cut_by_the_limit_keeps_the_previous_onnx_model(tiny_model_copy, tmp_path):
    model, onnx_dir = tiny_model_copy, tmp_path / "onnx_model"
    first = run_cli("export", "--output-dir", str(model), "--onnx-output", str(onnx_dir), cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    before, trained = hashes(onnx_dir), hashes(model)
    # the graph holds the weights and more: a limit at the weights file passes the precheck and cuts model.onnx
    limit = (model / "model.safetensors").stat().st_size
    done = run_cli("export", "--output-dir", str(model), "--onnx-output", str(onnx_dir), cwd=tmp_path,
                   preexec_fn=file_size_limit(limit))
    line = assert_one_line_exit_6(done, "model.onnx")
    assert "file too large" in line and line.endswith(f"{onnx_dir} was left as it was")
    assert hashes(onnx_dir) == before and hashes(model) == trained
    assert not (tmp_path / ".onnx_model.staging").exists()
    again = run_cli("export", "--output-dir", str(model), "--onnx-output", str(onnx_dir), cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]


def test_a_read_only_output_directory_is_one_line(session):
    model, data, before, _ = session
    parent = model.parent
    parent.chmod(0o555)
    try:
        done = train(model, data, without_dac_override if os.geteuid() == 0 else None)
    finally:
        parent.chmod(0o755)
    line = assert_one_line_exit_6(done, f"{parent}/.{model.name}.lock")
    assert "permission denied" in line and line.endswith(f"{model} was left as it was")
    assert hashes(model) == before
    assert_next_session_works(model, data)


def test_a_pipeline_whose_export_is_cut_keeps_the_session_and_the_previous_onnx_model(session, tmp_path):
    """The session completes and is swapped in (a checkpoint-free short session writes nothing larger than its
    weights); the export after it cannot write its graph: the earlier export stays, and the next pipeline works."""
    model, data, _, weights_file = session
    onnx_dir = tmp_path / "onnx_model"
    first = run_cli("export", "--output-dir", str(model), "--onnx-output", str(onnx_dir), cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    before = hashes(onnx_dir)
    args = ("pipeline", "--data-file", str(data), "--output-dir", str(model), "--onnx-output", str(onnx_dir),
            "--epochs", "1")
    done = run_cli(*args, cwd=tmp_path, preexec_fn=file_size_limit(weights_file))
    line = assert_one_line_exit_6(done, "model.onnx")
    assert "✅ Session 1 saved" in done.stdout and line.endswith(f"{onnx_dir} was left as it was")
    assert hashes(onnx_dir) == before
    again = run_cli(*args, cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "✅ Session 2 saved" in again.stdout
