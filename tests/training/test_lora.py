"""LoRA (--method lora) and --gradient-checkpointing: adapters on each family's linear layers, merged into a
plain model before the save; checkpointing changes memory, not what is learned."""
from __future__ import annotations

import pytest
from model_families import FAMILIES, corpus, model_config, train_tokenizer

from mtn_sails import api
from mtn_sails.cli import main
from mtn_sails.training.lora import merge_adapters, parameter_counts, target_modules, wrap_lora

PROJECTIONS = ["down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj"]


def tiny_model(name: str):
    """A randomly initialised tiny model of family `name`."""
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(model_config(FAMILIES[name], train_tokenizer(FAMILIES[name], corpus())))


@pytest.mark.parametrize("name, expected", [
    ("gpt2", ["c_attn", "c_fc", "c_proj"]),  # Conv1D layers
    ("llama", PROJECTIONS), ("qwen2", PROJECTIONS),
    ("gpt_neox", ["dense", "dense_4h_to_h", "dense_h_to_4h", "query_key_value"]),
])
def test_target_modules_are_each_familys_linear_layers_without_the_head(name, expected):
    assert target_modules(tiny_model(name)) == expected


@pytest.mark.parametrize("name", ["gpt2", "llama"])
def test_merged_model_is_the_plain_model_computing_what_the_adapters_did(name):
    import torch

    model = tiny_model(name)
    base_class, base_keys = type(model), set(model.state_dict())
    wrapped = wrap_lora(model, rank=4, alpha=8)
    trainable, total = parameter_counts(wrapped)
    assert 0 < trainable < total / 10
    assert all(("lora_" in key) == parameter.requires_grad for key, parameter in wrapped.named_parameters())
    with torch.no_grad():  # B starts at zero (no change); give the adapters an update to merge
        for key, parameter in wrapped.named_parameters():
            if "lora_B" in key:
                parameter.normal_(std=0.05)
    wrapped.eval()
    ids = torch.tensor([[5, 17, 42, 99, 7, 3]])
    with torch.no_grad():
        adapted = wrapped(input_ids=ids).logits
        merged = merge_adapters(wrapped)
        assert type(merged) is base_class and set(merged.state_dict()) == base_keys
        torch.testing.assert_close(merged(input_ids=ids).logits, adapted, rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_lora_session_changes_only_the_adapted_layers_and_saves_a_plain_model(tiny_model_copy, qa_file, capsys):
    from safetensors.torch import load_file

    before = load_file(tiny_model_copy / "model.safetensors")
    assert main(["train", "--data-file", str(qa_file), "--output-dir", str(tiny_model_copy), "--epochs", "1",
                 "--batch-size", "4", "--method", "lora", "--lora-rank", "4", "--learning-rate", "1e-3"]) == 0
    assert "LoRA rank 4, alpha 16: training" in capsys.readouterr().out
    after = load_file(tiny_model_copy / "model.safetensors")
    assert set(after) == set(before)
    changed = {key for key in before if not (after[key] == before[key]).all()}
    assert changed and all(key.rsplit(".", 2)[-2] in ("c_attn", "c_proj", "c_fc") for key in changed)
    assert not [p.name for p in tiny_model_copy.iterdir() if p.name.startswith("adapter_")]


@pytest.mark.slow
def test_gradient_checkpointing_learns_the_same_weights(tiny_model_dir, qa_file, tmp_path):
    import shutil

    from safetensors.torch import load_file

    weights = []
    for flag in (False, True):
        output = tmp_path / f"checkpointing_{flag}"
        shutil.copytree(tiny_model_dir, output)
        api.train(qa_file, output_dir=str(output), epochs=1, batch_size=4, eval_split=0, gradient_checkpointing=flag)
        weights.append(load_file(output / "model.safetensors"))
    for key, value in weights[0].items():
        assert (value - weights[1][key]).abs().max() < 1e-5, key


@pytest.mark.parametrize("option, value", [("--lora-rank", "0"), ("--lora-alpha", "-1")])
def test_bad_lora_options_are_one_line_and_exit_2(option, value, qa_file, tmp_path, capsys):
    assert main(["train", "--data-file", str(qa_file), "--output-dir", str(tmp_path / "out"), option, value]) == 2
    err = capsys.readouterr().err.strip()
    assert option in err and len(err.splitlines()) == 1 and not (tmp_path / "out").exists()


@pytest.mark.slow
def test_lora_continues_with_every_retention_lever(tiny_model_copy, qa_file, capsys):
    import shutil

    import torch
    from safetensors.torch import load_file

    from mtn_sails.model_dir.history_file import load_history

    def session(*extra: str) -> dict:
        assert main(["train", "--data-file", str(qa_file), "--output-dir", str(tiny_model_copy), "--epochs", "2",
                     "--batch-size", "4", "--method", "lora", "--lora-rank", "4", "--learning-rate", "1e-2",
                     "--eval-split", "0", "--quiet", *extra]) == 0
        return load_file(tiny_model_copy / "model.safetensors")

    session("--replay", "0")  # the first session of the history: what later ones replay
    start = load_file(tiny_model_copy / "model.safetensors")
    full = session("--replay", "0.5", "--distill-weight", "1", "--freeze-layers", "1")
    latest = load_history(tiny_model_copy)[-1]
    assert latest.replayed_examples > 0  # replay and distillation ran on the adapted model
    assert all(torch.equal(full[key], start[key]) for key in start if ".h.0." in key or "wte" in key)  # frozen
    assert any(not torch.equal(full[key], start[key]) for key in start if ".h.1.attn.c_attn" in key)

    kept = tiny_model_copy.parent / "before_interpolation"
    shutil.copytree(tiny_model_copy, kept)
    before = load_file(tiny_model_copy / "model.safetensors")
    trained = session("--replay", "0", "--seed", "3")
    shutil.rmtree(tiny_model_copy)
    shutil.copytree(kept, tiny_model_copy)
    half = session("--replay", "0", "--seed", "3", "--interpolate", "0.5")
    assert load_history(tiny_model_copy)[-1].interpolation_alpha == 0.5
    for key in before:  # halfway in the merged weights, as WiSE-FT on a full fine-tune (same --seed: same run)
        torch.testing.assert_close(half[key], before[key] + 0.5 * (trained[key] - before[key]), rtol=1e-4, atol=1e-5)
