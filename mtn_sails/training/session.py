"""The train recipe: one continuous-training session, its stages composed
(open -> records -> start model -> train -> save -> measure -> commit -> report)."""
from __future__ import annotations

import contextlib
import dataclasses
import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import __version__
from ..config import DEFAULT_ONNX_OUTPUT, TrainConfig
from ..console import say
from ..data.files import check_data_path, file_sha256
from ..data.records import Record
from ..data.template import PromptTemplate
from ..model_dir import disk, store
from ..model_dir.history_file import load_history
from ..model_dir.model_card import save_history
from ..model_dir.session_record import SessionRecord
from .distributed import Processes, current_processes
from .base_answers import BASE_SESSION, BaseAnswers, settle_base
from .forgetting import Measurements, measure_session
from .phases import PhaseClock
from .plan import TrainingPlan, plan_training
from .report import report_session, say_if_trained_before
from .start_model import StartModel, load_session_model, load_start_model
from .stopping import EpochPlan, epoch_plan, lr_schedule, stop_message
from .work_dir import (checkpoint_interval, discard_unresumable_work, reset_work_dir, resume_state, resumed_plan,
                       save_plan, work_dir)


@dataclass
class Session:
    """What the stages of one training session share: its settings, plan, processes and earlier sessions."""

    config: TrainConfig
    plan: TrainingPlan
    processes: Processes
    rows: Any  # datasets.Dataset: every record of the data file
    data_sha256: str
    work: Path
    checkpoint: str | None  # the Trainer checkpoint a --resume continues, else None
    onnx_output: str
    history: list[SessionRecord]  # the earlier sessions, read once (empty from a base)
    started: float = field(default_factory=time.time)
    phases: PhaseClock = field(default_factory=PhaseClock)

    def output_dir(self) -> Path:
        """The model directory this session swaps its result into."""
        return Path(self.config.output_dir)

    def earlier_template(self) -> PromptTemplate:
        """The template the model was trained with (a fresh default from a base)."""
        return PromptTemplate.load(self.output_dir()) if self.plan.continues else PromptTemplate()


@dataclass
class SessionData:
    """The records of one session: what it trains on, holds out and replays."""

    train_rows: Any  # datasets.Dataset
    held_out_rows: Any | None
    held_out: list[Record]
    replay_pool: dict[int, list[Record]]  # earlier sessions' stored records, by session number
    probe: list[Record]  # trained question/answer records whose answers are checked after later sessions
    base: BaseAnswers | None = None  # session 0: the base's own answers, probed and replayed (base_answers.py)


@dataclass
class SessionResult:
    """What one training session did and measured."""

    output_dir: Path
    plan: TrainingPlan
    session: SessionRecord | None  # the history entry; None on the non-main processes of a distributed run
    backup_dir: Path | None = None
    notes: list[str] = field(default_factory=list)


def train(config: TrainConfig, onnx_output: str | None = None) -> SessionResult:
    """One continuous-training session into config.output_dir, swapped in whole at the end.

    Under torchrun / accelerate launch every process trains; only the main one locks, writes and reports.
    """
    processes = current_processes(config.device)
    output_dir = Path(config.output_dir)
    writes = session_writes(output_dir)
    with writes.translated(), store.locked(output_dir) if processes.is_main() else contextlib.nullcontext():
        try:
            return run_session(open_session(config, onnx_output or DEFAULT_ONNX_OUTPUT, processes,
                                            checks_onnx=onnx_output is not None), writes)
        except BaseException as error:
            # named before the cleanup below removes the half-written file
            fault = writes.fault(error) if isinstance(error, Exception) else None
            if processes.is_main():
                discard_unresumable_work(output_dir)
            if fault is not None:
                raise fault from None
            raise


def session_writes(output_dir: Path) -> disk.Writes:
    """Where a session into output_dir writes (staging, work directory), with what a session from the model
    already there needs, until the loaded start model tells (check_room)."""
    weights = disk.weight_bytes(output_dir)
    return disk.Writes(output_dir, (store.sibling(output_dir, "staging"), work_dir(output_dir)),
                       disk.session_bytes(weights) if weights else None, weights or None)


