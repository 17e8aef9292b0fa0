"""Shared fixtures: one tiny real GPT-2 (random weights, BPE tokenizer trained here) per test session."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from helpers import QA_PAIRS, REALDATA, write_qa

if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):
    # Each worker and the processes it starts get their share of the cores: torch's default of one thread per
    # core in every worker would run twice as many threads as there are cores.
    _share = max(1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"]))
    os.environ.setdefault("OMP_NUM_THREADS", str(_share))


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A saved tiny GPT-2 (safetensors, tokenizer, prompt template): the stand-in for distilgpt2."""
    from mtn_sails.training.scratch import build_scratch_model
    from mtn_sails.data.template import PromptTemplate

    texts = [f"{q} {a}" for q, a in QA_PAIRS] * 4
    with open(REALDATA / "c4_demo.jsonl", encoding="utf-8") as handle:
        texts += [json.loads(line)["text"] for line, _ in zip(handle, range(60))]
    model, tokenizer = build_scratch_model(texts, size="tiny", max_length=128, seed=0)
    model.config.activation_function = "gelu_new"  # distilgpt2's, the same function unfused: loads switch it
    directory = tmp_path_factory.mktemp("tiny_base") / "tiny-gpt2"
    model.save_pretrained(directory, safe_serialization=True)
    tokenizer.save_pretrained(directory)
    PromptTemplate().save(directory)
    return directory


@pytest.fixture
def tiny_model_copy(tiny_model_dir, tmp_path) -> Path:
    """A private copy of the tiny model that a test may change."""
    target = tmp_path / "trained_model"
    shutil.copytree(tiny_model_dir, target)
    return target


@pytest.fixture
def qa_file(tmp_path) -> Path:
    """A small valid question/answer data file."""
    return write_qa(tmp_path / "qa.json")


@pytest.fixture(scope="session")
def exported(tiny_model_dir, tmp_path_factory):
    """(trained dir, ONNX dir, ExportResult) of one real export with --quantize; read-only for tests."""
    from mtn_sails.config import ExportConfig
    from mtn_sails.runtime.export import export

    root = tmp_path_factory.mktemp("export")
    trained = root / "trained_model"
    shutil.copytree(tiny_model_dir, trained)
    onnx_dir = root / "onnx_model"
    result = export(ExportConfig(output_dir=str(trained), onnx_output=str(onnx_dir), quantize=True))
    return trained, onnx_dir, result
