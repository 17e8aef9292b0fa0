"""Rendering, tokenising, packing and padding on toy inputs; one real Trainer run on a tiny model."""
from __future__ import annotations

import pytest
import torch

from mtn_sails.data.files import Record, Turn
from mtn_sails.errors import InputError
from mtn_sails.data.template import PromptTemplate, Segment
from mtn_sails.training.collators import ROW_SHARING_MODELS, PaddingCollator, RowSharingCollator, shared_rows
from mtn_sails.training.scoring import IGNORE_INDEX
from mtn_sails.training.tokenizing import (block_size_for, iter_records, pack_blocks, records_dataset,
                                 records_to_dataset, split_dataset, token_ids, tokenize, tokenize_segments)
from mtn_sails.training.start_model import use_fused_activation

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
    rows = records_to_dataset([Record(index=i, kind="text", shape="text", text=str(i)) for i in range(50)])
    train, held_out = split_dataset(rows, 0.1, seed=3)
    assert len(held_out) == 5 and len(train) == 45
    assert set(train["index"]).isdisjoint(held_out["index"])
    again_train, again_held_out = split_dataset(rows, 0.1, seed=3)
    assert again_held_out["index"] == held_out["index"]
    small = records_to_dataset([Record(index=i, kind="text", shape="text", text=str(i)) for i in range(3)])
    assert split_dataset(small, 0.1, seed=3)[1] is None


def test_records_round_trip_through_arrow(qa_file):
    from mtn_sails.data.files import file_sha256, load_records

    rows = records_dataset(qa_file, file_sha256(qa_file))
    assert list(iter_records(rows)) == list(load_records(qa_file))
    chat = Record(index=0, kind="chat", shape="messages", turns=(Turn("user", "Hi"), Turn("assistant", "Yo")))
    assert list(iter_records(records_to_dataset([chat]))) == [chat]


def test_a_record_error_inside_the_arrow_build_surfaces_as_itself(tmp_path):
    from mtn_sails.data.files import RecordError

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "q", "answer": "a"}\n{"foo": 1}\n')
    with pytest.raises(RecordError, match="record 1: unknown record shape"):
        records_dataset(bad, "x")


def test_a_session_changes_every_trainable_parameter(tiny_model_dir, qa_file, tmp_path):
    from transformers import AutoModelForCausalLM

    from mtn_sails.config import TrainConfig
    from mtn_sails.training.session import train

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


def test_checkpoints_minutes_0_means_each_epoch_but_at_most_ten():
    from mtn_sails.training.work_dir import checkpoint_interval

    assert checkpoint_interval(0, epochs=3, total_steps=30) == 0  # at each epoch end
    assert checkpoint_interval(0, epochs=40, total_steps=400) == 40
    assert checkpoint_interval(7, epochs=40, total_steps=400) == 7  # --save-steps wins


def test_gelu_new_becomes_its_fused_kernel_with_the_same_outputs(tiny_model_dir):
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(tiny_model_dir)
    assert config.activation_function == "gelu_new"
    assert use_fused_activation(config) and config.activation_function == "gelu_pytorch_tanh"
    assert not use_fused_activation(config)
    original = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    fused = AutoModelForCausalLM.from_pretrained(tiny_model_dir, config=config).eval()
    assert type(fused.transformer.h[0].mlp.act) is not type(original.transformer.h[0].mlp.act)
    ids = torch.arange(1, 40).unsqueeze(0)
    with torch.no_grad():
        torch.testing.assert_close(fused(ids).logits, original(ids).logits, rtol=1e-5, atol=1e-5)


TRICKY_TEXTS = ["What is SQL?", "  leading spaces", "naïve café ☕ 数据库", "ends with eos <|endoftext|>", "", "a\n\nb"]


def test_token_ids_match_the_tokenizer_call_whatever_the_tokenizer(tiny_model_dir, tmp_path):
    from transformers import AutoTokenizer

    from mtn_sails.training.scratch import train_tokenizer

    fresh = train_tokenizer(["What is SQL? A query language."] * 20, 300)
    loaded = AutoTokenizer.from_pretrained(tiny_model_dir)
    truncating = AutoTokenizer.from_pretrained(tiny_model_dir)
    truncating.backend_tokenizer.enable_truncation(max_length=3)  # tokenizer() ignores it; so must we
    slow = AutoTokenizer.from_pretrained(tiny_model_dir, use_fast=False)
    for tokenizer in (fresh, loaded, truncating, slow):
        assert token_ids(tokenizer, TRICKY_TEXTS) == tokenizer(TRICKY_TEXTS, add_special_tokens=False)["input_ids"]
    assert [len(ids) for ids in fresh(TRICKY_TEXTS[:2], truncation=True, max_length=2)["input_ids"]] == [2, 2]