def check_room(session: Session, writes: disk.Writes, model) -> None:
    """Refuse the session before it trains when its checkpoints, weights and slices cannot be written."""
    config = session.config
    weights = sum(parameter.numel() * parameter.element_size() for parameter in model.parameters())
    carried = disk.tree_bytes(session.output_dir()) - disk.weight_bytes(session.output_dir()) \
        if session.plan.continues else 0
    one_checkpoint = config.epochs is not None and config.epochs <= 1 and not config.save_steps
    writes.check_room(disk.session_bytes(weights, carried + Path(config.data_file).stat().st_size,
                                         checkpoints_at_once=1 if one_checkpoint else disk.CHECKPOINTS_AT_ONCE),
                      weights)


def run_session(session: Session, writes: disk.Writes) -> SessionResult:
    """Records in -> start model -> room checked -> train -> measure -> commit, swapped into the output directory."""
    from .tokenizing import iter_records

    clock = session.phases
    with clock.phase("records"):
        data = prepare_records(session)
    with clock.phase("load"):
        start = load_session_model(session.config, session.plan, iter_records(session.rows),
                                   session.earlier_template(), session.checkpoint)
    check_room(session, writes, start.model)
    with clock.phase("session_0"):
        data.base = settle_base(session.config, session.plan, session.history, session.work, session.processes,
                                start, resumed=session.checkpoint is not None)
    # Session 1 only probes the base by default: six facts with one of its answers replayed missed their recall and
    # lost the base's general answers too. From session 2 on, its slice is replayed with every earlier session's.
    if data.base and not session.plan.continues and session.config.replay_base == "first" and session.config.replay:
        data.replay_pool = {BASE_SESSION: data.base.replay}
    trainer, outcome = train_session(session, data, start)
    with clock.phase("save"):
        staging = save_weights(trainer, session)
    if not session.processes.is_main():
        return SessionResult(session.output_dir(), session.plan, None)
    with clock.phase("measure"):
        measured = measure(trainer, staging, session, start, data)
    record = session_record(session, data, start, outcome, measured)
    backup = commit_session(staging, session, data, record, start.template)
    shutil.rmtree(session.work, ignore_errors=True)
    result = SessionResult(session.output_dir(), session.plan, record, backup)
    report_session(record, session.output_dir(), backup, session.config)
    return result


def open_session(config: TrainConfig, onnx_output: str, processes: Processes, checks_onnx: bool) -> Session:
    """Recover the directory, read the data, settle the plan (or the resumed one) and the work directory."""
    from .tokenizing import records_dataset

    output_dir = Path(config.output_dir)
    if processes.is_main():
        recovered = store.recover(output_dir)
        if recovered:
            say(f"🔧 {recovered}")
    processes.barrier()
    check_data_path(config.data_file)
    data_sha256 = file_sha256(config.data_file)
    rows = processes.main_first(lambda: records_dataset(config.data_file, data_sha256, config.preference_as))
    work = work_dir(output_dir)
    config, checkpoint = resume_state(work, config, data_sha256)
    plan = resumed_plan(work) if checkpoint else plan_training(config.output_dir, config.model_name,
                                                                 config.learning_rate,
                                                                 onnx_output if checks_onnx else None)
    processes.barrier()  # every process has read the directories before the main one changes them
    if processes.is_main():
        if checkpoint is None:
            reset_work_dir(work, config, data_sha256)
        save_plan(work, plan)
    for message in plan.messages:
        say(message)
    history = load_history(output_dir) if plan.continues else []
    if plan.continues and checkpoint is None:
        say_if_trained_before(history, data_sha256)
    return Session(config, plan, processes, rows, data_sha256, work, checkpoint, onnx_output, history)


def replay_pool(model_dir: Path, ratio: float) -> dict[int, list[Record]]:
    """The stored replay slices of earlier sessions, by session number (none when --replay is 0); which of
    them each epoch replays is decided during training (retention.py)."""
    if ratio <= 0:
        return {}
    return {number: records for number, records in store.read_slices(model_dir, store.REPLAY_DIR).items() if records}


