"""Every supported family end to end on a tiny random model built from its config (no hub).

GPT-2, Llama (grouped-query attention, untied embeddings, a tokenizer that adds BOS), Qwen2 (an
instruct tokenizer with its ChatML chat template) and GPT-NeoX (Pythia) each: train a first session,
continue it (kill -9 during training, then --resume; the lower rate), held-out and forgetting rows,
ONNX export with KV cache, parity, int8, and the same greedy tokens from onnxruntime and PyTorch.
One run per family for the whole test session; the tests read it. GPT-2 and Llama continue with
--method lora, so a LoRA session's resume, merge and export are part of the run.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from helpers import QA_PAIRS, REPO, write_qa
from model_families import save_base

from mtn_sails import api

from mtn_sails.model_dir import store
from mtn_sails.cli import main
from mtn_sails.model_dir.history_file import load_history

pytestmark = pytest.mark.slow

FAMILY_NAMES = ("gpt2", "llama", "qwen2", "gpt_neox")
LORA_FAMILIES = ("gpt2", "llama")  # their second session trains LoRA adapters
FIRST_RATE = 3e-3  # a random tiny model learns its answers in 3 epochs at this rate; 5e-5 barely moves it
QUESTION = QA_PAIRS[0][0]
SHAPE = {"epochs": 2, "batch_size": 4, "max_length": 128}


@dataclass
class FamilyRun:
    """What one family's two sessions, export and generation produced."""

    name: str
    base: Path
    trained: Path
    onnx: Path
    first_output: str
    resumed_output: str
    export: object  # exporter.ExportResult
    history: list


def _captured(call) -> tuple[object, str]:
    """(result, stdout) of `call()`."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        result = call()
    return result, out.getvalue()


def _train_until_a_checkpoint_then_kill(data: Path, trained: Path, *extra: str) -> None:
    """A `train` session in its own process, killed with SIGKILL once it has written a resumable checkpoint."""
    args = ["train", "--data-file", str(data), "--output-dir", str(trained), "--save-steps", "1",
            *(f"--{key.replace('_', '-')}={value}" for key, value in SHAPE.items()), *extra]
    process = subprocess.Popen([sys.executable, str(REPO / "main.py"), *args], stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True, env=dict(os.environ, PYTHONIOENCODING="utf-8"))
    work = store.sibling(trained, "work")
    deadline = time.time() + 300
    while process.poll() is None and time.time() < deadline:
        if store.find_resume_checkpoint(work / "checkpoints") is not None:
            process.send_signal(signal.SIGKILL)
            process.wait()
            return
        time.sleep(0.005)
    process.kill()
    pytest.fail(f"the session ended before it could be killed: {process.communicate()[1][-2000:]}")


@pytest.fixture(scope="session", params=FAMILY_NAMES)
def family_run(request, tiny_model_dir, tmp_path_factory) -> FamilyRun:
    """One family's base, two sessions (the second killed and resumed), export with int8."""
    name = request.param
    root = tmp_path_factory.mktemp(f"family_{name}")
    base = root / f"tiny-{name}"
    if name == "gpt2":
        shutil.copytree(tiny_model_dir, base)  # the scratch GPT-2 the other tests use, distilgpt2's activation
    else:
        save_base(name, base, instruct=name == "qwen2")
    trained, onnx = root / "trained_model", root / "onnx_model"
    first = write_qa(root / "first.json", QA_PAIRS[:6], repeat=2)
    second = write_qa(root / "second.json", QA_PAIRS[6:], repeat=2)
    # Qwen2's first session checkpoints activations: the option's wiring is part of the run.
    extra = {"gradient_checkpointing": True} if name == "qwen2" else {}
    _, first_output = _captured(lambda: api.train(first, model_name=str(base), output_dir=str(trained),
                                                  learning_rate=FIRST_RATE, verbose=True,
                                                  **{**SHAPE, "epochs": 3}, **extra))
    lora = ("--method", "lora", "--lora-rank", "4") if name in LORA_FAMILIES else ()
    _train_until_a_checkpoint_then_kill(second, trained, *lora)
    _, resumed_output = _captured(lambda: api.train(second, output_dir=str(trained), resume=True, verbose=True))
    exported = api.export(output_dir=str(trained), onnx_output=str(onnx), quantize=True)
    return FamilyRun(name, base, trained, onnx, first_output, resumed_output, exported, load_history(trained))


