"""The history as text: the sessions table, the forgetting rows and matrix, and `history`'s printout."""
from __future__ import annotations

import json
import math
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from ..console import show
from ..errors import InputError
from .history_file import Session, forgetting_series, load_history
from .session_record import ForgettingRow, SessionRecord, as_record, session_label

SESSION_COLUMNS = (("#", "session"), ("date", "date"), ("data", "data_file"), ("trained on", "train_examples"),
                   ("start", "start"), ("lr", "learning_rate"), ("epochs", "epochs"),
                   ("train loss", "train_loss"), ("eval loss", "eval_loss"), ("eval ppl", "eval_perplexity"),
                   ("held-out ppl", "held_out_perplexity"), ("time s", "duration_s"))
RECALL_COLUMN = ("recall", "recall")  # exact-match recall of the session's probe right after it


def number(value: Any, digits: int = 4) -> str:
    """A table cell for a number: `digits` significant digits, '-' when there is none."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)


def _cell(session: SessionRecord, key: str) -> str:
    value = getattr(session, key)
    if key == "date" and isinstance(value, str):
        return value[:19].replace("T", " ")
    if key in ("data_file", "start") and isinstance(value, str):
        return Path(value).name if "/" in value else value
    return number(value)


def markdown_rows(header: list[str], rows: Iterable[list[str]]) -> list[str]:
    """A Markdown table (pipes in cells escaped)."""
    def line(cells: list[str]) -> str:
        return "| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |"

    return [line(header), "|" + "---|" * len(header)] + [line(row) for row in rows]


def session_table(sessions: Sequence[Session], markdown: bool = False,
                  columns: Sequence[tuple[str, str]] = SESSION_COLUMNS) -> list[str]:
    """The sessions as aligned text rows (or a Markdown table); a recall column when any session measured one."""
    records = [as_record(s) for s in sessions]
    if any(record.recall is not None for record in records):
        columns = (*columns[:-1], RECALL_COLUMN, columns[-1])
    header = [title for title, _ in columns]
    rows = [[_cell(record, key) for _, key in columns] for record in records]
    if markdown:
        return markdown_rows(header, rows)
    widths = [max(len(r[i]) for r in [header] + rows) for i in range(len(header))]
    return ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in [header] + rows]


def forgetting_table(session: Session) -> list[str]:
    """Rows of the forgetting table stored with one session (empty when it has none)."""
    return [forgetting_line(row) for row in as_record(session).forgetting]


def forgetting_line(row: ForgettingRow) -> str:
    """One earlier session, then -> now: answer recall and log-probability when it has a probe, and
    held-out perplexity when it has a held-out slice."""
    parts = []
    if row.recall_after is not None:
        kept = f", kept {row.kept:.0%}" if row.kept is not None else ""
        parts.append(f"recall {number(row.recall_before, 3)} -> {number(row.recall_after, 3)}{kept}")
        parts.append(f"answer log-prob {number(row.answer_logprob_before, 3)} -> {number(row.answer_logprob_after, 3)}")
    if row.perplexity_after is not None or row.recall_after is None:
        parts.append(f"perplexity {number(row.perplexity_before)} -> {number(row.perplexity_after)} "
                     f"(x{number(row.ratio, 3)})")
    return f"  {session_label(row.session)}: " + ", ".join(parts)


def forgetting_measures(session: Session) -> str:
    """What the session's forgetting rows measure, for their heading."""
    with_recall = any(row.recall_after is not None for row in as_record(session).forgetting)
    return "answer recall and held-out perplexity" if with_recall else "held-out perplexity"


def session_metrics(session: Session) -> str:
    """The session's end figures in words: the last epoch's train loss (the session mean beside it),
    held-out perplexity and the share of its probe answers it gives."""
    record = as_record(session)
    final, mean = record.final_train_loss(), record.train_loss
    parts = [f"train loss {number(final)} at the last epoch"
             + (f" (mean over the session {number(mean)})" if mean is not None and final != mean else "")]
    if record.held_out_perplexity is not None:
        parts.append(f"held-out perplexity {record.held_out_perplexity:.2f}")
    elif record.eval_perplexity is not None:
        parts.append(f"eval perplexity {record.eval_perplexity:.2f}")
    if record.recall is not None and record.probe_count:
        parts.append(f"answers recalled {round(record.recall * record.probe_count)}/{record.probe_count}")
    return ", ".join(parts)


def forgetting_matrix(sessions: Sequence[Session], measure: str = "perplexity") -> list[str]:
    """Markdown table: each session's data (rows) measured after each session (columns)."""
    numbers = [as_record(s).session for s in sessions]
    header = ["data of"] + [f"after {n}" for n in numbers]
    rows = []
    for session, points in forgetting_series(sessions, measure).items():
        values = dict(points)
        rows.append([session_label(session)] + [number(values.get(n), 3 if measure == "recall" else 4)
                                              if n >= session else "" for n in numbers])
    return markdown_rows(header, rows)


def print_history(model_dir: str | Path, as_json: bool = False, plot: bool = False) -> None:
    """Print the model's sessions as a table, or as JSON `{"sessions": [...]}`; with `plot`, also write
    loss_curve.png and forgetting.png into the model directory and print their paths."""
    if not Path(model_dir).is_dir():
        raise InputError(f"{model_dir}: no such model directory")
    sessions = load_history(model_dir)
    images = _plot_on_demand(model_dir) if plot and sessions else []
    if as_json:
        show(json.dumps({"sessions": [session.to_json() for session in sessions]}, indent=2))
        for image in images:  # stderr, so that stdout stays one JSON document
            show(f"📈 {image}", sys.stderr)
        return
    if not sessions:
        show(f"{model_dir}: no training sessions recorded" + ("; nothing to plot" if plot else ""))
        return
    show(f"Training history of {model_dir} ({len(sessions)} session{'s' * (len(sessions) != 1)})")
    for line in session_table(sessions):
        show(line)
    for session in sessions:
        rows = forgetting_table(session)
        if rows:
            show(f"Forgetting after session {session.session} ({forgetting_measures(session)}, then -> now):")
            for line in rows:
                show(line)
    for image in images:
        show(f"📈 {image}")


def _plot_on_demand(model_dir: str | Path) -> list[Path]:
    """The plots written for `history --plot`; an unwritable directory is the user's one-line error."""
    from .plots import write_plots

    try:
        return write_plots(model_dir)
    except ImportError:  # matplotlib is imported only when drawing
        raise InputError("--plot needs matplotlib: pip install matplotlib") from None
    except OSError as error:
        raise InputError(f"cannot write plots into {model_dir}: {error.strerror or error}") from None
