"""The decoding loop any Decoder runs: greedy or nucleus-sampled tokens until eos or the token budget.

Seeded sampling draws from numpy's generator, so the same seed gives the same text on both backends.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import numpy as np

from .decoders import Decoder


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