def test_first_session_trains_from_the_base_and_learns(family_run):
    from safetensors.torch import load_file

    session = family_run.history[0]
    assert "Training from base model" in family_run.first_output
    assert session["start_kind"] == "base" and session["learning_rate"] == FIRST_RATE
    losses = [point["loss"] for point in session["loss_curve"] if "loss" in point]
    assert len(losses) == 3 and losses[-1] < losses[0]  # one per epoch, falling
    assert session["held_out_loss"] is not None and session["recall"] is not None  # held out and probed
    before = load_file(family_run.base / "model.safetensors")
    after = load_file(family_run.trained / "model.safetensors")
    assert all(not (after[key] == before[key]).all() for key in before if key in after and "norm" not in key)


def test_second_session_is_killed_then_resumed_at_the_lower_rate(family_run):
    session = family_run.history[1]
    assert "Resuming the interrupted session from checkpoint-" in family_run.resumed_output
    assert "Using lower learning rate (1e-05)" in family_run.resumed_output
    assert session["start_kind"] == "resumed" and session["learning_rate"] == 1e-5
    assert session["resumed_from_checkpoint"].startswith("checkpoint-")
    assert session["replayed_examples"] > 0  # the first session's stored records were replayed
    if family_run.name in LORA_FAMILIES:
        assert "LoRA rank 4" in family_run.resumed_output


def test_forgetting_rows_compare_the_first_session_before_and_after(family_run):
    [row] = family_run.history[1]["forgetting"]
    assert row["session"] == 1
    assert row["loss_before"] == family_run.history[0]["held_out_loss"] and row["loss_after"] is not None
    assert row["recall_before"] == family_run.history[0]["recall"] and row["recall_after"] is not None


def test_the_model_directory_is_a_plain_transformers_model_of_its_family(family_run):
    from transformers import AutoConfig, AutoModelForCausalLM

    names = {path.name for path in family_run.trained.iterdir()}
    assert "model.safetensors" in names and not {n for n in names if n.startswith("adapter_")}  # LoRA merged
    config = AutoConfig.from_pretrained(family_run.trained)
    assert config.model_type == family_run.name
    if family_run.name == "llama":
        assert config.num_key_value_heads < config.num_attention_heads and not config.tie_word_embeddings
    model = AutoModelForCausalLM.from_pretrained(family_run.trained)
    assert not hasattr(model, "peft_config")


def test_export_passes_parity_and_writes_int8(family_run):
    result = family_run.export
    assert result.parity.passed() and result.max_abs_diff < 1e-3
    assert result.parity.positions > 3 * 4  # every prompt position, then the cached steps
    assert result.int8_agreement is not None and (family_run.onnx / "onnx" / "model_quantized.onnx").is_file()


def test_int8_is_8_bit_weight_blocks_where_the_projections_are_matmuls_and_dynamic_for_gpt2(family_run):
    import onnx
    from transformers import AutoConfig

    from mtn_sails.runtime.quantize import FUSED_BLOCKS, WEIGHT_BLOCKS, WHOLE_GRAPH

    graph = onnx.load(family_run.onnx / "onnx" / "model_quantized.onnx", load_external_data=False).graph
    blocks = [node for node in graph.node if node.op_type == "MatMulNBits"]
    if family_run.name == "gpt2":  # Conv1D projections export as Gemm, which the weight-block quantiser skips
        assert family_run.export.int8.form == WHOLE_GRAPH and not blocks
        assert any(node.op_type == "MatMulInteger" for node in graph.node)
        return
    if family_run.name in ("llama", "qwen2"):  # onnxruntime-genai's builder writes these families fused
        assert family_run.export.int8.form == FUSED_BLOCKS
        layers = AutoConfig.from_pretrained(family_run.trained).num_hidden_layers
        assert sum(node.op_type == "GroupQueryAttention" for node in graph.node) == layers
        assert not any(node.op_type == "MatMul" for node in graph.node)
    else:
        assert family_run.export.int8.form == WEIGHT_BLOCKS
        layers = onnx.load(family_run.onnx / "onnx" / "model.onnx", load_external_data=False).graph
        weighted = {node.name for node in layers.node if node.op_type == "MatMul" and "/mlp/" in node.name}
        assert weighted and all(node.op_type != "MatMul" for node in graph.node if node.name in weighted)
    assert {attribute.i for node in blocks for attribute in node.attribute if attribute.name == "bits"} == {8}


