"""The HF Trainer wrapper: arguments, precision and the loss (tokenising lives in tokenizing.py, batching in
collators.py, scoring in scoring.py, the progress lines in progress.py).

Imported only by the commands that train, so `--help` and `validate` never load torch.
"""
from __future__ import annotations

import contextlib
import functools
import logging
import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from transformers import Trainer, TrainerCallback, TrainingArguments
from transformers.trainer_callback import PrinterCallback

from .collators import example_collator
from ..config import FP16_NEEDS_CUDA
from ..console import say
from ..errors import InputError
from ..data.records import Record
from ..data.template import PromptTemplate
from .progress import SessionProgress
from .scoring import head_on_positions, label_positions, perplexity
from .retention import Retention, distillation_loss, distillation_positions
from .tokenizing import REPLAYED, TokenizedData

# Checkpoint rotation on filesystems with coarse mtimes; the Trainer falls back to step numbers, which is right.
warnings.filterwarnings("ignore", message="mtime may not be reliable")

# bf16 autocast on a CPU with native bf16 pays from distilgpt2's width and barely at 256 (BENCHMARKS.md
# "Whole-session speed" and cpu_threads measure both); narrower models keep fp32's arithmetic.
BF16_CPU_MIN_WIDTH = 512


@dataclass(frozen=True)
class TrainSettings:
    """Trainer hyper-parameters of one session."""

    learning_rate: float
    epochs: float
    batch_size: int
    gradient_accumulation_steps: int
    seed: int
    checkpoint_dir: Path
    save_steps: int = 0  # 0: at epoch ends, as checkpoint_every_s says
    checkpoint_every_s: float = 0.0  # without save_steps: a checkpoint once this much time passed (0: every epoch)
    device: str = "auto"
    precision: str = "auto"
    group_by_length: bool = True
    lr_schedule: str = "linear"  # a transformers scheduler name
    warmup_ratio: float = 0.0
    logits_on_labels: bool = True  # the output layer only where a token is predicted (see SailsTrainer)
    share_rows: bool = True  # a batch's pair and chat examples share rows where the model allows (collators.py)


@dataclass(frozen=True)
class TrainOutcome:
    """What the Trainer reports after a session."""

    train_loss: float | None
    eval_loss: float | None
    steps: int
    precision: str
    device: str
    world_size: int
    loss_curve: list[dict[str, float]]  # per logged epoch: step, epoch, loss or eval_loss
    interpolation_alpha: float | None = None  # the WiSE-FT weight applied after training (None: none)
    replayed_examples: int = 0  # examples drawn from the replay pool over the whole session
    epochs: float | None = None  # epochs run: --epochs, or where a session that trains until recalled stopped
    stopped: str | None = None  # why a session with --epochs left out stopped: "recalled" | "cap"
    lr_schedule: str | None = None  # the schedule after any warm-up (transformers' name)

    def eval_perplexity(self) -> float | None:
        """exp(eval loss)."""
        return perplexity(self.eval_loss)


def precision_for(device: str, requested: str = "auto", width: int | None = None) -> str:
    """The precision a session trains in: as requested, or for auto bf16/fp16 on CUDA, bf16 on a CPU with
    native bf16 for a model at least BF16_CPU_MIN_WIDTH wide (`width`: its hidden size), fp32 otherwise."""
    on_cuda = device != "cpu" and torch.cuda.is_available()
    if requested == "auto":
        if on_cuda:
            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        wide = width is not None and width >= BF16_CPU_MIN_WIDTH
        return "bf16" if wide and cpu_has_native_bf16() else "fp32"
    if requested == "fp16" and not on_cuda:
        raise InputError(FP16_NEEDS_CUDA)  # --device auto on a machine without CUDA
    if requested == "bf16" and on_cuda and not torch.cuda.is_bf16_supported():
        raise InputError("--precision bf16 is not supported by this GPU; use fp16 or fp32")
    if requested == "bf16" and not on_cuda and not cpu_has_native_bf16():
        say("⚠️  This CPU has no native bf16 (AVX-512 BF16 or AMX): --precision bf16 may be slower than fp32")
    return requested


def cpu_has_native_bf16() -> bool:
    """Whether the CPU computes bf16 matmuls natively (else bf16 autocast is emulated, and slow)."""
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, probe, lambda: False)() for probe in probes)


