"""The session history stored in a model directory (`training_history.json`): read and write it."""
from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..errors import InputError
from .session_record import SessionRecord, as_record

Session = SessionRecord | Mapping[str, Any]  # a record, or the JSON object it is stored as

HISTORY_FILE = "training_history.json"
CARD_FILE = "README.md"  # the model card, kept in step with the history (model_card.py)
LOSS_CURVE_FILE = "loss_curve.png"  # charts of the history, drawn by plots.py and shown by the card
FORGETTING_FILE = "forgetting.png"


def load_history(model_dir: str | Path) -> list[SessionRecord]:
    """The sessions recorded in `model_dir`, oldest first ([] when there is no history)."""
    path = Path(model_dir) / HISTORY_FILE
    if not path.is_file():
        return []
    try:
        stored = json.loads(path.read_text(encoding="utf-8"))["sessions"]
        return [SessionRecord.from_json({"session": position, **session})
                for position, session in enumerate(stored, start=1)]
    except (OSError, ValueError, KeyError, TypeError):
        raise InputError(f"{path}: unreadable training history") from None


def write_history(model_dir: str | Path, sessions: Sequence[Session]) -> Path:
    """Write the history file alone; returns it (model_card.save_history also refreshes charts and card)."""
    path = Path(model_dir) / HISTORY_FILE
    stored = [as_record(session).to_json() for session in sessions]
    path.write_text(json.dumps({"sessions": stored}, indent=2) + "\n", encoding="utf-8")
    return path


# per measure: (the session's own field right after it, the forgetting row's before and after fields)
FORGETTING_MEASURES = {"perplexity": ("held_out_perplexity", "perplexity_before", "perplexity_after"),
                       "recall": ("recall", "recall_before", "recall_after")}


def forgetting_series(sessions: Sequence[Session], measure: str = "perplexity") -> dict[int, list[tuple[int, float | None]]]:
    """Per session: [(session after which it was measured, its held-out perplexity or probe recall)], the
    first point right after it was trained, the others from the forgetting rows of later sessions."""
    own, before, after = FORGETTING_MEASURES[measure]
    records = [as_record(s) for s in sessions]
    series: dict[int, dict[int, float | None]] = {}
    for record in records:
        series.setdefault(record.session, {})[record.session] = getattr(record, own)
    for record in records:
        for row in record.forgetting:
            points = series.setdefault(row.session, {})
            if points.get(row.session) is None and getattr(row, before) is not None:
                points[row.session] = getattr(row, before)
            points[record.session] = getattr(row, after)
    return {session: sorted(points.items()) for session, points in sorted(series.items())}


def has_recall(sessions: Sequence[Session]) -> bool:
    """True when any session measured the answer recall of a probe."""
    return any(as_record(s).recall is not None for s in sessions)
