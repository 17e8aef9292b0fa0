"""Session 0, the base: what a pretrained base answers to the bundled general prompts before any session
changes it.

The first session from a pretrained base asks the base every bundled general prompt (data/general_prompts.py)
through the session's template, greedy, as `generate` decodes, and keeps the answers that end at the end of
the turn and that the base reproduces teacher-forced (the probe's exact-match test). Those it gives decisively
(DECISIVE) are the base's probe, answered again after every later session (the forgetting table's `base`
row); the others are its replay slice: the base's own answers replayed like an earlier session's examples (self-rehearsal),
so the probe measures knowledge kept, not the replayed answers memorised. A base that ends too few of its
answers (random weights, the scratch base) has no session 0.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from ..config import SCRATCH_MODEL_NAME
from ..console import say
from ..data.records import Record
from ..data.template import PromptTemplate
from ..model_dir import store
from .probe import ProbeScore, answer_scores, probe_items, probe_score, scoring

BASE_SESSION = 0  # the base's slices are stored as session 0's
# A longer answer is not kept: the prompts ask for short ones. On SmolLM2-135M-Instruct the decisive answers are 7 to
# 31 tokens long (all but one under 12) and 48 tokens cost a third more decoding for replay answers only
# (BENCHMARKS.md, "Against TRL's SFTTrainer on the real base").
MAX_ANSWER_TOKENS = 32
SCREENED = 16  # prompts answered first; a base that ends fewer than MIN_ANSWERED of them is not asked the rest
MIN_ANSWERED = 0.25
# A probe answer is one the base gives decisively: each of its tokens the base's choice with at least this
# probability. A small base's answers are full of near-ties that any change of the weights flips (a 1% random
# change or bf16 rounding, with nothing learned), so recall on them would measure noise, not knowledge lost
# (BENCHMARKS.md "Knowledge on a real base" measures both). The other answers it reproduces are replayed.
DECISIVE = 0.3
# Prompts decoded together: on SmolLM2-135M (2-core EPYC, greedy_answers over the 247 bundled prompts timed in one
# process) 128 rows took 52.6 s against 60.3 s for 64 and 54-61 s for 256 (medians of interleaved runs, identical
# answers); larger models get fewer rows, so that the key/value cache stays within KV_CACHE_BUDGET bytes.
MAX_DECODE_ROWS, MIN_DECODE_ROWS, KV_CACHE_BUDGET = 128, 8, 2**30
BASE_FILE = "base_answers.json"  # in the work directory: what a resumed session 1 recorded before training


@dataclass(frozen=True)
class BaseAnswers:
    """The base's own answers: a probe checked after every session and a disjoint replay pool."""

    probe: list[Record]
    replay: list[Record]
    score: ProbeScore  # the base on its own probe, before training

    def to_json(self) -> dict:
        """The JSON object a work directory keeps."""
        from ..data.records import record_to_json

        return {"probe": [record_to_json(r) for r in self.probe], "replay": [record_to_json(r) for r in self.replay],
                "recall": self.score.recall, "answer_logprob": self.score.answer_logprob}

    @classmethod
    def from_json(cls, stored: dict) -> "BaseAnswers":
        """The answers a work directory kept."""
        probe, replay = (_records(stored[side]) for side in ("probe", "replay"))
        return cls(probe, replay, ProbeScore(stored["recall"], stored["answer_logprob"], len(probe)))


def _records(items: list[dict]) -> list[Record]:
    from ..data.shapes import normalise

    return [normalise(item, index) for index, item in enumerate(items)]


def _pair(index: int, prompt: str, answer: str) -> Record:
    return Record(index, "pair", "prompt/completion", prompt=prompt, response=answer)


