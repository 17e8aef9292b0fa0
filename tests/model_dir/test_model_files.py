"""model_files: the tokenizer, context length and JSON read beside a model, without torch."""
from __future__ import annotations

import json
import shutil

import pytest

from mtn_sails.errors import InputError
from mtn_sails.model_dir.model_files import DEFAULT_CONTEXT, context_length, first_line, load_tokenizer, read_json


def test_first_line_keeps_the_type_and_the_first_line_only():
    assert first_line(ValueError("bad shape\n  at layer 3\n")) == "ValueError: bad shape"
    assert first_line(RuntimeError("")) == "RuntimeError"


def test_read_json_gives_an_empty_mapping_for_anything_unusable(tmp_path):
    (tmp_path / "list.json").write_text("[1, 2]")
    (tmp_path / "broken.json").write_text("{")
    (tmp_path / "good.json").write_text('{"a": 1}')
    assert read_json(tmp_path / "missing.json") == read_json(tmp_path / "list.json") == {}
    assert read_json(tmp_path / "broken.json") == {}
    assert read_json(tmp_path / "good.json") == {"a": 1}


@pytest.mark.parametrize("config, expected", [({"n_positions": 128}, 128),
                                              ({"max_position_embeddings": 2048}, 2048),
                                              ({"n_ctx": 64}, 64), ({}, DEFAULT_CONTEXT)])
def test_context_length_reads_each_family_key(tmp_path, config, expected):
    (tmp_path / "config.json").write_text(json.dumps(config))
    assert context_length(tmp_path) == expected


def test_a_directory_without_a_tokenizer_names_the_option(tmp_path):
    with pytest.raises(InputError, match=r"\(--onnx-output\) has no usable tokenizer"):
        load_tokenizer(tmp_path, "--onnx-output")


def test_eos_falls_back_to_config_json(tiny_model_dir, tmp_path):
    directory = tmp_path / "model"
    directory.mkdir()
    shutil.copy(tiny_model_dir / "tokenizer.json", directory)
    (directory / "config.json").write_text('{"eos_token_id": 3}')
    tokenizer = load_tokenizer(directory, "--output-dir")
    assert tokenizer.eos_token_id == 3
    assert tokenizer.decode(tokenizer.encode("What is a loop?")) == "What is a loop?"
    assert load_tokenizer(tiny_model_dir, "--output-dir").eos_token_id == 0  # the tokenizer's own eos
