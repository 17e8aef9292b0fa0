"""End-to-end flows that compose the stages: a training session (`train`) and `pipeline`."""
from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from . import __version__, store
from .config import DEFAULT_ONNX_OUTPUT, SCRATCH_MODEL_NAME, PipelineConfig, TrainConfig
from .console import say
from .data import Record, check_data_path, file_sha256
from .detector import TrainingPlan, plan_training
from .errors import InputError
from .history import load_history
from .forgetting import Measurements, lost_answers, measure_session, retention_advice
from .history_table import forgetting_measures, forgetting_table, session_metrics
from .model_card import save_history
from .session_record import ForgettingRow, SessionRecord
from .template import PromptTemplate

SESSION_FILE = "session.json"  # in the work directory: what an interrupted session was doing


@dataclass
class SessionResult:
    """What one training session did and measured."""

    output_dir: Path
    plan: TrainingPlan
    session: SessionRecord | None  # the history entry; None on the non-main processes of a distributed run
    backup_dir: Path | None = None
    notes: list[str] = field(default_factory=list)


def load_start_model(plan: TrainingPlan, config: TrainConfig, records: Iterable[Record], template: PromptTemplate):
    """(model, tokenizer) the session starts from, as the plan says (`records` train a scratch tokenizer)."""
    if plan.source == SCRATCH_MODEL_NAME:
        from .scratch import build_scratch_model

        texts = (segment.text for record in records for segment in template.render(record))
        return build_scratch_model(texts, config.scratch_size, config.max_length, config.seed)
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from .trainer import use_fused_activation

    from .hub import hub_hint, hub_reachable

    local_only = Path(plan.source).exists() or not hub_reachable()
    try:
        tokenizer = AutoTokenizer.from_pretrained(plan.source, local_files_only=local_only)
        model_config = AutoConfig.from_pretrained(plan.source, local_files_only=local_only, trust_remote_code=False)
        use_fused_activation(model_config)
        model = AutoModelForCausalLM.from_pretrained(plan.source, config=model_config, local_files_only=local_only,
                                                     trust_remote_code=False)
    except (OSError, ValueError) as error:
        if Path(plan.source).exists():
            raise InputError(f"cannot load model from {plan.source}: {str(error).splitlines()[0]}") from None
        raise InputError(hub_hint(plan.source, reachable=not local_only, detail=str(error).splitlines()[0])) from None
    if tokenizer.pad_token is None:
        # GPT-2 and Llama have none: eos pads, without a new token or resized embeddings; the collator pads
        # the labels with -100 itself, so the eos ending a response stays learned (transformers #4122).
        tokenizer.pad_token = tokenizer.eos_token
    model.config.pad_token_id = tokenizer.pad_token_id
    if model.generation_config is not None:  # else the Trainer aligns it and prints a note about it
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


def settle_max_length(requested: int, model) -> int:
    """--max-length, capped by the model's position embeddings (the saved shape wins, and says so)."""
    positions = getattr(model.config, "n_positions", None) or getattr(model.config, "max_position_embeddings", None)
    if positions and requested > positions:
        say(f"⚠️  --max-length {requested} exceeds the model's {positions} positions; using {positions}")
        return positions
    return requested


def replay_pool(model_dir: Path, ratio: float) -> dict[int, list[Record]]:
    """The stored replay slices of earlier sessions, by session number (none when --replay is 0); which of
    them each epoch replays is decided during training (retention.py)."""
    if ratio <= 0:
        return {}
    return {number: records for number, records in store.read_slices(model_dir, store.REPLAY_DIR).items() if records}


MAX_CHECKPOINTS = 10  # per session by default: saving optimizer state every short epoch dominated many-epoch runs


def checkpoint_interval(save_steps: int, epochs: float, total_steps: int) -> int:
    """Steps between checkpoints (0: at each epoch end): --save-steps, else per epoch, at most
    MAX_CHECKPOINTS in a session."""
    if save_steps or epochs <= MAX_CHECKPOINTS:
        return save_steps
    return math.ceil(total_steps / MAX_CHECKPOINTS)


def _versions() -> dict[str, str]:
    import torch
    import transformers

    return {"mtn_sails": __version__, "torch": torch.__version__, "transformers": transformers.__version__}


def _resume_state(work: Path, config: TrainConfig, data_sha256: str) -> tuple[TrainConfig, str | None]:
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


