"""Pictures of a model's history: the loss across all sessions and how earlier sessions' data held up.

matplotlib is imported inside the functions that draw (never by `--help` or `validate`), and the
figures are drawn on an Agg canvas without pyplot: no display is needed, no global backend is
switched in the caller's process, and no figure is left open.
"""
from __future__ import annotations

import io
import math
import os
from pathlib import Path
from typing import Any

from .history_file import FORGETTING_FILE, LOSS_CURVE_FILE, forgetting_series, has_recall, load_history
from .session_record import session_label

FIGURE_SIZE = (8.0, 4.5)  # inches; at DPI 100 an 800x450 picture, readable inline on a model card
DPI = 100
LABELLED_SESSIONS = 6  # up to this many sessions the forgetting chart prints each value; beyond, too crowded


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def session_steps(session: dict[str, Any]) -> int:
    """Optimizer steps the session took (its recorded count, else the last step of its loss curve)."""
    steps = session.get("steps")
    if isinstance(steps, int) and steps >= 0:
        return steps
    return max((int(point.get("step") or 0) for point in session.get("loss_curve") or []), default=0)


def loss_points(sessions: list[dict[str, Any]]) -> dict[str, Any]:
    """The loss curve of all sessions on one step axis: each session's steps offset by the steps before it.

    Returns {"train": [(step, loss)], "eval": [(step, eval_loss)], "starts": [(session, first step)],
    "end": last step}.
    """
    train: list[tuple[int, float]] = []
    evaluation: list[tuple[int, float]] = []
    starts: list[tuple[int, int]] = []
    offset = 0
    for index, session in enumerate(sessions):
        starts.append((int(session.get("session", index + 1)), offset))
        for point in session.get("loss_curve") or []:
            step = offset + int(point.get("step") or 0)
            if _finite(point.get("loss")):
                train.append((step, float(point["loss"])))
            if _finite(point.get("eval_loss")):
                evaluation.append((step, float(point["eval_loss"])))
        offset += session_steps(session)
    return {"train": train, "eval": evaluation, "starts": starts, "end": offset}


def _figure():
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=FIGURE_SIZE, dpi=DPI, layout="constrained")
    FigureCanvasAgg(figure)
    return figure, figure.add_subplot()


def _save(figure, path: str | Path) -> Path:
    """Write the figure as a PNG that depends on the data only, swapped in whole."""
    buffer = io.BytesIO()
    # No "Software" entry: the bytes then do not change with the matplotlib version (Agg writes no date).
    figure.savefig(buffer, format="png", dpi=DPI, metadata={"Software": None})
    path = Path(path)
    partial = path.with_name(f".{path.name}.partial")
    try:
        partial.write_bytes(buffer.getvalue())
        os.replace(partial, path)  # a kill mid-write leaves the old picture, never half a new one
    finally:
        partial.unlink(missing_ok=True)
    return path


def _message(axes, text: str, height: float = 0.5) -> None:
    axes.text(0.5, height, text, transform=axes.transAxes, ha="center", va="center", color="0.35")


def _style():
    import matplotlib.style

    return matplotlib.style.context("default")  # the same look whatever the user's matplotlibrc says


def plot_loss_curve(sessions: list[dict[str, Any]], path: str | Path) -> Path:
    """Draw train and eval loss against the global step over all sessions into the PNG `path`; returns it."""
    curve = loss_points(sessions)
    with _style():
        figure, axes = _figure()
        if curve["train"]:
            axes.plot(*zip(*curve["train"]), marker="o", markersize=3, label="train loss")
        if curve["eval"]:
            axes.plot(*zip(*curve["eval"]), marker="s", markersize=4, linestyle="--", label="eval loss")
        for number, start in curve["starts"]:
            if start > 0:
                axes.axvline(start, color="0.6", linestyle=":", linewidth=1)
            axes.text(start, 0.98, f" session {number}", transform=axes.get_xaxis_transform(), rotation=90,
                      ha="left", va="top", fontsize=8, color="0.35")
        axes.set_xlim(0, max(curve["end"], 1) * 1.02)  # the last point drawn whole, not cut by the frame
        if not curve["train"] and not curve["eval"]:
            _message(axes, "no loss curve recorded")
            axes.set_yticks([])
        else:
            axes.legend(loc="upper right")
        axes.set_xlabel("optimizer step, counted across sessions")
        axes.set_ylabel("loss")
        count = len(sessions)
        axes.set_title(f"Loss over {count} session{'s' * (count != 1)}")
        axes.grid(alpha=0.3)
        return _save(figure, path)


def plot_forgetting(sessions: list[dict[str, Any]], path: str | Path) -> Path:
    """Draw each session's answer recall (held-out perplexity when no session has a probe) right after it
    and after every later session; returns `path`."""
    measure = "recall" if has_recall(sessions) else "perplexity"
    series = {number: [(x, y) for x, y in points if _finite(y)]
              for number, points in forgetting_series(sessions, measure).items()}
    series = {number: points for number, points in series.items() if points}
    numbers = [int(s.get("session", i + 1)) for i, s in enumerate(sessions)]
    with _style():
        figure, axes = _figure()
        for number, points in series.items():
            line, = axes.plot(*zip(*points), marker="o", label=f"{session_label(number)} data")
            if len(sessions) <= LABELLED_SESSIONS:
                for x, y in points:
                    axes.annotate(f"{y:.3g}", (x, y), textcoords="offset points", xytext=(0, 6), ha="center",
                                  fontsize=8, color=line.get_color())
        values = [y for points in series.values() for _, y in points]
        axes.margins(y=0.12)  # room for the value labels above the highest points
        if measure == "perplexity" and values and min(values) > 0 and max(values) / min(values) > 20:
            axes.set_yscale("log")  # a scratch model starts in the hundreds and ends near 1
        if measure == "recall":
            axes.set_ylim(-0.05, 1.12)
        if numbers:
            axes.set_xticks(numbers)
            axes.set_xlim(min(numbers) - 0.5, max(numbers) + 0.5)
        if not values:
            _message(axes, "no held-out perplexity recorded\n(train with --eval-split above 0)")
            axes.set_yticks([])
        elif len(sessions) < 2:
            _message(axes, "forgetting needs two sessions:\ntrain again to see how this data holds up", 0.25)
        if series:
            axes.legend(loc="best", fontsize=8, ncol=1 + len(series) // 10)
        axes.set_xlabel("after session")
        what = "answer recall (higher is better)" if measure == "recall" else "held-out perplexity (lower is better)"
        axes.set_ylabel(what)
        axes.set_title((f"{what.split(' (')[0].capitalize()} of each session's data as training goes on")
                       if len(sessions) > 1 else f"{what.split(' (')[0].capitalize()} (forgetting needs two sessions)")
        axes.grid(alpha=0.3)
        return _save(figure, path)


def write_plots(model_dir: str | Path) -> list[Path]:
    """Write loss_curve.png and forgetting.png into `model_dir` from its history; returns them ([] without one)."""
    sessions = load_history(model_dir)
    if not sessions:
        return []
    return [plot_loss_curve(sessions, Path(model_dir) / LOSS_CURVE_FILE),
            plot_forgetting(sessions, Path(model_dir) / FORGETTING_FILE)]
