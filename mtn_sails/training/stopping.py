"""How long a session trains when --epochs is left out: until its own answers are recalled, within a cap.

A fixed epoch count is the wrong unit for what a user wants (their answers learned): a few epochs at the
guide's 5e-5 teach a pretrained base the shape of the answers and none of them, and many epochs over a large
file waste hours. So at each epoch's end the session answers its probe (the records it checks after later
sessions, teacher-forced, one pass) and stops once the share recalled reaches --recall-target; at
--max-epochs it stops anyway and says how far it got. Data with no question/answer records trains
DEFAULT_EPOCHS. The in-loop check scores in the session's training precision; the figure the history keeps is
measured after training in fp32 (distributed.model_to_measure).
"""
from __future__ import annotations

from dataclasses import dataclass

DEFAULT_EPOCHS = 3.0  # the guide's examples, for data with nothing to recall (plain text)
# A session that trains until recalled stops when its answers are learned, usually long before --max-epochs; a
# schedule decaying to zero at the cap would teach its last epochs at a fraction of the guide's rate. On the
# real base (tuning seed 11) a 1e-5 session reached its recall under constant and hit the cap under linear decay.
UNTIL_RECALLED_SCHEDULE = "constant"
FIXED_EPOCHS_SCHEDULE = "linear"


@dataclass(frozen=True)
class EpochPlan:
    """How many epochs a session runs: a fixed count, or up to a cap until its answers are recalled."""

    epochs: float  # what the Trainer is given: the fixed count, or the cap
    recall_target: float | None = None  # None: a fixed count


def epoch_plan(epochs: float | None, max_epochs: float, recall_target: float, has_probe: bool) -> EpochPlan:
    """--epochs when given; else until `recall_target` within `max_epochs` when there are answers to recall,
    else DEFAULT_EPOCHS."""
    if epochs is not None:
        return EpochPlan(epochs)
    if has_probe:
        return EpochPlan(max_epochs, recall_target)
    return EpochPlan(min(DEFAULT_EPOCHS, max_epochs))


def lr_schedule(plan: EpochPlan, chosen: str | None) -> str:
    """--lr-schedule when given; else constant for a session that trains until recalled, linear for a fixed
    count."""
    if chosen is not None:
        return chosen
    return UNTIL_RECALLED_SCHEDULE if plan.recall_target is not None else FIXED_EPOCHS_SCHEDULE


def stop_message(plan: EpochPlan, recalls: list[float], epochs_run: float | None) -> str | None:
    """The one line that says why a session with --epochs left out stopped, from the probe's recall at each epoch
    end (None for a fixed count)."""
    if plan.recall_target is None:
        return None
    recall = recalls[-1] if recalls else 0.0
    if recall >= plan.recall_target:
        return (f"🎯 Stopped after epoch {epochs_run or 0:g}: {recall:.0%} of this session's answers recalled "
                f"(target {plan.recall_target:.0%})")
    return (f"⏱️  Stopped at the cap of {plan.epochs:g} epochs with {recall:.0%} of this session's answers "
            f"recalled (target {plan.recall_target:.0%}); --max-epochs or --learning-rate would teach the rest")
