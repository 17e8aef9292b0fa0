"""The errors a user can cause, each with a terminal-ready message and an exit code."""
from __future__ import annotations

EXIT_OK = 0
EXIT_BUG = 1
EXIT_UNUSABLE_INPUT = 2  # a file or argument that cannot be used at all
EXIT_INVALID_DATA = 3  # data that loads but fails validation
EXIT_LOCKED = 4  # another session holds the output directory
EXIT_PARITY = 5  # the ONNX export does not match the trained model
EXIT_CANNOT_WRITE = 6  # a full disk, a file-size limit, a read-only or forbidden directory
EXIT_INTERRUPTED = 130  # Ctrl-C, as shells report SIGINT


class SailsError(Exception):
    """A problem the user can fix; `str(error)` is the one line to show."""

    exit_code = EXIT_UNUSABLE_INPUT


class InputError(SailsError):
    """An unusable file, directory or argument."""

    exit_code = EXIT_UNUSABLE_INPUT


class DataFormatError(InputError):
    """A data file that cannot be read at all (bad JSON, too deeply nested, not UTF-8, binary)."""


class CorruptModelError(InputError):
    """Model weights that exist but cannot be read."""


class ValidationFailed(SailsError):
    """Data that loads but fails the quality checks."""

    exit_code = EXIT_INVALID_DATA


class LockedError(SailsError):
    """Another session is using the same output directory."""

    exit_code = EXIT_LOCKED


class ParityError(SailsError):
    """The exported ONNX model disagrees with the PyTorch model."""

    exit_code = EXIT_PARITY


class CannotWriteError(SailsError):
    """A write the machine refused (no space, a file-size limit, a read-only or forbidden directory); the message
    says what, where, how much is needed, and that the previous model is unchanged."""

    exit_code = EXIT_CANNOT_WRITE


# The project's requirements by import name, with the name pip installs them under.
REQUIREMENTS = {
    "torch": "torch", "transformers": "transformers", "datasets": "datasets", "tokenizers": "tokenizers",
    "safetensors": "safetensors", "accelerate": "accelerate",
    "optimum": "optimum-onnx",  # optimum.exporters.onnx and optimum.onnxruntime; it pulls in optimum itself
    "onnx": "onnx", "onnxruntime": "onnxruntime", "matplotlib": "matplotlib", "yaml": "PyYAML",
    "huggingface_hub": "huggingface_hub", "psutil": "psutil", "filelock": "filelock", "peft": "peft",
    "jinja2": "Jinja2", "gguf": "gguf", "onnx_ir": "onnx-ir", "onnxruntime_genai": "onnxruntime-genai",
}


class MissingDependency(InputError):
    """A package the project requires is not installed in the Python running it."""

    @classmethod
    def from_import_error(cls, error: ModuleNotFoundError) -> MissingDependency | None:
        """The one-line error for a missing requirement, or None when `error` is about another module."""
        import sys

        module = error.name or ""
        package = REQUIREMENTS.get(module.partition(".")[0])
        if package is None:
            return None
        return cls(f"missing dependency: {package} (no module named '{module}' for {sys.executable}); "
                   "install the project's requirements with 'pip install -r requirements.txt' "
                   "or 'make venv'")
