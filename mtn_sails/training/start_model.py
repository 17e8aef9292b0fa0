"""The model a session starts from: the plan's base or trained model (on resume, its checkpoint), with its
tokenizer, template and example length settled and LoRA adapters added when asked."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from ..config import SCRATCH_MODEL_NAME, TrainConfig
from ..console import say
from ..data.records import Record
from ..data.template import PromptTemplate, align_eos, settle_template
from ..errors import InputError
from .plan import TrainingPlan

# GPT-2's gelu_new is the tanh approximation written as five Python ops; gelu_pytorch_tanh is the same
# function as one kernel (BENCHMARKS.md "Training speed" measures what it pays).
FUSED_ACTIVATIONS = {"gelu_new": "gelu_pytorch_tanh"}


@dataclass
class StartModel:
    """The model and tokenizer a session trains, the example length they allow, and the session's template."""

    model: Any
    tokenizer: Any
    max_length: int
    template: PromptTemplate


def use_fused_activation(config) -> bool:
    """Switch a model config's activation to its fused equivalent (saved with the model); True if changed."""
    changed = False
    for name in ("activation_function", "hidden_act"):
        fused = FUSED_ACTIVATIONS.get(getattr(config, name, None))
        if fused:
            setattr(config, name, fused)
            changed = True
    return changed


def load_start_model(plan: TrainingPlan, config: TrainConfig, records: Iterable[Record], template: PromptTemplate):
    """(model, tokenizer) the session starts from, as the plan says (`records` train a scratch tokenizer)."""
    if plan.source == SCRATCH_MODEL_NAME:
        from .scratch import build_scratch_model

        texts = (segment.text for record in records for segment in template.render(record))
        return build_scratch_model(texts, config.scratch_size, config.max_length, config.seed)
    model, tokenizer = _load_pretrained(plan.source)
    if tokenizer.pad_token is None:
        # GPT-2 and Llama have none: eos pads, without a new token or resized embeddings; the collator pads
        # the labels with -100 itself, so the eos ending a response stays learned (transformers #4122).
        tokenizer.pad_token = tokenizer.eos_token
    model.config.pad_token_id = tokenizer.pad_token_id
    if model.generation_config is not None:  # else the Trainer aligns it and prints a note about it
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


def _load_pretrained(source: str):
    """(model, tokenizer) of a hub id, a local model directory or a .gguf file; one line when it cannot be
    loaded."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from .gguf_file import is_gguf_file, load_gguf
    from .hub import hub_hint, hub_reachable

    if is_gguf_file(source):
        return load_gguf(source)
    local_only = Path(source).exists() or not hub_reachable()
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=local_only)
        model_config = AutoConfig.from_pretrained(source, local_files_only=local_only, trust_remote_code=False)
        use_fused_activation(model_config)
        model = AutoModelForCausalLM.from_pretrained(source, config=model_config, local_files_only=local_only,
                                                     trust_remote_code=False)
    except (OSError, ValueError) as error:
        if Path(source).exists():
            raise InputError(f"cannot load model from {source}: {str(error).splitlines()[0]}") from None
        raise InputError(hub_hint(source, reachable=not local_only, detail=str(error).splitlines()[0])) from None
    return model, tokenizer


def settle_max_length(requested: int, model) -> int:
    """--max-length, capped by the model's position embeddings (the saved shape wins, and says so)."""
    positions = getattr(model.config, "n_positions", None) or getattr(model.config, "max_position_embeddings", None)
    if positions and requested > positions:
        say(f"⚠️  --max-length {requested} exceeds the model's {positions} positions; using {positions}")
        return positions
    return requested


def load_session_model(config: TrainConfig, plan: TrainingPlan, records: Iterable[Record],
                       template: PromptTemplate, checkpoint: str | None) -> StartModel:
    """The model the session trains: the plan's start, or on resume the checkpoint's weights and tokenizer;
    its template settled (--template), LoRA adapters added (--method lora)."""
    # A LoRA checkpoint holds the adapters only: the start model is wrapped again and the Trainer restores them.
    load_plan = dataclasses.replace(plan, source=checkpoint) if checkpoint and config.method == "full" else plan
    model, tokenizer = load_start_model(load_plan, config, records, template)
    template, notes = settle_template(config.template, template if plan.continues else None, tokenizer)
    for note in notes + align_eos(model, tokenizer, template):
        say(note)
    max_length = settle_max_length(config.max_length, model)
    if config.gradient_checkpointing:
        # Non-reentrant checkpointing needs no input that requires grad, so frozen embeddings (LoRA) are fine.
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if config.method == "lora":
        from .lora import parameter_counts, wrap_lora

        model = wrap_lora(model, config.lora_rank, config.lora_alpha, config.seed)
        trainable, total = parameter_counts(model)
        say(f"🪶 LoRA rank {config.lora_rank}, alpha {config.lora_alpha:g}: training {trainable:,} of {total:,} "
            f"parameters ({trainable / total:.2%}); merged into the weights at the save")
    return StartModel(model, tokenizer, max_length, template)
