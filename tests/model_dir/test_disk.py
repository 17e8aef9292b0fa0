"""Write faults as one line: which errors are faults (the libraries' own included), the room a session needs, and
the refusal before anything runs. The sessions and exports that meet these faults are in tests/test_full_disk.py."""
from __future__ import annotations

import errno
import subprocess
import sys

import pytest

from mtn_sails.errors import EXIT_CANNOT_WRITE, CannotWriteError
from mtn_sails.model_dir import disk

# Each snippet makes its library write a 4 KB file under a 1 KB file-size limit and prints the fault it raised.
LIMITED_WRITE = """
import resource, signal, sys
from mtn_sails.model_dir.disk import fault_errno
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
import torch
tensor = torch.zeros(1024)
resource.setrlimit(resource.RLIMIT_FSIZE, (1024, resource.RLIM_INFINITY))
try:
    {write}
except Exception as error:
    print(fault_errno(error), type(error).__name__, str(error).splitlines()[-1])
"""


def library_fault(write: str, tmp_path) -> str:
    done = subprocess.run([sys.executable, "-c", LIMITED_WRITE.format(write=write)], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout.strip()


def test_the_libraries_own_errors_are_recognised_through_their_wrapping(tmp_path):
    safetensors = library_fault("from safetensors.torch import save_file; save_file({'w': tensor}, 'w.safetensors')",
                                tmp_path)
    assert safetensors.startswith(f"{errno.EFBIG} SafetensorError") and "os error" in safetensors
    saved = library_fault("torch.save({'w': tensor}, 'w.pt')", tmp_path)
    assert saved.startswith(f"{disk.STOPPED_SHORT} RuntimeError")  # torch's zip writer keeps no errno
    plain = library_fault("with open('w.bin', 'wb') as handle: handle.write(bytes(4096))", tmp_path)
    assert plain.startswith(f"{errno.EFBIG} OSError")


@pytest.mark.parametrize("error, code", [
    (OSError(errno.ENOSPC, "No space left on device", "model.safetensors"), errno.ENOSPC),
    (PermissionError(errno.EACCES, "Permission denied", "/ro/.trained_model.lock"), errno.EACCES),
    (OSError(errno.EROFS, "Read-only file system"), errno.EROFS),
    (Exception("Error while serializing: I/O error: No space left on device (os error 28)"), errno.ENOSPC),
    (OSError("error writing the Arrow file: No space left on device"), errno.ENOSPC),  # pyarrow: the text, no errno
    (RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 1360384 vs 1360276"),
     disk.STOPPED_SHORT),
])
def test_write_faults_are_found_by_errno_or_message(error, code):
    assert disk.fault_errno(error) == code


def test_a_fault_is_found_behind_the_exceptions_that_wrap_it():
    try:
        try:
            raise OSError(errno.EFBIG, "File too large")
        except OSError as inner:
            raise ValueError("export failed") from inner
    except ValueError as outer:
        assert disk.fault_errno(outer) == errno.EFBIG


@pytest.mark.parametrize("error", [FileNotFoundError(errno.ENOENT, "No such file"), ValueError("bad"),
                                   RuntimeError("CUDA out of memory"), KeyError("weight")])
def test_other_errors_are_no_write_fault(error):
    assert disk.fault_errno(error) is None and not disk.is_write_fault(error)


def test_a_session_needs_its_checkpoints_and_its_new_weights():
    weights = 100 << 20
    # two checkpoints while the Trainer rotates them, each the weights and Adam's two moments
    assert disk.session_bytes(weights, other_files=5) == 6 * weights + 5 + disk.MARGIN
    # a single checkpoint and the weights staged beside it
    assert disk.session_bytes(weights, checkpoints_at_once=1) == 4 * weights + disk.MARGIN


def test_the_precheck_refuses_too_little_space_or_too_low_a_file_size_limit():
    needed, largest = 700 << 20, 100 << 20
    assert "not enough space: 600.0 MB free" in disk.shortfall(needed, 600_000_000, largest, None)
    limited = disk.shortfall(needed, 10 ** 12, largest, 50 << 20)
    assert "cannot write a 104.9 MB file: the file-size limit (ulimit -f) is 52.4 MB" in limited
    assert disk.shortfall(needed, needed, largest, largest) is None
    assert disk.shortfall(needed, 10 ** 12, largest, None) is None


def test_check_room_is_one_line_that_keeps_the_model(tmp_path):
    model = tmp_path / "trained_model"
    model.mkdir()
    writes = disk.Writes(model)
    with pytest.raises(CannotWriteError) as refused:
        writes.check_room(10 ** 18, 0)  # more than any disk holds
    line = str(refused.value)
    assert refused.value.exit_code == EXIT_CANNOT_WRITE == 6
    assert "\n" not in line and "not enough space" in line and str(tmp_path) in line
    assert line.endswith(f"{model} was left as it was")


def test_translated_names_the_file_and_passes_other_errors(tmp_path):
    writes = disk.Writes(tmp_path / "onnx_model", needed=3_000_000, largest_file=1_000_000)
    with pytest.raises(CannotWriteError, match=r"cannot write .*model\.onnx: no space left on the device .*"
                                               r"needs about 3\.0 MB free .*nothing was written to"):
        with writes.translated():
            raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / ".onnx_model.staging/model.onnx"))
    with pytest.raises(ValueError):
        with writes.translated():
            raise ValueError("not a write fault")


def test_the_disk_module_imports_no_torch():
    done = subprocess.run([sys.executable, "-c", "import sys, mtn_sails.model_dir.disk, mtn_sails.model_dir.store\n"
                           "print('torch' in sys.modules)"], capture_output=True, text=True, timeout=60)
    assert done.stdout.strip() == "False", done.stderr
