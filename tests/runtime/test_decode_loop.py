"""sampling: token choice and the decoding loop, on a toy numpy decoder (no model needed)."""
from __future__ import annotations

import numpy as np

from mtn_sails.runtime.decode_loop import decode, pick_token

VOCAB = 6


class BigramDecoder:
    """A real, if tiny, causal LM: the next token's logits depend on the last token fed (batch 1)."""

    def __init__(self, table: np.ndarray) -> None:
        self.table = table
        self.calls: list[list[int]] = []
        self.resets = 0

    def reset(self) -> None:
        self.resets += 1

    def forward(self, input_ids: np.ndarray) -> np.ndarray:
        self.calls.append(input_ids[0].tolist())
        return self.table[input_ids[0]][None, :, :]


def chain_table() -> np.ndarray:
    """Greedy decoding walks 0 -> 1 -> 2 -> 3 -> 4 -> 5 -> 0 ..."""
    table = np.zeros((VOCAB, VOCAB), dtype=np.float32)
    for token in range(VOCAB):
        table[token, (token + 1) % VOCAB] = 5.0
    return table


def test_pick_token_greedy_and_nucleus():
    logits = np.array([0.0, 3.0, 1.0, 2.9], dtype=np.float32)
    rng = np.random.default_rng(0)
    assert pick_token(logits, 0.0, 1.0, rng) == 1
    assert all(pick_token(logits, 1.0, 1e-6, rng) == 1 for _ in range(20))  # nucleus of one token
    draws = {pick_token(logits, 1.0, 0.9, rng) for _ in range(200)}
    assert draws <= {1, 3, 2} and {1, 3} <= draws


def test_greedy_decoding_feeds_the_prompt_once_then_one_token_per_step():
    decoder = BigramDecoder(chain_table())
    streamed: list[int] = []
    decoded = decode(decoder, [4, 0], max_new_tokens=4, eos_token_id=None, on_token=streamed.append)
    assert decoded.token_ids == streamed == [1, 2, 3, 4]
    assert not decoded.stopped_at_eos and decoded.seconds >= 0
    assert decoder.resets == 1
    # the prompt whole, then each new token but the last (its logits would never be used)
    assert decoder.calls == [[4, 0], [1], [2], [3]]


def test_eos_stops_decoding_and_is_not_returned():
    decoder = BigramDecoder(chain_table())
    decoded = decode(decoder, [0], max_new_tokens=10, eos_token_id=3)
    assert decoded.token_ids == [1, 2]
    assert decoded.stopped_at_eos


def test_the_same_seed_draws_the_same_tokens():
    table = np.random.default_rng(1).normal(size=(VOCAB, VOCAB)).astype(np.float32)
    runs = [decode(BigramDecoder(table), [0], 30, None, temperature=1.0, top_p=0.9, seed=seed).token_ids
            for seed in (3, 3, 4)]
    assert runs[0] == runs[1]
    assert runs[0] != runs[2]
    greedy = decode(BigramDecoder(table), [0], 30, None).token_ids
    assert runs[0] != greedy  # sampling at temperature 1 does not collapse to greedy on flat logits
