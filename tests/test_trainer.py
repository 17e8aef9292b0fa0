"""Rendering, tokenising, packing and padding on toy inputs; one real Trainer run on a tiny model."""
from __future__ import annotations

import pytest
import torch

from mtn_sails.data import Record, Turn
from mtn_sails.errors import InputError
from mtn_sails.template import PromptTemplate, Segment
from mtn_sails.trainer import (IGNORE_INDEX, PaddingCollator, block_size_for, pack_blocks, split_records,
                               tokenize_segments)

EOS = 0


def test_response_carries_the_loss_and_keeps_its_eos():
    segments = [Segment("prompt", is_target=False), Segment("answer", is_target=True, ends_turn=True)]
    example = tokenize_segments(segments, [[5, 6], [7, 8]], EOS, max_length=100)
    assert example["input_ids"] == [5, 6, 7, 8, EOS]
    assert example["labels"] == [IGNORE_INDEX, IGNORE_INDEX, 7, 8, EOS]  # eos learned: transformers #4122


def test_long_examples_are_truncated_to_max_length():
    example = tokenize_segments([Segment("t", True, True)], [list(range(1, 20))], EOS, max_length=8)
    assert len(example["input_ids"]) == len(example["labels"]) == 8


def test_pack_blocks_drops_the_remainder():
    assert pack_blocks([[1, 2, 3], [4, 5], [6, 7, 8]], 3) == [[1, 2, 3], [4, 5, 6]]
    assert pack_blocks([[1, 2]], 3) == []


def test_block_size_adapts_to_data_shorter_than_one_block():
    assert block_size_for(1000, 512) == 512
    assert block_size_for(100, 512) == 100
    with pytest.raises(InputError, match="only 3 tokens"):
        block_size_for(3, 512)


def test_padding_collator_pads_to_the_longest_in_the_batch_only():
    batch = PaddingCollator(pad_token_id=9)([{"input_ids": [1, 2, 3], "labels": [1, 2, 3], "length": 3},
                                             {"input_ids": [4], "labels": [IGNORE_INDEX], "length": 1}])
    assert batch["input_ids"].tolist() == [[1, 2, 3], [4, 9, 9]]
    assert batch["labels"].tolist() == [[1, 2, 3], [IGNORE_INDEX] * 3]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert set(batch) == {"input_ids", "labels", "attention_mask"}


def test_chat_rendering_trains_only_assistant_turns():
    record = Record(index=0, kind="chat", shape="messages",
                    turns=(Turn("system", "Be brief."), Turn("user", "Hi"), Turn("assistant", "Hello"),
                           Turn("user", "Bye"), Turn("assistant", "Goodbye")))
    segments = PromptTemplate().render(record)
    assert [s.is_target for s in segments] == [False, False, True, False, True]
    assert [s.text for s in segments if s.is_target] == ["Hello", "Goodbye"]
    pair = Record(index=0, kind="pair", shape="question/answer", prompt="Hi", response="Hello")
    assert PromptTemplate().render(pair)[0].text == PromptTemplate().prompt("Hi")


def test_split_is_reproducible_and_skipped_for_tiny_data():
    records = [Record(index=i, kind="text", shape="text", text=str(i)) for i in range(50)]
    train, held_out = split_records(records, 0.1, seed=3)
    assert len(held_out) == 5 and len(train) == 45
    assert split_records(records, 0.1, seed=3) == (train, held_out)
    assert split_records(records[:3], 0.1, seed=3) == (records[:3], [])


def test_a_session_changes_every_trainable_parameter(tiny_model_dir, qa_file, tmp_path):
    from transformers import AutoModelForCausalLM

    from mtn_sails.config import TrainConfig
    from mtn_sails.recipes import train

    output = tmp_path / "trained_model"
    train(TrainConfig(data_file=str(qa_file), output_dir=str(output), model_name=str(tiny_model_dir),
                      epochs=1, batch_size=4, learning_rate=1e-3, eval_split=0.0))
    before = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    after = AutoModelForCausalLM.from_pretrained(output)
    unchanged = [name for (name, p), (_, q) in zip(before.named_parameters(), after.named_parameters())
                 if p.requires_grad and torch.equal(p, q)]
    assert unchanged == []


def test_an_overlong_prompt_is_cut_from_its_start_so_the_response_survives():
    segments = [Segment("prompt", is_target=False), Segment("answer", is_target=True, ends_turn=True)]
    example = tokenize_segments(segments, [list(range(100, 120)), [7, 8]], EOS, max_length=8)
    assert example["input_ids"] == [116, 117, 118, 119, 7, 8, EOS]
    assert example["labels"][-3:] == [7, 8, EOS]