def training_arguments(settings: TrainSettings, has_eval: bool, packed: bool, width: int | None = None):
    """The HF TrainingArguments of a session (`width`: the model's hidden size, for --precision auto)."""
    if settings.device == "cuda" and not torch.cuda.is_available():
        raise InputError("--device cuda was asked for but no CUDA device is available")
    precision = precision_for(settings.device, settings.precision, width)
    # TrainingArguments leaves its choice in ACCELERATE_MIXED_PRECISION and reads it back, so one bf16 session
    # made every later session of the process bf16 too (the Python API runs several); the session's own decides.
    os.environ["ACCELERATE_MIXED_PRECISION"] = precision if precision in ("bf16", "fp16") else "no"
    # on a time budget the Trainer saves nothing itself; CheckpointClock asks for each checkpoint
    per_epoch = "steps" if settings.save_steps else ("no" if settings.checkpoint_every_s > 0 else "epoch")
    return TrainingArguments(
        output_dir=str(settings.checkpoint_dir),
        learning_rate=settings.learning_rate,
        lr_scheduler_type=settings.lr_schedule,
        warmup_ratio=settings.warmup_ratio,
        num_train_epochs=settings.epochs,
        per_device_train_batch_size=settings.batch_size,
        per_device_eval_batch_size=settings.batch_size,
        gradient_accumulation_steps=settings.gradient_accumulation_steps,
        seed=settings.seed,
        data_seed=settings.seed,
        save_strategy=per_epoch,
        save_steps=settings.save_steps or 500,
        save_total_limit=1,  # only the latest checkpoint is needed to --resume
        eval_strategy="epoch" if has_eval else "no",
        logging_strategy="epoch",
        report_to="none",
        disable_tqdm=True,  # progress.py prints the session's progress
        group_by_length=settings.group_by_length and not packed,
        length_column_name="length",
        remove_unused_columns=False,  # the collator drops `length`; keeping it spares a pass over the data
        # --device auto without CUDA trains on the CPU; saying so lets bf16 pass TrainingArguments' GPU check
        use_cpu=settings.device == "cpu" or not torch.cuda.is_available(),
        bf16=precision == "bf16",
        fp16=precision == "fp16",
        dataloader_num_workers=0,
        save_safetensors=True,
        ddp_find_unused_parameters=False,
        dataloader_pin_memory=torch.cuda.is_available(),
        prediction_loss_only=True,  # evaluation needs the loss only; gathering logits costs memory
    ), precision


@dataclass
class RecallStop(TrainerCallback):
    """Stops the Trainer at the first epoch end where the probe's recall reaches the target."""

    tokenizer: Any
    template: PromptTemplate
    probe: list[Record]
    target: float
    recalls: list[float] = field(default_factory=list)  # the probe's recall at each epoch end
    seconds: float = 0.0  # spent scoring the probe, inside the Trainer's training time

    def on_epoch_end(self, args, state, control, model=None, **kwargs):
        from .probe import score_probe

        began = time.perf_counter()
        recall = score_probe(model, self.tokenizer, self.template, self.probe).recall or 0.0
        self.seconds += time.perf_counter() - began
        self.recalls.append(recall)
        if recall >= self.target:
            control.should_training_stop = True
        return control

    def reached(self) -> bool:
        """True when training stopped because the target was reached."""
        return bool(self.recalls) and self.recalls[-1] >= self.target


def causal_loss(outputs, labels, num_items_in_batch=None, *, positions, on_positions: bool, weights=None):
    """The causal-LM cross-entropy at `positions` (label_positions of `labels`), each token's times its entry
    in `weights` if given, summed then divided as the Trainer asks; `on_positions`: the logits were computed
    at those positions only (head_on_positions), else at every position."""
    targets = labels[:, 1:][positions[:, :-1]]  # in the order head_on_positions keeps them
    logits = (outputs.logits if on_positions else outputs.logits[positions]).float()
    losses = torch.nn.functional.cross_entropy(logits, targets, reduction="none")
    if weights is not None:
        losses = losses * weights
    return losses.sum() / num_items_in_batch if num_items_in_batch is not None else losses.mean()


def replay_token_weights(positions, replayed, weight: float):
    """Per label token (`positions`: label_positions, in their order): `weight` on replayed examples, 1
    elsewhere; `replayed` flags rows (batch,) or, when examples share rows, tokens (batch, length). None when
    all are 1."""
    if replayed is None or weight == 1.0 or not replayed.any():
        return None
    flags = replayed.bool()
    per_label = flags[positions] if flags.dim() == 2 else flags[positions.nonzero()[:, 0]]
    return torch.where(per_label, weight, 1.0).to(torch.float32)


