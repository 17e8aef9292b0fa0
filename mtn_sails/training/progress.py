"""What a session shows while it trains, in place of the Trainer's bar and log dicts: on a terminal one line
rewritten in place (step, epoch, loss, tokens/s, time left), elsewhere (CI, a log file) one plain line per epoch.

Imported only by the commands that train (it imports transformers).
"""
from __future__ import annotations

import math
import shutil
import sys
import time
from typing import Callable

from transformers import TrainerCallback

from ..console import end_live, live, say

REFRESH_SECONDS = 0.5  # the terminal line is drawn at most this often (and at the first and last step)


def duration(seconds: float) -> str:
    """A span of time as people read it: '42s', '3m05s', '1h02m'."""
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def epochs_text(epoch: float) -> str:
    """1.0 -> '1', 1.25 -> '1.25'."""
    return f"{round(epoch, 2):g}"


class SessionProgress(TrainerCallback):
    """The session's progress lines. `totals`: (the training loss summed over this run's steps, the tokens trained
    on) so far (SailsTrainer.progress_totals); the terminal line shows the loss's mean over the current epoch,
    which is the loss the Trainer logs for that epoch when it ends."""

    def __init__(self, totals: Callable[[], tuple[float, int]], terminal: bool | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.totals = totals
        self.terminal = sys.stdout.isatty() if terminal is None else terminal
        self.clock = clock
        self.training = False
        self.train_loss: float | None = None  # the last epoch's, as the Trainer logged it
        self.eval_loss: float | None = None

    def on_train_begin(self, args, state, control, **kwargs):
        """Note where this run starts: a resumed session starts at its checkpoint's step."""
        self.training, self.started, self.drawn = True, self.clock(), -math.inf
        self.first_step = state.global_step
        self._epoch_start(state)

    def _epoch_start(self, state) -> None:
        """Where the current epoch's loss mean starts counting."""
        self.epoch_step, self.epoch_loss = state.global_step, self.totals()[0]

    def on_epoch_begin(self, args, state, control, **kwargs):
        """The terminal line's loss is this epoch's mean."""
        self._epoch_start(state)

    def on_step_end(self, args, state, control, **kwargs):
        """Redraw the terminal line, at most every REFRESH_SECONDS."""
        if self.terminal and state.is_world_process_zero and self.clock() - self.drawn >= REFRESH_SECONDS:
            self._draw(args, state)

    def on_log(self, args, state, control, logs=None, **kwargs):
        """Keep the epoch's losses; without evaluation, the epoch's plain line is complete."""
        logs = logs or {}
        if "loss" in logs:
            self.train_loss = logs["loss"]
            if args.eval_strategy == "no":
                self._epoch_line(state)
        if "eval_loss" in logs:
            self.eval_loss = logs["eval_loss"]

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        """The epoch-end evaluation completes the epoch's plain line (the one after training says nothing)."""
        if self.training:
            self.eval_loss = (metrics or {}).get("eval_loss", self.eval_loss)
            self._epoch_line(state)

    def on_train_end(self, args, state, control, **kwargs):
        """The terminal line drawn a last time, then a newline: it stays as the session's summary."""
        if self.terminal and state.is_world_process_zero and self.training:
            self._draw(args, state, final=True)
            end_live()
        self.training = False

    def _epoch_line(self, state) -> None:
        """The plain line of an epoch that ended, off a terminal: 'epoch 1/3: loss …, eval loss … (12s)'."""
        if self.terminal or not state.is_world_process_zero:
            return
        parts = [f"loss {self.train_loss:.4f}" if self.train_loss is not None else "loss -"]
        if self.eval_loss is not None:
            parts.append(f"eval loss {self.eval_loss:.4f}")
        say(f"   epoch {epochs_text(state.epoch or 0)}/{epochs_text(state.num_train_epochs)}: {', '.join(parts)} "
            f"({duration(self.clock() - self.started)})")

    def _draw(self, args, state, final: bool = False) -> None:
        """One state of the terminal line: 'step 12/40  epoch 1.20/4  loss 3.2145  eval 3.3012  1,234 tok/s  35s left'
        (short enough for 80 columns; tok/s: every process's, estimated from this one's)."""
        self.drawn, elapsed = self.clock(), self.clock() - self.started
        steps_done, (loss_total, tokens) = state.global_step - self.first_step, self.totals()
        parts = [f"step {state.global_step}/{state.max_steps}",
                 f"epoch {state.epoch or 0:.2f}/{epochs_text(state.num_train_epochs)}"]
        if state.global_step > self.epoch_step:
            parts.append(f"loss {(loss_total - self.epoch_loss) / (state.global_step - self.epoch_step):.4f}")
        if self.eval_loss is not None:
            parts.append(f"eval {self.eval_loss:.4f}")
        if tokens and elapsed > 0:
            parts.append(f"{tokens * args.world_size / elapsed:,.0f} tok/s")
        if final:
            parts.append(f"took {duration(elapsed)}")
        elif steps_done:
            parts.append(f"{duration(elapsed / steps_done * (state.max_steps - state.global_step))} left")
        live("   " + "  ".join(fit(parts, shutil.get_terminal_size().columns - 4)))


def fit(parts: list[str], width: int) -> list[str]:
    """`parts` without the least telling (eval, then epoch, then tok/s) until they fit in `width` columns."""
    for drop in ("eval ", "epoch ", "tok/s"):
        if len("  ".join(parts)) <= width:
            break
        parts = [part for part in parts if drop not in part]
    return parts
