"""--null-space E: a session changes the transformer blocks' weights only along the input directions that what the
model already knows leaves almost unused, so its answers to those inputs stay as they were.

Replay within a tenth of the examples rehearses one or two stored answers an epoch on a small session, and every
lever built on it stayed far from keeping the base (BENCHMARKS.md, "Knowledge on a real base"). This one protects
without replaying: before training, the start model reads the protected examples (the base's own answers and every
earlier session's stored examples) and each weight matrix of the blocks records the inputs it sees, as the
covariance of those inputs, each protected slice (the base's, each earlier session's) scaled to the same total so
that a slice of a dozen short answers counts as much as the base's hundred long ones. The eigen-directions holding
the share E of that energy are protected: after every
optimizer step, the matrix's change since the session start is projected onto the directions orthogonal to
them (null-space constrained editing, as AlphaEdit does in closed form; here on top of Adam's steps). A matrix W
whose change D satisfies D·u = 0 for every protected direction u gives the same output on those inputs, so with
the embeddings, norms and biases frozen the protected answers change only by the energy left unprotected.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from ..data.records import Record
from ..model_dir import store

from .sparse_update import decoder_blocks

BATCH = 16  # protected examples read together


@dataclass
class NullSpace:
    """The directions protected per trained matrix and the matrices' weights at the session start."""

    directions: dict[str, Any]  # parameter name -> (inputs x k) orthonormal protected input directions
    transposed: set[str]  # matrices stored inputs x outputs (GPT-2's Conv1D), the others outputs x inputs
    start: dict[str, Any]  # parameter name -> its weights at the session start
    frozen: list[str]  # parameters frozen whole (embeddings, norms, biases)
    protected: int  # directions protected, over every matrix
    total: int  # input directions of every matrix

    def line(self) -> str:
        """The line a session says about it."""
        return (f"🛡️  Keeping earlier answers' inputs out of this session's changes: {self.protected:,} of "
                f"{self.total:,} input directions of the blocks' weight matrices protected")

    def _off(self, name: str, change):
        """`change` (a matrix's shape) without its part along the matrix's protected input directions."""
        directions = self.directions[name]
        if name in self.transposed:
            return change - directions @ (directions.T @ change)
        return change - (change @ directions) @ directions.T

    def project(self, model) -> None:
        """Take out of each matrix's change since the start its part along the protected directions."""
        import torch

        with torch.no_grad():
            for name, parameter in model.named_parameters():
                if name in self.directions:
                    parameter.copy_(self.start[name] + self._off(name, parameter.detach().float() - self.start[name]))


def block_matrices(model) -> dict[str, Any]:
    """The modules of the blocks whose 2-D weight multiplies their input (Linear, GPT-2's Conv1D), by their
    weight's parameter name."""
    import torch

    in_blocks = {id(m) for block in decoder_blocks(model) for m in block.modules()}
    return {f"{name}.weight": module for name, module in model.named_modules()
            if id(module) in in_blocks and (isinstance(module, torch.nn.Linear) or _is_conv1d(module))}


def _is_conv1d(module) -> bool:
    """Whether `module` is transformers' Conv1D (GPT-2), whose weight is stored inputs x outputs."""
    return type(module).__name__ == "Conv1D"


def input_covariances(model, examples: Sequence[dict[str, list[int]]], pad_id: int) -> dict[str, Any]:
    """Per block matrix, the sum of x xᵀ over the inputs x it receives at the examples' real tokens. Modules fed
    the very same tensor (a block's query, key and value projections) share one sum."""
    import torch

    matrices = block_matrices(model)
    sums: dict[str, Any] = {}
    owner: dict[str, str] = {}  # matrix -> the matrix whose sum it shares
    state: dict[str, Any] = {"last": None, "last_name": None, "mask": None}

    def hook(name: str):
        def record(module, inputs):
            x = inputs[0]
            if x is state["last"]:
                owner[name] = owner[state["last_name"]]
                return
            state["last"], state["last_name"] = x, name
            owner[name] = name
            rows = x.detach().float().reshape(-1, x.shape[-1])[state["mask"]]
            sums[name] = sums.get(name, 0) + rows.T @ rows
        return record

    handles = [module.register_forward_pre_hook(hook(name)) for name, module in matrices.items()]
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for first in range(0, len(examples), BATCH):
                batch = [example["input_ids"] for example in examples[first:first + BATCH]]
                longest = max(len(ids) for ids in batch)
                ids = torch.tensor([ids + [pad_id] * (longest - len(ids)) for ids in batch], device=device)
                mask = torch.tensor([[1] * len(i) + [0] * (longest - len(i)) for i in batch], device=device)
                state["mask"], state["last"] = mask.reshape(-1).bool(), None
                model(input_ids=ids, attention_mask=mask, logits_to_keep=1)  # the output layer is not protected
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    return {name: sums[owner[name]] for name in matrices if name in owner}


