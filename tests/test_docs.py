"""The docs run as written: every Python example of docs/API_REFERENCE.md and the README's commands."""
from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

from helpers import REPO


def code_blocks(path, language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", path.read_text(encoding="utf-8"), flags=re.S)


def test_api_reference_examples_run_in_order(tmp_path):
    blocks = code_blocks(REPO / "docs" / "API_REFERENCE.md", "python")
    runnable = [block for block in blocks if "import" in block][1:]  # the first is the import line alone
    assert len(runnable) >= 7
    (tmp_path / "examples").symlink_to(REPO / "examples")
    script = "\n".join(f"print('--- block {i}')\n{block}" for i, block in enumerate(runnable))
    result = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True,
                            timeout=900, env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin",
                                              "HF_HUB_OFFLINE": "1", "PYTHONIOENCODING": "utf-8"})
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    out = result.stdout
    assert "73 question/answer 100" in out
    assert "0.001 False" in out and "0.0002 True" in out
    printed = {block.split("\n", 1)[0]: block for block in out.split("--- block ")[1:]}
    assert printed["2"].split()[1] == "True"  # replay drew from earlier sessions
    assert printed["3"].split()[1] == "True" and "model_quantized.onnx" in printed["3"]  # parity, int8
    assert "\nTrue\n" in printed["4"]  # greedy ONNX == torch
    assert printed["5"].split()[1:] == ["100", "4", "True"]  # pipeline: score, session 4, parity
    assert "2 does_not_exist.json: no such file" in out


def test_readme_quickstart_runs_literally(tmp_path):
    """The Quickstart block, typed into bash as it stands, right after `make demo` (a .venv, no activation)."""
    block = next(b for b in code_blocks(REPO / "README.md", "bash") if "mtn-sails validate" in b)
    lines = block.strip().splitlines()
    assert not any(line.rstrip().endswith("\\") for line in lines)  # one command a line: markers go between
    (tmp_path / "examples").symlink_to(REPO / "examples")
    (tmp_path / ".venv").symlink_to(Path(sys.executable).parents[1])  # the venv `make` built (these tests run in it)
    # A shell that has not activated anything: no directory on PATH holds an mtn-sails command.
    path = os.pathsep.join(folder for folder in os.environ.get("PATH", "/usr/bin:/bin").split(os.pathsep)
                           if folder and not (Path(folder) / "mtn-sails").exists())
    env = {key: value for key, value in os.environ.items() if key != "VIRTUAL_ENV"}
    env.update(PATH=path, HF_HUB_OFFLINE="1", PYTHONIOENCODING="utf-8")
    script = "\n".join(f"echo {shlex.quote('@@@ ' + line)}\n{line}" for line in lines)  # a marker before each line
    result = subprocess.run(["bash", "-e", "-c", script], cwd=tmp_path, capture_output=True, text=True,
                            timeout=1800, env=env)
    assert result.returncode == 0, (result.stdout[-2000:], result.stderr[-2000:])
    ran = [part.partition("\n") for part in result.stdout.split("@@@ ")[1:]]
    assert [line for line, _, _ in ran] == lines  # every line ran, in order
    validate_out, first, second, answer, history_out = [output for line, _, output in ran
                                                        if line.startswith("mtn-sails ")]
    assert "100" in validate_out
    assert "🆕 No existing model found. Training from base model 'scratch'" in first
    assert "✅ ONNX model ready at ./onnx_model" in first
    assert "🔄 Found existing ONNX model at ./onnx_model" in second
    assert "🔄 Found existing trained model at ./trained_model" in second
    assert "Using lower learning rate (0.0002)" in second and "replayed from earlier sessions" in second
    assert answer.strip()
    assert "2 sessions" in history_out and "Forgetting after session 2" in history_out


def test_the_readme_layout_and_the_implementation_notes_name_every_module():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    layout = readme[readme.index("## Layout"):readme.index("## Tests")]
    notes = (REPO / "docs" / "IMPLEMENTATION.md").read_text(encoding="utf-8")
    for path in sorted((REPO / "mtn_sails").rglob("*.py")):
        if path.name != "__init__.py":
            assert f" {path.name} " in layout, f"README Layout misses {path.relative_to(REPO)}"
            assert f"| `{path.name}` |" in notes, f"docs/IMPLEMENTATION.md misses {path.relative_to(REPO)}"
