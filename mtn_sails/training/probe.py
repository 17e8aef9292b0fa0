"""Answer recall of a session's question/answer records: greedy exact match and answer log-probability.

Perplexity alone does not show lost facts (it can improve while recall falls to zero), so each session
keeps a small probe of its trained pairs and chats; after every later session the probe is answered
again. Recall is greedy exact match, the decoding `mtn-sails generate` uses (stored template, greedy,
stop at eos), found in one teacher-forced pass: greedy decoding gives exactly the answer's tokens and
stops if and only if, with the answer fed in, the most likely next token is the answer's own at every
position and eos after it. That costs one forward pass per batch instead of one per generated token
(a model that knows nothing otherwise talks to its token cap on every question). torch is imported by
the functions that score, so `ProbeScore` and `probe_records` are cheap to import.
"""
from __future__ import annotations

import contextlib
import random
from dataclasses import dataclass, replace
from typing import Iterable, Sequence

from ..data.files import Record
from .scoring import head_on_positions, label_positions, length_sorted_batches
from ..data.template import PromptTemplate

PROBE_LIMIT = 64  # records per session: one teacher-forced pass over 64 answers takes well under a second


@dataclass(frozen=True)
class ProbeScore:
    """How well a model reproduces a probe's answers."""

    recall: float | None  # fraction of probe answers reproduced exactly (None: no pairs)
    answer_logprob: float | None  # mean log-probability per answer token (teacher-forced)
    count: int


@dataclass(frozen=True)
class ProbeItem:
    """One probe record as token ids: the prompt the model sees and the answer it should give."""

    prompt_ids: list[int]
    answer_ids: list[int]  # the answer's tokens and the eos that ends it
    answer: str


def is_probe_record(record: Record) -> bool:
    """True for records with an answer to check: pairs, and chats ending in an assistant turn."""
    if record.kind == "pair":
        return bool(record.response.strip())
    return record.kind == "chat" and bool(record.turns) and record.turns[-1].role == "assistant" \
        and bool(record.turns[-1].content.strip())


def probe_records(records: Iterable[Record], limit: int = PROBE_LIMIT, seed: int = 42) -> list[Record]:
    """Up to `limit` question/answer records (pairs, chats ending in an assistant turn), drawn with `seed`."""
    candidates = [record for record in records if is_probe_record(record)]
    if len(candidates) <= limit:
        return candidates
    chosen = sorted(random.Random(seed).sample(range(len(candidates)), limit))
    return [candidates[i] for i in chosen]


def probe_items(tokenizer, template: PromptTemplate, records: Sequence[Record]) -> list[ProbeItem]:
    """Each record's prompt and answer as the training tokenisation builds them (eos after each turn)."""
    from .tokenizing import token_ids

    eos = tokenizer.eos_token_id
    rendered = [template.render(record) for record in records]
    texts = [segment.text for segments in rendered for segment in segments]
    ids = token_ids(tokenizer, texts) if texts else []
    items, position = [], 0
    for record, segments in zip(records, rendered):
        segment_ids = ids[position:position + len(segments)]
        position += len(segments)
        prompt: list[int] = []
        for segment, piece in zip(segments[:-1], segment_ids[:-1]):
            prompt += list(piece) + ([eos] if segment.ends_turn else [])
        items.append(ProbeItem(prompt, list(segment_ids[-1]) + [eos], segments[-1].text))
    return items


@contextlib.contextmanager
def scoring(model):
    """The model in eval mode without gradients for the block; its training mode is restored after."""
    import torch

    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield model
    finally:
        model.train(was_training)


def _context_length(model) -> int | None:
    config = model.config
    return getattr(config, "n_positions", None) or getattr(config, "max_position_embeddings", None)


def _fit(prompt: list[int], room: int) -> list[int]:
    """The prompt's end when it and the tokens after it would not fit the model's positions."""
    return prompt[-room:] if room > 0 and len(prompt) > room else prompt