def prepare_records(session: Session) -> SessionData:
    """Split the file's records into trained and held out, and draw the replay of earlier sessions."""
    from .probe import PROBE_LIMIT, probe_records
    from .tokenizing import iter_records, sample, split_dataset

    config = session.config
    train_rows, held_out_rows = split_dataset(session.rows, config.eval_split, config.seed)
    held_out = list(iter_records(held_out_rows)) if held_out_rows is not None else []
    pool = replay_pool(session.output_dir(), config.replay) if session.plan.continues else {}
    # a bounded draw first, so that a million-record file is not read whole to pick 64 questions
    probe = probe_records(sample(train_rows, 4 * PROBE_LIMIT, config.seed), PROBE_LIMIT, config.seed)
    return SessionData(train_rows, held_out_rows, held_out, pool, probe)


def train_session(session: Session, data: SessionData, start: StartModel):
    """Tokenise, set up the retention levers, train and interpolate: (trainer, outcome); resumes a checkpoint."""
    from .distributed import optimizer_steps
    from .null_space import protected_records
    from .retention import prepare_retention
    from .tokenizing import tokenize, with_replay
    from .trainer import RecallStop, TrainSettings, run_training

    config, plan, processes, clock = session.config, session.plan, session.processes, session.phases
    with clock.phase("tokenise"):
        tokens = tokenize(data.train_rows, data.held_out_rows, start.tokenizer, start.template, start.max_length)
    for note in tokens.notes:
        say(note)
    # On resume the model holds the checkpoint's weights; distillation and interpolation need the session's start.
    load_start = (lambda: load_start_model(plan, config, [], start.template)[0]) \
        if session.checkpoint and plan.continues else None
    with clock.phase("levers"):  # the replay pool's scores, the start model's copy, --null-space's covariances
        kit = prepare_retention(config, start.model, start.tokenizer, start.template, data.replay_pool, tokens.train,
                                start.max_length, load_start, data.probe,
                                protected_records(config.null_space, session.output_dir(), plan.continues, data.base))
    examples = len(tokens.train) + kit.per_epoch
    tokens.train = with_replay(tokens.train, kit.pool_examples)
    if kit.training.sampler is not None and not tokens.packed:
        kit.training.sampler.group_by_length(tokens.train["length"],
                                             config.batch_size * config.gradient_accumulation_steps)
    epochs = epoch_plan(config.epochs, config.max_epochs, config.recall_target, bool(data.probe))
    stop = RecallStop(start.tokenizer, start.template, data.probe, epochs.recall_target) \
        if epochs.recall_target is not None else None
    steps = optimizer_steps(examples, config.batch_size, processes.world_size,
                            config.gradient_accumulation_steps, epochs.epochs)
    _say_training(session, data, examples, tokens.packed, kit, steps, epochs)
    on_clock = not config.save_steps and config.checkpoint_minutes > 0  # CheckpointClock decides
    settings = TrainSettings(plan.learning_rate, epochs.epochs, config.batch_size,
                             config.gradient_accumulation_steps, config.seed, session.work / "checkpoints",
                             0 if on_clock else checkpoint_interval(config.save_steps, epochs.epochs, steps),
                             checkpoint_every_s=60 * config.checkpoint_minutes if on_clock else 0.0,
                             device=config.device,
                             precision=config.precision, lr_schedule=lr_schedule(epochs, config.lr_schedule),
                             warmup_ratio=config.warmup_ratio, share_rows=not config.pad_examples)
    with clock.phase("train"):
        trainer, outcome = run_training(start.model, start.tokenizer, tokens, settings,
                                        resume_from=session.checkpoint, retention=kit.training,
                                        callbacks=[stop] * bool(stop) + kit.callbacks)
    if stop:
        clock.move(stop.seconds, "train", "recall_checks")
    message = stop_message(epochs, stop.recalls if stop else [], outcome.epochs)
    if message:
        say(message)
    replayed = sum(len(drawn) for drawn in kit.training.sampler.drawn) if kit.training.sampler else 0
    with clock.phase("interpolate") if kit.start_weights is not None else contextlib.nullcontext():
        alpha = interpolate_session(session, trainer.model, start, data, kit.start_weights) \
            if kit.start_weights is not None else None
    stopped = ("recalled" if stop.reached() else "cap") if stop else None
    return trainer, dataclasses.replace(outcome, interpolation_alpha=alpha, replayed_examples=replayed, stopped=stopped)