def test_tokenized_examples_are_stored_as_int32(tiny_model_dir, qa_file):
    from transformers import AutoTokenizer

    rows = records_dataset(qa_file, "sha")
    data = tokenize(rows, None, AutoTokenizer.from_pretrained(tiny_model_dir), PromptTemplate(), 64)
    assert data.train.features["input_ids"].feature.dtype == "int32"
    assert data.train.features["labels"].feature.dtype == "int32"


def test_a_second_session_on_the_same_data_reuses_the_tokenised_cache(tiny_model_dir, qa_file):
    from transformers import AutoTokenizer

    from mtn_sails.data.files import file_sha256

    def tokenised(template=PromptTemplate(), max_length=64):
        rows = records_dataset(qa_file, file_sha256(qa_file))  # what each session does, from the file
        return tokenize(rows, None, AutoTokenizer.from_pretrained(tiny_model_dir), template, max_length).train

    first = tokenised()
    assert tokenised().cache_files == first.cache_files  # same data, tokenizer, template, length: no work
    other_template = PromptTemplate(user="Q: {content}\nA: ")
    for changed in (tokenised(max_length=32), tokenised(template=other_template)):
        assert changed.cache_files != first.cache_files


def test_precision_on_the_cpu_is_fp32_unless_bf16_is_asked_for_and_fp16_is_refused():
    from mtn_sails.training.trainer import precision_for

    assert precision_for("cpu") == "fp32" and precision_for("cpu", "fp32") == "fp32"
    assert precision_for("cpu", "bf16") == "bf16"
    with pytest.raises(InputError, match="fp16 needs a CUDA device"):
        precision_for("cpu", "fp16")


@pytest.mark.parametrize("native", [True, False])
def test_auto_precision_on_the_cpu_is_bf16_only_for_wide_models_on_a_cpu_with_native_bf16(monkeypatch, native):
    from mtn_sails.training import trainer

    monkeypatch.setattr(trainer, "cpu_has_native_bf16", lambda: native)
    assert trainer.precision_for("cpu", "auto", width=768) == ("bf16" if native else "fp32")  # distilgpt2
    assert trainer.precision_for("cpu", "auto", width=256) == "fp32"  # --scratch-size small: bf16 gains nothing
    assert trainer.precision_for("cpu", "auto") == "fp32"
    assert trainer.precision_for("cpu", "fp32", width=768) == "fp32"  # the opt-out


def test_replay_pool_rows_follow_the_new_ones_and_are_marked():
    from datasets import Dataset

    from mtn_sails.training.tokenizing import REPLAYED, TOKEN_FEATURES, with_replay

    new = Dataset.from_dict({"input_ids": [[1, 2, 3], [4, 5]], "labels": [[1, 2, 3], [4, 5]], "length": [3, 2]},
                            features=TOKEN_FEATURES)
    assert with_replay(new, []) is new  # nothing to replay: the session's data as it is
    data = with_replay(new, [{"input_ids": [7, 8], "labels": [IGNORE_INDEX, 8]}])
    assert data[REPLAYED] == [0, 0, 1] and data["length"] == [3, 2, 2]
    assert data[2]["labels"] == [IGNORE_INDEX, 8]
    batch = PaddingCollator(pad_token_id=9)([data[0], data[2]])
    assert batch[REPLAYED].tolist() == [0, 1]  # carried to the loss, which distils on the replayed rows
    assert batch["input_ids"].tolist() == [[1, 2, 3], [7, 8, 9]]


@pytest.mark.parametrize("counted", [False, True])  # mean over the batch, or a sum over the Trainer's count
def test_output_layer_on_label_positions_gives_the_models_own_loss_and_gradients(tiny_model_dir, tmp_path, counted):
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainingArguments

    from helpers import QA_PAIRS
    from mtn_sails.training.tokenizing import tokenize_records
    from mtn_sails.training.trainer import SailsTrainer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    records = [Record(index=i, kind="pair", shape="question/answer", prompt=q, response=a)
               for i, (q, a) in enumerate(QA_PAIRS[:6])]
    batch = PaddingCollator(tokenizer.pad_token_id)(tokenize_records(records, tokenizer, PromptTemplate(), 64))
    labelled = int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())
    assert labelled < batch["labels"].numel() / 2  # prompts and padding: most positions predict nothing
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none")
    losses, gradients = [], []
    for on_labels in (False, True):
        trainer = SailsTrainer(model=model, args=args, logits_on_labels=on_labels)
        model.zero_grad()
        loss, outputs = trainer.compute_loss(model, dict(batch), return_outputs=True,
                                             num_items_in_batch=torch.tensor(labelled) if counted else None)
        loss.backward()
        losses.append(float(loss.detach()))
        gradients.append({name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None})
    assert outputs.logits.shape == (labelled, model.config.vocab_size)  # the output layer ran on those only
    assert losses[1] == pytest.approx(losses[0], rel=1e-5)
    assert gradients[0].keys() == gradients[1].keys()
    for name, gradient in gradients[0].items():
        torch.testing.assert_close(gradients[1][name], gradient, rtol=1e-4, atol=1e-6)


