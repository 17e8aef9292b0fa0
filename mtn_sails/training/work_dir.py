"""A session's work directory beside the model: its checkpoints, what it was doing, and the resume rule
(continue ≠ resume: a resumed session restores its own Trainer checkpoint and settings)."""
from __future__ import annotations

import dataclasses
import json
import math
import shutil
from pathlib import Path

from ..config import TrainConfig
from ..console import say
from ..errors import InputError
from ..model_dir import store
from .plan import TrainingPlan

SESSION_FILE = "session.json"  # what an interrupted session was doing: its config and data file's sha256
PLAN_FILE = "plan.json"  # the interrupted session's plan, so a resume loads what it loaded
MAX_CHECKPOINTS = 10  # per session by default: saving optimizer state every short epoch dominated many-epoch runs


def work_dir(output_dir: Path) -> Path:
    """The work directory of sessions into output_dir."""
    return store.sibling(output_dir, "work")


def checkpoint_interval(save_steps: int, epochs: float, total_steps: int) -> int:
    """Steps between checkpoints (0: at each epoch end): --save-steps, else per epoch, at most
    MAX_CHECKPOINTS in a session."""
    if save_steps or epochs <= MAX_CHECKPOINTS:
        return save_steps
    return math.ceil(total_steps / MAX_CHECKPOINTS)


def resume_state(work: Path, config: TrainConfig, data_sha256: str) -> tuple[TrainConfig, str | None]:
    """With --resume, the interrupted session's config and last complete checkpoint (reads only)."""
    if not config.resume:
        return config, None
    checkpoint = store.find_resume_checkpoint(work / "checkpoints")
    saved = work / SESSION_FILE
    if not saved.is_file() or checkpoint is None:
        raise InputError(f"nothing to resume for {config.output_dir}: no interrupted session with a checkpoint; "
                         "run without --resume")
    state = json.loads(saved.read_text(encoding="utf-8"))
    if state["data_sha256"] != data_sha256:
        raise InputError(f"--resume: {config.data_file} changed since the interrupted session; "
                         "run without --resume to start a new session")
    say(f"⏯️  Resuming the interrupted session from {checkpoint.name} with its own settings")
    return dataclasses.replace(TrainConfig(**state["config"]), resume=True), str(checkpoint)


def resumed_plan(work: Path) -> TrainingPlan:
    """The plan the interrupted session in `work` ran with."""
    return TrainingPlan(**json.loads((work / PLAN_FILE).read_text(encoding="utf-8")))


def reset_work_dir(work: Path, config: TrainConfig, data_sha256: str) -> None:
    """A fresh work directory for this session's checkpoints (an interrupted session's are discarded)."""
    if work.exists():
        if store.find_resume_checkpoint(work / "checkpoints"):
            say(f"🧹 Discarding an interrupted session's checkpoints in {work} (use --resume to continue one)")
        shutil.rmtree(work)
    work.mkdir(parents=True)
    (work / SESSION_FILE).write_text(json.dumps({"config": dataclasses.asdict(config), "data_sha256": data_sha256}),
                                     encoding="utf-8")


def save_plan(work: Path, plan: TrainingPlan) -> None:
    """Keep the session's plan beside its checkpoints, for --resume."""
    (work / PLAN_FILE).write_text(json.dumps(dataclasses.asdict(plan)), encoding="utf-8")


def discard_unresumable_work(output_dir: Path) -> None:
    """After a failed or interrupted session: drop its staging and, unless a checkpoint lets --resume
    continue it, its work directory (what kill -9 leaves is recovered at the next start instead)."""
    shutil.rmtree(store.sibling(output_dir, "staging"), ignore_errors=True)
    work = work_dir(output_dir)
    if not store.find_resume_checkpoint(work / "checkpoints"):
        shutil.rmtree(work, ignore_errors=True)