def slice_covariances(model, slices: Sequence[Sequence[dict[str, list[int]]]], pad_id: int) -> dict[str, Any]:
    """Per block matrix, the sum over `slices` of each slice's input covariance divided by its trace, so every
    slice holds the same share of the energy. Matrices that share a sum in one slice share it in the mixture."""
    mixed: dict[str, Any] = {}
    for examples in (examples for examples in slices if examples):
        covariances, scaled = input_covariances(model, examples, pad_id), {}
        for name, covariance in covariances.items():
            if id(covariance) not in scaled:
                scaled[id(covariance)] = (name, covariance / covariance.trace().clamp(min=1e-12))
            owner, share = scaled[id(covariance)]
            if owner == name:
                mixed[name] = mixed[name] + share if name in mixed else share
            else:
                mixed[name] = mixed[owner]
    return mixed


def protected_directions(covariance, energy: float):
    """The orthonormal eigen-directions of `covariance` holding the share `energy` of its trace, largest first."""
    import torch

    values, vectors = torch.linalg.eigh(covariance.double())
    values, vectors = values.flip(0).clamp(min=0), vectors.flip(1)
    total = float(values.sum())
    if total <= 0:
        return vectors[:, :0].float()
    kept = int(torch.searchsorted(values.cumsum(0) / total, torch.tensor(energy, dtype=values.dtype))) + 1
    return vectors[:, :min(kept, len(values))].float().contiguous()


def restrict_to_null_space(model, protected_slices: Sequence[Sequence[dict[str, list[int]]]], energy: float,
                           pad_id: int, reader=None) -> NullSpace:
    """Freeze every parameter but the blocks' weight matrices and record, for each, the directions of its inputs
    on the tokenised `protected_slices`, weighted alike, that hold `energy` of their energy, read by `reader` (the
    session's start model; None: `model`)."""
    reader = reader if reader is not None else model
    covariances = slice_covariances(reader, protected_slices, pad_id)
    matrices, at_start = block_matrices(model), dict(reader.named_parameters())
    directions, transposed, start, frozen, solved = {}, set(), {}, [], {}
    for name, parameter in model.named_parameters():
        if name not in matrices or name not in covariances or not parameter.requires_grad:
            if parameter.requires_grad:
                parameter.requires_grad_(False)
                frozen.append(name)
            continue
        shared = id(covariances[name])  # one eigendecomposition for the matrices sharing an input
        if shared not in solved:
            solved[shared] = protected_directions(covariances[name], energy).to(parameter.device)
        directions[name] = solved[shared]
        if _is_conv1d(matrices[name]):
            transposed.add(name)
        start[name] = at_start[name].detach().float().clone().to(parameter.device)
    protected = sum(d.shape[1] for d in directions.values())
    return NullSpace(directions, transposed, start, frozen, protected, sum(d.shape[0] for d in directions.values()))


def protected_records(energy: float, model_dir: Path, continues: bool, base) -> list[list[Record]]:
    """What --null-space `energy` protects, slice by slice: nothing when 0; else the base's replay slice (`base`,
    session 0's BaseAnswers, in a first session) or, in a continuing one, each earlier session's stored replay
    examples, the base's among them."""
    if not energy:
        return []
    if continues:
        return [records for records in store.read_slices(model_dir, store.REPLAY_DIR).values() if records]
    return [list(base.replay)] if base is not None and base.replay else []


def null_space_callback(null_space: NullSpace):
    """A TrainerCallback projecting the model's changes after every optimizer step."""
    from transformers import TrainerCallback

    class ProjectChanges(TrainerCallback):
        def on_optimizer_step(self, args, state, control, model=None, **kwargs):
            null_space.project(model)

    return ProjectChanges()
