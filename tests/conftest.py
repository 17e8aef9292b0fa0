"""Shared fixtures: one tiny real GPT-2 (random weights, BPE tokenizer trained here) per test session."""
from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
REALDATA = REPO / "tests" / "data"  # real public files carried with the project (tests/data/README.md)
EXAMPLES = REPO / "examples"

QA_PAIRS = [
    ("What is a variable?", "A variable is a name that refers to a value stored in memory."),
    ("What does a loop do?", "A loop repeats a block of code while a condition holds."),
    ("What is a function?", "A function is a named block of code that takes inputs and returns a result."),
    ("What is recursion?", "Recursion is when a function solves a problem by calling itself on smaller parts."),
    ("What is a list?", "A list is an ordered, changeable collection of items."),
    ("What is a dictionary?", "A dictionary maps keys to values for fast lookup by key."),
    ("What is a boolean?", "A boolean is a value that is either true or false."),
    ("What is a string?", "A string is a sequence of characters, such as a word or a sentence."),
    ("What is an index?", "An index is a data structure that makes finding rows in a table faster."),
    ("What is SQL?", "SQL is the language used to query and change data in relational databases."),
    ("What is HTTP?", "HTTP is the protocol browsers and servers use to exchange web pages and data."),
    ("What is CSS?", "CSS is the language that describes how HTML elements are laid out and styled."),
]


def write_qa(path: Path, pairs=QA_PAIRS, repeat: int = 1) -> Path:
    """A question/answer JSON data file."""
    records = [{"question": q, "answer": a} for q, a in pairs] * repeat
    path.write_text(json.dumps(records, indent=1), encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A saved tiny GPT-2 (safetensors, tokenizer, prompt template): the stand-in for distilgpt2."""
    from mtn_sails.scratch import build_scratch_model
    from mtn_sails.template import PromptTemplate

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


def run_cli(*args: str, cwd: Path | None = None, timeout: int = 600, env: dict | None = None):
    """Run `python main.py ARGS` in a subprocess; returns the CompletedProcess (text mode)."""
    import os
    import subprocess

    full_env = {**os.environ, "PYTHONIOENCODING": "utf-8", **(env or {})}
    return subprocess.run([sys.executable, str(REPO / "main.py"), *args], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout, env=full_env)


@pytest.fixture(scope="session")
def exported(tiny_model_dir, tmp_path_factory):
    """(trained dir, ONNX dir, ExportResult) of one real export with --quantize; read-only for tests."""
    from mtn_sails.config import ExportConfig
    from mtn_sails.exporter import export

    root = tmp_path_factory.mktemp("export")
    trained = root / "trained_model"
    shutil.copytree(tiny_model_dir, trained)
    onnx_dir = root / "onnx_model"
    result = export(ExportConfig(output_dir=str(trained), onnx_output=str(onnx_dir), quantize=True))
    return trained, onnx_dir, result
