"""Tiny random models of each supported family, built from their configs, with tokenizers trained here.

Each tokenizer follows its family's special-token conventions, the ones that change what training and
generation must do: Llama adds a BOS token (Llama 3: `<|begin_of_text|>`, prepended by the
tokenizer's post-processor) and has no pad token; Qwen2 adds nothing, pads with `<|endoftext|>` and its
instruct variant ships a ChatML template (with tools) whose turns end in `<|im_end|>`; GPT-NeoX
(Pythia) and GPT-2 use `<|endoftext|>` for everything. The models are a few layers of 32-64 units:
seconds to train, export and compare. Shared by tests/test_families.py and benchmarks/families.py.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

# Qwen2.5-Instruct's chat template (tokenizer_config.json of Qwen/Qwen2.5-0.5B-Instruct, Apache-2.0),
# tools branch included: tool definitions in the system turn, calls in <tool_call> tags, results in a user turn.
QWEN2_CHAT_TEMPLATE = r"""{%- if tools %}
    {{- '<|im_start|>system\n' }}
    {%- if messages[0]['role'] == 'system' %}
        {{- messages[0]['content'] }}
    {%- else %}
        {{- 'You are Qwen, created by Alibaba Cloud. You are a helpful assistant.' }}
    {%- endif %}
    {{- "\n\n# Tools\n\nYou may call one or more functions to assist with the user query.\n\nYou are provided with function signatures within <tools></tools> XML tags:\n<tools>" }}
    {%- for tool in tools %}
        {{- "\n" }}
        {{- tool | tojson }}
    {%- endfor %}
    {{- "\n</tools>\n\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n{\"name\": <function-name>, \"arguments\": <args-json-object>}\n</tool_call><|im_end|>\n" }}
{%- else %}
    {%- if messages[0]['role'] == 'system' %}
        {{- '<|im_start|>system\n' + messages[0]['content'] + '<|im_end|>\n' }}
    {%- else %}
        {{- '<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n' }}
    {%- endif %}
{%- endif %}
{%- for message in messages %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) or (message.role == "assistant" and not message.tool_calls) %}
        {{- '<|im_start|>' + message.role + '\n' + message.content + '<|im_end|>' + '\n' }}
    {%- elif message.role == "assistant" %}
        {{- '<|im_start|>' + message.role }}
        {%- if message.content %}
            {{- '\n' + message.content }}
        {%- endif %}
        {%- for tool_call in message.tool_calls %}
            {%- if tool_call.function is defined %}
                {%- set tool_call = tool_call.function %}
            {%- endif %}
            {{- '\n<tool_call>\n{"name": "' }}
            {{- tool_call.name }}
            {{- '", "arguments": ' }}
            {{- tool_call.arguments | tojson }}
            {{- '}\n</tool_call>' }}
        {%- endfor %}
        {{- '<|im_end|>\n' }}
    {%- elif message.role == "tool" %}
        {%- if (loop.index0 == 0) or (messages[loop.index0 - 1].role != "tool") %}
            {{- '<|im_start|>user' }}
        {%- endif %}
        {{- '\n<tool_response>\n' }}
        {{- message.content }}
        {{- '\n</tool_response>' }}
        {%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}
            {{- '<|im_end|>\n' }}
        {%- endif %}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\n' }}
{%- endif %}
"""

# Llama 3 Instruct's turn format (Meta Llama 3 tokenizer_config.json, without the date and tools preamble):
# the template writes the BOS itself, turns end in <|eot_id|>, which is not the base tokenizer's eos.
LLAMA3_CHAT_TEMPLATE = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'"
    " + message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}"
    "{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}")

# A ChatML template with generation markers (as SmolLM3's and TRL's templates carry): the assistant's tokens
# are the ones inside {% generation %}, its <|im_end|> included.
CHATML_GENERATION_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] == 'assistant' %}{{ '<|im_start|>assistant\n' }}"
    "{% generation %}{{ message['content'] + '<|im_end|>' }}{% endgeneration %}{{ '\n' }}"
    "{% else %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")


@dataclass(frozen=True)
class Family:
    """How one family's tiny model and tokenizer are built."""

    name: str  # the config's model_type
    special_tokens: tuple[str, ...]  # trained into the vocabulary first, in this order
    bos: str | None
    eos: str
    pad: str | None
    adds_bos: bool  # the tokenizer's post-processor prepends bos
    chat_template: str | None = None


