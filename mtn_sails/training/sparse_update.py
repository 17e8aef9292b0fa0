"""--sparse-update: a session moves only the share of the transformer blocks' weights that its own examples'
gradients point at most, and nothing else (embeddings, norms, every other weight stay as they were).

Adam moves every weight it is given by about the learning rate at each step, whether its gradient carries signal
or noise; a session of a few facts then shifts the whole model, and the base's near-tied answers with it
(BENCHMARKS.md, "Knowledge on a real base"). Sparse fine-tuning keeps the step where the facts' gradient is.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

from .scoring import IGNORE_INDEX

SCORED_EXAMPLES = 32  # examples whose squared gradients rank the weights (a random draw of a larger session)
QUANTILE_SAMPLE = 4_000_000  # scores drawn to place the threshold (torch.quantile takes at most 16 M values)


@dataclass
class SparseUpdate:
    """The weights a session may move: a mask per trained matrix, the rest frozen."""

    masks: dict[str, Any]  # parameter name -> bool tensor of the entries that move (1 byte each)
    frozen: list[str]  # parameters frozen whole
    moving: int  # entries that move
    total: int  # entries of the blocks' weight matrices it chose among

    def share(self) -> float:
        """The share of the weights that move."""
        return self.moving / self.total if self.total else 0.0

    def line(self) -> str:
        """The line a session says about it."""
        return (f"🎯 Moving only {self.share():.1%} of the blocks' weight matrices ({self.moving:,} of "
                f"{self.total:,} entries), where this session's answers' gradients are largest; the rest is frozen")


def decoder_blocks(model) -> list:
    """The model's stack of transformer blocks: its longest ModuleList whose children all share one class
    (GPT-2's `h`, Llama's and Qwen2's `layers`, GPT-NeoX's `layers`), found without knowing attribute names."""
    import torch

    best: list = []
    for module in model.modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) > len(best) \
                and len({type(child) for child in module}) == 1:
            best = list(module)
    return best


def gradient_scores(model, examples: Sequence[dict[str, list[int]]], names: set[str]) -> dict[str, Any]:
    """Per parameter in `names`: the squared gradient of each example's answer loss, summed (a diagonal
    Fisher of the session's own answers)."""
    import torch

    parameters = {name: p for name, p in model.named_parameters() if name in names}
    scores = {name: torch.zeros_like(p, dtype=torch.float32) for name, p in parameters.items()}
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    for example in examples:
        model.zero_grad(set_to_none=True)
        ids = torch.tensor([example["input_ids"]], device=device)
        labels = torch.tensor(example["labels"][1:], device=device)
        logits = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits[0, :-1]
        torch.nn.functional.cross_entropy(logits.float(), labels, ignore_index=IGNORE_INDEX).backward()
        for name, parameter in parameters.items():
            if parameter.grad is not None:
                scores[name] += parameter.grad.float().pow(2)
    model.zero_grad(set_to_none=True)
    model.train(was_training)
    return scores


def threshold_for(scores: dict[str, Any], share: float, seed: int) -> float:
    """The score above which `share` of all entries lie, placed on a random draw of the entries."""
    import torch

    total = sum(score.numel() for score in scores.values())
    generator = torch.Generator().manual_seed(seed)
    drawn = []
    for score in scores.values():
        count = max(1, round(QUANTILE_SAMPLE * score.numel() / total))
        flat = score.flatten().cpu()
        drawn.append(flat[torch.randint(flat.numel(), (count,), generator=generator)])
    return float(torch.quantile(torch.cat(drawn), 1.0 - share))


def restrict_updates(model, examples: Sequence[dict[str, list[int]]], share: float, seed: int) -> SparseUpdate:
    """Choose the `share` of the blocks' weight matrices with the largest gradients on `examples`, freeze every
    other parameter and mask the chosen matrices' gradients, so only the chosen entries move."""
    import random

    in_blocks = {id(p) for block in decoder_blocks(model) for p in block.parameters()}
    trainable = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    candidates = {name for name, p in trainable if id(p) in in_blocks and p.dim() == 2}
    positions = range(len(examples)) if len(examples) <= SCORED_EXAMPLES \
        else random.Random(seed).sample(range(len(examples)), SCORED_EXAMPLES)
    drawn = [examples[position] for position in positions]
    scores = gradient_scores(model, drawn, candidates)
    threshold = threshold_for(scores, share, seed)
    masks, frozen, moving = {}, [], 0
    for name, parameter in trainable:
        mask = scores[name] > threshold if name in candidates else None
        if mask is None or not mask.any():
            parameter.requires_grad_(False)
            frozen.append(name)
            continue
        masks[name] = mask
        moving += int(mask.sum())
        parameter.register_hook(lambda grad, keep=masks[name]: grad * keep)
    return SparseUpdate(masks, frozen, moving, sum(p.numel() for name, p in trainable if name in candidates))
