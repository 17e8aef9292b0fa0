"""Inference: stream a completion from the ONNX model (onnxruntime, default) or the trained model (torch).

Both backends run behind one small interface (`forward(input_ids) -> logits`, keeping the KV cache
between calls) and share one decoding loop, so greedy decoding gives the same tokens on both, and
seeded sampling draws from the same numbers. The exporter's parity check drives the same decoders.
"""
from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Protocol, TextIO

import numpy as np

from .config import GenerateConfig
from .console import can_encode, warn
from .detector import check_weights_readable, inspect_model_dir
from .errors import InputError
from .template import PromptTemplate

ONNX_FILE = "model.onnx"  # optimum's name for the (fp32) model with KV cache
QUANTIZED_ONNX_FILE = "model_quantized.onnx"  # the int8 model, optimum's name for it too
SAFETENSORS_FILES = ("model.safetensors", "model.safetensors.index.json")
DEFAULT_CONTEXT = 1024  # GPT-2's n_positions, for a config that does not say


class Decoder(Protocol):
    """A causal LM that keeps its KV cache between calls (batch size 1)."""

    def forward(self, input_ids: np.ndarray) -> np.ndarray:
        """Logits (1, len, vocab) for `input_ids` (1, len) following everything fed since `reset`."""

    def reset(self) -> None:
        """Forget the cache: the next `forward` starts a new sequence."""


def physical_cores() -> int:
    """CPU cores this process may use, hyper-threads not counted (the right intra-op thread count)."""
    import psutil

    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, min(usable, psutil.cpu_count(logical=False) or usable))