FAMILIES = {
    "gpt2": Family("gpt2", ("<|endoftext|>",), "<|endoftext|>", "<|endoftext|>", "<|endoftext|>", False),
    "llama": Family("llama", ("<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>",
                              "<|eot_id|>"), "<|begin_of_text|>", "<|end_of_text|>", None, True),
    "qwen2": Family("qwen2", ("<|endoftext|>", "<|im_start|>", "<|im_end|>"), None, "<|endoftext|>",
                    "<|endoftext|>", False),
    "gpt_neox": Family("gpt_neox", ("<|endoftext|>",), "<|endoftext|>", "<|endoftext|>", None, False),
}
INSTRUCT = {"llama": LLAMA3_CHAT_TEMPLATE, "qwen2": QWEN2_CHAT_TEMPLATE}


def train_tokenizer(family: Family, texts: list[str], vocab_size: int = 600, chat_template: str | None = None):
    """A byte-level BPE fast tokenizer trained on `texts` with the family's special tokens and BOS rule."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(family.special_tokens),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    bpe.train_from_iterator(texts, trainer)
    if family.adds_bos:
        bos_id = bpe.token_to_id(family.bos)
        bpe.post_processor = processors.TemplateProcessing(
            single=f"{family.bos} $A", pair=f"{family.bos} $A {family.bos} $B", special_tokens=[(family.bos, bos_id)])
    else:
        bpe.post_processor = processors.ByteLevel(trim_offsets=False)
    extra = [token for token in family.special_tokens if token not in (family.bos, family.eos, family.pad)]
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token=family.bos, eos_token=family.eos,
                                        pad_token=family.pad, additional_special_tokens=extra)
    if chat_template:
        tokenizer.chat_template = chat_template
        if family.name == "qwen2":  # Qwen2.5-Instruct's tokenizer ends every turn, and generation, at <|im_end|>
            tokenizer.eos_token = "<|im_end|>"
    return tokenizer


def model_config(family: Family, tokenizer, positions: int = 512, **shape):
    """A config of the family (tiny unless `shape` says otherwise: hidden, layers, heads, kv_heads,
    intermediate, tied, vocab): GQA and untied embeddings for Llama, the tokenizer's special ids."""
    from transformers import GPT2Config, GPTNeoXConfig, LlamaConfig, Qwen2Config

    ids = {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
           "pad_token_id": tokenizer.pad_token_id, "vocab_size": shape.get("vocab", len(tokenizer))}
    hidden, layers, heads = shape.get("hidden", 64), shape.get("layers", 2), shape.get("heads", 4)
    if family.name == "gpt2":
        return GPT2Config(n_embd=hidden, n_layer=layers, n_head=heads, n_positions=positions, **ids)
    if family.name == "gpt_neox":
        return GPTNeoXConfig(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                             intermediate_size=4 * hidden, max_position_embeddings=positions, rotary_pct=0.25,
                             use_parallel_residual=True, tie_word_embeddings=False, **ids)
    common = dict(hidden_size=hidden, num_hidden_layers=layers, intermediate_size=shape.get("intermediate", 2 * hidden),
                  num_attention_heads=heads, num_key_value_heads=shape.get("kv_heads", 2),
                  max_position_embeddings=positions, rms_norm_eps=1e-5, **ids)
    if family.name == "llama":
        return LlamaConfig(tie_word_embeddings=shape.get("tied", False), rope_theta=10000.0, **common)
    return Qwen2Config(tie_word_embeddings=shape.get("tied", True), **common)


def corpus() -> list[str]:
    """Texts to train the test tokenizers on: the QA pairs and some real web text."""
    from helpers import QA_PAIRS, REALDATA

    texts = [f"{q} {a}" for q, a in QA_PAIRS] * 4
    with open(REALDATA / "c4_demo.jsonl", encoding="utf-8") as handle:
        texts += [json.loads(line)["text"] for line, _ in zip(handle, range(60))]
    return texts


def save_base(name: str, directory: Path, instruct: bool = False, seed: int = 0, positions: int = 512,
              **shape) -> Path:
    """A saved base of family `name` (tiny unless `shape` says; instruct: with the family's chat template)."""
    import torch
    from transformers import AutoModelForCausalLM

    family = FAMILIES[name]
    tokenizer = train_tokenizer(family, corpus(), chat_template=INSTRUCT[name] if instruct else None)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(model_config(family, tokenizer, positions, **shape))
    model.save_pretrained(directory, safe_serialization=True)
    tokenizer.save_pretrained(directory)
    return directory
