"""Tiny models that have learned the QA pairs, exported once per test run for the Node and browser tests.

Random weights answer every question with the same few repeated tokens, which would let a runtime
that mishandles positions or the cache still "agree"; a model that answers each question with its
own sentence and then stops at eos checks the whole path. Overfitting 12 pairs directly (no Trainer:
the training stage is tested elsewhere) keeps this to seconds. GPT-2 by default; Llama (BOS, GQA,
RoPE) and Qwen2 instruct (its ChatML template, <|im_end|> as eos) for the families' Node parity.
"""
from __future__ import annotations

import functools
import json
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import QA_PAIRS, REPO

NODE_SCRIPT = REPO / "examples" / "node_generate.mjs"
STEPS = 150  # loss ~0.1: each answer reproduced word for word under greedy decoding
LEARNING_RATE = 5e-3


def _base(root: Path, family: str, instruct: bool):
    """(model, tokenizer, template) to train: the scratch GPT-2, or a tiny model of another family
    (tests/model_families.py) with the template and eos a session would settle for it."""
    from mtn_sails.data.template import PromptTemplate, align_eos, bos_text, chat_template_of

    if family == "gpt2":
        from mtn_sails.training.scratch import build_scratch_model

        texts = [PromptTemplate().prompt(question) + answer for question, answer in QA_PAIRS]
        model, tokenizer = build_scratch_model(texts * 4, size="tiny", max_length=128, seed=0)
        return model, tokenizer, PromptTemplate()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from model_families import save_base

    base = save_base(family, root / "base", instruct=instruct)
    tokenizer, model = AutoTokenizer.from_pretrained(base), AutoModelForCausalLM.from_pretrained(base)
    template = chat_template_of(tokenizer) if instruct else PromptTemplate(bos=bos_text(tokenizer))
    align_eos(model, tokenizer, template)  # a chat template's end-of-turn token becomes the eos
    return model, tokenizer, template


@functools.cache
def trained_export(root: Path, family: str = "gpt2", instruct: bool = False) -> tuple[Path, Path]:
    """(trained dir, ONNX dir with --quantize) under `root`; built once per process."""
    import torch

    from mtn_sails.config import ExportConfig
    from mtn_sails.runtime.export import export

    model, tokenizer, template = _base(root, family, instruct)
    eos = tokenizer.eos_token_id
    texts = [template.prompt(question) + answer for question, answer in QA_PAIRS]
    rows = [tokenizer(text, add_special_tokens=False)["input_ids"] + [eos] for text in texts]  # as training does
    width = max(map(len, rows))
    input_ids = torch.tensor([row + [eos] * (width - len(row)) for row in rows])
    labels = torch.tensor([row + [-100] * (width - len(row)) for row in rows])
    attention_mask = torch.tensor([[1] * len(row) + [0] * (width - len(row)) for row in rows])
    torch.manual_seed(0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=LEARNING_RATE)
    model.train()
    for _ in range(STEPS):
        loss = model(input_ids=input_ids, attention_mask=attention_mask, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    trained = root / "trained_model"
    model.save_pretrained(trained, safe_serialization=True)
    tokenizer.save_pretrained(trained)
    template.save(trained)
    onnx_dir = root / "onnx_model"
    export(ExportConfig(output_dir=str(trained), onnx_output=str(onnx_dir), quantize=True))
    return trained, onnx_dir


@pytest.fixture(scope="session")
def web_export(tmp_path_factory) -> tuple[Path, Path]:
    """(trained dir, ONNX dir) of the tiny model that learned the QA pairs; import it into a test module."""
    return trained_export(tmp_path_factory.getbasetemp() / "web_model")


def node_generate(onnx_dir: Path, questions: list[str], *options: str, timeout: int = 120) -> list[dict]:
    """examples/node_generate.mjs (transformers.js on onnxruntime-node): one result per question."""
    done = subprocess.run(["node", str(NODE_SCRIPT), str(onnx_dir), *questions, *options], cwd=REPO,
                          capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stderr[-3000:]
    return [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]


def python_generate(onnx_dir: Path, question: str, max_new_tokens: int, int8: bool = False) -> dict:
    """Greedy tokens and text from mtn-sails generate (Python onnxruntime) for one question."""
    import io

    from mtn_sails.config import GenerateConfig
    from mtn_sails.runtime.decoders import OnnxDecoder
    from mtn_sails.runtime.generation import generate
    from mtn_sails.model_dir.model_files import load_tokenizer
    from mtn_sails.runtime.onnx_session import model_file, onnx_session
    from mtn_sails.runtime.decode_loop import decode
    from mtn_sails.data.template import PromptTemplate

    result = generate(GenerateConfig(prompt=question, onnx_output=str(onnx_dir), max_new_tokens=max_new_tokens,
                                     int8=int8), stream=io.StringIO())
    tokenizer = load_tokenizer(onnx_dir, "--onnx-output")
    ids = tokenizer.encode(PromptTemplate.load(onnx_dir).prompt(question))
    decoded = decode(OnnxDecoder(onnx_session(model_file(onnx_dir, int8))), ids, max_new_tokens,
                     tokenizer.eos_token_id)
    return {"text": result.text, "tokenIds": decoded.token_ids, "promptTokens": len(ids),
            "stoppedAtEos": decoded.stopped_at_eos}


if __name__ == "__main__":  # python tests/web_model.py DIR: build it there (benchmarks, screenshots)
    sys.path.insert(0, str(REPO))
    print(trained_export(Path(sys.argv[1]).resolve())[1])
