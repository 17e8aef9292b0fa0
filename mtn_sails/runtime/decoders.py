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


SHARED_CACHE = "mtn_sails.cache_in_place"  # graph metadata: its attention writes the KV cache into the past buffers,
# and its logits come for the last position only (fused_graph.for_decoding)
FIRST_CAPACITY = 256  # cache positions a shared cache starts with; it doubles when a sequence outgrows it


class OnnxDecoder:
    """A hand-written decode step over an InferenceSession with IO binding.

    The KV cache stays in onnxruntime's own buffers (OrtValues fed back as the next step's past), so
    only the logits are copied out. On CPU this measures the same as plain `session.run`; the loop
    itself is what beats ORTModelForCausalLM.generate (about 1.6x, BENCHMARKS.md). A graph whose attention
    is GroupQueryAttention (the fused int8 form, marked SHARED_CACHE) gets the cache as fixed buffers bound once as
    both past and present, which the op fills in place, as onnxruntime-genai runs it: no copy of the cache a step.
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
        self._past_items = [inputs[name] for name in self.past_names]
        self._empty_past = [self._empty(item) for item in self._past_items]
        self.shared = session.get_modelmeta().custom_metadata_map.get(SHARED_CACHE) == "1"
        self._cache: list[np.ndarray] = []  # the shared cache's buffers (batch 1, heads, capacity, head_dim)
        self._step_logits, self._step_value = None, None  # a shared cache's one-token logits, bound in place
        logits = session.get_outputs()[0]
        if self.shared and isinstance(logits.shape[2], int):
            self._step_logits = np.zeros((1, 1, logits.shape[2]), dtype=self._dtype(logits))
            self._step_value = ort.OrtValue.ortvalue_from_numpy(self._step_logits)
        self._binding = session.io_binding()
        if self.shared and self._step_value is not None:  # bound first: get_outputs()[0] stays the logits
            self._binding.bind_ortvalue_output("logits", self._step_value)
        elif self.shared:
            self._binding.bind_output("logits", "cpu")
        self.reset()

    def _empty(self, item) -> object:
        """A zero-length past tensor of the input's (batch 1, heads, 0, head_dim) shape and dtype."""
        return self._ort.OrtValue.ortvalue_from_numpy(np.zeros(self._past_shape(item, 0), dtype=self._dtype(item)))

    @staticmethod
    def _past_shape(item, positions: int) -> tuple[int, int, int, int]:
        """The (batch 1, heads, positions, head_dim) shape of the past input `item`."""
        return 1, item.shape[1], positions, item.shape[3]

    @staticmethod
    def _dtype(item) -> type:
        """The numpy type of a graph input or output."""
        return np.float16 if item.type == "tensor(float16)" else np.float32

    def reset(self) -> None:
        """Forget the cache."""
        self.past = list(self._empty_past)
        self.length = 0

    def forward(self, input_ids: np.ndarray) -> np.ndarray:
        """Logits for `input_ids` after the cached positions; the cache grows by their length."""
        if self.shared:
            return self._forward_in_place(input_ids)
        binding = self._binding
        binding.clear_binding_inputs()
        binding.clear_binding_outputs()
        total = self.length + input_ids.shape[1]
        self._bind_positions(input_ids, total)
        for name, value in zip(self.past_names, self.past):
            binding.bind_ortvalue_input(name, value)
        for name in self.output_names:
            binding.bind_output(name, "cpu")
        self.session.run_with_iobinding(binding)
        outputs = binding.get_outputs()
        self.past = list(outputs[1:])
        self.length = total
        return outputs[0].numpy()

    def _bind_positions(self, input_ids: np.ndarray, total: int) -> None:
        """Bind the new tokens, the attention mask over all `total` positions and their position ids."""
        feeds = {"input_ids": np.ascontiguousarray(input_ids, dtype=np.int64),
                 "attention_mask": np.ones((1, total), dtype=np.int64),
                 "position_ids": np.arange(self.length, total, dtype=np.int64)[None, :]}
        for name, value in feeds.items():
            if name in self.input_names:
                self._binding.bind_cpu_input(name, value)

    def _forward_in_place(self, input_ids: np.ndarray) -> np.ndarray:
        """forward for a SHARED_CACHE graph: only the tokens and the mask are bound a step; the logits of the last
        position land in one (1, 1, vocab) buffer bound once."""
        total = self.length + input_ids.shape[1]
        if not self._cache or total > self._cache[0].shape[2]:
            self._grow(total)
        self._bind_positions(input_ids, total)
        self.session.run_with_iobinding(self._binding)
        self.length = total
        return self._step_logits.copy() if self._step_logits is not None else self._binding.get_outputs()[0].numpy()

    def _grow(self, positions: int) -> None:
        """Fixed cache buffers for at least `positions` positions, the cached ones copied over, bound as both
        each layer's past and its present."""
        capacity = max(FIRST_CAPACITY, 2 * self._cache[0].shape[2] if self._cache else 0)
        while capacity < positions:
            capacity *= 2
        grown = [np.zeros(self._past_shape(item, capacity), dtype=self._dtype(item)) for item in self._past_items]
        for old, new in zip(self._cache, grown):
            new[:, :, :self.length] = old[:, :, :self.length]
        self._cache = grown
        for past, present, buffer in zip(self.past_names, self.output_names[1:], grown):
            value = self._ort.OrtValue.ortvalue_from_numpy(buffer)
            self._binding.bind_ortvalue_input(past, value)
            self._binding.bind_ortvalue_output(present, value)


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