def _reset_work_dir(work: Path, config: TrainConfig, data_sha256: str) -> None:
    """A fresh work directory for this session's checkpoints (an interrupted session's are discarded)."""
    if work.exists():
        if store.find_resume_checkpoint(work / "checkpoints"):
            say(f"🧹 Discarding an interrupted session's checkpoints in {work} (use --resume to continue one)")
        shutil.rmtree(work)
    work.mkdir(parents=True)
    (work / SESSION_FILE).write_text(json.dumps({"config": dataclasses.asdict(config), "data_sha256": data_sha256}),
                                     encoding="utf-8")


def train(config: TrainConfig, onnx_output: str | None = None) -> SessionResult:
    """One continuous-training session into config.output_dir, swapped in whole at the end.

    Under torchrun / accelerate launch every process trains; only the main one locks, writes and reports.
    """
    from .distributed import current_processes

    processes = current_processes(config.device)
    output_dir = Path(config.output_dir)
    with store.locked(output_dir) if processes.is_main() else contextlib.nullcontext():
        try:
            return _run_session(*_start_session(config, onnx_output, processes), processes,
                                onnx_output or DEFAULT_ONNX_OUTPUT)
        except BaseException:
            if processes.is_main():
                _discard_unresumable_work(output_dir)
            raise


def _start_session(config: TrainConfig, onnx_output: str | None, processes):
    """Recover the directory, read the data, settle the plan and the work directory: (config, plan, rows,
    data sha256, work directory, checkpoint to resume or None)."""
    from .tokenized import records_dataset

    output_dir = Path(config.output_dir)
    if processes.is_main():
        recovered = store.recover(output_dir)
        if recovered:
            say(f"🔧 {recovered}")
    processes.barrier()
    check_data_path(config.data_file)
    data_sha256 = file_sha256(config.data_file)
    if processes.is_main():  # the others then read the Arrow cache it wrote
        rows = records_dataset(config.data_file, data_sha256, config.preference_as)
    processes.barrier()
    if not processes.is_main():
        rows = records_dataset(config.data_file, data_sha256, config.preference_as)
    work = store.sibling(output_dir, "work")
    config, checkpoint = _resume_state(work, config, data_sha256)
    if checkpoint is None:
        plan = plan_training(config.output_dir, config.model_name, config.learning_rate, onnx_output)
    else:
        plan = TrainingPlan(**json.loads((work / "plan.json").read_text(encoding="utf-8")))
    processes.barrier()  # every process has read the directories before the main one changes them
    if processes.is_main():
        if checkpoint is None:
            _reset_work_dir(work, config, data_sha256)
        (work / "plan.json").write_text(json.dumps(dataclasses.asdict(plan)), encoding="utf-8")
    for message in plan.messages:
        say(message)
    if plan.continues and checkpoint is None:
        _say_if_trained_before(output_dir, data_sha256)
    return config, plan, rows, data_sha256, work, checkpoint


def _say_if_trained_before(output_dir: Path, data_sha256: str) -> None:
    """Continuing on a file an earlier session trained on goes on, but says so."""
    earlier = [str(s.session) for s in load_history(output_dir) if s.data_sha256 == data_sha256]
    if earlier:
        say(f"ℹ️  this file was trained in session{'s' * (len(earlier) > 1)} {', '.join(earlier)}; "
            "training on it again weighs its records twice")


def _discard_unresumable_work(output_dir: Path) -> None:
    """After a failed or interrupted session: drop its staging and, unless a checkpoint lets --resume
    continue it, its work directory (what kill -9 leaves is recovered at the next start instead)."""
    shutil.rmtree(store.sibling(output_dir, "staging"), ignore_errors=True)
    work = store.sibling(output_dir, "work")
    if not store.find_resume_checkpoint(work / "checkpoints"):
        shutil.rmtree(work, ignore_errors=True)


@dataclass
class SessionData:
    """The records of one session: what it trains on, holds out and replays."""

    rows: Any  # datasets.Dataset: every record of the data file
    sha256: str
    train_rows: Any  # datasets.Dataset
    held_out_rows: Any | None
    held_out: list[Record]
    replay_pool: dict[int, list[Record]]  # earlier sessions' stored records, by session number
    probe: list[Record]  # trained question/answer records whose answers are checked after later sessions


@dataclass
class StartModel:
    """The model and tokenizer a session starts from, and the example length they allow."""

    model: Any
    tokenizer: Any
    max_length: int
    template: PromptTemplate | None = None  # the session's template, settled against the tokenizer


