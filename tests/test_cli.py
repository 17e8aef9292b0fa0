"""The command line: --help of every command, --config files, --quiet, and the layering rule."""
from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import EXAMPLES, REPO, run_cli, write_qa
from mtn_sails.cli import COMMANDS, build_parser, main


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_help_of_every_command_ends_with_examples(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "examples:" in out and out.rstrip().splitlines()[-1].strip().startswith("mtn-sails")


def test_every_option_of_every_command_has_help():
    parser = build_parser()
    commands = parser._subparsers._group_actions[0].choices
    assert sorted(commands) == sorted(COMMANDS)
    for name, sub in [("mtn-sails", parser), *commands.items()]:
        for action in sub._actions:
            said = re.sub(r"\(default: .*\)$", "", action.help or "").strip()  # a default alone is no help
            assert said, f"{name} {action.option_strings or action.dest} has no help"


def run_without(module: str, *argv: str, cwd: Path):
    """`mtn-sails ARGV` in a Python where importing `module` fails as if it were not installed."""
    code = (f"import sys; sys.modules[{module!r}] = None\n"
            f"from mtn_sails.cli import main\nraise SystemExit(main({list(argv)!r}))")
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(REPO), "PYTHONIOENCODING": "utf-8"})


def test_train_without_datasets_names_the_package_and_how_to_install(tmp_path):
    result = run_without("datasets", "train", "--data-file", str(EXAMPLES / "programming_basics.json"),
                         cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [result.stderr.strip()]
    assert "missing dependency: datasets" in result.stderr and "pip install -r requirements.txt" in result.stderr
    assert list(tmp_path.iterdir()) == []  # nothing written: no ./trained_model started


def test_generate_without_onnxruntime_names_the_package_not_a_re_export(exported, tmp_path):
    _, onnx_dir, _ = exported
    result = run_without("onnxruntime", "generate", "--prompt", "What is SQL?", "--onnx-output", str(onnx_dir),
                         cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [result.stderr.strip()]
    assert "missing dependency: onnxruntime" in result.stderr and "re-export" not in result.stderr


def test_every_requirement_has_a_missing_dependency_message():
    from importlib.metadata import requires

    from mtn_sails.errors import REQUIREMENTS

    declared = requires("mtn-sails")  # pyproject's dependencies, as `make` installed them
    assert declared
    names = {re.split(r"[<>=!~ ;\[]", requirement, maxsplit=1)[0].lower() for requirement in declared}
    assert names <= {package.lower() for package in REQUIREMENTS.values()}


def test_config_file_sets_options_and_flags_win(tmp_path, capsys):
    data = tmp_path / "qa.json"
    data.write_text(json.dumps([{"question": "q", "answer": "a"}]))
    config = tmp_path / "options.yaml"
    config.write_text(f"data-file: {data}\nmax_length: 8\nstrict: true\n")
    assert main(["validate", "--config", str(config), "--json"]) == 3  # strict from the file: warnings fail
    assert json.loads(capsys.readouterr().out)["path"] == str(data)
    config_json = tmp_path / "options.json"
    config_json.write_text(json.dumps({"data_file": str(data), "strict": False}))
    assert main(["validate", "--config", str(config_json), "--quiet"]) == 0


@pytest.mark.parametrize("content, message", [
    ("epoch: 1\n", "unknown option 'epoch'"),
    ("epochs: many\n", "option 'epochs' must be float"),
    ("- a\n- b\n", "expected a mapping"),
    ("epochs: [1\n", "not valid YAML"),
])
def test_bad_config_files_are_one_line_exit_2(tmp_path, content, message):
    config = tmp_path / "bad.yaml"
    config.write_text(content)
    result = run_cli("train", "--data-file", "x.json", "--config", str(config))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_stages_never_import_the_cli():
    for path in (REPO / "mtn_sails").glob("*.py"):
        if path.name in ("cli.py", "__init__.py"):
            continue
        tree = ast.parse(path.read_text())
        imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
        assert "cli" not in imported and "mtn_sails.cli" not in imported, path.name


def test_colours_only_on_a_terminal_and_never_with_no_color(monkeypatch):
    import os

    from mtn_sails.console import use_color

    leader, follower = os.openpty()
    terminal = os.fdopen(follower, "w")
    try:
        monkeypatch.delenv("NO_COLOR", raising=False)
        assert use_color(terminal)
        monkeypatch.setenv("NO_COLOR", "1")
        assert not use_color(terminal)
    finally:
        terminal.close()
        os.close(leader)
    monkeypatch.delenv("NO_COLOR", raising=False)
    assert not use_color(open(os.devnull, "w"))


def test_train_help_names_both_rate_pairs(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "5e-5 for a first session, 1e-5 when continuing" in text and "1e-3, then 2e-4" in text
    assert "continues at 1e-5 (2e-4 after scratch)" in text


@pytest.fixture(scope="module")
def default_session(tiny_model_dir, tmp_path_factory):
    """One `train` process with every default but a short epoch cap: (the finished process, its model directory)."""
    folder = tmp_path_factory.mktemp("default_session")
    data = write_qa(folder / "qa.json", repeat=2)
    done = run_cli("train", "--data-file", str(data), "--model-name", str(tiny_model_dir), "--output-dir",
                   str(folder / "model"), "--max-epochs", "3", cwd=folder)
    assert done.returncode == 0, done.stderr[-2000:]
    return done, folder / "model"


def test_a_default_session_prints_only_the_products_lines(default_session):
    """Warnings the product triggers knowingly (rows shared without an attention mask, the loss type of GPT-2) are
    silenced where it causes them: a session's output holds no line from transformers, torch or datasets."""
    done, _ = default_session
    third_party = [line for line in (done.stdout + done.stderr).splitlines()
                   if any(word in line for word in ("transformers", "torch", "datasets", "Warning", "warn(",
                                                    "We strongly recommend", "huggingface"))]
    assert third_party == []
    assert done.stderr.strip() == ""


def test_a_session_says_and_records_where_its_time_went(default_session):
    """The history keeps each stage's seconds (the per-epoch recall checks apart from training), they add up to no
    more than the session, and the summary names them."""
    done, model_dir = default_session
    session = json.loads((model_dir / "training_history.json").read_text())["sessions"][-1]
    phases = session["phase_s"]
    assert {"records", "load", "tokenise", "levers", "train", "recall_checks", "save", "measure"} <= set(phases)
    assert all(seconds >= 0 for seconds in phases.values())
    assert phases["train"] > 0 and sum(phases.values()) <= session["duration_s"] + 0.5
    assert "⏱️  Where the time went: " in done.stdout
