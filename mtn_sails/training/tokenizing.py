"""Records to token ids for the Trainer, streamed through Arrow files so memory stays flat in file size.

The data file is read once into an Arrow dataset keyed by its sha256; tokenising and packing are
`datasets.map` steps, cached by the library under a fingerprint of the data, the tokenizer, the
template and the length, so a second session on the same file does not tokenise again.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import datasets
import numpy as np
from datasets import Dataset, concatenate_datasets

from ..data.files import Record, Turn, load_records
from ..errors import InputError, SailsError
from ..data.template import PromptTemplate, Segment
from .scoring import IGNORE_INDEX

REPLAYED = "replayed"  # column: 1 on examples from the replay pool of earlier sessions
MIN_BLOCK_TOKENS = 8  # below this, packed plain text has nothing to learn from
MAX_EVAL_RECORDS = 500  # held-out records evaluated per session, so evaluation stays cheap
MAP_BATCH = 1000  # records per tokenizer call

ROW_FEATURES = datasets.Features({
    "index": datasets.Value("int64"), "kind": datasets.Value("string"), "shape": datasets.Value("string"),
    "text": datasets.Value("string"), "prompt": datasets.Value("string"), "response": datasets.Value("string"),
    "roles": datasets.Sequence(datasets.Value("string")), "contents": datasets.Sequence(datasets.Value("string")),
})
# int32 token columns: half the bytes of the default int64 in the Arrow cache (vocabularies are far below 2**31).
TOKEN_FEATURES = datasets.Features({"input_ids": datasets.Sequence(datasets.Value("int32")),
                                    "labels": datasets.Sequence(datasets.Value("int32")),
                                    "length": datasets.Value("int32")})

if not sys.stderr.isatty():
    datasets.disable_progress_bars()


def record_to_row(record: Record) -> dict[str, Any]:
    """A Record as one Arrow row."""
    return {"index": record.index, "kind": record.kind, "shape": record.shape, "text": record.text,
            "prompt": record.prompt, "response": record.response,
            "roles": [t.role for t in record.turns], "contents": [t.content for t in record.turns]}


def rows_to_records(batch: dict[str, list]) -> list[Record]:
    """The Records of a batch of Arrow rows (column-wise dict, as `datasets` passes them)."""
    return [Record(index=batch["index"][i], kind=batch["kind"][i], shape=batch["shape"][i], text=batch["text"][i],
                   prompt=batch["prompt"][i], response=batch["response"][i],
                   turns=tuple(Turn(r, c) for r, c in zip(batch["roles"][i], batch["contents"][i])))
            for i in range(len(batch["index"]))]


def iter_records(dataset: Dataset) -> Iterator[Record]:
    """Every Record of a rows dataset, read batch by batch."""
    for batch in dataset.iter(batch_size=MAP_BATCH):
        yield from rows_to_records(batch)


def _rows(path: str, sha256: str, preference_as: str | None) -> Iterator[dict[str, Any]]:
    del sha256  # part of the cache key only: the same path with new content is a new dataset
    for record in load_records(path, preference_as):
        yield record_to_row(record)


def records_dataset(path: str | Path, sha256: str, preference_as: str | None = None) -> Dataset:
    """The data file's records as an Arrow dataset (streamed from the file; cached by content hash and by how
    preference data is read)."""
    try:
        return Dataset.from_generator(_rows, features=ROW_FEATURES, gen_kwargs={
            "path": str(path), "sha256": sha256, "preference_as": preference_as})
    except datasets.exceptions.DatasetGenerationError as error:
        cause = error.__cause__
        while cause is not None and not isinstance(cause, SailsError):
            cause = cause.__cause__
        if cause is None:
            raise
        raise cause from None


def records_to_dataset(records: Sequence[Record]) -> Dataset:
    """A small list of Records (replayed or stored ones) as a rows dataset."""
    return Dataset.from_list([record_to_row(r) for r in records], features=ROW_FEATURES)


def split_dataset(rows: Dataset, eval_split: float, seed: int) -> tuple[Dataset, Dataset | None]:
    """(train, held-out) split, reproducible for a seed; no held-out set when it would be empty."""
    eval_count = min(MAX_EVAL_RECORDS, round(len(rows) * eval_split))
    if eval_count == 0 or len(rows) - eval_count < 1:
        return rows, None
    order = np.random.default_rng(seed).permutation(len(rows))
    return rows.select(np.sort(order[eval_count:])), rows.select(np.sort(order[:eval_count]))


def sample(rows: Dataset, limit: int, seed: int) -> list[Record]:
    """Up to `limit` Records drawn from `rows` without replacement (seeded)."""
    if len(rows) > limit:
        rows = rows.select(np.sort(np.random.default_rng(seed).choice(len(rows), limit, replace=False)))
    return list(iter_records(rows))


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


def token_ids(tokenizer, texts: list[str]) -> list[list[int]]:
    """Each text's token ids without special tokens added; equal to `tokenizer(texts)["input_ids"]`."""
    backend = getattr(tokenizer, "backend_tokenizer", None) if getattr(tokenizer, "is_fast", False) else None
    # A tokenizer.json may carry its own truncation or padding, which tokenizer() switches off per call.
    if backend is None or getattr(backend, "truncation", None) or getattr(backend, "padding", None):
        return tokenizer(texts, add_special_tokens=False)["input_ids"]
    # encode_batch_fast skips offsets and the wrapper's per-encoding dicts (with int32 columns; BENCHMARKS.md
    # "Tokenisation at scale" measures what it pays).
    encode = getattr(backend, "encode_batch_fast", None) or backend.encode_batch
    return [encoding.ids for encoding in encode(texts, add_special_tokens=False)]


