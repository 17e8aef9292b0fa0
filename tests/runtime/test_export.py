"""ONNX export: real optimum export, real onnxruntime, parity, int8, and the all-or-nothing swap."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from helpers import run_cli
from mtn_sails.cli import main
from mtn_sails.config import ExportConfig
from mtn_sails.errors import EXIT_PARITY, EXIT_UNUSABLE_INPUT, InputError, ParityError
from mtn_sails.runtime.export import (PARITY_PROMPTS, PARITY_STEPS, PARITY_TOLERANCE, check_parity, export)
from mtn_sails.runtime.onnx_session import ONNX_FILE, QUANTIZED_ONNX_FILE
from mtn_sails.runtime.quantize import AGREEMENT_PROMPTS, AGREEMENT_STEPS
from mtn_sails.data.template import TEMPLATE_FILE

pytestmark = pytest.mark.slow

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json",
                   "merges.txt")


def snapshot(directory: Path) -> dict[str, bytes]:
    """Every file under `directory` with its exact bytes."""
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def leftovers(onnx_dir: Path) -> list[str]:
    """Hidden staging / old siblings an export may leave next to the ONNX directory."""
    return sorted(p.name for p in onnx_dir.parent.iterdir()
                  if p.name.startswith(f".{onnx_dir.name}.") and not p.name.endswith(".lock"))


def test_export_passes_parity_with_a_small_difference(exported):
    _, onnx_dir, result = exported
    assert result.onnx_dir == onnx_dir
    assert result.max_abs_diff is not None and result.max_abs_diff < PARITY_TOLERANCE
    assert result.parity.passed()
    assert result.parity.prompts == len(PARITY_PROMPTS)
    assert result.seconds > 0
    assert result.files[ONNX_FILE] == (onnx_dir / ONNX_FILE).stat().st_size


def test_onnx_dir_holds_tokenizer_and_template_as_trained(exported):
    trained, onnx_dir, _ = exported
    for name in TOKENIZER_FILES + (TEMPLATE_FILE, "config.json"):
        assert (onnx_dir / name).is_file(), name
    for name in TOKENIZER_FILES + (TEMPLATE_FILE,):
        assert (onnx_dir / name).read_bytes() == (trained / name).read_bytes(), name
    assert leftovers(onnx_dir) == []


def test_graphs_are_under_onnx_once_as_transformers_js_loads_them(exported):
    from mtn_sails.model_dir.inspection import has_onnx_model
    from mtn_sails.model_dir.model_files import load_tokenizer, read_json

    _, onnx_dir, result = exported
    assert sorted(p.relative_to(onnx_dir).as_posix() for p in onnx_dir.rglob("*.onnx")) == [
        "onnx/model.onnx", "onnx/model_quantized.onnx"]  # one copy of each graph, none at the root
    for name in ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
                 TEMPLATE_FILE):
        assert (onnx_dir / name).is_file(), name
    eos = load_tokenizer(onnx_dir, "--onnx-output").eos_token_id
    assert read_json(onnx_dir / "generation_config.json")["eos_token_id"] == eos
    assert has_onnx_model(onnx_dir)
    assert set(result.files) == {p.relative_to(onnx_dir).as_posix() for p in onnx_dir.rglob("*") if p.is_file()}


def test_generate_still_reads_an_export_with_the_graph_at_the_root(exported, tmp_path):
    import io

    from mtn_sails.config import GenerateConfig
    from mtn_sails.runtime.generation import generate

    _, onnx_dir, _ = exported
    legacy = tmp_path / "onnx_model"
    shutil.copytree(onnx_dir, legacy)
    for graph in (legacy / "onnx").iterdir():
        graph.rename(legacy / graph.name)
    (legacy / "onnx").rmdir()
    options = dict(prompt="What is SQL?", max_new_tokens=8)
    before = generate(GenerateConfig(onnx_output=str(onnx_dir), **options), stream=io.StringIO())
    after = generate(GenerateConfig(onnx_output=str(legacy), **options), stream=io.StringIO())
    assert after.text == before.text
    assert generate(GenerateConfig(onnx_output=str(legacy), int8=True, **options), stream=io.StringIO()).new_tokens


def test_onnx_dir_loads_with_optimum_and_matches_torch(exported):
    import torch
    from optimum.onnxruntime import ORTModelForCausalLM
    from transformers import AutoModelForCausalLM, AutoTokenizer

    trained, onnx_dir, _ = exported
    tokenizer = AutoTokenizer.from_pretrained(onnx_dir)
    ort_model = ORTModelForCausalLM.from_pretrained(onnx_dir)  # picks model.onnx, not the int8 file
    torch_model = AutoModelForCausalLM.from_pretrained(trained)
    ids = tokenizer("What is a variable?", return_tensors="pt")
    kwargs = dict(max_new_tokens=8, do_sample=False, pad_token_id=tokenizer.eos_token_id)
    with torch.inference_mode():
        assert ort_model.generate(**ids, **kwargs).tolist() == torch_model.generate(**ids, **kwargs).tolist()


def test_quantize_writes_an_int8_model_and_reports_agreement(exported):
    import onnx

    _, onnx_dir, result = exported
    quantized = onnx_dir / QUANTIZED_ONNX_FILE
    assert quantized.is_file()
    assert result.files[QUANTIZED_ONNX_FILE] < result.files[ONNX_FILE]
    graph = onnx.load(quantized).graph
    assert any(init.data_type == onnx.TensorProto.INT8 for init in graph.initializer)
    assert result.int8_agreement is not None and 0.0 <= result.int8_agreement <= 1.0
    assert result.int8.shipped and result.int8.positions == len(AGREEMENT_PROMPTS) * AGREEMENT_STEPS
    assert not list(onnx_dir.glob(".model_prepared*"))


def test_check_parity_covers_the_first_pass_and_cached_steps(exported):
    trained, onnx_dir, _ = exported
    report = check_parity(trained, onnx_dir, prompts=["What is SQL?"])
    # every prompt position of the no-past pass, then one row per cached step
    from transformers import AutoTokenizer

    from mtn_sails.data.template import PromptTemplate

    prompt_len = len(AutoTokenizer.from_pretrained(trained)(PromptTemplate.load(trained).prompt("What is SQL?"))
                     ["input_ids"])
    assert report.positions == prompt_len + PARITY_STEPS
    assert report.max_abs_diff < PARITY_TOLERANCE


def test_parity_failure_keeps_the_previous_export(exported, tmp_path):
    trained, onnx_dir, _ = exported
    previous = tmp_path / "onnx_model"
    shutil.copytree(onnx_dir, previous)
    before = snapshot(previous)
    with pytest.raises(ParityError) as caught:
        export(ExportConfig(output_dir=str(trained), onnx_output=str(previous)), tolerance=1e-12)
    assert caught.value.exit_code == EXIT_PARITY == 5
    assert "left as it was" in str(caught.value)
    assert snapshot(previous) == before
    assert leftovers(previous) == []


def test_broken_weights_fail_the_export_and_keep_the_previous_one(exported, tiny_model_copy, tmp_path):
    """Weights that pass the readability check but do not fit config.json: the exporter's load fails."""
    from transformers import GPT2Config, GPT2LMHeadModel

    _, onnx_dir, _ = exported
    previous = tmp_path / "onnx_model"
    shutil.copytree(onnx_dir, previous)
    before = snapshot(previous)
    other = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=64, n_positions=32))
    other.save_pretrained(tmp_path / "other", safe_serialization=True)
    shutil.copyfile(tmp_path / "other" / "model.safetensors", tiny_model_copy / "model.safetensors")
    with pytest.raises(InputError) as caught:
        export(ExportConfig(output_dir=str(tiny_model_copy), onnx_output=str(previous)))
    assert "left as it was" in str(caught.value)
    assert snapshot(previous) == before
    assert leftovers(previous) == []


