"""Answer recall of a session's question/answer records: greedy exact match and answer log-probability.

Perplexity alone does not show lost facts (it can improve while recall falls to zero), so each session
keeps a small probe of its trained pairs and chats; after every later session the probe is answered
again. Decoding is the one `mtn-sails generate` uses: the stored template, greedy, stop at eos,
the completion stripped, compared with the stripped answer. torch is imported by the functions that
score, so `ProbeScore` and `probe_records` are cheap to import. Prompts are batched with left padding
(attention mask and position ids follow it), which gives the same tokens as one prompt at a time.
"""
from __future__ import annotations

import contextlib
import random
from dataclasses import dataclass
from typing import Iterable, Sequence

from .data import Record
from .template import PromptTemplate

PROBE_LIMIT = 64  # records per session: 64 greedy answers take seconds on a CPU
EXTRA_NEW_TOKENS = 8  # beyond the longest answer: room for the eos and a wrong, longer answer


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
    from .tokenized import token_ids

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


def _left_padded(sequences: Sequence[list[int]], pad_id: int, device):
    import torch

    longest = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), longest), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), longest), dtype=torch.long)
    for row, sequence in enumerate(sequences):
        ids[row, longest - len(sequence):] = torch.tensor(sequence, dtype=torch.long)
        mask[row, longest - len(sequence):] = 1
    return ids.to(device), mask.to(device)


def greedy_answers(model, tokenizer, prompts: Sequence[list[int]], max_new_tokens: int,
                   batch_size: int = 16) -> list[str]:
    """The greedy completion of each prompt, stopped at eos and decoded as `generate` decodes it."""
    from transformers import GenerationConfig

    eos = tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    config = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
                              eos_token_id=eos, pad_token_id=pad, bos_token_id=model.config.bos_token_id)
    # a clean config: no sampling or penalties saved with the model, as `generate` applies none
    device = next(model.parameters()).device
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))  # similar lengths batch together
    answers: list[str] = [""] * len(prompts)
    for start in range(0, len(order), batch_size):
        rows = order[start:start + batch_size]
        ids, mask = _left_padded([prompts[i] for i in rows], pad, device)
        output = model.generate(input_ids=ids, attention_mask=mask, generation_config=config)
        for row, generated in zip(rows, output[:, ids.shape[1]:].tolist()):
            produced = generated[:generated.index(eos)] if eos in generated else generated
            answers[row] = tokenizer.decode(produced, skip_special_tokens=True, clean_up_tokenization_spaces=False)
    return answers


def answer_logprobs(model, tokenizer, items: Sequence[ProbeItem], batch_size: int = 16) -> list[tuple[float, int]]:
    """(summed log-probability, token count) of each item's answer tokens, teacher-forced."""
    from .tokenized import IGNORE_INDEX

    limit = _context_length(model)
    sequences, labels = [], []
    for item in items:
        answer = item.answer_ids[:limit - 1] if limit else item.answer_ids
        prompt = _fit(item.prompt_ids, (limit - len(answer)) if limit else 0)
        sequences.append(prompt + answer)
        labels.append([IGNORE_INDEX] * len(prompt) + answer)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    return label_logprobs(model, sequences, labels, pad, batch_size)


def label_logprobs(model, sequences: Sequence[Sequence[int]], labels: Sequence[Sequence[int]], pad_id: int,
                   batch_size: int = 16) -> list[tuple[float, int]]:
    """(summed log-probability, count) of each sequence's label tokens (IGNORE_INDEX elsewhere), teacher-forced."""
    import torch

    from .tokenized import IGNORE_INDEX

    device = next(model.parameters()).device
    results: list[tuple[float, int]] = []
    with scoring(model):
        for start in range(0, len(sequences), batch_size):
            batch, batch_labels = sequences[start:start + batch_size], labels[start:start + batch_size]
            longest = max(len(s) for s in batch)
            ids = torch.tensor([list(s) + [pad_id] * (longest - len(s)) for s in batch], device=device)
            mask = torch.tensor([[1] * len(s) + [0] * (longest - len(s)) for s in batch], device=device)
            target = torch.tensor([list(l) + [IGNORE_INDEX] * (longest - len(l)) for l in batch_labels],
                                  device=device)[:, 1:]
            logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
            picked = torch.log_softmax(logits, dim=-1).gather(-1, target.clamp(min=0).unsqueeze(-1)).squeeze(-1)
            kept = target != IGNORE_INDEX
            results += [(float(picked[row][kept[row]].sum()), int(kept[row].sum())) for row in range(len(batch))]
    return results


def score_probe(model, tokenizer, template: PromptTemplate, records: Sequence[Record],
                max_new_tokens: int | None = None, batch_size: int = 16) -> ProbeScore:
    """Greedy exact-match recall (the stripped answer, the decoding `generate` uses) and answer log-prob."""
    items = probe_items(tokenizer, template, [r for r in records if is_probe_record(r)])
    if not items:
        return ProbeScore(None, None, 0)
    if max_new_tokens is None:
        max_new_tokens = max(len(item.answer_ids) for item in items) + EXTRA_NEW_TOKENS
    limit = _context_length(model)
    if limit:  # an answer longer than the model's positions leave after its prompt cannot be given whole
        max_new_tokens = min(max_new_tokens, limit // 2)
    prompts = [_fit(item.prompt_ids, (limit - max_new_tokens) if limit else 0) for item in items]
    with scoring(model):
        answers = greedy_answers(model, tokenizer, prompts, max_new_tokens, batch_size)
    scored = answer_logprobs(model, tokenizer, items, batch_size)
    hits = sum(answer.strip() == item.answer.strip() for answer, item in zip(answers, items))
    tokens = sum(count for _, count in scored)
    return ProbeScore(hits / len(items), sum(total for total, _ in scored) / tokens if tokens else None, len(items))
