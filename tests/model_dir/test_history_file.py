"""The session history: its table, the model card with its pictures, and `history` (--json, --plot)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from mtn_sails.cli import main
from mtn_sails.errors import InputError
from mtn_sails.model_dir.history_file import CARD_FILE, FORGETTING_FILE, HISTORY_FILE, LOSS_CURVE_FILE, forgetting_series, load_history
from mtn_sails.model_dir.history_table import forgetting_matrix, session_table
from mtn_sails.model_dir.model_card import model_card, save_history
from mtn_sails.data.template import PromptTemplate

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def entry(number: int, forgetting: list[tuple[int, float, float]] = (), **fields) -> dict:
    """A history entry with the fields recipes writes (values made up, shapes real)."""
    session = {
        "session": number, "date": f"2026-01-0{number}T10:00:00+0000", "data_file": f"/data/set {number}.json",
        "data_sha256": f"{number}" * 64, "records": 40, "train_examples": 36, "eval_examples": 4,
        "replayed_examples": 0, "start": "distilgpt2" if number == 1 else "/models/trained_model",
        "start_kind": "base" if number == 1 else "continued", "base_model": "distilgpt2",
        "learning_rate": 5e-5 if number == 1 else 1e-5, "epochs": 3.0, "batch_size": 8, "max_length": 512,
        "steps": 15, "train_loss": 3.0 / number, "eval_loss": 3.2 / number, "eval_perplexity": 24.5 / number,
        "held_out_loss": 3.1 / number, "held_out_perplexity": 22.2 / number, "duration_s": 12.5,
        "device": "cpu", "precision": "fp32", "world_size": 1, "replay": 0.0, "seed": 42,
        "versions": {"mtn_sails": "0.1.0", "torch": "2.13.0", "transformers": "4.57.6"},
        "loss_curve": [{"step": 5 * e, "epoch": float(e), "loss": 4.0 / number - e / 4} for e in (1, 2, 3)] +
                      [{"step": 5 * e, "epoch": float(e), "eval_loss": 4.2 / number - e / 4} for e in (1, 2, 3)],
        "forgetting": [{"session": k, "loss_before": None, "loss_after": None, "perplexity_before": before,
                        "perplexity_after": after, "ratio": after / before} for k, before, after in forgetting],
    }
    return {**session, **fields}


def three_sessions() -> list[dict]:
    return [entry(1), entry(2, [(1, 22.2, 30.0)]), entry(3, [(1, 22.2, 41.0), (2, 11.1, 14.0)])]


def front_matter(card: str) -> dict:
    assert card.startswith("---\n")
    head, _, _ = card[4:].partition("\n---\n")
    return yaml.safe_load(head)


def saved_model_dir(path: Path, sessions: list[dict]) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    (path / HISTORY_FILE).write_text(json.dumps({"sessions": sessions}), encoding="utf-8")
    return path


def test_session_table_has_one_aligned_row_per_session():
    lines = session_table(three_sessions())
    assert len(lines) == 4
    assert lines[0].split()[:3] == ["#", "date", "data"]
    assert lines[1].startswith("1  2026-01-01 10:00:00  set 1.json")
    assert "held-out ppl" in lines[0] and "22.2" in lines[1] and "11.1" in lines[2]
    assert lines[2].index("1e-05") == lines[3].index("1e-05")  # columns line up
    assert "trained_model" in lines[2]  # the start of a continued session: the directory's name


def test_markdown_session_table_escapes_pipes():
    lines = session_table([entry(1, data_file="/data/a|b.json")], markdown=True)
    assert lines[0].startswith("| # | date |") and lines[1].startswith("|---|")
    assert "a\\|b.json" in lines[2]
    assert lines[2].count(" | ") == lines[0].count(" | ")


def test_forgetting_series_joins_each_session_with_later_measurements():
    assert forgetting_series(three_sessions()) == {1: [(1, 22.2), (2, 30.0), (3, 41.0)],
                                                   2: [(2, 11.1), (3, 14.0)], 3: [(3, pytest.approx(7.4))]}
    matrix = forgetting_matrix(three_sessions())
    assert matrix[0] == "| data of | after 1 | after 2 | after 3 |"
    assert matrix[2] == "| session 1 | 22.2 | 30 | 41 |"
    assert matrix[3] == "| session 2 |  | 11.1 | 14 |"


def test_forgetting_series_fills_a_missing_first_point_from_the_rows():
    sessions = [entry(1, held_out_perplexity=None), entry(2, [(1, 20.0, 25.0)])]
    assert forgetting_series(sessions)[1] == [(1, 20.0), (2, 25.0)]


def test_model_card_is_a_hub_card_with_sessions_data_and_pictures():
    card = model_card(three_sessions(), images=[LOSS_CURVE_FILE, FORGETTING_FILE])
    meta = front_matter(card)
    assert meta["library_name"] == "transformers" and meta["pipeline_tag"] == "text-generation"
    assert meta["base_model"] == "distilgpt2"
    assert "mtn-sails" in meta["tags"]
    for number in (1, 2, 3):
        assert f"`{str(number) * 64}`" in card
        assert f"set {number}.json" in card
    assert "![loss curve](loss_curve.png)" in card and "![forgetting](forgetting.png)" in card
    assert "| session 1 | 22.2 | 30 | 41 |" in card
    assert "AutoModelForCausalLM.from_pretrained" in card
    assert "mtn-sails generate --backend torch" in card
    assert "ORTModelForCausalLM.from_pretrained" in card
    assert "torch 2.13.0" in card


def test_model_card_embeds_only_the_pictures_it_has():
    card = model_card(three_sessions(), images=[])
    assert "loss_curve.png)" not in card and "forgetting.png)" not in card
    card = model_card(three_sessions(), images=[FORGETTING_FILE])
    assert "loss_curve.png)" not in card and "![forgetting](forgetting.png)" in card


@pytest.mark.parametrize("base", ["scratch", "/tmp/models/tiny-gpt2", "./local_model", "C:\\models\\gpt2"])
def test_model_card_names_no_base_model_that_is_not_a_hub_id(base):
    card = model_card([entry(1, base_model=base)])
    assert "base_model" not in front_matter(card)
    assert base == "scratch" or base not in card  # a published card does not carry the trainer's paths


def test_model_card_of_one_session_has_no_forgetting_table():
    card = model_card([entry(1)], images=[LOSS_CURVE_FILE, FORGETTING_FILE])
    assert "## Forgetting" not in card and "1 session," in card


def test_save_history_writes_history_pictures_and_card(tmp_path):
    PromptTemplate().save(tmp_path)
    sessions = three_sessions()
    assert save_history(tmp_path, sessions) == tmp_path / HISTORY_FILE
    assert load_history(tmp_path) == sessions
    for name in (LOSS_CURVE_FILE, FORGETTING_FILE):
        assert (tmp_path / name).read_bytes()[:8] == PNG_MAGIC
    card = (tmp_path / CARD_FILE).read_text(encoding="utf-8")
    assert "![loss curve](loss_curve.png)" in card and "![forgetting](forgetting.png)" in card
    assert repr(PromptTemplate().prompt("What is a variable?")) in card  # the stored template's prompt


def test_save_history_goes_on_with_one_warning_when_plotting_fails(tmp_path, capsys):
    (tmp_path / LOSS_CURVE_FILE).mkdir()  # a directory where the picture should go: the write fails for real
    save_history(tmp_path, three_sessions())
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and "Plots not written" in err
    assert load_history(tmp_path) == three_sessions()
    card = (tmp_path / CARD_FILE).read_text(encoding="utf-8")
    assert "](loss_curve.png)" not in card and "](forgetting.png)" not in card
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".partial")]


def test_unreadable_history_is_an_input_error(tmp_path):
    (tmp_path / HISTORY_FILE).write_text("{not json", encoding="utf-8")
    with pytest.raises(InputError, match="unreadable training history"):
        load_history(tmp_path)


def test_history_plot_writes_both_pictures_and_prints_their_paths(tmp_path, capsys):
    model_dir = saved_model_dir(tmp_path / "model", three_sessions())
    assert main(["history", "--output-dir", str(model_dir), "--plot"]) == 0
    out = capsys.readouterr().out
    for name in (LOSS_CURVE_FILE, FORGETTING_FILE):
        assert (model_dir / name).read_bytes()[:8] == PNG_MAGIC
        assert str(model_dir / name) in out
    assert "3 sessions" in out


def test_history_json_prints_the_sessions_and_plot_paths_go_to_stderr(tmp_path, capsys):
    model_dir = saved_model_dir(tmp_path / "model", three_sessions())
    assert main(["history", "--output-dir", str(model_dir), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"sessions": three_sessions()}
    assert main(["history", "--output-dir", str(model_dir), "--json", "--plot"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out) == {"sessions": three_sessions()}
    assert str(model_dir / LOSS_CURVE_FILE) in captured.err


def test_history_of_a_missing_directory_exits_2_with_one_line(tmp_path, capsys):
    for extra in ([], ["--json"], ["--plot"]):
        assert main(["history", "--output-dir", str(tmp_path / "nowhere"), *extra]) == 2
        captured = capsys.readouterr()
        assert captured.out == ""
        assert len(captured.err.splitlines()) == 1 and "no such model directory" in captured.err
    assert not (tmp_path / "nowhere").exists()


def test_history_plot_of_a_directory_without_sessions_writes_nothing(tmp_path, capsys):
    assert main(["history", "--output-dir", str(tmp_path), "--plot"]) == 0
    assert "no training sessions recorded" in capsys.readouterr().out
    assert list(tmp_path.iterdir()) == []


def test_history_plot_that_cannot_write_exits_2_with_one_line(tmp_path, capsys):
    model_dir = saved_model_dir(tmp_path / "model", three_sessions())
    (model_dir / LOSS_CURVE_FILE).mkdir()  # the picture's name is taken by a directory
    assert main(["history", "--output-dir", str(model_dir), "--plot"]) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and "cannot write plots into" in err


@pytest.mark.slow
def test_a_real_session_leaves_pictures_the_card_shows(tiny_model_dir, qa_file, tmp_path):
    from mtn_sails.config import TrainConfig
    from mtn_sails.training.session import train

    output = tmp_path / "trained_model"
    train(TrainConfig(data_file=str(qa_file), output_dir=str(output), model_name=str(tiny_model_dir),
                      epochs=1, batch_size=4))
    for name in (LOSS_CURVE_FILE, FORGETTING_FILE):
        assert (output / name).read_bytes()[:8] == PNG_MAGIC
    card = (output / CARD_FILE).read_text(encoding="utf-8")
    assert "![loss curve](loss_curve.png)" in card and "![forgetting](forgetting.png)" in card
    [session] = load_history(output)
    assert f"`{session['data_sha256']}`" in card and "qa.json" in card
    assert "base_model" not in front_matter(card) and str(tiny_model_dir) not in card  # a path is no hub id


def test_the_card_names_the_paths_the_model_really_has_and_both_rate_pairs(tmp_path):
    PromptTemplate().save(tmp_path)
    save_history(tmp_path, three_sessions(), "demo/trained_model", "demo/onnx_model")
    card = (tmp_path / CARD_FILE).read_text(encoding="utf-8")
    assert "path = 'demo/trained_model'" in card and "path = 'demo/onnx_model'" in card
    assert "--output-dir demo/trained_model" in card and "./trained_model" not in card
    assert "1e-05 after 5e-05" in card and "0.0002 after 0.001" in card


def test_the_card_shows_one_perplexity_column_and_says_what_it_is():
    card = model_card(three_sessions())
    header = next(line for line in card.splitlines() if line.startswith("| # | date |"))
    assert "held-out ppl" in header and "eval ppl" not in header