def test_truncated_weights_exit_2_before_anything_is_written(tiny_model_copy, tmp_path):
    weights = tiny_model_copy / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    onnx_dir = tmp_path / "onnx_model"
    assert main(["export", "--output-dir", str(tiny_model_copy), "--onnx-output", str(onnx_dir)]) == 2
    assert not onnx_dir.exists()
    assert leftovers(onnx_dir) == []


def test_cli_export_exit_0_with_a_few_clear_lines(tiny_model_copy, tmp_path):
    onnx_dir = tmp_path / "onnx_model"
    done = run_cli("export", "--output-dir", str(tiny_model_copy), "--onnx-output", str(onnx_dir), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "📦 Exporting" in done.stdout
    assert "Parity: max |logit diff|" in done.stdout
    assert f"✅ ONNX model ready at {onnx_dir}" in done.stdout
    assert len(done.stdout.splitlines()) <= 5
    assert "Warning" not in done.stderr and "Traceback" not in done.stderr
    assert (onnx_dir / ONNX_FILE).is_file() and not (onnx_dir / QUANTIZED_ONNX_FILE).exists()


def test_cli_export_of_a_missing_model_exits_2_with_one_line(tmp_path):
    done = run_cli("export", "--output-dir", str(tmp_path / "nothing"), "--onnx-output",
                   str(tmp_path / "onnx_model"), cwd=tmp_path)
    assert done.returncode == EXIT_UNUSABLE_INPUT
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "--output-dir" in lines[0] and "mtn-sails" in lines[0]
    assert "Traceback" not in done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_export_into_the_trained_directory_is_refused(tiny_model_copy):
    with pytest.raises(InputError, match="--onnx-output"):
        export(ExportConfig(output_dir=str(tiny_model_copy), onnx_output=str(tiny_model_copy)))


def test_parity_report_rejects_nan():
    from mtn_sails.runtime.export import ParityReport

    assert not ParityReport(float("nan"), 1e-3, 1, 1).passed()
    assert ParityReport(np.float32(1e-6).item(), 1e-3, 1, 1).passed()


def test_generate_int8_reads_the_quantized_model(exported, capsys):
    from mtn_sails.cli import main
    from mtn_sails.config import GenerateConfig
    from mtn_sails.runtime.decoders import OnnxDecoder
    from mtn_sails.runtime.generation import load_decoder
    from mtn_sails.runtime.onnx_session import onnx_session

    _, onnx_dir, _ = exported
    assert main(["generate", "--onnx-output", str(onnx_dir), "--prompt", "What is SQL?", "--int8",
                 "--max-new-tokens", "5"]) == 0
    assert "onnxruntime" in capsys.readouterr().err
    # The decoder --int8 loads gives the quantised file's logits, which differ from fp32's.
    ids = np.array([[5, 17, 42, 8]], dtype=np.int64)
    int8 = load_decoder(GenerateConfig(prompt="x", onnx_output=str(onnx_dir), int8=True)).forward(ids)
    fp32 = load_decoder(GenerateConfig(prompt="x", onnx_output=str(onnx_dir))).forward(ids)
    for logits, name in ((int8, QUANTIZED_ONNX_FILE), (fp32, ONNX_FILE)):
        np.testing.assert_allclose(logits, OnnxDecoder(onnx_session(onnx_dir / name)).forward(ids), atol=1e-6)
    assert np.abs(int8 - fp32).max() > 1e-4
    (onnx_dir.parent / "no_int8" / "onnx").mkdir(parents=True)
    shutil.copy(onnx_dir / ONNX_FILE, onnx_dir.parent / "no_int8" / ONNX_FILE)
    assert main(["generate", "--onnx-output", str(onnx_dir.parent / "no_int8"), "--prompt", "Hi", "--int8"]) == 2
    assert QUANTIZED_ONNX_FILE in capsys.readouterr().err
    assert main(["generate", "--prompt", "Hi", "--int8", "--backend", "torch"]) == 2