def _run_session(config: TrainConfig, plan: TrainingPlan, rows, data_sha256: str, work: Path,
                 checkpoint: str | None, processes, onnx_output: str) -> SessionResult:
    """Records in -> start model -> train -> measure -> commit, swapped into config.output_dir."""
    started = time.time()
    output_dir = Path(config.output_dir)
    template = PromptTemplate.load(output_dir) if plan.continues else PromptTemplate()
    data = prepare_records(config, plan, rows, data_sha256)
    start = load_session_model(config, plan, data, template, checkpoint)
    template = start.template
    trainer, outcome = train_session(config, plan, data, start, template, work, checkpoint, processes)
    history = load_history(output_dir) if plan.continues else []
    staging = save_weights(trainer, output_dir, processes)
    if not processes.is_main():
        return SessionResult(output_dir, plan, None)
    measured = measure(trainer, staging, processes, start, template, data, output_dir, history)
    record = session_record(config, plan, data, start, outcome, measured, len(history) + 1, checkpoint, started)
    backup = commit_session(staging, output_dir, config, plan, data, history + [record], template, onnx_output)
    shutil.rmtree(work, ignore_errors=True)
    result = SessionResult(output_dir, plan, record, backup)
    report_session(result, config)
    return result


def prepare_records(config: TrainConfig, plan: TrainingPlan, rows, data_sha256: str) -> SessionData:
    """Split the file's records into trained and held out, and draw the replay of earlier sessions."""
    from .probe import PROBE_LIMIT, probe_records
    from .tokenized import iter_records, sample, split_dataset

    train_rows, held_out_rows = split_dataset(rows, config.eval_split, config.seed)
    held_out = list(iter_records(held_out_rows)) if held_out_rows is not None else []
    pool = replay_pool(Path(config.output_dir), config.replay) if plan.continues else {}
    # a bounded draw first, so that a million-record file is not read whole to pick 64 questions
    probe = probe_records(sample(train_rows, 4 * PROBE_LIMIT, config.seed), PROBE_LIMIT, config.seed)
    return SessionData(rows, data_sha256, train_rows, held_out_rows, held_out, pool, probe)


def load_session_model(config: TrainConfig, plan: TrainingPlan, data: SessionData, template: PromptTemplate,
                       checkpoint: str | None) -> StartModel:
    """The model the session trains: the plan's start, or on resume the checkpoint's weights and tokenizer;
    its template settled (--template), LoRA adapters added (--method lora)."""
    from .template import align_eos, settle_template
    from .tokenized import iter_records

    # A LoRA checkpoint holds the adapters only: the start model is wrapped again and the Trainer restores them.
    load_plan = dataclasses.replace(plan, source=checkpoint) if checkpoint and config.method == "full" else plan
    model, tokenizer = load_start_model(load_plan, config, iter_records(data.rows), template)
    template, notes = settle_template(config.template, template if plan.continues else None, tokenizer)
    for note in notes + align_eos(model, tokenizer, template):
        say(note)
    max_length = settle_max_length(config.max_length, model)
    if config.gradient_checkpointing:
        # Non-reentrant checkpointing needs no input that requires grad, so frozen embeddings (LoRA) are fine.
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if config.method == "lora":
        from .lora import parameter_counts, wrap_lora

        model = wrap_lora(model, config.lora_rank, config.lora_alpha, config.seed)
        trainable, total = parameter_counts(model)
        say(f"🪶 LoRA rank {config.lora_rank}, alpha {config.lora_alpha:g}: training {trainable:,} of {total:,} "
            f"parameters ({trainable / total:.2%}); merged into the weights at the save")
    return StartModel(model, tokenizer, max_length, template)