def test_the_fused_graph_gives_the_logits_of_optimums_export(family_run, tmp_path):
    import numpy as np

    from mtn_sails.runtime.decoders import OnnxDecoder
    from mtn_sails.runtime.fused_graph import build_fused_graph, builds_fused
    from mtn_sails.runtime.onnx_session import model_file, onnx_session

    if not builds_fused(family_run.trained):
        assert family_run.name in ("gpt2", "gpt_neox")  # the builder writes Llama and Qwen2 only
        return
    fused = OnnxDecoder(onnx_session(build_fused_graph(family_run.trained, tmp_path / "fused")))
    optimum = OnnxDecoder(onnx_session(model_file(family_run.onnx)))
    for step in (np.array([[5, 9, 14, 3, 7]]), np.array([[11]]), np.array([[2]])):  # the prompt, then cached steps
        assert np.abs(fused.forward(step) - optimum.forward(step)).max() < 1e-3


def test_the_fused_int8_decoder_fills_its_cache_in_place_with_the_logits_of_a_growing_one(family_run, tmp_path,
                                                                                          monkeypatch):
    import numpy as np
    import onnx

    from mtn_sails.runtime import decoders
    from mtn_sails.runtime.onnx_session import model_file, onnx_session
    from mtn_sails.runtime.quantize import FUSED_BLOCKS

    in_place = decoders.OnnxDecoder(onnx_session(model_file(family_run.onnx, int8=True)))
    if family_run.export.int8.form != FUSED_BLOCKS:
        assert not in_place.shared  # optimum's graphs concatenate their cache: it grows a step
        return
    graph = onnx.load(model_file(family_run.onnx, int8=True))
    del graph.metadata_props[:]  # the same graph unmarked: the decoder feeds each step's present back
    onnx.save(graph, str(tmp_path / "unmarked.onnx"))
    growing = decoders.OnnxDecoder(onnx_session(tmp_path / "unmarked.onnx"))
    monkeypatch.setattr(decoders, "FIRST_CAPACITY", 4)  # the 6-token prompt and the 9th position outgrow it
    assert in_place.shared and not growing.shared
    steps = [np.array([[5, 9, 14, 3, 7, 8]])] + [np.array([[token]]) for token in (11, 2, 6, 4, 13)]
    for _ in range(2):  # the second pass, after reset, runs over what the first left in the buffers
        in_place.reset()
        growing.reset()
        for step in steps:  # the prompt's logits too come for its last position only: what decoding reads
            logits = in_place.forward(step)
            assert logits.shape[1] == 1 and np.array_equal(logits, growing.forward(step))


def test_each_family_graph_names_its_mlp_output_projection_for_int8_to_keep_in_fp32(family_run):
    import onnx
    from transformers import AutoConfig

    from mtn_sails.runtime.quantize import MLP_OUTPUT_PROJECTIONS

    graph = onnx.load(family_run.onnx / "onnx" / "model.onnx", load_external_data=False).graph
    projections = [node for node in graph.node if any(part in node.name for part in MLP_OUTPUT_PROJECTIONS)
                   and node.op_type in ("MatMul", "Gemm")]
    assert len(projections) == AutoConfig.from_pretrained(family_run.trained).num_hidden_layers