class _NoMaskNote(logging.Filter):
    """Drops transformers' advice to pass an attention mask, for batches of shared rows that leave it out."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "We strongly recommend passing in an `attention_mask`" not in record.getMessage()


@contextlib.contextmanager
def rows_without_mask_unremarked(inputs: dict):
    """Rows shared by several examples carry restarting positions and no attention mask on purpose (collators.py:
    transformers then masks each example apart); the model's warning about the missing mask is dropped for
    those calls only, never for a batch that has a mask to forget."""
    if "attention_mask" in inputs or "position_ids" not in inputs:
        yield
        return
    logger, note = logging.getLogger("transformers.modeling_utils"), _NoMaskNote()
    logger.addFilter(note)
    try:
        yield
    finally:
        logger.removeFilter(note)


class SailsTrainer(Trainer):
    """The HF Trainer with the retention levers (a replay sampler and a distillation term) and an
    output layer computed only where a token is predicted: prompt tokens and padding have no label,
    and over a 50,257-token vocabulary the output layer is a large share of a step's work and memory."""

    def __init__(self, *args, retention: Retention | None = None, logits_on_labels: bool = True, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.retention = retention or Retention()
        self.logits_on_labels = logits_on_labels
        self.loss_total: Any = 0.0  # the training loss summed over this run's steps, for the progress line
        self.tokens_seen = 0  # the tokens this process trained on in this run (padding left out)

    def training_step(self, model, inputs, num_items_in_batch=None):
        """The Trainer's step, counting its tokens and summing its loss for progress.py."""
        # Counted on the collator's CPU tensors (the Trainer moves them to the device inside), so no device sync;
        # rows shared by several examples have no mask and pad only each row's end.
        mask = inputs.get("attention_mask")
        self.tokens_seen += int(mask.sum()) if mask is not None else inputs["input_ids"].numel()
        loss = super().training_step(model, inputs, num_items_in_batch)
        self.loss_total = self.loss_total + loss  # a tensor: read (a host sync) only when the line is drawn
        return loss

    def progress_totals(self) -> tuple[float, int]:
        """(training loss summed over this run's steps, tokens trained on): what progress.py reads."""
        return float(self.loss_total), self.tokens_seen

    def _get_train_sampler(self, train_dataset=None):
        return self.retention.sampler or super()._get_train_sampler(train_dataset)

    def _causal_loss(self, model, inputs, num_items_in_batch, positions, on_labels: bool, weights):
        """(loss, outputs) by the Trainer's own loss path; with `on_labels` the output layer runs on the label
        `positions` only, and with `weights` (replay_token_weights) each label token's loss is weighted."""
        if not on_labels and weights is None:
            with rows_without_mask_unremarked(inputs):
                return super().compute_loss(model, inputs, True, num_items_in_batch)
        # the Trainer pops the labels and passes them to compute_loss_func
        self.compute_loss_func = functools.partial(causal_loss, positions=positions, on_positions=on_labels,
                                                   weights=weights)
        head = head_on_positions(self.accelerator.unwrap_model(model), positions) if on_labels \
            else contextlib.nullcontext()
        try:
            with head, rows_without_mask_unremarked(inputs):
                return super().compute_loss(model, inputs, True, num_items_in_batch)
        finally:
            self.compute_loss_func = None

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        replayed = inputs.pop(REPLAYED, None)
        if "position_ids" in inputs:  # shared rows: with a cache object, transformers ignores restarting positions
            inputs["use_cache"] = False
        retention = self.retention
        labels = inputs.get("labels")  # kept: the weighted loss path pops it from inputs
        labelled = labels is not None
        distilling = retention.teacher is not None and bool(retention.distill_weight) and labelled
        positions = label_positions(labels) if labelled else None
        weights = replay_token_weights(positions, replayed, retention.replay_weight) if labelled else None
        loss, outputs = self._causal_loss(model, inputs, num_items_in_batch, positions,
                                          self.logits_on_labels and labelled and not distilling, weights)
        if not distilling:
            return (loss, outputs) if return_outputs else loss
        if replayed is None:  # no replay pool this session: every row is new
            replayed = torch.zeros(len(inputs["input_ids"]), dtype=torch.long, device=inputs["input_ids"].device)
        positions = distillation_positions(labels, inputs["attention_mask"], replayed, retention.distill_on)
        rows = positions.any(dim=1)
        if rows.any():  # the start model reads only the rows it has something to say about
            with torch.no_grad():
                teacher_logits = retention.teacher(input_ids=inputs["input_ids"][rows],
                                                   attention_mask=inputs["attention_mask"][rows]).logits
            term = distillation_loss(outputs.logits[rows], teacher_logits, positions[rows])
            if self.model_accepts_loss_kwargs and num_items_in_batch is not None:
                term = term / self.current_gradient_accumulation_steps  # the CE part is already summed that way
            loss = loss + retention.distill_weight * term
        return (loss, outputs) if return_outputs else loss


class CheckpointClock(TrainerCallback):
    """A resumable checkpoint at the first epoch end `every_s` seconds after the last one (or the start), never at
    the end of training (the model is saved right after): a session shorter than that writes none, and a crash
    loses at most that much training, while each checkpoint (weights and optimizer state) costs a few seconds."""

    def __init__(self, every_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.every_s, self.clock = every_s, clock
        self.since = clock()

    def on_train_begin(self, args, state, control, **kwargs):
        self.since = self.clock()

    def on_epoch_end(self, args, state, control, **kwargs):
        ending = control.should_training_stop or state.global_step >= state.max_steps
        if not ending and self.clock() - self.since >= self.every_s:
            control.should_save = True
        return control

    def on_save(self, args, state, control, **kwargs):
        self.since = self.clock()


def run_training(model, tokenizer, data: TokenizedData, settings: TrainSettings, resume_from: str | None = None,
                 retention: Retention | None = None,
                 callbacks: Sequence[TrainerCallback] = ()) -> tuple[Any, TrainOutcome]:
    """Train with the HF Trainer (`callbacks` added to its own); returns (trainer, outcome). The caller saves the
    model."""
    args, precision = training_arguments(settings, data.eval is not None, data.packed,
                                         getattr(model.config, "hidden_size", None))
    collator = example_collator(model, tokenizer.pad_token_id, data, settings.share_rows,
                                distilling=retention is not None and retention.teacher is not None)
    train_dataset = data.train.remove_columns(["length"]) if data.packed else data.train
    eval_dataset = data.eval.remove_columns(["length"]) if data.packed and data.eval is not None else data.eval
    trainer = SailsTrainer(model=model, args=args, train_dataset=train_dataset, eval_dataset=eval_dataset,
                           data_collator=collator, processing_class=tokenizer, retention=retention,
                           logits_on_labels=settings.logits_on_labels)
    trainer.remove_callback(PrinterCallback)  # its log dicts; progress.py says what they would
    trainer.add_callback(SessionProgress(trainer.progress_totals))
    for callback in callbacks:
        trainer.add_callback(callback)
    if args.save_strategy == "no" and settings.checkpoint_every_s > 0:
        trainer.add_callback(CheckpointClock(settings.checkpoint_every_s))  # last: it sees whether training stops
    if getattr(model, "loss_type", None) is None:
        model.loss_type = "ForCausalLM"  # GPT2LMHeadModel's class name doesn't map to a loss; silences a warning
    if retention is not None and retention.teacher is not None:
        retention.teacher.to(args.device)
    result = trainer.train(resume_from_checkpoint=resume_from)
    eval_loss = final_eval_loss(trainer) if eval_dataset is not None else None
    train_loss = result.training_loss if result.global_step else None
    curve = [{key: log[key] for key in ("step", "epoch", "loss", "eval_loss") if key in log}
             for log in trainer.state.log_history if "loss" in log or "eval_loss" in log]
    return trainer, TrainOutcome(train_loss, eval_loss, result.global_step, precision,
                                 str(args.device), args.world_size, curve, epochs=round(trainer.state.epoch or 0, 2),
                                 lr_schedule=args.lr_scheduler_type.value)


def final_eval_loss(trainer) -> float:
    """The eval loss at the last step: from the epoch-end evaluation when there was one, else evaluated now."""
    last = [log for log in trainer.state.log_history if "eval_loss" in log]
    if last and last[-1].get("step") == trainer.state.global_step:
        return last[-1]["eval_loss"]
    return trainer.evaluate()["eval_loss"]