def replayed_from(data: SessionData) -> str:
    """What a session's replayed examples are, as its opening line names them."""
    return "the base's own answers" if set(data.replay_pool) == {BASE_SESSION} else "earlier sessions"


def _say_training(session: Session, data: SessionData, examples: int, packed: bool, kit, steps: int,
                  epochs: EpochPlan) -> None:
    """The line that opens training: records, replay, held out, examples, steps, processes, rate, epochs."""
    world_size = session.processes.world_size
    until = f", until {epochs.recall_target:.0%} of its answers are recalled" if epochs.recall_target else ""
    say(f"🚀 Training on {len(data.train_rows)} records"
        + (f" + {kit.per_epoch} per epoch replayed from {replayed_from(data)}" if kit.per_epoch else "")
        + (f", {len(data.held_out)} held out" if data.held_out else "")
        + f" ({examples} {'blocks' if packed else 'examples'} per epoch, {'up to ' * bool(until)}{steps} optimizer "
        f"steps on {world_size} process{'es' * (world_size > 1)}) at learning rate {session.plan.learning_rate}"
        + (f", at most {epochs.epochs:g} epochs{until}" if until else ""))
    if kit.frozen:
        say(f"🧊 Freezing the embeddings and the bottom {session.config.freeze_layers} blocks "
            f"({len(kit.frozen)} tensors)")
    for lever in (lever for lever in (kit.sparse, kit.null_space) if lever is not None):
        say(lever.line())


def interpolate_session(session: Session, model, start: StartModel, data: SessionData, start_weights) -> float:
    """--interpolate: the trained weights moved back towards the start; returns the weight applied."""
    from .interpolation import protected_probes, settle_interpolation

    config = session.config
    stored = store.read_slices(session.output_dir(), store.PROBE_DIR) if session.history else {}
    probes, recall_before = protected_probes(stored, session.history, data.base)
    if config.interpolation_weight() is None:
        say("🎚️  Choosing the interpolation weight from the probe recall of earlier and new answers...")
    alpha = settle_interpolation(model, start.tokenizer, start.template, start_weights, config.interpolation_weight(),
                                 probes, recall_before, data.probe)
    say(f"🎚️  Interpolated towards the start model: start + {alpha:g} x change")
    return alpha


def save_weights(trainer, session: Session) -> Path:
    """The trained weights saved into a fresh staging directory beside the output directory; returns it."""
    from .distributed import check_full_save
    from .lora import merge_adapters

    output_dir, processes = session.output_dir(), session.processes
    staging = store.sibling(output_dir, "staging")
    if processes.is_main():
        store.fresh_staging(output_dir)
    processes.barrier()
    trainer.model = merge_adapters(trainer.model)  # --method lora: the directory holds a plain transformers model
    trainer.save_model(str(staging))  # every process calls it (sharded engines gather); the main one writes
    processes.barrier()
    if processes.is_main():
        (staging / "training_args.bin").unlink(missing_ok=True)  # a pickle; the config is saved as JSON
        check_full_save(staging)
    return staging


def measure(trainer, staging: Path, session: Session, start: StartModel, data: SessionData) -> Measurements:
    """The trained model scored on this session's held-out slice and probe, and on every earlier session's
    (with several processes, the full copy saved in `staging`: distributed.model_to_measure)."""
    from .distributed import model_to_measure

    model = model_to_measure(trainer, staging, session.processes)
    return measure_session(model, start.tokenizer, start.template, data.held_out[:store.MAX_HELD_OUT_RECORDS],
                           data.probe, session.output_dir(), session.history, start.max_length, data.base)


