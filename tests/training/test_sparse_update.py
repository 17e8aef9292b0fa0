"""--sparse-update: a session moves the chosen share of the blocks' weight matrices and nothing else."""
from __future__ import annotations

import contextlib
import io

import pytest
import torch

from mtn_sails.config import TrainConfig
from mtn_sails.errors import InputError


def tensors(model_dir) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(model_dir / "model.safetensors"))


def test_a_sparse_session_moves_only_its_share_of_the_block_matrices(tiny_model_copy, qa_file):
    from mtn_sails.training.session import train

    before = tensors(tiny_model_copy)
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        train(TrainConfig(data_file=str(qa_file), output_dir=str(tiny_model_copy), epochs=2, learning_rate=1e-2,
                          batch_size=4, max_length=64, eval_split=0, save_steps=10**9, sparse_update=0.05))
    after = tensors(tiny_model_copy)
    matrices = [name for name in before if name.startswith("transformer.h.") and before[name].dim() == 2]
    others = [name for name in before if name not in matrices]
    assert all(torch.equal(before[name], after[name]) for name in others)  # embeddings, norms, biases
    moved = sum(int((before[name] != after[name]).sum()) for name in matrices)
    total = sum(before[name].numel() for name in matrices)
    assert 0.02 < moved / total <= 0.06
    assert "Moving only 5.0% of the blocks' weight matrices" in printed.getvalue()


def test_sparse_update_is_a_share_of_the_model_s_own_weights():
    with pytest.raises(InputError, match=r"--sparse-update must be in \[0, 1\)"):
        TrainConfig(data_file="d.json", sparse_update=1.0)
    with pytest.raises(InputError, match="--method full"):
        TrainConfig(data_file="d.json", sparse_update=0.01, method="lora")
