"""The retention levers do what they claim: replay drawn per epoch, targeted at what the model gets wrong,
distillation to the start model, frozen layers byte for byte, interpolation, the learning-rate schedule."""
from __future__ import annotations

import contextlib
import io
import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from helpers import QA_PAIRS, REPO, write_qa
from mtn_sails.training import interpolation, retention
from mtn_sails.config import TrainConfig
from mtn_sails.data.files import load_records
from mtn_sails.errors import InputError
from mtn_sails.training.interpolation import AlphaTrial, choose_alpha
from mtn_sails.training.retention import ReplayPlan, make_sampler, replay_count, uniform_choice
from mtn_sails.data.template import PromptTemplate

QUIET_SESSION = dict(batch_size=4, max_length=64, eval_split=0, save_steps=10**9)


def quiet_train(**settings):
    """One real session, its printout swallowed; its SessionResult."""
    from mtn_sails.training.session import train

    with contextlib.redirect_stdout(io.StringIO()):
        return train(TrainConfig(**{**QUIET_SESSION, **settings}))


@pytest.fixture(scope="module")
def half_known(tiny_model_dir, tmp_path_factory):
    """(model, tokenizer, records): the tiny model trained until it answers QA_PAIRS[:6], never shown the rest."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    root = tmp_path_factory.mktemp("half_known")
    quiet_train(data_file=str(write_qa(root / "known.json", QA_PAIRS[:6])), output_dir=str(root / "model"),
                model_name=str(tiny_model_dir), epochs=40, learning_rate=5e-3)
    records = list(load_records(write_qa(root / "all.json")))
    return (AutoModelForCausalLM.from_pretrained(root / "model"), AutoTokenizer.from_pretrained(root / "model"),
            records)


def spy_on(monkeypatch, module, name: str) -> list:
    """What every call of module.name returns, in order (the function still runs)."""
    returned: list = []
    function = getattr(module, name)

    def spy(*args, **kwargs):
        returned.append(function(*args, **kwargs))
        return returned[-1]

    monkeypatch.setattr(module, name, spy)
    return returned


def test_replay_budget_is_a_ceiling_of_the_ratio():
    assert replay_count(24, 0.1, pool_size=48) == 2  # 2.4 rounded down: never over the exposure budget
    assert replay_count(30, 0.1, pool_size=48) == 3
    assert replay_count(5, 0.1, pool_size=48) == 1  # at least one when replay is on
    assert replay_count(24, 0.0, pool_size=48) == 0 and replay_count(24, 0.1, pool_size=0) == 0


def test_uniform_choice_gives_each_earlier_session_an_equal_share():
    sessions = [1] * 100 + [2] * 4 + [3] * 4  # one large session must not crowd out the small ones
    chosen = uniform_choice(sessions, 6, random.Random(0))
    assert sorted(sessions[p] for p in chosen) == [1, 1, 2, 2, 3, 3]
    assert len(set(chosen)) == 6
    many = uniform_choice([1, 1], 5, random.Random(0))  # more than stored: repeats
    assert len(many) == 5 and set(many) <= {0, 1}
    ones = {sessions[uniform_choice(sessions, 1, random.Random(epoch))[0]] for epoch in range(30)}
    assert ones == {1, 2, 3}  # a budget smaller than the sessions still reaches each of them over the epochs


def test_targeted_choice_compares_scores_within_a_session():
    sessions = [1, 1, 1, 2, 2, 2]  # session 1 plain text (always scores low), session 2 answers
    scores = {0: -6.0, 1: -5.0, 2: -7.0, 3: -0.1, 4: -2.5, 5: -0.3}
    chosen = retention.targeted_choice(scores, sessions, 2, random.Random(0), focus=1.0)
    assert sorted(chosen) == [2, 4]  # the worst of each session, not the two lowest overall


def test_nearness_ranks_the_stored_prompts_that_share_a_sessions_topic_words_first():
    from mtn_sails.data.records import Record, Turn
    from mtn_sails.training.nearness import asked, nearness

    pool = ["What is the capital of France?", "What is the chemical symbol for water?",
            "How many legs does an insect have?", "What is 2 plus 2?"]
    closeness = nearness(pool, ["What is the capital of Velmora?", "Who founded the town of Velmora?"])
    assert closeness[0] == max(closeness) and closeness[2] == 0.0  # "capital" weighs, "what is the" barely
    assert closeness[1] < 0.5 * closeness[0]
    assert nearness(pool, []) == [0.0] * 4
    chat = Record(0, "chat", "messages", turns=(Turn("system", "Be brief."), Turn("user", "Name a river.")))
    assert (asked(chat), asked(Record(1, "text", "text", text="x" * 900))) == ("Name a river.", "x" * 500)


def test_nearest_replay_draws_each_sessions_nearest_quarter_and_comes_round_to_all_of_it():
    sessions = [0] * 16 + [1] * 8
    closeness = [1.0 - p / 100 for p in range(24)]  # nearest first within each session
    draws = [retention.nearest_choice(closeness, sessions, 4, random.Random(epoch)) for epoch in range(40)]
    for chosen in draws:  # 2 a session, 3 of 4 from its nearest quarter (at least that many records)
        assert len(chosen) == 4 and sum(p < 16 for p in chosen) == 2
    near_base = [p for chosen in draws for p in chosen[:2] if p < 16]
    assert set(near_base) == {0, 1, 2, 3}  # session 0's nearest four, each in turn
    sampler = make_sampler(ReplayPlan(4 / 20, "nearest", "epoch", seed=0), 20, sessions, score=None,
                           closeness=closeness)
    list(sampler)
    [drawn] = sampler.drawn
    assert len(drawn) == 4 and set(drawn) <= {0, 1, 2, 3, 16, 17}


def test_sampler_visits_every_new_example_each_epoch_and_redraws_the_replay():
    sessions = [1] * 20 + [2] * 20
    sampler = make_sampler(ReplayPlan(0.25, "uniform", "epoch", seed=3), 16, sessions, score=None)
    epochs = [list(sampler) for _ in range(4)]
    for order in epochs:
        assert len(order) == len(sampler) == 16 + 4
        assert sorted(i for i in order if i < 16) == list(range(16))
        assert all(16 <= i < 56 for i in order if i >= 16)
    assert len({tuple(sorted(order)) for order in epochs}) > 1  # other stored records in other epochs
    assert [len(drawn) for drawn in sampler.drawn] == [4] * 4

    once = make_sampler(ReplayPlan(0.25, "uniform", "session", seed=3), 16, sessions, score=None)
    assert len({tuple(sorted(list(once))) for _ in range(4)}) == 1  # today's rule: one draw, repeated
    sampler.set_epoch(1)
    again = make_sampler(ReplayPlan(0.25, "uniform", "epoch", seed=3), 16, sessions, score=None)
    again.set_epoch(1)
    assert list(again) == epochs[1]  # reproducible per epoch (what --resume relies on)
    assert make_sampler(ReplayPlan(0.25, "uniform", "epoch", 3), 16, [], score=None) is None

    plan, pool = ReplayPlan(0.25, "uniform", "epoch", seed=3), [1] * 100
    lengths = [random.Random(i).randrange(5, 500) for i in range(400 + 100)]
    grouped, plain = make_sampler(plan, 400, pool, score=None), make_sampler(plan, 400, pool, score=None)
    grouped.group_by_length(lengths, batch_size=4)
    order = list(grouped)
    assert sorted(i for i in order if i < 400) == list(range(400)) and len(order) == 500

    def padding(indices: list[int]) -> int:
        batches = [[lengths[i] for i in indices[k:k + 4]] for k in range(0, len(indices), 4)]
        return sum(len(b) * max(b) - sum(b) for b in batches)

    assert padding(order) < padding(list(plain)) / 2  # similar lengths batched together


def test_targeted_replay_draws_the_records_the_model_gets_wrong(half_known):
    from mtn_sails.training.tokenizing import tokenize_records

    model, tokenizer, records = half_known
    examples = tokenize_records(records, tokenizer, PromptTemplate(), 64)
    scores = retention.weakest_logprobs(model, examples, tokenizer.pad_token_id)
    assert min(scores[:6]) > max(scores[6:])  # the trained half is the well-answered half

    sessions = [1] * len(records)
    sampler = make_sampler(ReplayPlan(4 / 24, "targeted", "epoch", seed=0), 24, sessions,
                           score=lambda positions: retention.weakest_logprobs(model, [examples[p] for p in positions],
                                                                           tokenizer.pad_token_id))
    list(sampler)
    [drawn] = sampler.drawn
    worst = sorted(range(len(scores)), key=scores.__getitem__)[:3]
    assert len(drawn) == 4 and set(worst) <= set(drawn)  # 3 of 4 on the worst-answered, 1 uniform
    assert sum(p >= 6 for p in drawn) >= 3


def test_distillation_positions_cover_what_each_setting_names():
    from mtn_sails.training.retention import distillation_positions

    labels = torch.tensor([[-100, -100, 7, 8, -100], [-100, -100, 3, 4, 5]])  # row 0 padded at the end
    mask = torch.tensor([[1, 1, 1, 1, 0], [1, 1, 1, 1, 1]])
    replayed = torch.tensor([1, 0])
    answers = distillation_positions(labels, mask, replayed, "answers").tolist()
    assert answers == [[False, True, True, False], [False] * 4]  # next token is 7, 8 on the replayed row
    assert distillation_positions(labels, mask, replayed, "replayed").tolist() == [[True, True, True, False],
                                                                                   [False] * 4]
    everything = distillation_positions(labels, mask, replayed, "all").tolist()
    assert everything == [[True, True, True, False], [True, False, False, False]]  # never the new answers


def test_distillation_adds_the_kl_to_the_start_model_where_asked(tiny_model_dir):
    from transformers import AutoModelForCausalLM, TrainingArguments

    from mtn_sails.training.retention import distillation_loss, distillation_positions
    from mtn_sails.training.trainer import Retention, SailsTrainer

    student = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    teacher = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    with torch.no_grad():
        for parameter in student.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    batch = {"input_ids": torch.tensor([[5, 6, 7, 8], [9, 10, 11, 12]]),
             "attention_mask": torch.ones(2, 4, dtype=torch.long),
             "labels": torch.tensor([[-100, -100, 7, 8], [-100, 10, 11, 12]])}
    same = distillation_positions(batch["labels"], batch["attention_mask"], torch.tensor([1, 1]), "replayed")
    assert distillation_loss(teacher(**batch).logits, teacher(**batch).logits, same).item() == 0.0
    args = TrainingArguments(output_dir="unused", report_to="none", use_cpu=True)
    plain = SailsTrainer(model=student, args=args)
    for where in ("answers", "replayed"):
        distilling = SailsTrainer(model=student, args=args,
                                  retention=Retention(teacher=teacher, distill_weight=2.0, distill_on=where))
        with torch.no_grad():
            base = plain.compute_loss(student, {**batch, "replayed": torch.tensor([0, 1])})
            loss = distilling.compute_loss(student, {**batch, "replayed": torch.tensor([0, 1])})
            no_replayed_rows = distilling.compute_loss(student, {**batch, "replayed": torch.tensor([0, 0])})
            positions = distillation_positions(batch["labels"][1:], batch["attention_mask"][1:], torch.tensor([1]),
                                               where)
            kl = distillation_loss(student(**batch).logits[1:], teacher(**batch).logits[1:], positions)
        assert kl > 0
        assert loss.item() == pytest.approx(base.item() + 2.0 * kl.item(), rel=1e-5)
        assert no_replayed_rows.item() == pytest.approx(base.item(), rel=1e-6)


@pytest.mark.parametrize("on_labels", [True, False])
def test_replayed_rows_weigh_replay_weight_times_a_new_row_in_the_loss(tiny_model_dir, on_labels):
    from transformers import AutoModelForCausalLM, TrainingArguments

    from mtn_sails.training.trainer import Retention, SailsTrainer

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    batch = {"input_ids": torch.tensor([[5, 6, 7, 8], [9, 10, 11, 12]]),
             "attention_mask": torch.ones(2, 4, dtype=torch.long),
             "labels": torch.tensor([[-100, -100, 7, 8], [-100, 10, 11, 12]])}
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"]).logits[:, :-1]
        token_losses = torch.nn.functional.cross_entropy(logits.transpose(1, 2), batch["labels"][:, 1:],
                                                         reduction="none")  # 0 where the label is -100
    new_row, replayed_row = token_losses.sum(dim=1).tolist()
    args = TrainingArguments(output_dir="unused", report_to="none", use_cpu=True)
    trainer = SailsTrainer(model=model, args=args, retention=Retention(replay_weight=4.0), logits_on_labels=on_labels)
    with torch.no_grad():
        weighted = trainer.compute_loss(model, {**batch, "replayed": torch.tensor([0, 1])})
        all_new = trainer.compute_loss(model, {**batch, "replayed": torch.tensor([0, 0])})
    assert weighted.item() == pytest.approx((new_row + 4.0 * replayed_row) / 5, rel=1e-5)  # 5 label tokens
    assert all_new.item() == pytest.approx((new_row + replayed_row) / 5, rel=1e-5)


def test_blocks_are_found_by_structure_in_every_family():
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    gpt2 = GPT2LMHeadModel(GPT2Config(n_layer=3, n_embd=32, n_head=2, vocab_size=50))
    llama = LlamaForCausalLM(LlamaConfig(num_hidden_layers=2, hidden_size=32, intermediate_size=64,
                                         num_attention_heads=2, num_key_value_heads=1, vocab_size=50))
    assert retention.decoder_blocks(gpt2) == list(gpt2.transformer.h)
    assert retention.decoder_blocks(llama) == list(llama.model.layers)
    names = retention.freeze_bottom(llama, 1)
    assert "model.embed_tokens.weight" in names and any(n.startswith("model.layers.0.") for n in names)
    assert not any(n.startswith("model.layers.1.") for n in names) and "lm_head.weight" not in names
    with pytest.raises(InputError, match="only 3 blocks"):
        retention.freeze_bottom(gpt2, 4)


def tensors(model_dir: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(model_dir / "model.safetensors"))


def test_frozen_layers_are_byte_identical_after_a_session(tiny_model_copy, qa_file):
    before = tensors(tiny_model_copy)
    quiet_train(data_file=str(qa_file), output_dir=str(tiny_model_copy), epochs=2, learning_rate=1e-2,
                freeze_layers=1)
    after = tensors(tiny_model_copy)
    frozen = [name for name in before if name.startswith(("transformer.wte", "transformer.wpe", "transformer.h.0."))]
    assert frozen and all(torch.equal(before[name], after[name]) for name in frozen)
    assert not torch.equal(before["transformer.h.1.mlp.c_fc.weight"], after["transformer.h.1.mlp.c_fc.weight"])


def test_interpolation_zero_gives_back_the_start_weights_and_one_the_trained(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    start = retention.weights_copy(model)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter))
    trained = retention.weights_copy(model)
    interpolation.interpolate(model, start, trained, 0.0)
    assert all(torch.equal(model.state_dict()[name], start[name]) for name in start)
    interpolation.interpolate(model, start, trained, 0.5)
    name = "transformer.h.0.mlp.c_fc.weight"
    assert torch.allclose(model.state_dict()[name], (start[name] + trained[name]) / 2, atol=1e-6)
    interpolation.interpolate(model, start, trained, 1.0)
    assert all(torch.equal(model.state_dict()[name], trained[name]) for name in start)


def test_choose_alpha_keeps_most_earlier_answers_without_losing_the_new_ones():
    trials = [AlphaTrial(1.0, 0.5, 1.0), AlphaTrial(0.8, 0.8, 0.97), AlphaTrial(0.6, 0.9, 0.9)]
    assert choose_alpha(trials) == 0.8  # 0.6 keeps more but costs 10 points of new recall
    assert choose_alpha(trials, tolerance=0.1) == 0.6
    assert choose_alpha([AlphaTrial(1.0, 1.0, 1.0), AlphaTrial(0.8, 1.0, 1.0)]) == 1.0  # ties: least change
    assert choose_alpha([AlphaTrial(1.0, None, 0.7)]) == 1.0  # nothing earlier to protect
    assert choose_alpha([]) == 1.0


def test_a_session_applies_and_returns_its_interpolation_weight(tiny_model_dir, qa_file, tmp_path, monkeypatch):
    import shutil

    from mtn_sails.training import session

    outcomes_seen = spy_on(monkeypatch, session, "train_session")
    plain, interpolated = tmp_path / "plain", tmp_path / "interpolated"
    shutil.copytree(tiny_model_dir, plain)
    shutil.copytree(tiny_model_dir, interpolated)
    start = tensors(plain)
    settings = dict(data_file=str(qa_file), epochs=1, learning_rate=1e-2, device="cpu")
    quiet_train(output_dir=str(plain), **settings)
    quiet_train(output_dir=str(interpolated), interpolate="0.25", **settings)
    outcomes = [outcome for _, outcome in outcomes_seen]
    assert [outcome.interpolation_alpha for outcome in outcomes] == [None, 0.25]
    from mtn_sails.model_dir.history_file import load_history
    assert [s.interpolation_alpha for s in load_history(interpolated)][-1] == 0.25  # the history records it
    assert [s.interpolation_alpha for s in load_history(plain)][-1] is None
    trained, quarter = tensors(plain), tensors(interpolated)
    for name in start:
        assert torch.allclose(quarter[name], start[name] + 0.25 * (trained[name] - start[name]), atol=1e-6)
    assert not torch.equal(quarter["transformer.h.1.mlp.c_fc.weight"], start["transformer.h.1.mlp.c_fc.weight"])


def test_learning_rate_rewarms_and_decays_with_the_chosen_schedule(tiny_model_copy, qa_file, monkeypatch):
    import mtn_sails.training.trainer as trainer_module

    returned = spy_on(monkeypatch, trainer_module, "run_training")
    quiet_train(data_file=str(qa_file), output_dir=str(tiny_model_copy), epochs=4, learning_rate=1e-3,
                lr_schedule="cosine", warmup_ratio=0.25, batch_size=3)
    trainer = returned[0][0]
    rates = [log["learning_rate"] for log in trainer.state.log_history if "learning_rate" in log]
    assert len(rates) == 4  # one log per epoch
    assert rates[0] < max(rates) and rates[-1] < max(rates)  # warmed up again, then decayed
    assert trainer.args.lr_scheduler_type == "cosine"


def test_kill_during_interpolation_leaves_the_previous_model(tiny_model_copy, tmp_path):
    from mtn_sails.model_dir.inspection import check_model_exists

    data = write_qa(tmp_path / "qa.json", repeat=3)
    quiet_train(data_file=str(data), output_dir=str(tiny_model_copy), epochs=1)  # a probe to choose against
    original = (tiny_model_copy / "model.safetensors").read_bytes()
    process = subprocess.Popen([sys.executable, str(REPO / "main.py"), "train", "--data-file", str(data),
                                "--output-dir", str(tiny_model_copy), "--epochs", "1", "--max-length", "64",
                                "--interpolate", "auto", "--eval-split", "0"],
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                               env=dict(os.environ, PYTHONIOENCODING="utf-8"))
    for line in process.stdout:
        if "Choosing the interpolation weight" in line:
            process.send_signal(signal.SIGKILL)
            break
    process.wait()
    assert process.returncode == -signal.SIGKILL
    assert check_model_exists(tiny_model_copy)
    assert (tiny_model_copy / "model.safetensors").read_bytes() == original