def train_session(config: TrainConfig, plan: TrainingPlan, data: SessionData, start: StartModel,
                  template: PromptTemplate, work: Path, checkpoint: str | None, processes):
    """Tokenise, set up the retention levers, train with the HF Trainer and interpolate; returns (trainer,
    outcome). On resume the Trainer restores the checkpoint's optimizer and schedule."""
    from .distributed import optimizer_steps
    from .retention import prepare_retention
    from .tokenized import tokenize, with_replay
    from .trainer import TrainSettings, run_training

    tokens = tokenize(data.train_rows, data.held_out_rows, start.tokenizer, template, start.max_length)
    for note in tokens.notes:
        say(note)
    # On resume the model holds the checkpoint's weights; distillation and interpolation need the session's start.
    load_start = (lambda: load_start_model(plan, config, [], template)[0]) if checkpoint and plan.continues else None
    kit = prepare_retention(config, start.model, start.tokenizer, template, data.replay_pool, len(tokens.train),
                            start.max_length, load_start)
    examples = len(tokens.train) + kit.per_epoch
    tokens.train = with_replay(tokens.train, kit.pool_examples)
    if kit.training.sampler is not None and not tokens.packed:
        kit.training.sampler.group_by_length(tokens.train["length"],
                                             config.batch_size * config.gradient_accumulation_steps)
    steps = optimizer_steps(examples, config.batch_size, processes.world_size,
                            config.gradient_accumulation_steps, config.epochs)
    say(f"🚀 Training on {len(data.train_rows)} records"
        + (f" + {kit.per_epoch} per epoch replayed from earlier sessions" if kit.per_epoch else "")
        + (f", {len(data.held_out)} held out" if data.held_out else "")
        + f" ({examples} {'blocks' if tokens.packed else 'examples'} per epoch, {steps} optimizer steps on "
        f"{processes.world_size} process{'es' * (processes.world_size > 1)}) at learning rate {plan.learning_rate}")
    if kit.frozen:
        say(f"🧊 Freezing the embeddings and the bottom {config.freeze_layers} blocks ({len(kit.frozen)} tensors)")
    settings = TrainSettings(plan.learning_rate, config.epochs, config.batch_size,
                             config.gradient_accumulation_steps, config.seed, work / "checkpoints",
                             checkpoint_interval(config.save_steps, config.epochs, steps), config.device,
                             precision=config.precision, lr_schedule=config.lr_schedule,
                             warmup_ratio=config.warmup_ratio, share_rows=not config.pad_examples)
    trainer, outcome = run_training(start.model, start.tokenizer, tokens, settings, resume_from=checkpoint,
                                    retention=kit.training)
    replayed = sum(len(drawn) for drawn in kit.training.sampler.drawn) if kit.training.sampler else 0
    alpha = interpolate_session(config, trainer.model, start, template, data, kit.start_weights) \
        if kit.start_weights is not None else None
    return trainer, dataclasses.replace(outcome, interpolation_alpha=alpha, replayed_examples=replayed)


def interpolate_session(config: TrainConfig, model, start: StartModel, template: PromptTemplate, data: SessionData,
                        start_weights) -> float:
    """--interpolate: the trained weights moved back towards the start; returns the weight applied."""
    from .retention import settle_interpolation

    output_dir = Path(config.output_dir)
    history = load_history(output_dir)
    probes = store.read_slices(output_dir, store.PROBE_DIR) if history else {}
    if config.interpolation_weight() is None:
        say("🎚️  Choosing the interpolation weight from the probe recall of earlier and new answers...")
    alpha = settle_interpolation(model, start.tokenizer, template, start_weights, config.interpolation_weight(),
                                 probes, {s.session: s.recall for s in history}, data.probe)
    say(f"🎚️  Interpolated towards the start model: start + {alpha:g} x change")
    return alpha


def measure(trainer, staging: Path, processes, start: StartModel, template: PromptTemplate, data: SessionData,
            output_dir: Path, history: list[SessionRecord]) -> Measurements:
    """The trained model scored on this session's held-out slice and probe, and on every earlier session's
    (with several processes, the full copy saved in `staging`: distributed.model_to_measure)."""
    from .distributed import model_to_measure

    model = model_to_measure(trainer, staging, processes)
    return measure_session(model, start.tokenizer, template, data.held_out[:store.MAX_HELD_OUT_RECORDS], data.probe,
                           output_dir, history, start.max_length)


def save_weights(trainer, output_dir: Path, processes) -> Path:
    """The trained weights saved into a fresh staging directory beside output_dir; returns it."""
    from .distributed import check_full_save
    from .lora import merge_adapters

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


def session_record(config: TrainConfig, plan: TrainingPlan, data: SessionData, start: StartModel, outcome,
                   measured: Measurements, number: int, checkpoint: str | None, started: float) -> SessionRecord:
    """The history entry of this session."""
    from .trainer import perplexity

    return SessionRecord(
        session=number, date=time.strftime("%Y-%m-%dT%H:%M:%S%z"), data_file=str(Path(config.data_file).resolve()),
        data_sha256=data.sha256, records=len(data.rows), train_examples=len(data.train_rows),
        eval_examples=len(data.held_out), replayed_examples=outcome.replayed_examples,
        start=str(config.output_dir) if plan.continues else plan.source,
        start_kind="resumed" if checkpoint else ("continued" if plan.continues else "base"),
        resumed_from_checkpoint=Path(checkpoint).name if checkpoint else None, base_model=plan.base_model,
        learning_rate=plan.learning_rate, epochs=config.epochs, batch_size=config.batch_size,
        max_length=start.max_length, steps=outcome.steps, train_loss=outcome.train_loss,
        eval_loss=outcome.eval_loss, eval_perplexity=outcome.eval_perplexity(),
        held_out_loss=measured.held_out_loss, held_out_perplexity=perplexity(measured.held_out_loss),
        duration_s=round(time.time() - started, 1), device=outcome.device, precision=outcome.precision,
        world_size=outcome.world_size, replay=config.replay,
        replay_weight=config.replay_weight if config.replay > 0 else None,
        interpolation_alpha=outcome.interpolation_alpha,
        seed=config.seed, versions=_versions(),
        forgetting=measured.forgetting, loss_curve=outcome.loss_curve, probe_count=measured.probe.count,
        recall=measured.probe.recall, answer_logprob=measured.probe.answer_logprob)


