"""Which process this is under torchrun / accelerate launch, and the barrier between them.

Only the main process takes the lock, writes, swaps and prints; the others train and wait.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass

from . import console


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


def launched_world_size() -> int:
    """How many processes torchrun / accelerate launch started (1 when run directly)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def current_processes(device: str) -> Processes:
    """Join the process group when launched with several processes; mute every process but the main one."""
    if launched_world_size() <= 1:
        return Processes()
    import torch
    from accelerate import PartialState

    state = PartialState(cpu=device == "cpu" or not torch.cuda.is_available())
    processes = Processes(state.num_processes, state.process_index)
    if not processes.is_main():
        console.mute_worker()
    return processes


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
