"""What a model directory holds beside its weights, read without torch: tokenizer, context length, JSON.

Shared by generate (ONNX or trained directory) and export (the trained directory it checks against).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..errors import InputError

DEFAULT_CONTEXT = 1024  # GPT-2's n_positions, for a config that does not say


def first_line(error: BaseException) -> str:
    """`Type: first line of the message`: a library's error shortened to fit in one terminal line."""
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0]}" if lines else type(error).__name__


def read_json(path: Path) -> dict:
    """The JSON object in `path`, or {} when the file is missing, unreadable or not an object."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


@dataclass(frozen=True)
class TextTokenizer:
    """Encode and decode with the tokenizer stored beside a model."""

    encode: Callable[[str], list[int]]  # no special tokens added, as training tokenises
    decode: Callable[[list[int]], str]  # special tokens skipped, spacing left exactly as generated
    eos_token_id: int | None


def _eos_token_id(directory: Path, token_to_id: Callable[[str], int | None]) -> int | None:
    """The eos id: the tokenizer's eos token, else config.json's eos_token_id."""
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        token = read_json(directory / name).get("eos_token")
        token = token.get("content") if isinstance(token, dict) else token
        if isinstance(token, str) and token_to_id(token) is not None:
            return token_to_id(token)
    eos = read_json(directory / "config.json").get("eos_token_id")
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
        raise InputError(f"{directory} ({option}) has no usable tokenizer ({first_line(error)}); "
                         "export or train it again with mtn-sails") from None
    return TextTokenizer(lambda text: slow(text, add_special_tokens=False)["input_ids"],
                         lambda ids: slow.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False),
                         slow.eos_token_id)


def context_length(model_dir: str | Path) -> int:
    """How many positions the model reads (GPT-2's n_positions), from its config.json."""
    config = read_json(Path(model_dir) / "config.json")
    for key in ("n_positions", "max_position_embeddings", "n_ctx"):
        if isinstance(config.get(key), int):
            return config[key]
    return DEFAULT_CONTEXT
