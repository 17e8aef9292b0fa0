"""--null-space: a session's weight changes stay out of the inputs its protected examples use, so the model's
answers to those examples stay as they were while other inputs move."""
from __future__ import annotations

import contextlib
import io

import pytest
import torch

from mtn_sails.config import TrainConfig
from mtn_sails.errors import InputError

PROTECTED = [{"input_ids": [5, 17, 23, 42, 8, 61]}, {"input_ids": [9, 33, 2, 71]}]
OTHER = [{"input_ids": [88, 12, 54, 3, 97, 30]}]


def tiny_model(family: str):
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    if family == "gpt2":  # Conv1D matrices, stored inputs x outputs, with biases and position embeddings
        return GPT2LMHeadModel(GPT2Config(vocab_size=100, n_positions=32, n_embd=32, n_layer=2, n_head=4)).eval()
    return LlamaForCausalLM(LlamaConfig(vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                        num_attention_heads=4, num_key_value_heads=2)).eval()


def logits(model, examples) -> list[torch.Tensor]:
    with torch.no_grad():
        return [model(input_ids=torch.tensor([e["input_ids"]])).logits[0] for e in examples]


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_any_change_projected_leaves_the_protected_answers_as_they_were_and_moves_others(family):
    from mtn_sails.training.null_space import restrict_to_null_space

    model = tiny_model(family)
    protected_before, other_before = logits(model, PROTECTED), logits(model, OTHER)
    # 10 protected tokens span at most 10 of the 32 input directions: at this energy all of them are protected
    kept_out = restrict_to_null_space(model, [PROTECTED], 0.999999, pad_id=0)
    trained = [p for p in model.parameters() if p.requires_grad]
    assert trained and all(p.dim() == 2 for p in trained)
    assert model.get_input_embeddings().weight.requires_grad is False  # embeddings, norms and biases frozen
    assert 0 < kept_out.protected <= 10 * len(kept_out.directions)
    with torch.no_grad():
        for parameter in trained:
            parameter.add_(0.5 * parameter.std() * torch.randn_like(parameter))  # half the weights' own spread
    kept_out.project(model)
    protected_after, other_after = logits(model, PROTECTED), logits(model, OTHER)
    assert all(torch.allclose(a, b, atol=1e-3) for a, b in zip(protected_before, protected_after))
    assert (other_after[0] - other_before[0]).abs().max() > 0.01


def test_a_short_slice_is_protected_as_well_beside_a_long_one():
    """The base's slice has ten times the tokens of an earlier session's: weighted alike, the short slice's
    answers move less than when the two are pooled into one covariance at the same energy."""
    from mtn_sails.training.null_space import restrict_to_null_space

    long_slice = [{"input_ids": [(7 * row + 3 * col) % 60 + 1 for col in range(8)]} for row in range(8)]
    short_slice = [{"input_ids": [71, 83, 95]}]
    moved = {}
    for arrangement, slices in (("alike", [long_slice, short_slice]), ("pooled", [long_slice + short_slice])):
        model = tiny_model("llama")
        before = logits(model, short_slice)[0]
        kept_out = restrict_to_null_space(model, slices, 0.8, pad_id=0)
        torch.manual_seed(1)
        with torch.no_grad():
            for parameter in (p for p in model.parameters() if p.requires_grad):
                parameter.add_(0.5 * parameter.std() * torch.randn_like(parameter))
        kept_out.project(model)
        moved[arrangement] = float((logits(model, short_slice)[0] - before).abs().mean())
    assert moved["alike"] < 0.5 * moved["pooled"]


def answer_logprobs(model_dir, records) -> torch.Tensor:
    from mtn_sails.data.template import PromptTemplate
    from mtn_sails.training.probe import answer_scores, probe_items
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    items = probe_items(tokenizer, PromptTemplate.load(model_dir), records)
    return torch.tensor([score.logprob for score in answer_scores(model, tokenizer, items)])


def test_a_session_with_null_space_keeps_the_earlier_session_s_answers_closer(tiny_model_copy, qa_file, tmp_path):
    import shutil

    from helpers import write_qa
    from mtn_sails.model_dir import store
    from mtn_sails.training.session import train

    settings = dict(epochs=3, learning_rate=3e-3, batch_size=4, max_length=64, eval_split=0, save_steps=10**9,
                    replay=0)
    train(TrainConfig(data_file=str(qa_file), output_dir=str(tiny_model_copy), **settings))
    earlier = [r for records in store.read_slices(tiny_model_copy, store.REPLAY_DIR).values() for r in records]
    before = answer_logprobs(tiny_model_copy, earlier)
    new_data = write_qa(tmp_path / "new.json", [(f"Which colour is the door of house {n}?", f"Colour {n * 7}.")
                                                 for n in range(12)])
    changed = {}
    for energy in (0.0, 0.99):
        directory = tmp_path / f"energy_{energy}"
        shutil.copytree(tiny_model_copy, directory)
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            train(TrainConfig(data_file=str(new_data), output_dir=str(directory), null_space=energy, **settings))
        changed[energy] = float((answer_logprobs(directory, earlier) - before).abs().mean())
        assert ("Keeping earlier answers' inputs out of this session's changes" in printed.getvalue()) == bool(energy)
    assert changed[0.99] < 0.5 * changed[0.0]


def test_null_space_is_a_share_of_energy_for_full_fine_tuning():
    with pytest.raises(InputError, match=r"--null-space must be in \[0, 1\)"):
        TrainConfig(data_file="d.json", null_space=1.0)
    with pytest.raises(InputError, match="--method full"):
        TrainConfig(data_file="d.json", null_space=0.9, method="lora")