def decode_rows(config, tokens: int, budget: int = KV_CACHE_BUDGET) -> int:
    """How many prompts to decode together: as many as MAX_DECODE_ROWS whose key/value cache of `tokens` positions
    fits `budget` bytes in fp32 (a 1.7B model holds fewer rows than a 135M one), at least MIN_DECODE_ROWS."""
    heads = getattr(config, "num_attention_heads", None) or config.n_head
    width = getattr(config, "hidden_size", None) or config.n_embd
    kv_width = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or width // heads
    layers = getattr(config, "num_hidden_layers", None) or config.n_layer
    per_row = layers * 2 * kv_width * head_dim * tokens * 4
    return max(MIN_DECODE_ROWS, min(MAX_DECODE_ROWS, budget // max(per_row, 1)))


def greedy_answers(model, tokenizer, template: PromptTemplate, prompts: Sequence[str],
                   max_new_tokens: int = MAX_ANSWER_TOKENS, batch_size: int | None = None) -> list[str | None]:
    """Each prompt's greedy answer through `template`, or None where it does not end within `max_new_tokens`
    (`batch_size` prompts decoded together; None: decode_rows)."""
    eos = tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    items = probe_items(tokenizer, template, [_pair(i, p, ".") for i, p in enumerate(prompts)])
    if batch_size is None:
        longest = max((len(item.prompt_ids) for item in items), default=0) + max_new_tokens
        batch_size = decode_rows(model.config, longest)
    # batches of similar lengths: a left-padded batch computes every row at its longest prompt's length
    order = sorted(range(len(items)), key=lambda position: len(items[position].prompt_ids))
    answers: list[str | None] = [None] * len(items)
    with scoring(model):
        for first in range(0, len(order), batch_size):
            batch = order[first:first + batch_size]
            ended = greedy_batch(model, [items[position].prompt_ids for position in batch], pad, eos, max_new_tokens)
            for position, tokens in zip(batch, ended):
                if tokens is not None:
                    answers[position] = tokenizer.decode(tokens, clean_up_tokenization_spaces=False)
    return answers


def shared_prefix(prompt_ids: list[list[int]]) -> int:
    """How many leading tokens every prompt shares (a chat template's system turn), leaving each at least one."""
    shortest = min(len(ids) for ids in prompt_ids)
    length = 0
    while length < shortest - 1 and all(ids[length] == prompt_ids[0][length] for ids in prompt_ids):
        length += 1
    return length


def greedy_batch(model, prompt_ids: list[list[int]], pad: int, eos: int, max_new_tokens: int) -> list[list[int] | None]:
    """Greedy decoding with a KV cache: each row's tokens before `eos`, or None where it does not end within
    `max_new_tokens`. The prefix every prompt shares is computed once; the rest of each prompt follows it, padded
    on its left (masked, positions continuing the prefix's). A row leaves the batch when it ends, so the steps
    after it cost less (transformers' generate computes every row to the last step)."""
    import torch
    from transformers import DynamicCache

    device = next(model.parameters()).device
    common = shared_prefix(prompt_ids)
    cache = DynamicCache()
    if common:
        model(input_ids=torch.tensor([prompt_ids[0][:common]], device=device), past_key_values=cache, use_cache=True,
              logits_to_keep=1)
        cache.batch_repeat_interleave(len(prompt_ids))
    rests = [ids[common:] for ids in prompt_ids]
    longest = max(len(rest) for rest in rests)
    ids = torch.tensor([[pad] * (longest - len(r)) + r for r in rests], device=device)
    own = torch.tensor([[0] * (longest - len(r)) + [1] * len(r) for r in rests], device=device)
    mask = torch.cat([own.new_ones(len(rests), common), own], dim=1)
    positions = common + (own.cumsum(-1) - 1).clamp(min=0)
    # the output layer at the last position only: a 49,152-token head over every prompt token is most of a prompt
    logits = model(input_ids=ids, attention_mask=mask, position_ids=positions, past_key_values=cache,
                   use_cache=True, logits_to_keep=1).logits[:, -1]
    rows = list(range(len(prompt_ids)))  # the prompts still decoding, in the batch's order
    tokens: list[list[int]] = [[] for _ in prompt_ids]
    ended: list[list[int] | None] = [None] * len(prompt_ids)
    following, last = logits.argmax(-1), positions[:, -1]
    for step in range(max_new_tokens):
        keep = []
        for place, (row, token) in enumerate(zip(rows, following.tolist())):
            if token == eos:
                ended[row] = tokens[row]
            else:
                tokens[row].append(token)
                keep.append(place)
        if not keep or step == max_new_tokens - 1:
            break
        if len(keep) < len(rows):
            chosen = torch.tensor(keep, device=device)
            cache.batch_select_indices(chosen)
            rows, mask, following, last = [rows[p] for p in keep], mask[chosen], following[chosen], last[chosen]
        mask = torch.cat([mask, mask.new_ones(len(rows), 1)], dim=1)
        last = last + 1
        logits = model(input_ids=following[:, None], attention_mask=mask, position_ids=last[:, None],
                       past_key_values=cache, use_cache=True).logits[:, -1]
        following = logits.argmax(-1)
    return ended


def record_base(model, tokenizer, template: PromptTemplate, prompts: Sequence[str]) -> BaseAnswers | None:
    """The base's reproducible answers to `prompts`: the decisive ones its probe, the others its replay pool
    (None: it ends too few, or gives none decisively)."""
    screened = greedy_answers(model, tokenizer, template, prompts[:SCREENED])
    if sum(answer is not None for answer in screened) < MIN_ANSWERED * len(screened):
        return None
    answers = screened + greedy_answers(model, tokenizer, template, prompts[SCREENED:])
    pairs = [_pair(i, prompt, answer) for i, (prompt, answer) in enumerate(zip(prompts, answers))
             if answer and answer.strip()]
    scores = answer_scores(model, tokenizer, probe_items(tokenizer, template, pairs)) if pairs else []
    decisive = math.log(DECISIVE)
    probe = [(pair, score) for pair, score in zip(pairs, scores) if score.greedy and score.weakest >= decisive]
    replay = [pair for pair, score in zip(pairs, scores) if score.greedy and score.weakest < decisive]
    if not probe:
        return None
    return BaseAnswers([pair for pair, _ in probe], replay, probe_score([score for _, score in probe]))


def base_answers_of_session_one(work: Path, model, tokenizer, template: PromptTemplate,
                                prompts: Sequence[str]) -> BaseAnswers | None:
    """What the base answers, recorded once per session into the work directory (a resume reads it back)."""
    path = work / BASE_FILE
    if path.exists():
        stored = json.loads(path.read_text(encoding="utf-8"))
        return BaseAnswers.from_json(stored) if stored else None
    base = record_base(model, tokenizer, template, prompts)
    path.write_text(json.dumps(base.to_json() if base else None, ensure_ascii=False) + "\n", encoding="utf-8")
    return base


def settle_base(config, plan, history: list, work: Path, processes, start, resumed: bool) -> BaseAnswers | None:
    """Session 0 of a session (`config` its TrainConfig, `start` its StartModel): the base's answers as session 1
    stored them, or, for a first session from a pretrained base, asked now (read back on --resume)."""
    from ..data.general_prompts import general_prompts

    if plan.continues:
        return stored_base(Path(config.output_dir), history[0] if history else None)
    if plan.source == SCRATCH_MODEL_NAME or config.base_prompts == 0:
        return None
    prompts = general_prompts()[:config.base_prompts]
    if not resumed:
        say(f"🧭 Session 0: asking the base {len(prompts)} general prompts, so that what it knows can be kept "
            "(--base-prompts 0 skips it)...")
    base = processes.main_first(lambda: base_answers_of_session_one(work, start.model, start.tokenizer,
                                                                    start.template, prompts))
    if not resumed:
        say(f"🧭 Session 0: the base reproduces {len(base.probe) + len(base.replay)} of its answers: "
            f"{len(base.probe)} to check after every session, {len(base.replay)} to replay"
            if base else "🧭 Session 0: the base ends too few answers to keep (no session 0)")
    return base


def stored_base(model_dir: Path, first_session) -> BaseAnswers | None:
    """The base's probe and replay slices and its own score, as session 1 stored them (None: no session 0)."""
    if first_session is None or first_session.base_probe_count is None:
        return None
    probe = store.read_slices(model_dir, store.PROBE_DIR).get(BASE_SESSION, [])
    replay = store.read_slices(model_dir, store.REPLAY_DIR).get(BASE_SESSION, [])
    if not probe:
        return None
    return BaseAnswers(probe, replay, ProbeScore(first_session.base_recall, first_session.base_answer_logprob,
                                                 len(probe)))


def write_base_slices(model_dir: Path, base: BaseAnswers) -> None:
    """Store the base's probe and replay slices as session 0's."""
    store.write_slice(model_dir, store.PROBE_DIR, BASE_SESSION, base.probe, len(base.probe), 0)
    store.write_slice(model_dir, store.REPLAY_DIR, BASE_SESSION, base.replay, len(base.replay), 0)
