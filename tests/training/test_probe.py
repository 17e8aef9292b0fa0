"""Answer recall: the probe decodes as `mtn-sails generate` does, batched or not, on a really trained tiny model."""
from __future__ import annotations

import contextlib
import io
from pathlib import Path

import pytest

from helpers import QA_PAIRS, write_qa
from mtn_sails.config import GenerateConfig, TrainConfig
from mtn_sails.data.files import Record, Turn, load_records
from mtn_sails.training.probe import ProbeScore, answer_scores, probe_items, probe_records, score_probe
from mtn_sails.data.template import PromptTemplate


def pair(index: int, question: str = "Q?", answer: str = "A.") -> Record:
    return Record(index=index, kind="pair", shape="question/answer", prompt=question, response=answer)


CHAT = Record(index=0, kind="chat", shape="messages", turns=(
    Turn("system", "Be brief."), Turn("user", "Name a loop."), Turn("assistant", "A for loop."),
    Turn("user", "And another?"), Turn("assistant", "A while loop.")))


@pytest.fixture(scope="module")
def memorised(tiny_model_dir, tmp_path_factory) -> tuple[Path, list[Record]]:
    """(model dir, records): the tiny model trained by a real session until it answers most QA_PAIRS."""
    from mtn_sails.training.session import train

    root = tmp_path_factory.mktemp("probe")
    data = write_qa(root / "qa.json")
    with contextlib.redirect_stdout(io.StringIO()):
        train(TrainConfig(data_file=str(data), output_dir=str(root / "model"), model_name=str(tiny_model_dir),
                          epochs=60, learning_rate=5e-3, eval_split=0, batch_size=4, max_length=64,
                          save_steps=10**9))
    return root / "model", list(load_records(data))


def with_wrong_answers(records: list[Record]) -> list[Record]:
    """`records` and each question again with the next record's answer: answers the model does not give."""
    swapped = [Record(index=len(records) + i, kind="pair", shape="question/answer", prompt=record.prompt,
                      response=records[(i + 1) % len(records)].response) for i, record in enumerate(records)]
    return records + swapped


