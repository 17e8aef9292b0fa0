"""Which process this is under torchrun / accelerate launch, and the barrier between them.

Only the main process takes the lock, writes, swaps, measures and prints; the others train and wait.
With several processes the main one measures the saved model, not the one in memory: under FSDP each
process holds a shard, and a forward pass on the main process alone would wait forever for the others.
"""
from __future__ import annotations

import functools
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, TypeVar

from .. import console
from ..console import say
from ..errors import InputError

# accelerate 1.15 turns these on only for GPU-like devices: on the CPU (gloo) it trains plain data-parallel
SHARDING_ENGINES = {"ACCELERATE_USE_FSDP": "FSDP", "ACCELERATE_USE_DEEPSPEED": "DeepSpeed"}

T = TypeVar("T")


@dataclass(frozen=True)
class Processes:
    """This process's place among the data-parallel workers."""

    world_size: int = 1
    rank: int = 0

    def is_main(self) -> bool:
        """True for the one process that writes and reports."""
        return self.rank == 0

    def barrier(self) -> None:
        """Wait until every process reaches this point (no-op for one process)."""
        if self.world_size > 1:
            from accelerate import PartialState

            PartialState().wait_for_everyone()

    def main_first(self, read: Callable[[], T]) -> T:
        """read() on the main process, then on the others (which then find what it cached, e.g. Arrow files)."""
        if self.is_main():
            value = read()
        self.barrier()
        if not self.is_main():
            value = read()
        return value


def launched_world_size() -> int:
    """How many processes torchrun / accelerate launch started (1 when run directly)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def current_processes(device: str) -> Processes:
    """Join the process group when launched with several processes; mute every process but the main one."""
    if launched_world_size() <= 1:
        return Processes()
    import torch
    from accelerate import PartialState
    from accelerate.utils import DistributedType

    state = PartialState(cpu=device == "cpu" or not torch.cuda.is_available())
    processes = Processes(state.num_processes, state.process_index)
    if not processes.is_main():
        console.mute_worker()
    say_sharding_notes(state.distributed_type == DistributedType.MULTI_CPU)
    return processes


@functools.cache  # once per process: `pipeline` joins the processes, then `train` asks again
def say_sharding_notes(on_cpu: bool) -> None:
    """Say what becomes of a configured FSDP or DeepSpeed: ignored on the CPU; DeepSpeed untested."""
    for engine in requested_sharding():
        if on_cpu:
            say(f"⚠️  {engine} was configured, but accelerate shards only on GPUs: on the CPU every process "
                "holds the whole model and trains data-parallel (docs/SCALING.md)")
        elif engine == "DeepSpeed":
            say("⚠️  DeepSpeed is untested with MTN Sails, and ZeRO-3 cannot work: the main process loads the "
                "saved model alone to measure it (docs/SCALING.md)")


def requested_sharding() -> list[str]:
    """The sharding engines the accelerate configuration (its environment variables) asks for."""
    return [engine for variable, engine in SHARDING_ENGINES.items()
            if os.environ.get(variable, "false").lower() == "true"]


def model_to_measure(trainer, staging: Path, processes: Processes):
    """The model the main process scores after the save, in the precision its users run it: the trained one in
    memory when it trained alone, else the full copy just saved in `staging` (a sharded engine leaves only a
    shard on each process)."""
    if processes.world_size <= 1:
        # accelerate wraps forward in the session's mixed-precision autocast; scored inside it, a bf16 session's
        # probe disagreed with the saved weights that generate and transformers run in fp32
        return trainer.accelerator.unwrap_model(trainer.model, keep_fp32_wrapper=False)
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(staging).to(trainer.args.device)


def check_full_save(staging: Path) -> None:
    """Fail before the swap when the save left no loadable model (FSDP with a sharded state dict saves none)."""
    from ..model_dir.inspection import check_model_exists

    if not check_model_exists(staging):
        raise InputError("the distributed save wrote no full model (config.json and weights) to "
                         f"{staging}; with FSDP set fsdp_state_dict_type: FULL_STATE_DICT in the accelerate "
                         "config (docs/SCALING.md). The previous model is unchanged")


def optimizer_steps(examples: int, batch_size: int, world_size: int, gradient_accumulation_steps: int,
                    epochs: float) -> int:
    """Optimizer steps of a session, as the HF Trainer counts them (docs/SCALING.md shows the formula).

    Each process sees ceil(examples / world_size) examples (the distributed sampler pads), in
    ceil(that / batch_size) batches; an update every `gradient_accumulation_steps` batches, the last
    partial group included.
    """
    batches = math.ceil(math.ceil(examples / world_size) / batch_size)
    per_epoch = max(1, math.ceil(batches / gradient_accumulation_steps))
    return math.ceil(epochs * per_epoch)