def commit_session(staging: Path, output_dir: Path, config: TrainConfig, plan: TrainingPlan, data: SessionData,
                   sessions: list[SessionRecord], template: PromptTemplate, onnx_output: str) -> Path | None:
    """Complete the staged directory (template, slices, history, card naming the model's and its export's
    paths, config) and swap it in; returns where the replaced model was kept, if it was."""
    from .tokenized import sample

    template.save(staging)
    if plan.continues:
        store.copy_slices(output_dir, staging)
    number = sessions[-1].session
    if data.held_out:
        store.write_slice(staging, store.HELD_OUT_DIR, number, data.held_out[:store.MAX_HELD_OUT_RECORDS],
                          store.MAX_HELD_OUT_RECORDS, config.seed)
    store.write_slice(staging, store.REPLAY_DIR, number, sample(data.train_rows, store.MAX_REPLAY_RECORDS,
                                                                config.seed), store.MAX_REPLAY_RECORDS, config.seed)
    if data.probe:
        store.write_slice(staging, store.PROBE_DIR, number, data.probe, len(data.probe), config.seed)
    save_history(staging, sessions, str(config.output_dir), onnx_output)
    (staging / "mtn_sails_config.json").write_text(json.dumps(dataclasses.asdict(config), indent=2) + "\n",
                                                  encoding="utf-8")
    backup = store.backup_path(output_dir) if plan.backup_existing and output_dir.exists() else None
    store.replace_directory(staging, output_dir, keep_old_as=backup)
    return backup


def report_session(result: SessionResult, config: TrainConfig) -> None:
    """The end-of-session summary: metrics, forgetting table, lost answers, where things are."""
    session = result.session
    say(f"✅ Session {session.session} saved to {result.output_dir} ({session_metrics(session)}, "
        f"{session.duration_s} s)")
    rows = forgetting_table(session)
    if rows:
        say(f"📊 Forgetting ({forgetting_measures(session)} of earlier sessions, then -> now):")
        for row in rows:
            say(row)
    for row in lost_answers(session.forgetting, config.keep_threshold):
        say(f"⚠️  Session {row.session} lost answers: recall {row.recall_before:.2f} -> {row.recall_after:.2f} "
            f"(keeps {row.kept:.0%}, under {config.keep_threshold:.0%}); "
            f"{retention_advice(config.replay)}")
    if result.backup_dir is not None:
        say(f"💾 The previous contents of {result.output_dir} were kept at {result.backup_dir}")


@dataclass
class PipelineResult:
    """What `pipeline` did: the data-quality report, the training session and the ONNX export."""

    quality: Any  # quality.QualityReport
    session: SessionResult
    export: Any | None  # exporter.ExportResult; None on the non-main processes of a distributed run


def pipeline(config: PipelineConfig) -> PipelineResult:
    """validate -> train -> ONNX export -> parity check."""
    from .config import ExportConfig
    from .distributed import current_processes
    from .exporter import export
    from .quality import print_report, validate_file

    processes = current_processes(config.device)
    report = validate_file(config.data_file, max_length=config.max_length,
                           preference_as=config.preference_as)
    print_report(report, as_json=False, as_result=False)
    if report.exit_code(strict=config.strict):
        from .errors import ValidationFailed

        raise ValidationFailed(f"{config.data_file} failed validation; fix the errors above "
                               "(docs/DATA_QUALITY_GUIDE.md) and run again")
    train_fields = {f.name: getattr(config, f.name) for f in dataclasses.fields(TrainConfig)}
    result = train(TrainConfig(**train_fields), onnx_output=config.onnx_output)
    exported = None
    if processes.is_main():  # the export and parity check run once, after the distributed training
        exported = export(ExportConfig(output_dir=config.output_dir, onnx_output=config.onnx_output,
                                       quantize=config.quantize))
    return PipelineResult(report, result, exported)