def loaded(model_dir: Path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(model_dir), AutoTokenizer.from_pretrained(model_dir)


def test_probe_records_keeps_answered_records_bounded_and_seeded():
    text = Record(index=1, kind="text", shape="text", text="plain text")
    open_chat = Record(index=2, kind="chat", shape="messages", turns=(Turn("user", "Hi"), Turn("assistant", "Hello"),
                                                                     Turn("user", "Bye")))
    records = [text, open_chat, CHAT] + [pair(i) for i in range(3, 103)]
    assert probe_records([text, open_chat, CHAT, pair(3)]) == [CHAT, pair(3)]
    drawn = probe_records(records, limit=64, seed=1)
    assert len(drawn) == 64 and text not in drawn and open_chat not in drawn
    assert drawn == probe_records(records, limit=64, seed=1)
    assert drawn != probe_records(records, limit=64, seed=2)
    assert [r.index for r in drawn] == sorted(r.index for r in drawn)  # file order kept


def test_probe_prompt_and_answer_are_the_training_tokens(tiny_model_dir):
    from transformers import AutoTokenizer

    from mtn_sails.training.scoring import IGNORE_INDEX

    from mtn_sails.training.tokenizing import tokenize_records

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    template = PromptTemplate()
    records = [pair(0, *QA_PAIRS[0]), CHAT]
    for item, example in zip(probe_items(tokenizer, template, records),
                             tokenize_records(records, tokenizer, template, 512)):
        assert item.prompt_ids + item.answer_ids == example["input_ids"]
        assert example["labels"][-len(item.answer_ids):] == item.answer_ids  # the answer and its eos
        assert item.answer_ids[-1] == tokenizer.eos_token_id
    [chat_item] = probe_items(tokenizer, template, [CHAT])
    assert chat_item.answer == "A while loop."  # the last assistant turn; earlier turns are the prompt
    assert tokenizer.decode(chat_item.prompt_ids).endswith(template.prompt("And another?"))
    pair_item = probe_items(tokenizer, template, [pair(0, *QA_PAIRS[0])])[0]
    assert pair_item.prompt_ids == tokenizer(template.prompt(QA_PAIRS[0][0]), add_special_tokens=False).input_ids
    assert IGNORE_INDEX not in pair_item.answer_ids


def test_recall_equals_generate_prompt_by_prompt(memorised):
    from mtn_sails.runtime.generation import generate

    model_dir, trained = memorised
    records = with_wrong_answers(trained)
    model, tokenizer = loaded(model_dir)
    score = score_probe(model, tokenizer, PromptTemplate.load(model_dir), records)
    hits = 0
    for record in records:
        config = GenerateConfig(prompt=record.prompt, backend="torch", output_dir=str(model_dir), max_new_tokens=64)
        with contextlib.redirect_stderr(io.StringIO()):
            result = generate(config, stream=io.StringIO())
        hits += result.text.strip() == record.response.strip()
    assert score.count == len(records)
    assert score.recall == hits / len(records)
    assert 0.25 < score.recall <= 0.5  # taught answers given, swapped ones not: recall measures something


def test_batched_scores_equal_one_record_at_a_time(memorised):
    model_dir, trained = memorised
    model, tokenizer = loaded(model_dir)
    template = PromptTemplate.load(model_dir)
    items = probe_items(tokenizer, template, with_wrong_answers(trained))
    assert len({len(i.prompt_ids + i.answer_ids) for i in items}) > 1  # padding really happens
    batched = answer_scores(model, tokenizer, items, batch_size=16)
    one_by_one = answer_scores(model, tokenizer, items, batch_size=1)
    assert [s.greedy for s in batched] == [s.greedy for s in one_by_one]
    assert [s.logprob for s in batched] == pytest.approx([s.logprob for s in one_by_one], abs=1e-4)
    assert len({s.greedy for s in batched}) == 2  # some answers given, some not: the check tells them apart


def test_answer_logprob_is_the_negative_answer_loss(memorised):
    from mtn_sails.training.forgetting import evaluate_records

    model_dir, records = memorised
    model, tokenizer = loaded(model_dir)
    template = PromptTemplate.load(model_dir)
    score = score_probe(model, tokenizer, template, records)
    # For pairs every target token is an answer token (and its eos): the held-out loss, negated.
    assert score.answer_logprob == pytest.approx(-evaluate_records(model, tokenizer, records, template, 64), rel=1e-4)
    model.train()
    score_probe(model, tokenizer, template, records[:2])
    assert model.training  # scoring leaves a training model in training mode


def test_no_answer_records_score_none(tiny_model_dir):
    model, tokenizer = loaded(tiny_model_dir)
    text = Record(index=0, kind="text", shape="text", text="only text")
    assert score_probe(model, tokenizer, PromptTemplate(), [text]) == ProbeScore(None, None, 0)


def test_scores_at_label_positions_equal_those_from_every_position_of_the_model(memorised):
    import torch

    from mtn_sails.training.probe import label_scores

    model_dir, records = memorised
    model, tokenizer = loaded(model_dir)
    mixed = with_wrong_answers(records)
    items = probe_items(tokenizer, PromptTemplate.load(model_dir), mixed[:4] + mixed[len(records):len(records) + 4])
    scores = label_scores(model, [i.prompt_ids + i.answer_ids for i in items],
                          [[-100] * len(i.prompt_ids) + i.answer_ids for i in items], tokenizer.eos_token_id)
    for item, score in zip(items, scores):
        with torch.no_grad():  # one sequence, the output layer on every position
            logits = model(input_ids=torch.tensor([item.prompt_ids + item.answer_ids])).logits[0, :-1]
        start = len(item.prompt_ids) - 1
        logprobs = torch.log_softmax(logits[start:], dim=-1)
        picked = logprobs.gather(-1, torch.tensor(item.answer_ids)[:, None]).squeeze(-1)
        assert score.count == len(item.answer_ids)
        assert score.logprob == pytest.approx(float(picked.sum()), abs=1e-4)
        assert score.weakest == pytest.approx(float(picked.min()), abs=1e-4)
        assert score.greedy == bool((logits[start:].argmax(-1) == torch.tensor(item.answer_ids)).all())
    assert len({score.greedy for score in scores}) == 2  # answered and missed ones both checked


def test_a_bf16_session_scores_its_probe_in_fp32_as_its_users_run_it(tiny_model_dir, tmp_path):
    """accelerate wraps the trained model's forward in the session's autocast; the session's own measurement
    must score the weights as generate and transformers run them (fp32), not inside that wrapper."""
    import json

    from mtn_sails.model_dir import store
    from mtn_sails.training.session import train

    data = write_qa(tmp_path / "qa.json")
    with contextlib.redirect_stdout(io.StringIO()):
        train(TrainConfig(data_file=str(data), output_dir=str(tmp_path / "model"), model_name=str(tiny_model_dir),
                          epochs=20, learning_rate=5e-3, eval_split=0, batch_size=4, max_length=64,
                          save_steps=10**9, precision="bf16"))
    session = json.loads((tmp_path / "model" / "training_history.json").read_text())["sessions"][0]
    assert session["precision"] == "bf16"
    model, tokenizer = loaded(tmp_path / "model")
    fp32 = score_probe(model.eval(), tokenizer, PromptTemplate.load(tmp_path / "model"),
                       store.read_slices(tmp_path / "model", store.PROBE_DIR)[1])
    assert session["recall"] == fp32.recall
    assert session["answer_logprob"] == pytest.approx(fp32.answer_logprob, rel=1e-5)
