"""What tests share besides fixtures: the repository's paths, a small question/answer file, the CLI in a subprocess."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
REALDATA = REPO / "tests" / "fixtures"  # real public files carried with the project (tests/fixtures/README.md)
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


def run_cli(*args: str, cwd: Path | None = None, timeout: int = 600, env: dict | None = None, preexec_fn=None):
    """Run `python main.py ARGS` in a subprocess (`preexec_fn` runs in it first: limits, capabilities); returns the
    CompletedProcess (text mode)."""
    full_env = {**os.environ, "PYTHONIOENCODING": "utf-8", **(env or {})}
    return subprocess.run([sys.executable, str(REPO / "main.py"), *args], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout, env=full_env, preexec_fn=preexec_fn)


def load_benchmark(name: str, monkeypatch):
    """benchmarks/NAME.py as a module, imported as `python benchmarks/NAME.py` runs it (benchmarks/ on sys.path)."""
    import importlib.util
    import sys

    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    spec = importlib.util.spec_from_file_location(f"bench_{name}", REPO / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)  # its dataclasses look their module up while being built
    spec.loader.exec_module(module)
    return module
