"""What a trained model still knows: its own held-out slice and probe, and every earlier session's again.

Held-out perplexity alone can improve while the answers a session taught are gone, so each session also
keeps a probe of its trained question/answer records (probe.py) and its recall is measured again after
every later session. Runs on the main process, on the model just saved (docs/SCALING.md).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..model_dir import store
from ..config import KEEP_THRESHOLD
from ..data.files import Record
from .base_answers import BASE_SESSION, BaseAnswers
from .probe import ProbeScore, score_probe
from .scoring import head_on_positions, label_positions, length_sorted_batches, perplexity
from ..model_dir.session_record import ForgettingRow, SessionRecord
from ..data.template import PromptTemplate

NULL_SPACE_FIRST = 0.95  # --null-space advised for a first session that cost the base (BENCHMARKS.md)
NULL_SPACE_LATER = 0.6  # and for a continuing one: more leaves a session at 1e-5 short of its own facts


@dataclass
class Measurements:
    """What the trained model scores before it is saved: earlier sessions again, and its own slices."""

    forgetting: list[ForgettingRow]
    held_out_loss: float | None
    probe: ProbeScore


def measure_session(model, tokenizer, template: PromptTemplate, held_out: list[Record], probe: list[Record],
                    model_dir: Path, history: list[SessionRecord], max_length: int,
                    base: BaseAnswers | None = None) -> Measurements:
    """This session's held-out loss and probe recall, and the forgetting rows of the base and every earlier
    session."""
    forgetting = [base_row(model, tokenizer, template, base)] if base else []
    if history:
        forgetting += measure_forgetting(model, tokenizer, template, model_dir, history, max_length)
    held_out_loss = evaluate_records(model, tokenizer, held_out, template, max_length) if held_out else None
    return Measurements(forgetting, held_out_loss, score_probe(model, tokenizer, template, probe))


def measure_forgetting(model, tokenizer, template: PromptTemplate, model_dir: Path,
                       history: list[SessionRecord], max_length: int) -> list[ForgettingRow]:
    """Per earlier session: its held-out loss and probe recall right after it was trained, and now."""
    held_out = store.read_slices(model_dir, store.HELD_OUT_DIR)
    probes = store.read_slices(model_dir, store.PROBE_DIR)
    rows = []
    for earlier in history:
        records = held_out.get(earlier.session, [])
        loss_after = evaluate_records(model, tokenizer, records, template, max_length) if records else None
        probe = score_probe(model, tokenizer, template, probes[earlier.session]) \
            if probes.get(earlier.session) else None
        if records or probe:
            rows.append(forgetting_row(earlier, loss_after, probe))
    return rows


def base_row(model, tokenizer, template: PromptTemplate, base: BaseAnswers) -> ForgettingRow:
    """Session 0, the base: its own answers to the general prompts before the first session -> now."""
    before = SessionRecord(BASE_SESSION, recall=base.score.recall, answer_logprob=base.score.answer_logprob)
    return forgetting_row(before, None, score_probe(model, tokenizer, template, base.probe))


def forgetting_row(earlier: SessionRecord, loss_after: float | None, probe: ProbeScore | None) -> ForgettingRow:
    """The row comparing an earlier session's own measurements with the ones taken now."""

    ppl_before, ppl_after = perplexity(earlier.held_out_loss), perplexity(loss_after)
    ratio = ppl_after / ppl_before if ppl_before and ppl_after is not None else None
    row = ForgettingRow(earlier.session, earlier.held_out_loss, loss_after, ppl_before, ppl_after, ratio)
    if probe is None or probe.recall is None:
        return row
    row.recall_before, row.recall_after = earlier.recall, probe.recall
    row.answer_logprob_before, row.answer_logprob_after = earlier.answer_logprob, probe.answer_logprob
    row.probe_count = probe.count
    row.kept = probe.recall / earlier.recall if earlier.recall else None
    return row


def lost_answers(rows: list[ForgettingRow], threshold: float = KEEP_THRESHOLD) -> list[ForgettingRow]:
    """The earlier sessions that keep less than `threshold` of the answers they gave right after training."""
    return [row for row in rows if row.kept is not None and row.kept < threshold]


def retention_advice(replay: float, base: bool = False, first_session: bool = False, null_space: float = 0.0) -> str:
    """What to change so that a later session keeps more of the earlier answers than this one did; `base`: the row
    is the base's (session 0), lost in a first session when `first_session`, with --null-space `null_space`."""
    where = "CONTINUOUS_TRAINING.md, 'Keeping what was learned'"
    if base and not null_space:  # replay has little to draw from: keep the base's inputs out of the changes instead
        energy = NULL_SPACE_FIRST if first_session else NULL_SPACE_LATER
        return (f"train {'session 1' if first_session else 'it'} with --null-space {energy:g} to keep the inputs the "
                f"base's answers use out of its changes (on SmolLM2 it kept more of them, in up to twice the time); "
                f"{where}")
    if base:
        return f"train it with a higher --null-space (this session: {null_space:g}) to keep more of them; {where}"
    more_replay = max(round(2 * replay, 3), 0.1)
    return f"train it with --replay {more_replay:g} to keep more of them (this session: --replay {replay:g}); {where}"


def evaluate_records(model, tokenizer, records: list[Record], template: PromptTemplate, max_length: int,
                     batch_size: int = 8) -> float | None:
    """Mean loss per target token of the model on `records` (None when they hold no target token)."""

    import torch

    from .collators import PaddingCollator
    from .tokenizing import tokenize_records

    examples = tokenize_records(records, tokenizer, template, max_length)
    collator = PaddingCollator(tokenizer.pad_token_id)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    total_loss, total_tokens = 0.0, 0
    with torch.no_grad():
        for chosen in length_sorted_batches([len(e["input_ids"]) for e in examples], batch_size):
            batch = {k: v.to(device) for k, v in collator([examples[i] for i in chosen]).items()}
            positions = label_positions(batch["labels"])
            with head_on_positions(model, positions):
                logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            targets = batch["labels"][:, 1:][positions[:, :-1]]
            total_loss += torch.nn.functional.cross_entropy(logits.float(), targets, reduction="sum").item()
            total_tokens += len(targets)
    model.train(was_training)
    return total_loss / total_tokens if total_tokens else None
