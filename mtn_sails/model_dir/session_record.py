"""What one training session records: the typed entry of `training_history.json`.

`SessionRecord` and `ForgettingRow` are the one definition of the stored fields. Both read every file an
earlier version wrote: a missing field is None (and stays missing when written back), a key this version
does not know is kept and written back. Both are read-only mappings over their JSON form too, so `record["learning_rate"]` works as it
did when the history was a list of dicts (the Python API returned those).
"""
from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any


class _JsonRecord(Mapping):
    """A dataclass stored as one JSON object: `to_json`/`from_json`, unknown keys kept, mapping access."""

    extra: dict[str, Any]
    _absent: frozenset[str] = frozenset()  # fields the stored object lacked: still absent when written back

    def to_json(self) -> dict[str, Any]:
        """The JSON object this record is stored as."""
        stored: dict[str, Any] = {}
        for spec in dataclasses.fields(self):
            value = getattr(self, spec.name)
            if spec.name == "extra" or (spec.name in self._absent and value is None):
                continue
            stored[spec.name] = _json_value(value)
        return {**stored, **self.extra}

    @classmethod
    def from_json(cls, stored: Mapping[str, Any]):
        """The record a stored JSON object describes (missing fields None, unknown keys kept in `extra`)."""
        known = {spec.name for spec in dataclasses.fields(cls)} - {"extra"}
        values = {name: cls._read_field(name, stored[name]) for name in known if name in stored}
        record = cls(**values, extra={key: value for key, value in stored.items() if key not in known})
        record._absent = frozenset(known - stored.keys())
        return record

    @classmethod
    def _read_field(cls, name: str, value: Any) -> Any:
        return value

    def __getitem__(self, key: str) -> Any:
        return self.to_json()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.to_json())

    def __len__(self) -> int:
        return len(self.to_json())


def _json_value(value: Any) -> Any:
    if isinstance(value, _JsonRecord):
        return value.to_json()
    if isinstance(value, list):
        return [_json_value(item) for item in value]
    return value


@dataclass(eq=False)
class ForgettingRow(_JsonRecord):
    """One earlier session measured again after a later one: before (right after it) -> after (now)."""

    session: int
    loss_before: float | None = None  # mean loss per target token on the session's held-out slice
    loss_after: float | None = None
    perplexity_before: float | None = None
    perplexity_after: float | None = None
    ratio: float | None = None  # perplexity after / before
    recall_before: float | None = None  # exact-match recall of the session's probe answers
    recall_after: float | None = None
    answer_logprob_before: float | None = None  # mean log-probability per probe answer token
    answer_logprob_after: float | None = None
    probe_count: int | None = None
    kept: float | None = None  # recall after / before: the share of the session's answers still given
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(eq=False)
class SessionRecord(_JsonRecord):
    """One session: its data, where it started, its settings, what it measured and how long it took."""

    session: int
    date: str | None = None
    data_file: str | None = None
    data_sha256: str | None = None
    records: int | None = None
    train_examples: int | None = None
    eval_examples: int | None = None
    replayed_examples: int | None = None
    start: str | None = None  # what was loaded: the base model, or the directory it continued
    start_kind: str | None = None  # base | continued | resumed
    resumed_from_checkpoint: str | None = None
    base_model: str | None = None
    learning_rate: float | None = None
    lr_schedule: str | None = None  # after any warm-up: linear with --epochs, constant until recalled
    epochs: float | None = None
    batch_size: int | None = None
    max_length: int | None = None
    steps: int | None = None
    train_loss: float | None = None  # the Trainer's mean over every step of the session
    eval_loss: float | None = None
    eval_perplexity: float | None = None
    held_out_loss: float | None = None
    held_out_perplexity: float | None = None
    duration_s: float | None = None
    phase_s: dict[str, float] | None = None  # seconds per stage: records, load, session_0, levers, train, ...
    device: str | None = None
    precision: str | None = None
    world_size: int | None = None
    replay: float | None = None
    replay_weight: float | None = None  # a replayed example's loss weight against a new one's
    interpolation_alpha: float | None = None  # --interpolate: the weight of the trained model (1 - it: the start)
    stopped: str | None = None  # --epochs left out: "recalled" (the target reached) or "cap" (--max-epochs)
    seed: int | None = None
    versions: dict[str, str] | None = None
    forgetting: list[ForgettingRow] = field(default_factory=list)
    loss_curve: list[dict[str, float]] | None = None  # per logged epoch: step, epoch, loss or eval_loss
    probe_count: int | None = None  # question/answer records kept in probe/ to measure recall later
    recall: float | None = None  # exact-match recall of this session's probe right after it
    answer_logprob: float | None = None
    # session 1 from a pretrained base: its session 0, the base's own answers to the bundled general prompts
    base_probe_count: int | None = None
    base_recall: float | None = None  # the base on them before training (1.0: only answers it reproduces are kept)
    base_answer_logprob: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def _read_field(cls, name: str, value: Any) -> Any:
        if name == "forgetting":
            return [ForgettingRow.from_json(row) for row in value or []]
        return value

    def final_train_loss(self) -> float | None:
        """The last logged epoch's train loss (what the model ends at), else the session's mean."""
        losses = [point["loss"] for point in self.loss_curve or [] if "loss" in point]
        return losses[-1] if losses else self.train_loss


def session_label(number: int) -> str:
    """How tables and charts name a session: "base" for session 0, the base's own answers."""
    return "base" if number == 0 else f"session {number}"


def as_record(session: SessionRecord | Mapping[str, Any]) -> SessionRecord:
    """A SessionRecord, from a record or from its stored JSON form."""
    return session if isinstance(session, SessionRecord) else SessionRecord.from_json(session)