def tokenize_records(records: Sequence[Record], tokenizer, template: PromptTemplate,
                     max_length: int) -> list[dict[str, list[int]]]:
    """One example (input_ids, labels) per record, with one batched tokenizer call."""
    rendered = [template.render(record) for record in records]
    texts = [segment.text for segments in rendered for segment in segments]
    ids = token_ids(tokenizer, texts) if texts else []
    examples, position = [], 0
    for segments in rendered:
        segment_ids = ids[position:position + len(segments)]
        position += len(segments)
        examples.append(tokenize_segments(segments, segment_ids, tokenizer.eos_token_id, max_length))
    return examples


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


def _tokenize_batch(batch: dict[str, list], tokenizer, template: PromptTemplate, max_length: int) -> dict:
    examples = tokenize_records(rows_to_records(batch), tokenizer, template, max_length)
    return {"input_ids": [e["input_ids"] for e in examples], "labels": [e["labels"] for e in examples],
            "length": [len(e["input_ids"]) for e in examples]}


def _pack_batch(batch: dict[str, list], block_size: int) -> dict:
    blocks = pack_blocks(batch["input_ids"], block_size)
    return {"input_ids": blocks, "labels": [list(b) for b in blocks], "length": [block_size] * len(blocks)}


def tokenize_dataset(rows: Dataset, tokenizer, template: PromptTemplate, max_length: int) -> Dataset:
    """input_ids, labels and length per record (cached by `datasets` under the inputs' fingerprint)."""
    return rows.map(_tokenize_batch, batched=True, batch_size=MAP_BATCH, remove_columns=rows.column_names,
                    fn_kwargs={"tokenizer": tokenizer, "template": template, "max_length": max_length},
                    features=TOKEN_FEATURES, desc="Tokenising")


def pack_dataset(tokens: Dataset, block_size: int) -> Dataset:
    """Token sequences concatenated and cut into full blocks of `block_size` (labels = input_ids)."""
    return tokens.map(_pack_batch, batched=True, batch_size=MAP_BATCH, remove_columns=tokens.column_names,
                      fn_kwargs={"block_size": block_size}, features=TOKEN_FEATURES, desc="Packing")


@dataclass
class TokenizedData:
    """Training and evaluation datasets ready for the Trainer, with what was done to build them."""

    train: Dataset
    eval: Dataset | None
    packed: bool
    block_size: int
    notes: list[str] = field(default_factory=list)


def tokenize(train_rows: Dataset, eval_rows: Dataset | None, tokenizer, template: PromptTemplate,
             max_length: int) -> TokenizedData:
    """Datasets for the Trainer: plain text packed into blocks, pairs and chats one example each."""
    notes: list[str] = []
    if len(train_rows) and set(train_rows.unique("kind")) == {"text"}:
        tokens = tokenize_dataset(train_rows, tokenizer, template, sys.maxsize)
        total = int(np.sum(tokens["length"]))
        block = block_size_for(total, max_length)
        if block < max_length:
            # A corpus smaller than one block trains on nothing in grouped-text recipes (transformers #18167).
            notes.append(f"⚠️  The training text has only {total} tokens, fewer than one block of "
                         f"--max-length {max_length}; packing into blocks of {block} instead")
        train = pack_dataset(tokens, block)
        evaluation = None
        if eval_rows is not None:
            eval_tokens = tokenize_dataset(eval_rows, tokenizer, template, sys.maxsize)
            evaluation = pack_dataset(eval_tokens, min(block, max(int(np.sum(eval_tokens["length"])), 1)))
            evaluation = evaluation if len(evaluation) else None
        return TokenizedData(train, evaluation, True, block, notes)
    train = tokenize_dataset(train_rows, tokenizer, template, max_length)
    evaluation = tokenize_dataset(eval_rows, tokenizer, template, max_length) if eval_rows is not None else None
    truncated = int(np.sum(np.asarray(train["length"]) >= max_length))
    if truncated:
        notes.append(f"⚠️  {truncated} example(s) longer than --max-length {max_length} tokens were truncated")
    return TokenizedData(train, evaluation, False, max_length, notes)


def with_replay(train: Dataset, pool: Sequence[dict[str, list[int]]]) -> Dataset:
    """The session's tokenised examples, then the replay pool's (tokenised stored records of earlier
    sessions); a `replayed` column tells them apart. The sampler decides which pool rows an epoch sees."""
    if not pool:
        return train
    new = train.add_column(REPLAYED, np.zeros(len(train), dtype=np.int8))
    old = Dataset.from_dict({"input_ids": [e["input_ids"] for e in pool], "labels": [e["labels"] for e in pool],
                             "length": [len(e["input_ids"]) for e in pool],
                             REPLAYED: np.ones(len(pool), dtype=np.int8)}, features=new.features)
    return concatenate_datasets([new, old])