def _versions() -> dict[str, str]:
    import torch
    import transformers

    return {"mtn_sails": __version__, "torch": torch.__version__, "transformers": transformers.__version__}


def session_record(session: Session, data: SessionData, start: StartModel, outcome,
                   measured: Measurements) -> SessionRecord:
    """The history entry of this session."""
    from .scoring import perplexity

    config, plan, checkpoint = session.config, session.plan, session.checkpoint
    return SessionRecord(
        session=len(session.history) + 1, date=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        data_file=str(Path(config.data_file).resolve()), data_sha256=session.data_sha256, records=len(session.rows),
        train_examples=len(data.train_rows), eval_examples=len(data.held_out),
        replayed_examples=outcome.replayed_examples,
        start=str(config.output_dir) if plan.continues else plan.source,
        start_kind="resumed" if checkpoint else ("continued" if plan.continues else "base"),
        resumed_from_checkpoint=Path(checkpoint).name if checkpoint else None, base_model=plan.base_model,
        learning_rate=plan.learning_rate, lr_schedule=outcome.lr_schedule, epochs=outcome.epochs,
        batch_size=config.batch_size, max_length=start.max_length, steps=outcome.steps, train_loss=outcome.train_loss,
        eval_loss=outcome.eval_loss, eval_perplexity=outcome.eval_perplexity(),
        held_out_loss=measured.held_out_loss, held_out_perplexity=perplexity(measured.held_out_loss),
        duration_s=round(time.time() - session.started, 1), phase_s=dict(session.phases.seconds), device=outcome.device,
        precision=outcome.precision, world_size=outcome.world_size, replay=config.replay,
        replay_weight=config.replay_weight if config.replay > 0 else None,
        interpolation_alpha=outcome.interpolation_alpha, stopped=outcome.stopped,
        seed=config.seed, versions=_versions(),
        forgetting=measured.forgetting, loss_curve=outcome.loss_curve, probe_count=measured.probe.count,
        recall=measured.probe.recall, answer_logprob=measured.probe.answer_logprob,
        **(_base_fields(data.base) if data.base and not plan.continues else {}))


def _base_fields(base: BaseAnswers) -> dict:
    return {"base_probe_count": len(base.probe), "base_recall": base.score.recall,
            "base_answer_logprob": base.score.answer_logprob}


def commit_session(staging: Path, session: Session, data: SessionData, record: SessionRecord,
                   template: PromptTemplate) -> Path | None:
    """Complete the staged directory (template, slices, history, card naming the model's and its export's
    paths, config) and swap it in; returns where the replaced model was kept, if it was."""
    from .base_answers import write_base_slices
    from .tokenizing import sample

    config, output_dir, number = session.config, session.output_dir(), record.session
    template.save(staging)
    if session.plan.continues:
        store.copy_slices(output_dir, staging)
    if data.held_out:
        store.write_slice(staging, store.HELD_OUT_DIR, number, data.held_out[:store.MAX_HELD_OUT_RECORDS],
                          store.MAX_HELD_OUT_RECORDS, config.seed)
    store.write_slice(staging, store.REPLAY_DIR, number, sample(data.train_rows, store.MAX_REPLAY_RECORDS,
                                                                config.seed), store.MAX_REPLAY_RECORDS, config.seed)
    if data.base and not session.plan.continues:
        write_base_slices(staging, data.base)
    if data.probe:
        store.write_slice(staging, store.PROBE_DIR, number, data.probe, len(data.probe), config.seed)
    save_history(staging, session.history + [record], str(config.output_dir), session.onnx_output)
    (staging / "mtn_sails_config.json").write_text(json.dumps(dataclasses.asdict(config), indent=2) + "\n",
                                                  encoding="utf-8")
    backup = store.backup_path(output_dir) if session.plan.backup_existing and output_dir.exists() else None
    store.replace_directory(staging, output_dir, keep_old_as=backup)
    return backup
