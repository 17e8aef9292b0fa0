"""The HF Trainer wrapper: tokenise rendered records, pack or pad, train, evaluate.

Imported only by the commands that train, so `--help` and `validate` never load torch.
"""
from __future__ import annotations

import math
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import torch
from datasets import Dataset
from transformers import Trainer, TrainerCallback, TrainingArguments, default_data_collator
from transformers.trainer_callback import PrinterCallback, ProgressCallback

from .data import Record
from .console import say
from .errors import InputError
from .template import PromptTemplate, Segment

# Checkpoint rotation on filesystems with coarse mtimes; the Trainer falls back to step numbers, which is right.
warnings.filterwarnings("ignore", message="mtime may not be reliable")

IGNORE_INDEX = -100  # label value the loss ignores (prompt tokens, padding)
MIN_BLOCK_TOKENS = 8  # below this, packed plain text has nothing to learn from
MAX_EVAL_RECORDS = 500  # held-out records evaluated per session, so evaluation stays cheap


def tokenize_segments(segments: Sequence[Segment], token_ids: Sequence[list[int]], eos_id: int,
                      max_length: int) -> dict[str, list[int]]:
    """input_ids and labels of one example from its segments' token ids; eos after each turn.

    The eos that ends a response stays in the labels so the model learns to stop (transformers #4122).
    Too long: a prompt over half the budget loses its beginning, so the response keeps at least half;
    then the end is cut.
    """
    input_ids: list[int] = []
    labels: list[int] = []
    for segment, ids in zip(segments, token_ids):
        ids = list(ids) + ([eos_id] if segment.ends_turn else [])
        input_ids += ids
        labels += ids if segment.is_target else [IGNORE_INDEX] * len(ids)
    if len(input_ids) > max_length:
        prompt_length = next((i for i, label in enumerate(labels) if label != IGNORE_INDEX), len(labels))
        cut = max(0, prompt_length - max_length // 2)
        input_ids, labels = input_ids[cut:], labels[cut:]
    return {"input_ids": input_ids[:max_length], "labels": labels[:max_length]}


def pack_blocks(token_lists: Iterable[list[int]], block_size: int) -> list[list[int]]:
    """Concatenate token lists and cut them into blocks of `block_size`; the remainder is dropped."""
    flat = [token for tokens in token_lists for token in tokens]
    usable = len(flat) - len(flat) % block_size
    return [flat[start:start + block_size] for start in range(0, usable, block_size)]


def block_size_for(total_tokens: int, max_length: int) -> int:
    """The packing block size: --max-length, shrunk (loudly, by the caller) when the data is smaller."""
    if total_tokens < MIN_BLOCK_TOKENS:
        raise InputError(f"the data has only {total_tokens} tokens; at least {MIN_BLOCK_TOKENS} are needed "
                         "to train on plain text")
    return min(max_length, total_tokens)


def perplexity(loss: float | None) -> float | None:
    """exp(loss), inf on overflow, None without a loss."""
    if loss is None:
        return None
    try:
        return math.exp(loss)
    except OverflowError:
        return float("inf")


@dataclass
class PaddingCollator:
    """Pads a batch to its longest example: input_ids with pad, labels with IGNORE_INDEX (no fixed length).

    Other keys (the `length` column used for grouping) are dropped.
    """

    pad_token_id: int
    pad_to_multiple_of: int = 1

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:

        longest = max(len(f["input_ids"]) for f in features)
        longest = -(-longest // self.pad_to_multiple_of) * self.pad_to_multiple_of
        batch = {"input_ids": [], "labels": [], "attention_mask": []}
        for feature in features:
            padding = longest - len(feature["input_ids"])
            batch["input_ids"].append(list(feature["input_ids"]) + [self.pad_token_id] * padding)
            batch["labels"].append(list(feature["labels"]) + [IGNORE_INDEX] * padding)
            batch["attention_mask"].append([1] * len(feature["input_ids"]) + [0] * padding)
        return {key: torch.tensor(value, dtype=torch.long) for key, value in batch.items()}


def _tokenize_batch(records: list[Record], tokenizer, template: PromptTemplate, max_length: int) -> list[dict]:
    rendered = [template.render(record) for record in records]
    texts = [segment.text for segments in rendered for segment in segments]
    ids = tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else []
    examples, position = [], 0
    for segments in rendered:
        token_ids = ids[position:position + len(segments)]
        position += len(segments)
        examples.append(tokenize_segments(segments, token_ids, tokenizer.eos_token_id, max_length))
    return examples


@dataclass
class TokenizedData:
    """Training and evaluation datasets ready for the Trainer, with what was done to build them."""

    train: Any  # datasets.Dataset
    eval: Any | None
    packed: bool
    block_size: int
    notes: list[str]

    def train_tokens(self) -> int:
        """Tokens that carry the loss in the training set."""
        return sum(sum(1 for label in labels if label != IGNORE_INDEX) for labels in self.train["labels"])


def build_dataset(records: list[Record], tokenizer, template: PromptTemplate, max_length: int):
    """A `datasets.Dataset` of one example per record (input_ids, labels, length)."""
    def examples():
        for start in range(0, len(records), 1000):
            for example in _tokenize_batch(records[start:start + 1000], tokenizer, template, max_length):
                example["length"] = len(example["input_ids"])
                yield example

    return Dataset.from_list(list(examples()))


def pack_dataset(records: list[Record], tokenizer, template: PromptTemplate, block_size: int):
    """Plain-text records packed into full blocks (labels = input_ids)."""
    examples = _tokenize_batch(records, tokenizer, template, max_length=sys.maxsize)
    blocks = pack_blocks((e["input_ids"] for e in examples), block_size)
    return Dataset.from_dict({"input_ids": blocks, "labels": [list(b) for b in blocks],
                              "length": [len(b) for b in blocks]})


def count_tokens(records: list[Record], tokenizer, template: PromptTemplate) -> int:
    """Tokens in the rendered records (with eos), before truncation."""
    return sum(len(e["input_ids"]) for e in _tokenize_batch(records, tokenizer, template, sys.maxsize))


def tokenize(train_records: list[Record], eval_records: list[Record], tokenizer, template: PromptTemplate,
             max_length: int) -> TokenizedData:
    """Datasets for the Trainer: plain text packed into blocks, pairs and chats one example each."""
    notes: list[str] = []
    if train_records and all(r.kind == "text" for r in train_records):
        total = count_tokens(train_records, tokenizer, template)
        block = block_size_for(total, max_length)
        if block < max_length:
            # A corpus smaller than one block trains on nothing in grouped-text recipes (transformers #18167).
            notes.append(f"⚠️  The training text has only {total} tokens, fewer than one block of "
                         f"--max-length {max_length}; packing into blocks of {block} instead")
        train = pack_dataset(train_records, tokenizer, template, block)
        evaluation = None
        if eval_records:
            eval_total = count_tokens(eval_records, tokenizer, template)
            evaluation = pack_dataset(eval_records, tokenizer, template, min(block, max(eval_total, 1)))
            if len(evaluation) == 0:
                evaluation = None
        return TokenizedData(train, evaluation, True, block, notes)
    train = build_dataset(train_records, tokenizer, template, max_length)
    evaluation = build_dataset(eval_records, tokenizer, template, max_length) if eval_records else None
    truncated = sum(1 for length in train["length"] if length >= max_length)
    if truncated:
        notes.append(f"⚠️  {truncated} example(s) longer than --max-length {max_length} tokens were truncated")
    return TokenizedData(train, evaluation, False, max_length, notes)


def split_records(records: list[Record], eval_split: float, seed: int) -> tuple[list[Record], list[Record]]:
    """(train, held-out) split, reproducible for a seed; no held-out set for tiny data."""
    import random

    eval_count = min(MAX_EVAL_RECORDS, round(len(records) * eval_split))
    if eval_split == 0 or eval_count == 0 or len(records) - eval_count < 1:
        return list(records), []
    order = list(range(len(records)))
    random.Random(seed).shuffle(order)
    held_out = set(order[:eval_count])
    return ([r for i, r in enumerate(records) if i not in held_out],
            [r for i, r in enumerate(records) if i in held_out])


@dataclass(frozen=True)
class TrainSettings:
    """Trainer hyper-parameters of one session."""

    learning_rate: float
    epochs: float
    batch_size: int
    gradient_accumulation_steps: int
    seed: int
    checkpoint_dir: Path
    save_steps: int = 0  # 0: one resumable checkpoint per epoch
    device: str = "auto"
    group_by_length: bool = True


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

    def eval_perplexity(self) -> float | None:
        """exp(eval loss)."""
        return perplexity(self.eval_loss)


def precision_for(device: str) -> str:
    """bf16 where the GPU supports it, else fp16 on CUDA, fp32 on CPU."""

    if device == "cpu" or not torch.cuda.is_available():
        return "fp32"
    return "bf16" if torch.cuda.is_bf16_supported() else "fp16"


def training_arguments(settings: TrainSettings, has_eval: bool, packed: bool, show_progress: bool):
    """The HF TrainingArguments of a session."""
    if settings.device == "cuda" and not torch.cuda.is_available():
        raise InputError("--device cuda was asked for but no CUDA device is available")
    precision = precision_for(settings.device)
    per_epoch = "steps" if settings.save_steps else "epoch"
    return TrainingArguments(
        output_dir=str(settings.checkpoint_dir),
        learning_rate=settings.learning_rate,
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
        disable_tqdm=not show_progress,
        group_by_length=settings.group_by_length and not packed,
        length_column_name="length",
        remove_unused_columns=False,  # the collator drops `length`; keeping it spares a pass over the data
        use_cpu=settings.device == "cpu",
        bf16=precision == "bf16",
        fp16=precision == "fp16",
        dataloader_num_workers=0,
        save_safetensors=True,
        ddp_find_unused_parameters=False,
        dataloader_pin_memory=torch.cuda.is_available(),
    ), precision


class EpochReport(TrainerCallback):
    """Prints one line per epoch (train loss, eval loss) instead of the Trainer's raw log dicts."""

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        epoch = logs.get("epoch", state.epoch)
        if "loss" in logs:
            say(f"   epoch {epoch:.2f}: train loss {logs['loss']:.4f}")
        elif "eval_loss" in logs:
            say(f"   epoch {epoch:.2f}: eval loss {logs['eval_loss']:.4f}")


def run_training(model, tokenizer, data: TokenizedData, settings: TrainSettings,
                 resume_from: str | None = None) -> tuple[Any, TrainOutcome]:
    """Train with the HF Trainer; returns (trainer, outcome). The caller saves the model."""
    show_progress = sys.stderr.isatty()
    args, precision = training_arguments(settings, data.eval is not None, data.packed, show_progress)
    collator = default_data_collator if data.packed else PaddingCollator(tokenizer.pad_token_id)
    train_dataset = data.train.remove_columns(["length"]) if data.packed else data.train
    eval_dataset = data.eval.remove_columns(["length"]) if data.packed and data.eval is not None else data.eval
    trainer = Trainer(model=model, args=args, train_dataset=train_dataset, eval_dataset=eval_dataset,
                      data_collator=collator, processing_class=tokenizer)
    trainer.remove_callback(PrinterCallback)
    if not show_progress:
        trainer.remove_callback(ProgressCallback)
    trainer.add_callback(EpochReport())
    if getattr(model, "loss_type", None) is None:
        model.loss_type = "ForCausalLM"  # GPT2LMHeadModel's class name doesn't map to a loss; silences a warning
    result = trainer.train(resume_from_checkpoint=resume_from)
    eval_loss = final_eval_loss(trainer) if eval_dataset is not None else None
    train_loss = result.training_loss if result.global_step else None
    curve = [{key: log[key] for key in ("step", "epoch", "loss", "eval_loss") if key in log}
             for log in trainer.state.log_history if "loss" in log or "eval_loss" in log]
    return trainer, TrainOutcome(train_loss, eval_loss, result.global_step, precision,
                                 str(args.device), args.world_size, curve)


def final_eval_loss(trainer) -> float:
    """The eval loss at the last step: from the epoch-end evaluation when there was one, else evaluated now."""
    last = [log for log in trainer.state.log_history if "eval_loss" in log]
    if last and last[-1].get("step") == trainer.state.global_step:
        return last[-1]["eval_loss"]
    return trainer.evaluate()["eval_loss"]


def evaluate_records(model, tokenizer, records: list[Record], template: PromptTemplate, max_length: int,
                     batch_size: int = 8) -> float | None:
    """Mean loss per target token of the model on `records` (None when they hold no target token)."""

    examples = _tokenize_batch(records, tokenizer, template, max_length)
    collator = PaddingCollator(tokenizer.pad_token_id)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    total_loss, total_tokens = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(examples), batch_size):
            batch = {k: v.to(device) for k, v in collator(examples[start:start + batch_size]).items()}
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            shifted_labels = batch["labels"][:, 1:]
            losses = torch.nn.functional.cross_entropy(
                logits[:, :-1].float().reshape(-1, logits.size(-1)), shifted_labels.reshape(-1),
                ignore_index=IGNORE_INDEX, reduction="sum")
            total_loss += losses.item()
            total_tokens += int((shifted_labels != IGNORE_INDEX).sum())
    model.train(was_training)
    return total_loss / total_tokens if total_tokens else None
