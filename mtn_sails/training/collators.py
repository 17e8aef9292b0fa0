"""How a batch of tokenised examples becomes tensors: one padded row per example, or several examples
sharing a row with their own positions (so nothing attends across them), or packed text blocks as they are.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch
from transformers import default_data_collator

from .scoring import IGNORE_INDEX
from .tokenizing import REPLAYED, TokenizedData


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
        if REPLAYED in features[0]:  # which rows come from the replay pool (distillation applies to them)
            batch[REPLAYED] = [feature[REPLAYED] for feature in features]
        return {key: torch.tensor(value, dtype=torch.long) for key, value in batch.items()}


# Model types whose causal mask follows restarting position_ids when no attention mask is given (transformers'
# create_causal_mask reads them as packed sequences): the examples of a batch can share rows.
ROW_SHARING_MODELS = ("gpt2", "llama", "qwen2", "gpt_neox")


def shared_rows(lengths: Sequence[int]) -> list[list[int]]:
    """Positions grouped into rows no longer than the longest length (first fit, longest first)."""
    capacity = max(lengths)
    rows: list[list[int]] = []
    room: list[int] = []
    for position in sorted(range(len(lengths)), key=lambda p: -lengths[p]):
        row = next((r for r, free in enumerate(room) if lengths[position] <= free), None)
        if row is None:
            rows.append([])
            room.append(capacity)
            row = len(rows) - 1
        rows[row].append(position)
        room[row] -= lengths[position]
    return rows


@dataclass
class RowSharingCollator:
    """Packs a batch's examples into as few rows as hold its longest (shared_rows), padding-free but for each
    row's end: every example's position_ids restart at 0, so with no attention mask the model attends only
    inside each example; its first label is ignored (the token before it belongs to another example), as the
    shifted loss of a row of its own never scores it. The replay flag is per token. (SailsTrainer runs such
    batches without a key/value cache, whose presence makes transformers ignore the restarting positions.)
    """

    pad_token_id: int

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        lengths = [len(f["input_ids"]) for f in features]
        width = max(lengths)
        keys = ["input_ids", "labels", "position_ids"] + ([REPLAYED] if REPLAYED in features[0] else [])
        batch: dict[str, list] = {key: [] for key in keys}
        for row in shared_rows(lengths):
            values: dict[str, list] = {key: [] for key in batch}
            for position in row:
                feature, length = features[position], lengths[position]
                values["input_ids"] += feature["input_ids"]
                values["labels"] += [IGNORE_INDEX, *feature["labels"][1:]]
                values["position_ids"] += range(length)
                if REPLAYED in values:
                    values[REPLAYED] += [feature[REPLAYED]] * length
            padding = width - len(values["input_ids"])  # the row's end: a segment of its own, scored nowhere
            fillers = {"input_ids": [self.pad_token_id] * padding, "labels": [IGNORE_INDEX] * padding,
                       "position_ids": range(padding), REPLAYED: [0] * padding}
            for key in batch:
                batch[key].append(values[key] + list(fillers[key]))
        return {key: torch.tensor(value, dtype=torch.long) for key, value in batch.items()}


def example_collator(model, pad_token_id: int, data: TokenizedData, share_rows: bool, distilling: bool) -> Any:
    """How a batch becomes tensors: packed text blocks as they are; pairs and chats sharing rows where the model
    reads restarting positions as separate examples and no distillation reads whole rows; else padded rows."""
    if data.packed and REPLAYED not in data.train.column_names:
        return default_data_collator
    if (share_rows and not data.packed and not distilling
            and getattr(model.config, "model_type", None) in ROW_SHARING_MODELS):
        return RowSharingCollator(pad_token_id)
    return PaddingCollator(pad_token_id)  # also replayed pairs beside packed blocks
