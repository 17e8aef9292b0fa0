"""generate: stream a completion from the ONNX model (onnxruntime, default) or the trained model (torch).

The parts live in their own modules: decoders.py (the two backends behind one interface),
decode_loop.py (the decoding loop), streamer.py (text to the terminal), model_dir/model_files.py (tokenizer
and context), onnx_session.py (file names and the session). This module puts them together for one prompt.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from ..data.chats import read_tools_file
from ..config import GenerateConfig
from ..console import warn
from .decoders import Decoder, OnnxDecoder, TorchDecoder, load_torch_model
from ..model_dir.inspection import inspect_model_dir
from ..errors import InputError
from ..model_dir.model_files import TextTokenizer, context_length, first_line, load_tokenizer
from .onnx_session import model_file, onnx_session
from .onnx_session import ONNX_FILE, QUANTIZED_ONNX_FILE, physical_cores  # noqa: F401  (benchmarks import them here)
from .decode_loop import decode
from .streamer import TextStreamer
from ..data.template import PromptTemplate, template_beside


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
        graph = model_file(directory, config.int8)
        if not graph.is_file():
            advice = "; export with --quantize for --int8" if config.int8 else ""
            raise _missing_model_error(config, f"{graph.relative_to(directory).as_posix()} not found{advice}")
        import onnxruntime  # noqa: F401  (outside the try: a missing package is not a broken model)

        try:
            return OnnxDecoder(onnx_session(graph))
        except Exception as error:  # onnxruntime raises its own exception types for unreadable models
            raise InputError(f"{graph} (--onnx-output): cannot load ({first_line(error)}); "
                             "re-export it with `mtn-sails export`") from None
    state = inspect_model_dir(directory)
    if not state.is_valid():
        raise _missing_model_error(config, f"missing {', '.join(state.missing) or 'model files'}")
    return TorchDecoder(load_torch_model(directory))


def prompt_text(config: GenerateConfig, template: PromptTemplate, tools: list[dict] | None = None) -> str:
    """The text the model is fed: the prompt through the stored template (with `tools` offered), or with
    --raw as it is (after the BOS the tokenizer adds, as in training)."""
    if config.raw:
        return template.with_bos(config.prompt)
    return template.prompt(config.prompt, tools=tools)


def stop_token_id(tokenizer: TextTokenizer, template: PromptTemplate) -> int | None:
    """Where an answer ends: a chat template's end-of-turn token (a session makes it the eos; a model no session
    trained may name another eos), else the tokenizer's eos."""
    end = getattr(template, "end_of_turn", None)
    ids = tokenizer.encode(end) if end else []
    return ids[0] if len(ids) == 1 else tokenizer.eos_token_id


def generate(config: GenerateConfig, stream: TextIO = sys.stdout) -> GenerationResult:
    """Stream the completion of `config.prompt` to `stream`; status and speed go to stderr."""
    tools = read_tools_file(config.tools) if config.tools else None
    decoder = load_decoder(config)
    option = "--onnx-output" if config.backend == "onnx" else "--output-dir"
    directory = config.model_dir()
    tokenizer = load_tokenizer(directory, option)
    template = template_beside(directory)
    text = prompt_text(config, template, tools)
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
    eos = stop_token_id(tokenizer, template)
    decoded = decode(decoder, prompt_ids, max_new_tokens, eos, config.temperature, config.top_p, config.seed,
                     on_token=streamer.put)
    completion = streamer.end()
    backend = "onnxruntime" if config.backend == "onnx" else "torch"
    result = GenerationResult(completion, len(prompt_ids), len(decoded.token_ids), decoded.seconds, backend,
                              decoded.stopped_at_eos)
    warn(f"⚡ {result.new_tokens} tokens in {result.seconds:.2f} s ({result.tokens_per_second():.1f} tokens/s, "
         f"{backend}{', stopped at end of text' if result.stopped_at_eos else ''})")
    return result