def test_onnxruntime_and_pytorch_generate_the_same_greedy_tokens(family_run):
    from mtn_sails.runtime.decoders import OnnxDecoder, TorchDecoder, load_torch_model
    from mtn_sails.model_dir.model_files import load_tokenizer
    from mtn_sails.runtime.onnx_session import model_file, onnx_session
    from mtn_sails.runtime.decode_loop import decode
    from mtn_sails.data.template import PromptTemplate

    tokenizer = load_tokenizer(family_run.onnx, "--onnx-output")
    prompt = tokenizer.encode(PromptTemplate.load(family_run.onnx).prompt(QUESTION))
    decoders = (OnnxDecoder(onnx_session(model_file(family_run.onnx))),
                TorchDecoder(load_torch_model(family_run.trained)))
    tokens = [decode(decoder, prompt, 24, tokenizer.eos_token_id).token_ids for decoder in decoders]
    assert tokens[0] == tokens[1]
    # A tiny model's greedy answer may repeat one token; seeded sampling varies them, so the cache and the
    # positions of every step are compared too (logits agree to ~1e-6: the same draws pick the same tokens).
    sampled = [decode(decoder, prompt, 24, None, temperature=1.0, seed=0).token_ids for decoder in decoders]
    assert sampled[0] == sampled[1] and len(set(sampled[0])) > 3
    answers = [api.generate(QUESTION, backend=backend, onnx_output=str(family_run.onnx),
                            output_dir=str(family_run.trained), max_new_tokens=24) for backend in ("onnx", "torch")]
    assert answers[0].text == answers[1].text and answers[0].new_tokens == len(tokens[0])


def test_special_tokens_follow_the_family(family_run):
    from mtn_sails.model_dir.model_files import load_tokenizer, read_json
    from mtn_sails.data.template import PromptTemplate

    tokenizer = load_tokenizer(family_run.onnx, "--onnx-output")
    template = PromptTemplate.load(family_run.onnx)
    assert template == PromptTemplate.load(family_run.trained)  # the export renders prompts as training did
    prompt = tokenizer.encode(template.prompt(QUESTION))
    bos = read_json(family_run.onnx / "config.json").get("bos_token_id")
    generation_eos = read_json(family_run.onnx / "generation_config.json")["eos_token_id"]
    assert generation_eos == tokenizer.eos_token_id
    if family_run.name == "llama":  # the tokenizer adds a BOS: every prompt starts with exactly one
        assert template.kind == "plain" and prompt[0] == bos and prompt.count(bos) == 1
        raw = api.generate(QUESTION, raw=True, onnx_output=str(family_run.onnx), max_new_tokens=1)
        assert raw.prompt_tokens == len(tokenizer.encode(QUESTION)) + 1  # --raw too
    elif family_run.name == "qwen2":  # the instruct tokenizer's chat template, turns ending in <|im_end|>
        from transformers import AutoTokenizer

        assert template.kind == "chat" and template.end_of_turn == "<|im_end|>"
        own = AutoTokenizer.from_pretrained(family_run.onnx)  # the tokenizer and chat template the export carries
        assert prompt == own.apply_chat_template([{"role": "user", "content": QUESTION}], add_generation_prompt=True)
    else:
        assert template.kind == "plain" and template.bos == "" and (bos is None or bos not in prompt)


def test_generate_offers_tools_through_the_models_template(family_run, tmp_path):
    from mtn_sails.model_dir.model_files import load_tokenizer
    from mtn_sails.data.template import PromptTemplate

    tool = {"type": "function", "function": {"name": "lookup", "description": "Look a term up",
                                             "parameters": {"type": "object", "properties": {}}}}
    tools_file = tmp_path / "tools.json"
    tools_file.write_text(json.dumps([tool]), encoding="utf-8")
    result = api.generate(QUESTION, onnx_output=str(family_run.onnx), tools=str(tools_file), max_new_tokens=2)
    prompt = PromptTemplate.load(family_run.onnx).prompt(QUESTION, tools=[tool])
    assert json.dumps(tool) in prompt
    assert result.prompt_tokens == len(load_tokenizer(family_run.onnx, "--onnx-output").encode(prompt))
    assert main(["generate", "--prompt", QUESTION, "--onnx-output", str(family_run.onnx), "--tools", str(tools_file),
                 "--raw"]) == 2  # the tools go through the template