@dataclass(frozen=True)
class LabelScore:
    """How a model scores one sequence's label tokens, teacher-forced."""

    logprob: float  # summed over the label tokens
    count: int
    greedy: bool  # the most likely next token is the label at every label position
    weakest: float  # the least likely label token's log-probability (0.0 without labels)


def answer_scores(model, tokenizer, items: Sequence[ProbeItem], batch_size: int = 16) -> list[LabelScore]:
    """Each item's answer tokens (and eos) scored with its prompt before them; an answer the model's
    positions cannot hold whole after its prompt is never a greedy match."""
    from .scoring import IGNORE_INDEX

    limit = _context_length(model)
    sequences, labels, whole = [], [], []
    for item in items:
        answer = item.answer_ids[:limit - 1] if limit else item.answer_ids
        prompt = _fit(item.prompt_ids, (limit - len(answer)) if limit else 0)
        sequences.append(prompt + answer)
        labels.append([IGNORE_INDEX] * len(prompt) + answer)
        whole.append(len(answer) == len(item.answer_ids) and bool(prompt))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    scores = label_scores(model, sequences, labels, pad, batch_size)
    return [score if fits else replace(score, greedy=False) for score, fits in zip(scores, whole)]


def label_scores(model, sequences: Sequence[Sequence[int]], labels: Sequence[Sequence[int]], pad_id: int,
                 batch_size: int = 16) -> list[LabelScore]:
    """Each sequence's label tokens (IGNORE_INDEX elsewhere) scored teacher-forced, in right-padded batches of
    similar lengths."""
    import torch

    from .scoring import IGNORE_INDEX

    device = next(model.parameters()).device
    results: dict[int, LabelScore] = {}
    with scoring(model):
        for chosen in length_sorted_batches([len(s) for s in sequences], batch_size):
            batch, batch_labels = [sequences[i] for i in chosen], [labels[i] for i in chosen]
            longest = max(len(s) for s in batch)
            ids = torch.tensor([list(s) + [pad_id] * (longest - len(s)) for s in batch], device=device)
            mask = torch.tensor([[1] * len(s) + [0] * (longest - len(s)) for s in batch], device=device)
            padded = torch.tensor([list(l) + [IGNORE_INDEX] * (longest - len(l)) for l in batch_labels],
                                  device=device)
            positions = label_positions(padded)
            with head_on_positions(model, positions):
                logits = model(input_ids=ids, attention_mask=mask).logits.float()  # (label positions, vocabulary)
            target = padded[:, 1:][positions[:, :-1]]
            picked = torch.log_softmax(logits, dim=-1).gather(-1, target.unsqueeze(-1)).squeeze(-1)
            missed = (logits.argmax(dim=-1) != target).long()
            rows = positions.nonzero()[:, 0]
            count = positions.sum(dim=1)
            logprob = torch.zeros(len(batch), device=device).index_add_(0, rows, picked)
            misses = torch.zeros(len(batch), dtype=torch.long, device=device).index_add_(0, rows, missed)
            weakest = torch.zeros(len(batch), device=device).scatter_reduce_(0, rows, picked, "amin",
                                                                            include_self=False)
            results.update({position: LabelScore(float(logprob[row]), int(count[row]),
                                                 bool(count[row] > 0 and misses[row] == 0), float(weakest[row]))
                            for row, position in enumerate(chosen)})
    return [results[position] for position in range(len(sequences))]


def score_probe(model, tokenizer, template: PromptTemplate, records: Sequence[Record],
                batch_size: int = 16) -> ProbeScore:
    """Greedy exact-match recall (the decoding `generate` uses) and answer log-probability, in one pass."""
    items = probe_items(tokenizer, template, [r for r in records if is_probe_record(r)])
    return probe_score(answer_scores(model, tokenizer, items, batch_size) if items else [])


def probe_score(scores: Sequence[LabelScore]) -> ProbeScore:
    """The recall and answer log-probability of probe answers already scored."""
    if not scores:
        return ProbeScore(None, None, 0)
    tokens = sum(score.count for score in scores)
    return ProbeScore(sum(score.greedy for score in scores) / len(scores),
                      sum(score.logprob for score in scores) / tokens if tokens else None, len(scores))