def test_shared_rows_hold_every_example_once_in_rows_no_longer_than_the_longest():
    lengths = [5, 3, 2, 4, 1, 5]
    rows = shared_rows(lengths)
    assert sorted(p for row in rows for p in row) == list(range(len(lengths)))
    assert all(sum(lengths[p] for p in row) <= 5 for row in rows)
    assert len(rows) == 4  # 20 tokens in rows of 5: none left over, against 6 padded rows


def test_row_sharing_collator_restarts_positions_and_ignores_each_examples_first_label():
    from mtn_sails.training.tokenizing import REPLAYED

    batch = RowSharingCollator(pad_token_id=9)([
        {"input_ids": [1, 2, 3, 4], "labels": [IGNORE_INDEX, 2, 3, 4], REPLAYED: 0, "length": 4},
        {"input_ids": [5, 6], "labels": [5, 6], REPLAYED: 1, "length": 2},
        {"input_ids": [7], "labels": [IGNORE_INDEX], REPLAYED: 0, "length": 1}])
    assert batch["input_ids"].tolist() == [[1, 2, 3, 4], [5, 6, 7, 9]]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 3], [0, 1, 0, 0]]  # the row's end is a segment too
    assert batch["labels"].tolist() == [[IGNORE_INDEX, 2, 3, 4], [IGNORE_INDEX, 6, IGNORE_INDEX, IGNORE_INDEX]]
    assert batch[REPLAYED].tolist() == [[0, 0, 0, 0], [1, 1, 0, 0]]
    assert "attention_mask" not in batch  # the model builds the per-example mask from the positions


@pytest.mark.parametrize("family", ROW_SHARING_MODELS)
def test_shared_rows_give_the_padded_batchs_loss_and_gradients_in_every_family(family, tmp_path):
    """Several examples in one row, the replayed ones weighted: the loss of one row per example, for each
    family whose mask follows restarting positions (absolute positions for GPT-2, rotary for the others)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainingArguments

    from helpers import QA_PAIRS
    from model_families import save_base
    from mtn_sails.training.retention import Retention
    from mtn_sails.training.tokenizing import REPLAYED, tokenize_records
    from mtn_sails.training.trainer import SailsTrainer

    directory = save_base(family, tmp_path / family)
    tokenizer = AutoTokenizer.from_pretrained(directory)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    records = [Record(index=i, kind="pair", shape="question/answer", prompt=q, response=a * (1 + i % 3))
               for i, (q, a) in enumerate(QA_PAIRS[:8])]
    examples = [{**example, REPLAYED: i % 2} for i, example in
                enumerate(tokenize_records(records, tokenizer, PromptTemplate(), 128))]
    padded, shared = PaddingCollator(pad)(examples), RowSharingCollator(pad)(examples)
    assert len(shared["input_ids"]) < len(examples)  # rows were shared
    model = AutoModelForCausalLM.from_pretrained(directory)
    trainer = SailsTrainer(model=model, args=TrainingArguments(output_dir=str(tmp_path / "run"), use_cpu=True,
                                                               report_to="none"),
                           retention=Retention(replay_weight=4.0))
    losses, gradients = [], []
    for batch in (padded, shared):
        count = batch["labels"].ne(IGNORE_INDEX).sum()  # as the Trainer counts num_items_in_batch
        model.zero_grad()
        loss = trainer.compute_loss(model, dict(batch), num_items_in_batch=count)
        loss.backward()
        losses.append(float(loss.detach()))
        gradients.append({name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None})
    assert losses[1] == pytest.approx(losses[0], rel=1e-5)
    for name, gradient in gradients[0].items():
        torch.testing.assert_close(gradients[1][name], gradient, rtol=1e-4, atol=1e-6)


def test_the_checkpoint_clock_saves_at_the_first_epoch_end_past_its_interval_and_never_at_the_end():
    from transformers import TrainerControl, TrainerState, TrainingArguments

    from mtn_sails.training.trainer import CheckpointClock

    now = [0.0]
    clock = CheckpointClock(300, clock=lambda: now[0])
    state, args = TrainerState(max_steps=100, global_step=0), TrainingArguments(output_dir="unused", report_to="none")
    clock.on_train_begin(args, state, TrainerControl())
    saved_at = []
    for epoch_end in range(1, 11):  # an epoch takes 70 s
        now[0], state.global_step = 70.0 * epoch_end + 5 * len(saved_at), 10 * epoch_end
        control = clock.on_epoch_end(args, state, TrainerControl())
        if control.should_save:
            saved_at.append(epoch_end)
            now[0] += 5  # the save itself
            clock.on_save(args, state, control)
    # 350 s in; then 345 s more by the last epoch end, which ends training and is saved as the model instead
    assert saved_at == [5]
