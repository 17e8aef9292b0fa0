"""Scoring with little waste, shared by training, evaluation and the probe: the output layer computed only
where a token is predicted, and batches of similar lengths.

Over GPT-2's 50,257-token vocabulary the output layer is a large share of a forward pass, and prompt tokens
and padding predict nothing that is scored, so their logits are never computed.
"""
from __future__ import annotations

import contextlib
import math
from typing import Any, Sequence

IGNORE_INDEX = -100  # label value the loss ignores (prompt tokens, padding)


def label_positions(labels) -> Any:
    """(batch, length) bool: the positions whose next token is a label (not IGNORE_INDEX)."""
    import torch


    mask = torch.zeros_like(labels, dtype=torch.bool)
    mask[:, :-1] = labels[:, 1:] != IGNORE_INDEX
    return mask


@contextlib.contextmanager
def head_on_positions(model, mask):
    """For the block, the model's output layer reads only the hidden states at `mask` (batch, length), so
    its logits are (positions, vocabulary); any other input passes through."""
    def keep(module, args):
        hidden = args[0]
        return (hidden[mask],) + tuple(args[1:]) if hidden.dim() == 3 and hidden.shape[:2] == mask.shape else None

    handle = model.get_output_embeddings().register_forward_pre_hook(keep)
    try:
        yield
    finally:
        handle.remove()


def length_sorted_batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Positions in batches of `batch_size`, shortest first: each batch pads only to its own longest."""
    order = sorted(range(len(lengths)), key=lambda position: lengths[position])
    return [order[start:start + batch_size] for start in range(0, len(order), batch_size)]


def perplexity(loss: float | None) -> float | None:
    """exp(loss), inf on overflow, None without a loss."""
    if loss is None:
        return None
    try:
        return math.exp(loss)
    except OverflowError:
        return float("inf")