def onnx_session(model_path: str | Path, threads: int | None = None):
    """An onnxruntime CPU session with the settings benchmarks/generate_speed.py found fastest."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # One thread per physical core: +30-50% over one thread in BENCHMARKS.md ("Generation speed
    # (CPU)"); hyper-threads share a core's memory bandwidth and vector units, so they are not counted.
    options.intra_op_num_threads = threads or physical_cores()
    options.log_severity_level = 3  # errors only: ORT's graph-optimiser notes are not for users
    return ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])


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
        self.past = list(self._empty_past)
        self.length = 0

    def forward(self, input_ids: np.ndarray) -> np.ndarray:
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
        self.past = None

    def forward(self, input_ids: np.ndarray) -> np.ndarray:
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
        raise InputError(f"{path}: cannot load the model ({_first_line(error)})") from None
    return model.eval()


@dataclass(frozen=True)
class TextTokenizer:
    """Encode and decode with the tokenizer stored beside a model."""

    encode: Callable[[str], list[int]]  # no special tokens added, as training tokenises
    decode: Callable[[list[int]], str]  # special tokens skipped, spacing left exactly as generated
    eos_token_id: int | None


def _json(path: Path) -> dict:
    import json

    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _eos_token_id(directory: Path, token_to_id: Callable[[str], int | None]) -> int | None:
    """The eos id: the tokenizer's eos token, else config.json's eos_token_id."""
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        token = _json(directory / name).get("eos_token")
        token = token.get("content") if isinstance(token, dict) else token
        if isinstance(token, str) and token_to_id(token) is not None:
            return token_to_id(token)
    eos = _json(directory / "config.json").get("eos_token_id")
    return eos if isinstance(eos, int) else None


def load_tokenizer(model_dir: str | Path, option: str) -> TextTokenizer:
    """The tokenizer stored beside a model; an InputError naming `option` when there is none.

    A tokenizer.json is read with the `tokenizers` library alone (a quarter of a second, where
    importing transformers takes seconds and pulls in torch); other tokenizers go through AutoTokenizer.
    """
    directory = Path(model_dir)
    try:
        if (directory / "tokenizer.json").is_file():
            from tokenizers import Tokenizer

            fast = Tokenizer.from_file(str(directory / "tokenizer.json"))
            return TextTokenizer(lambda text: fast.encode(text, add_special_tokens=False).ids,
                                 lambda ids: fast.decode(ids, skip_special_tokens=True),
                                 _eos_token_id(directory, fast.token_to_id))
        from transformers import AutoTokenizer

        slow = AutoTokenizer.from_pretrained(directory, trust_remote_code=False, local_files_only=True)
    except Exception as error:  # tokenizers and transformers raise many types for a broken file
        raise InputError(f"{directory} ({option}) has no usable tokenizer ({_first_line(error)}); "
                         "export or train it again with mtn-sails") from None
    return TextTokenizer(lambda text: slow(text, add_special_tokens=False)["input_ids"],
                         lambda ids: slow.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False),
                         slow.eos_token_id)


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0]}" if text else type(error).__name__


def context_length(model_dir: str | Path) -> int:
    """How many positions the model reads (GPT-2's n_positions), from its config.json."""
    config = _json(Path(model_dir) / "config.json")
    for key in ("n_positions", "max_position_embeddings", "n_ctx"):
        if isinstance(config.get(key), int):
            return config[key]
    return DEFAULT_CONTEXT


def pick_token(logits: np.ndarray, temperature: float, top_p: float, rng: np.random.Generator) -> int:
    """Greedy (temperature 0) or nucleus sampling from one position's logits."""
    if temperature == 0:
        return int(np.argmax(logits))
    scaled = logits.astype(np.float64) / temperature
    probs = np.exp(scaled - scaled.max())
    probs /= probs.sum()
    order = np.argsort(-probs, kind="stable")
    if top_p < 1.0:
        cumulative = np.cumsum(probs[order])
        keep = int(np.searchsorted(cumulative, top_p) + 1)  # the smallest set holding top_p of the mass
        order = order[:keep]
    kept = probs[order] / probs[order].sum()
    return int(order[rng.choice(len(order), p=kept)])


@dataclass(frozen=True)
class Decoded:
    """Tokens produced by one decoding run."""

    token_ids: list[int]
    stopped_at_eos: bool
    seconds: float


def decode(decoder: Decoder, prompt_ids: list[int], max_new_tokens: int, eos_token_id: int | None,
           temperature: float = 0.0, top_p: float = 1.0, seed: int = 42,
           on_token: Callable[[int], None] | None = None) -> Decoded:
    """Generate up to `max_new_tokens` after the prompt, stopping at eos (which is not returned)."""
    rng = np.random.default_rng(seed)
    started = time.perf_counter()
    decoder.reset()
    logits = decoder.forward(np.array([prompt_ids], dtype=np.int64))[0, -1]
    produced: list[int] = []
    stopped = False
    for step in range(max_new_tokens):
        token = pick_token(logits, temperature, top_p, rng)
        if token == eos_token_id:
            stopped = True
            break
        produced.append(token)
        if on_token is not None:
            on_token(token)
        if step + 1 < max_new_tokens:
            logits = decoder.forward(np.array([[token]], dtype=np.int64))[0, -1]
    return Decoded(produced, stopped, time.perf_counter() - started)


class TextStreamer:
    """Writes decoded text to a stream as tokens arrive (like transformers' TextStreamer, prompt skipped).

    The whole completion is decoded each time and only the new characters are written; text ending
    in a partial UTF-8 character (U+FFFD) waits for the token that completes it.
    """

    def __init__(self, tokenizer: TextTokenizer, stream: TextIO) -> None:
        self.tokenizer = tokenizer
        self.stream = stream
        self.token_ids: list[int] = []
        self.written = 0

    def text(self) -> str:
        """The completion so far."""
        return self.tokenizer.decode(self.token_ids)

    def put(self, token_id: int) -> None:
        self.token_ids.append(token_id)
        text = self.text()
        if not text.endswith("\ufffd"):
            self._write(text[self.written:])
            self.written = len(text)

    def end(self) -> str:
        """Write what is left and a final newline; returns the whole completion."""
        text = self.text()
        self._write(text[self.written:] + "\n")
        self.written = len(text)
        return text

    def _write(self, piece: str) -> None:
        if not piece:
            return
        encoding = getattr(self.stream, "encoding", None)  # None: an in-memory text stream takes any text
        if encoding and not can_encode(piece, self.stream):
            piece = piece.encode(encoding, "replace").decode(encoding)
        self.stream.write(piece)
        self.stream.flush()


@dataclass(frozen=True)
class GenerationResult:
    """What one `generate` call produced."""

    text: str
    prompt_tokens: int
    new_tokens: int
    seconds: float  # decoding time, prompt pass included, model loading not
    backend: str
    stopped_at_eos: bool

    def tokens_per_second(self) -> float:
        """New tokens per second of decoding."""
        return self.new_tokens / self.seconds if self.seconds > 0 else 0.0


def _missing_model_error(config: GenerateConfig, detail: str) -> InputError:
    if config.backend == "onnx":
        return InputError(f"no ONNX model in {config.onnx_output} (--onnx-output): {detail}; make one with "
                          "`mtn-sails pipeline --data-file FILE` or `mtn-sails export`")
    return InputError(f"no trained model in {config.output_dir} (--output-dir): {detail}; train one with "
                      "`mtn-sails pipeline --data-file FILE` or `mtn-sails train --data-file FILE`")


def load_decoder(config: GenerateConfig) -> Decoder:
    """The backend's decoder for the model directory the config names."""
    directory = Path(config.model_dir())
    if not directory.is_dir():
        raise _missing_model_error(config, "the directory does not exist")
    if config.backend == "onnx":
        model_file = directory / (QUANTIZED_ONNX_FILE if config.int8 else ONNX_FILE)
        if not model_file.is_file():
            advice = "; export with --quantize for --int8" if config.int8 else ""
            raise _missing_model_error(config, f"{model_file.name} not found{advice}")
        try:
            return OnnxDecoder(onnx_session(model_file))
        except Exception as error:  # onnxruntime raises its own exception types for unreadable models
            raise InputError(f"{model_file} (--onnx-output): cannot load ({_first_line(error)}); "
                             "re-export it with `mtn-sails export`") from None
    state = inspect_model_dir(directory)
    if not state.is_valid():
        raise _missing_model_error(config, f"missing {', '.join(state.missing) or 'model files'}")
    return TorchDecoder(load_torch_model(directory))


def generate(config: GenerateConfig, stream: TextIO = sys.stdout) -> GenerationResult:
    """Stream the completion of `config.prompt` to `stream`; status and speed go to stderr."""
    decoder = load_decoder(config)
    option = "--onnx-output" if config.backend == "onnx" else "--output-dir"
    directory = config.model_dir()
    tokenizer = load_tokenizer(directory, option)
    text = config.prompt if config.raw else PromptTemplate.load(directory).prompt(config.prompt)
    prompt_ids = tokenizer.encode(text)
    if not prompt_ids:
        raise InputError("--prompt is empty; give the model something to answer")
    limit = context_length(directory)
    if len(prompt_ids) >= limit:
        raise InputError(f"--prompt is {len(prompt_ids)} tokens with the template; the model reads at most "
                         f"{limit}: shorten it")
    max_new_tokens = min(config.max_new_tokens, limit - len(prompt_ids))
    if max_new_tokens < config.max_new_tokens:
        warn(f"⚠️  Only {max_new_tokens} new tokens fit in the model's {limit}-token context")
    streamer = TextStreamer(tokenizer, stream)
    eos = tokenizer.eos_token_id
    decoded = decode(decoder, prompt_ids, max_new_tokens, eos, config.temperature, config.top_p, config.seed,
                     on_token=streamer.put)
    completion = streamer.end()
    backend = "onnxruntime" if config.backend == "onnx" else "torch"
    result = GenerationResult(completion, len(prompt_ids), len(decoded.token_ids), decoded.seconds, backend,
                              decoded.stopped_at_eos)
    warn(f"⚡ {result.new_tokens} tokens in {result.seconds:.2f} s ({result.tokens_per_second():.1f} tokens/s, "
         f"{backend}{', stopped at end of text' if result.stopped_at_eos else ''})")
    return result
