"""The offline base: a fresh GPT-2 of a chosen size with a byte-level BPE tokenizer trained on the data."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

EOS_TOKEN = "<|endoftext|>"  # GPT-2's one special token: bos, eos and unk alike


@dataclass(frozen=True)
class ScratchSize:
    """The shape of a scratch GPT-2."""

    n_layer: int
    n_embd: int
    n_head: int
    vocab_size: int  # upper bound; a small corpus yields fewer merges


SCRATCH_SHAPES = {
    "tiny": ScratchSize(n_layer=2, n_embd=64, n_head=4, vocab_size=2000),  # tests, seconds per session
    "small": ScratchSize(n_layer=4, n_embd=256, n_head=4, vocab_size=8000),  # the demo on a laptop CPU
    "base": ScratchSize(n_layer=6, n_embd=768, n_head=12, vocab_size=16000),  # distilgpt2's shape
}


def train_tokenizer(texts: Iterable[str], vocab_size: int):
    """A GPT-2-style fast tokenizer (byte-level BPE) trained on `texts`, pad = eos."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import GPT2TokenizerFast

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(texts, vocab_size=vocab_size, min_frequency=2, special_tokens=[EOS_TOKEN],
                              show_progress=False)
    # The raw tokenizers.Tokenizer, not its ByteLevelBPETokenizer wrapper, whose enable_truncation()
    # lacks the arguments transformers passes (tokenizer(..., truncation=True) failed on a fresh tokenizer).
    tokenizer = GPT2TokenizerFast(tokenizer_object=bpe._tokenizer, bos_token=EOS_TOKEN, eos_token=EOS_TOKEN,
                                  unk_token=EOS_TOKEN)
    tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def build_scratch_model(texts: Iterable[str], size: str, max_length: int, seed: int = 42):
    """(model, tokenizer): a randomly initialised GPT-2 of `size` and a tokenizer trained on `texts`."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel


    shape = SCRATCH_SHAPES[size]
    tokenizer = train_tokenizer(texts, shape.vocab_size)
    config = GPT2Config(vocab_size=len(tokenizer), n_positions=max(max_length, 128), n_embd=shape.n_embd,
                        n_layer=shape.n_layer, n_head=shape.n_head,
                        bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id,
                        pad_token_id=tokenizer.eos_token_id,
                        activation_function="gelu_pytorch_tanh")  # gelu_new as one kernel (start_model.py)
    torch.manual_seed(seed)
    return GPT2LMHeadModel(config), tokenizer
