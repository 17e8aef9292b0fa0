"""The two decoders behind one interface: the ONNX model (onnxruntime) and the trained model (torch).

Both keep their KV cache between calls (`forward(input_ids) -> logits`), so one decoding loop
(sampling.decode) drives either, and the exporter's parity check compares them step by step.
"""
from __future__ import annotations

from pathlib import Path
from typing import Protocol

import numpy as np

from ..model_dir.inspection import check_weights_readable
from ..errors import InputError
from ..model_dir.model_files import first_line

SAFETENSORS_FILES = ("model.safetensors", "model.safetensors.index.json")


class Decoder(Protocol):
    """A causal LM that keeps its KV cache between calls (batch size 1)."""

    def forward(self, input_ids: np.ndarray) -> np.ndarray:
        """Logits (1, len, vocab) for `input_ids` (1, len) following everything fed since `reset`."""

    def reset(self) -> None:
        """Forget the cache: the next `forward` starts a new sequence."""


class OnnxDecoder:
    """A hand-written decode step over an InferenceSession with IO binding.

    The KV cache stays in onnxruntime's own buffers (OrtValues fed back as the next step's past), so
    only the logits are copied out. On CPU this measures the same as plain `session.run`; the loop
    itself is what beats ORTModelForCausalLM.generate (about 1.6x, BENCHMARKS.md).
    """

    def __init__(self, session) -> None:
        import onnxruntime as ort

        self.session = session
        self._ort = ort
        inputs = {item.name: item for item in session.get_inputs()}
        self.input_names = set(inputs)
        self.output_names = [item.name for item in session.get_outputs()]
        self.past_names = [name.replace("present", "past_key_values", 1) for name in self.output_names[1:]]
        missing = [name for name in self.past_names if name not in inputs]
        if self.output_names[0] != "logits" or missing or not self.past_names:
            raise ValueError("not a text-generation-with-past model (expected logits and a KV cache)")
        self._empty_past = [self._empty(inputs[name]) for name in self.past_names]
        self._binding = session.io_binding()
        self.reset()

    def _empty(self, item) -> object:
        """A zero-length past tensor of the input's (batch 1, heads, 0, head_dim) shape and dtype."""
        dtype = np.float16 if item.type == "tensor(float16)" else np.float32
        heads, head_dim = item.shape[1], item.shape[3]
        return self._ort.OrtValue.ortvalue_from_numpy(np.zeros((1, heads, 0, head_dim), dtype=dtype))

    def reset(self) -> None:
        """Forget the cache."""
        self.past = list(self._empty_past)
        self.length = 0

    def forward(self, input_ids: np.ndarray) -> np.ndarray:
        """Logits for `input_ids` after the cached positions; the cache grows by their length."""
        binding = self._binding
        binding.clear_binding_inputs()
        binding.clear_binding_outputs()
        total = self.length + input_ids.shape[1]
        feeds = {"input_ids": np.ascontiguousarray(input_ids, dtype=np.int64),
                 "attention_mask": np.ones((1, total), dtype=np.int64),
                 "position_ids": np.arange(self.length, total, dtype=np.int64)[None, :]}
        for name, value in feeds.items():
            if name in self.input_names:
                binding.bind_cpu_input(name, value)
        for name, value in zip(self.past_names, self.past):
            binding.bind_ortvalue_input(name, value)
        for name in self.output_names:
            binding.bind_output(name, "cpu")
        self.session.run_with_iobinding(binding)
        outputs = binding.get_outputs()
        self.past = list(outputs[1:])
        self.length = total
        return outputs[0].numpy()


class TorchDecoder:
    """The trained PyTorch model behind the same interface (CPU, fp32, eval mode)."""

    def __init__(self, model) -> None:
        self.model = model
        self.reset()

    def reset(self) -> None:
        """Forget the cache."""
        self.past = None

    def forward(self, input_ids: np.ndarray) -> np.ndarray:
        """Logits for `input_ids` after the cached positions; the cache grows by their length."""
        import torch

        with torch.inference_mode():
            output = self.model(input_ids=torch.from_numpy(np.ascontiguousarray(input_ids, dtype=np.int64)),
                                past_key_values=self.past, use_cache=True)
        self.past = output.past_key_values
        return output.logits.float().numpy()


def load_torch_model(model_dir: str | Path):
    """The trained model in `model_dir` on CPU in fp32 (safetensors when present; never remote code)."""
    import torch
    from transformers import AutoModelForCausalLM

    path = Path(model_dir)
    check_weights_readable(path)
    use_safetensors = any((path / name).is_file() for name in SAFETENSORS_FILES)
    try:
        # .bin weights load with torch.load(weights_only=True) in transformers >= 4.50 with torch >= 2.6.
        model = AutoModelForCausalLM.from_pretrained(path, use_safetensors=use_safetensors, dtype=torch.float32,
                                                     trust_remote_code=False, local_files_only=True)
    except (OSError, ValueError, RuntimeError, KeyError) as error:
        raise InputError(f"{path}: cannot load the model ({first_line(error)})") from None
    return model.eval()
