"""The loss-curve and forgetting pictures, drawn from plain history dicts: valid PNGs, same bytes for the
same history, different bytes for different data."""
from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import REPO
from mtn_sails.model_dir.history_file import FORGETTING_FILE, HISTORY_FILE, LOSS_CURVE_FILE
from mtn_sails.model_dir.plots import DPI, FIGURE_SIZE, loss_points, plot_forgetting, plot_loss_curve, write_plots

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def make_session(number: int, steps: int, losses: list[float], eval_losses: list[float], held_out_ppl: float | None,
                 forgetting: list[tuple[int, float, float]] = ()) -> dict:
    """A history entry as recipes writes it: one train and one eval log per epoch, forgetting rows."""
    curve = []
    for epoch, (loss, eval_loss) in enumerate(zip(losses, eval_losses), start=1):
        step = steps * epoch // len(losses)
        curve += [{"step": step, "epoch": float(epoch), "loss": loss},
                  {"step": step, "epoch": float(epoch), "eval_loss": eval_loss}]
    return {"session": number, "steps": steps, "loss_curve": curve, "held_out_perplexity": held_out_ppl,
            "data_file": f"/data/session{number}.json", "data_sha256": f"{number:064x}",
            "forgetting": [{"session": k, "loss_before": None, "loss_after": None, "perplexity_before": before,
                            "perplexity_after": after, "ratio": after / before} for k, before, after in forgetting]}


def history(count: int) -> list[dict]:
    sessions = [make_session(1, 30, [6.5, 5.0, 4.2], [6.0, 5.1, 4.6], 90.0),
                make_session(2, 20, [5.5, 3.9], [5.0, 4.3], 70.0, [(1, 90.0, 120.0)]),
                make_session(3, 24, [4.8, 3.5, 3.0], [4.4, 3.9, 3.7], 40.0, [(1, 90.0, 150.0), (2, 70.0, 85.0)])]
    return sessions[:count]


def assert_png(path: Path) -> None:
    """A real PNG of the figure's size that matplotlib reads back."""
    from matplotlib.image import imread

    assert path.read_bytes()[:8] == PNG_MAGIC
    pixels = imread(path)
    assert pixels.shape[:2] == (int(FIGURE_SIZE[1] * DPI), int(FIGURE_SIZE[0] * DPI))
    assert pixels.std() > 0  # something was drawn


def test_loss_points_offset_later_sessions_so_the_step_axis_is_continuous():
    curve = loss_points(history(3))
    assert curve["starts"] == [(1, 0), (2, 30), (3, 50)]
    assert curve["end"] == 74
    assert curve["train"] == [(10, 6.5), (20, 5.0), (30, 4.2), (40, 5.5), (50, 3.9), (58, 4.8), (66, 3.5), (74, 3.0)]
    assert [step for step, _ in curve["eval"]] == [10, 20, 30, 40, 50, 58, 66, 74]


def test_loss_points_tolerate_old_and_odd_entries():
    old = {"session": 1, "steps": 12}  # written before sessions kept a loss curve
    no_steps = {"session": 2, "loss_curve": [{"step": 5, "epoch": 1.0, "loss": 2.0},
                                             {"step": 5, "epoch": 1.0, "eval_loss": float("nan")}]}
    last = {"session": 3, "loss_curve": [{"step": 4, "epoch": 1.0, "loss": 1.5}]}
    curve = loss_points([old, no_steps, last])
    assert curve["starts"] == [(1, 0), (2, 12), (3, 17)]  # session 2 counted by its last logged step
    assert curve["train"] == [(17, 2.0), (21, 1.5)]
    assert curve["eval"] == []


@pytest.mark.parametrize("count", [1, 2, 3])
def test_both_plots_are_valid_pngs(tmp_path, count):
    sessions = history(count)
    assert plot_loss_curve(sessions, tmp_path / "loss.png") == tmp_path / "loss.png"
    assert plot_forgetting(sessions, tmp_path / "forgetting.png") == tmp_path / "forgetting.png"
    assert_png(tmp_path / "loss.png")
    assert_png(tmp_path / "forgetting.png")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["forgetting.png", "loss.png"]  # no partial files left


@pytest.mark.parametrize("sessions", [[], [{"session": 1}], [make_session(1, 10, [2.0], [2.5], None)],
                                      [make_session(1, 10, [float("inf")], [2.5], float("inf"))]],
                         ids=["empty", "bare entry", "no held-out", "non-finite"])
def test_plots_without_the_data_they_show_are_still_pngs(tmp_path, sessions):
    assert_png(plot_loss_curve(sessions, tmp_path / "loss.png"))
    assert_png(plot_forgetting(sessions, tmp_path / "forgetting.png"))


def test_same_history_gives_the_same_bytes(tmp_path):
    for plot in (plot_loss_curve, plot_forgetting):
        first = plot(history(3), tmp_path / "first.png").read_bytes()
        second = plot(copy.deepcopy(history(3)), tmp_path / "second.png").read_bytes()
        assert first == second, plot.__name__


def test_different_losses_give_different_bytes(tmp_path):
    changed = history(3)
    changed[1]["loss_curve"][0]["loss"] = 4.4
    assert plot_loss_curve(history(3), tmp_path / "a.png").read_bytes() != \
        plot_loss_curve(changed, tmp_path / "b.png").read_bytes()


def test_different_forgetting_gives_different_bytes(tmp_path):
    changed = history(3)
    changed[2]["forgetting"][0]["perplexity_after"] = 95.0
    assert plot_forgetting(history(3), tmp_path / "a.png").read_bytes() != \
        plot_forgetting(changed, tmp_path / "b.png").read_bytes()


def test_one_session_forgetting_differs_from_its_held_out_perplexity(tmp_path):
    changed = history(1)
    changed[0]["held_out_perplexity"] = 45.0
    assert plot_forgetting(history(1), tmp_path / "a.png").read_bytes() != \
        plot_forgetting(changed, tmp_path / "b.png").read_bytes()


def test_write_plots_reads_the_model_directory_history(tmp_path):
    (tmp_path / HISTORY_FILE).write_text(json.dumps({"sessions": history(2)}), encoding="utf-8")
    written = write_plots(tmp_path)
    assert written == [tmp_path / LOSS_CURVE_FILE, tmp_path / FORGETTING_FILE]
    for path in written:
        assert_png(path)
    assert written[0].read_bytes() == plot_loss_curve(history(2), tmp_path / "again.png").read_bytes()


def test_write_plots_without_history_writes_nothing(tmp_path):
    assert write_plots(tmp_path) == []
    assert list(tmp_path.iterdir()) == []


def test_importing_plots_and_history_does_not_import_matplotlib():
    code = "import sys, mtn_sails.model_dir.plots, mtn_sails.model_dir.history_file; print('matplotlib' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"
