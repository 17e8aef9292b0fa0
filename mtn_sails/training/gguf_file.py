"""A GGUF file as a base (`--model-name PATH.gguf`): dequantised by transformers' GGUF support, its tokenizer's
special tokens set from the file's own metadata.

transformers 4.57 builds the tokenizer of a llama-architecture GGUF with the wrong eos (`GGUFLlamaConverter`
takes `tokens[bos_token_id]` for it), ignores `tokenizer.ggml.add_bos_token` (so a BOS the model never saw is
added) and drops the pad id; `fix_special_tokens` puts back what the file says, so `apply_chat_template` and
greedy decoding stop at the end of the turn. Nothing here names one model.
"""
from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Iterator

from ..errors import InputError

GGUF_SUFFIX = ".gguf"
_UNLIMITED = int(1e29)  # transformers' model_max_length when a tokenizer names none (about 1e30)
_METADATA_KEYS = ("general.architecture", "tokenizer.ggml.model", "tokenizer.ggml.bos_token_id",
                  "tokenizer.ggml.eos_token_id", "tokenizer.ggml.padding_token_id",
                  "tokenizer.ggml.unknown_token_id", "tokenizer.ggml.add_bos_token",
                  "tokenizer.ggml.add_eos_token", "tokenizer.chat_template")


def is_gguf_file(source: str) -> bool:
    """True when `source` names a .gguf file (not a directory or a hub id)."""
    return source.lower().endswith(GGUF_SUFFIX) and Path(source).is_file()


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The GGUF header keys that decide the tokenizer's special tokens, and the context length."""
    import gguf

    try:
        reader = gguf.GGUFReader(str(path))
    except (ValueError, OSError) as error:
        raise InputError(f"cannot read {path} as a GGUF file: {str(error).splitlines()[0]}") from None
    metadata = {key: reader.fields[key].contents() for key in _METADATA_KEYS if key in reader.fields}
    architecture = metadata.get("general.architecture")
    if architecture and f"{architecture}.context_length" in reader.fields:
        metadata["context_length"] = reader.fields[f"{architecture}.context_length"].contents()
    return metadata


@contextlib.contextmanager
def quiet_conversion() -> Iterator[None]:
    """transformers' dequantisation progress bar and its tokenizer notes (the legacy-behaviour message, which
    itself says a GGUF user may ignore it) kept off the session's output, for this load only."""
    from transformers.utils import logging

    level, bars = logging.get_verbosity(), logging.is_progress_bar_enabled()
    logging.set_verbosity_error()
    logging.disable_progress_bar()
    try:
        yield
    finally:
        logging.set_verbosity(level)
        if bars:
            logging.enable_progress_bar()


def load_gguf(path: str | Path):
    """(model, tokenizer) dequantised to fp32 from a GGUF file; one line (exit 2) for what transformers cannot
    read."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    path = Path(path)
    metadata = read_metadata(path)
    folder, name = str(path.parent), path.name
    try:
        with quiet_conversion():
            tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
            config = AutoConfig.from_pretrained(folder, gguf_file=name)
            model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, config=config)
    except (ValueError, NotImplementedError, KeyError, OSError) as error:
        architecture = metadata.get("general.architecture", "unknown")
        raise InputError(f"cannot load {path} (architecture {architecture}): {str(error).splitlines()[0]}; "
                         "docs/MODELS.md lists the GGUF architectures and quantisations that load") from None
    fix_special_tokens(tokenizer, model.config, metadata)
    return model, tokenizer


def _token_id(metadata: dict, key: str, config: Any, attribute: str, vocabulary: int) -> int | None:
    """A special token's id: the file's, else the model config's (first of a list), when inside the vocabulary."""
    value = metadata.get(f"tokenizer.ggml.{key}")
    if value is None:
        value = getattr(config, attribute, None)
        value = value[0] if isinstance(value, (list, tuple)) and value else value
    return int(value) if isinstance(value, int) and 0 <= value < vocabulary else None


def fix_special_tokens(tokenizer, config, metadata: dict) -> dict[str, Any]:
    """Set the tokenizer's bos/eos/pad/unk, BOS insertion, chat template and length from the file's metadata;
    returns what changed. Survives save_pretrained / from_pretrained."""
    vocabulary = len(tokenizer)
    ids = {"bos_token": _token_id(metadata, "bos_token_id", config, "bos_token_id", vocabulary),
           "eos_token": _token_id(metadata, "eos_token_id", config, "eos_token_id", vocabulary),
           "unk_token": _token_id(metadata, "unknown_token_id", config, "unk_token_id", vocabulary),
           "pad_token": _token_id(metadata, "padding_token_id", config, "pad_token_id", vocabulary)}
    changes: dict[str, Any] = {name: tokenizer.convert_ids_to_tokens(token) for name, token in ids.items()
                               if token is not None and getattr(tokenizer, f"{name}_id") != token}
    if changes:
        tokenizer.add_special_tokens(changes)  # tokens of the vocabulary: no new ids, no resized embeddings
    add_bos = metadata.get("tokenizer.ggml.add_bos_token")
    if add_bos is not None and isinstance(getattr(type(tokenizer), "add_bos_token", None), property):
        tokenizer.add_bos_token = bool(add_bos)  # the setter rebuilds the post-processor
        tokenizer.init_kwargs["add_bos_token"] = bool(add_bos)  # saved in tokenizer_config.json
        changes["add_bos_token"] = bool(add_bos)
    if not getattr(tokenizer, "chat_template", None) and metadata.get("tokenizer.chat_template"):
        tokenizer.chat_template = metadata["tokenizer.chat_template"]
        changes["chat_template"] = "from the file"
    if metadata.get("tokenizer.ggml.model") == "gpt2" and tokenizer.clean_up_tokenization_spaces:
        # byte-level BPE decodes losslessly; the converter's clean-up would change decoded answers
        tokenizer.clean_up_tokenization_spaces = False
        tokenizer.init_kwargs["clean_up_tokenization_spaces"] = False
        changes["clean_up_tokenization_spaces"] = False
    context = metadata.get("context_length") or getattr(config, "max_position_embeddings", None)
    if context and tokenizer.model_max_length >= _UNLIMITED:
        tokenizer.model_max_length = int(context)
        tokenizer.init_kwargs["model_max_length"] = int(context)
    tokenizer.padding_side = "right"
    for name in ("bos_token", "eos_token", "pad_token"):
        if ids[name] is not None and getattr(config, f"{name}_id", None) is None:
            setattr(config, f"{name}_id", ids[name])
    return changes
