"""LoRA through peft (`--method lora`): low-rank adapters on every linear layer of the transformer blocks,
merged into the weights before the save, so the model directory and its ONNX export stay plain.

The layers are found in the model rather than listed per family: GPT-2's Conv1D `c_attn`/`c_proj`/
`c_fc`, Llama's and Qwen2's `q/k/v/o_proj` and `gate/up/down_proj`, GPT-NeoX's `query_key_value`/
`dense*`; the output head (and the embeddings) are left out.
"""
from __future__ import annotations

LORA_DROPOUT = 0.05  # peft's examples and most LoRA recipes; regularises the few trained parameters


def target_modules(model) -> list[str]:
    """The last name component of every linear (or GPT-2 Conv1D) layer except the output head."""
    import torch
    from transformers.pytorch_utils import Conv1D

    head = model.get_output_embeddings()
    return sorted({name.rsplit(".", 1)[-1] for name, module in model.named_modules()
                   if isinstance(module, (torch.nn.Linear, Conv1D)) and module is not head})


def wrap_lora(model, rank: int, alpha: float, seed: int = 42):
    """`model` with trainable LoRA adapters of `rank` on its linear layers (every other weight frozen)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers.pytorch_utils import Conv1D

    # Conv1D stores its weight transposed (in, out); peft must be told so it builds the update the right way round.
    fan_in_fan_out = any(isinstance(module, Conv1D) for module in model.modules())
    config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=LORA_DROPOUT, target_modules=target_modules(model),
                        fan_in_fan_out=fan_in_fan_out, task_type="CAUSAL_LM")
    torch.manual_seed(seed)  # the A matrices start random: seeded, a session repeats with its --seed
    return get_peft_model(model, config)


def parameter_counts(model) -> tuple[int, int]:
    """(trainable, total) parameters of a model."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, sum(p.numel() for p in model.parameters())


def merge_adapters(model):
    """A plain transformers model: the LoRA adapters merged into the weights (`model` itself if it has none)."""
    from peft import PeftModel

    return model.merge_and_unload() if isinstance(model, PeftModel) else model
