"""The command line: --help of every command, --config files, --quiet, and the layering rule."""
from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

from conftest import REPO, run_cli
from mtn_sails.cli import COMMANDS, build_parser, main


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_help_of_every_command_ends_with_examples(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "examples:" in out and out.rstrip().splitlines()[-1].strip().startswith("mtn-sails")


def test_every_option_has_help():
    for action in build_parser()._subparsers._group_actions[0].choices["train"]._actions:
        assert action.help, action.dest


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
