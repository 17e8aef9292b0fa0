"""generate: both backends on the real tiny model (exported once with optimum), template, sampling, errors."""
from __future__ import annotations

import io
import shutil
import subprocess
import sys

import pytest

from helpers import REPO, run_cli
from mtn_sails.config import GenerateConfig
from mtn_sails.runtime.decoders import OnnxDecoder, TorchDecoder, load_torch_model
from mtn_sails.errors import InputError
from mtn_sails.runtime.generation import generate
from mtn_sails.model_dir.model_files import load_tokenizer
from mtn_sails.runtime.onnx_session import ONNX_FILE, onnx_session
from mtn_sails.runtime.decode_loop import decode
from mtn_sails.data.template import PromptTemplate

pytestmark = pytest.mark.slow

PROMPTS = ["What is a variable?", "What is HTTP?", "Tell me about loops and lists."]


@pytest.fixture(scope="module")
def models(exported):
    """(trained dir, ONNX dir): the tiny model and its export (shared with test_exporter.py)."""
    trained, onnx_dir, _ = exported
    return trained, onnx_dir


def run(models, backend: str, prompt: str, **options):
    """(GenerationResult, what was streamed) for one prompt."""
    trained, onnx_dir = models
    stream = io.StringIO()
    config = GenerateConfig(prompt=prompt, backend=backend, onnx_output=str(onnx_dir), output_dir=str(trained),
                            **options)
    return generate(config, stream=stream), stream.getvalue()


@pytest.mark.parametrize("prompt", PROMPTS)
def test_greedy_text_is_identical_on_both_backends(models, prompt):
    onnx_result, onnx_streamed = run(models, "onnx", prompt, max_new_tokens=40)
    torch_result, torch_streamed = run(models, "torch", prompt, max_new_tokens=40)
    assert onnx_result.text == torch_result.text
    assert onnx_result.new_tokens == torch_result.new_tokens
    assert onnx_streamed == torch_streamed == onnx_result.text + "\n"
    assert (onnx_result.backend, torch_result.backend) == ("onnxruntime", "torch")


def test_greedy_token_ids_are_identical_on_both_backends(models):
    from transformers import AutoTokenizer

    trained, onnx_dir = models
    tokenizer = AutoTokenizer.from_pretrained(onnx_dir)
    ids = tokenizer(PromptTemplate.load(onnx_dir).prompt("What is CSS?"))["input_ids"]
    onnx_tokens = decode(OnnxDecoder(onnx_session(onnx_dir / ONNX_FILE)), ids, 60, eos_token_id=None)
    torch_tokens = decode(TorchDecoder(load_torch_model(trained)), ids, 60, eos_token_id=None)
    assert onnx_tokens.token_ids == torch_tokens.token_ids
    assert len(onnx_tokens.token_ids) == 60


def test_stream_gets_only_the_completion_and_stderr_the_speed(models, capsys):
    result, streamed = run(models, "onnx", "What is SQL?", max_new_tokens=12)
    assert "What is SQL?" not in streamed and "### Instruction" not in streamed
    assert streamed == result.text + "\n"
    assert result.new_tokens <= 12 and result.tokens_per_second() > 0
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "tokens/s" in captured.err


def test_the_stored_template_is_applied_unless_raw(models, tmp_path):
    from transformers import AutoTokenizer

    trained, onnx_dir = models
    custom = tmp_path / "onnx_custom"
    shutil.copytree(onnx_dir, custom)
    template = PromptTemplate(name="qa", user="Q: {content}\nA:")
    template.save(custom)
    tokenizer = AutoTokenizer.from_pretrained(custom)
    config = dict(prompt="What is a list?", onnx_output=str(custom), max_new_tokens=10)

    templated = generate(GenerateConfig(**config), stream=io.StringIO())
    assert templated.prompt_tokens == len(tokenizer("Q: What is a list?\nA:")["input_ids"])
    expected = decode(OnnxDecoder(onnx_session(custom / ONNX_FILE)),
                      tokenizer("Q: What is a list?\nA:")["input_ids"], 10, tokenizer.eos_token_id)
    assert templated.new_tokens == len(expected.token_ids)

    raw = generate(GenerateConfig(raw=True, **config), stream=io.StringIO())
    assert raw.prompt_tokens == len(tokenizer("What is a list?")["input_ids"])
    default = generate(GenerateConfig(prompt="What is a list?", onnx_output=str(onnx_dir), max_new_tokens=1),
                       stream=io.StringIO())
    assert default.prompt_tokens == len(tokenizer(PromptTemplate().prompt("What is a list?"))["input_ids"])


def test_sampling_with_a_seed_is_reproducible(models):
    options = dict(max_new_tokens=20, temperature=1.0, top_p=0.95)
    first, _ = run(models, "onnx", "What is a loop?", seed=7, **options)
    again, _ = run(models, "onnx", "What is a loop?", seed=7, **options)
    other, _ = run(models, "onnx", "What is a loop?", seed=8, **options)
    on_torch, _ = run(models, "torch", "What is a loop?", seed=7, **options)
    assert first.text == again.text == on_torch.text
    assert other.text != first.text


def test_generation_stops_at_eos(models):
    """Declaring the model's first greedy token as eos makes decoding stop before emitting anything."""
    trained, onnx_dir = models
    decoder = OnnxDecoder(onnx_session(onnx_dir / ONNX_FILE))
    ids = [5, 6, 7, 8]
    first = decode(decoder, ids, 3, eos_token_id=None).token_ids[0]
    stopped = decode(decoder, ids, 3, eos_token_id=first)
    assert stopped.token_ids == [] and stopped.stopped_at_eos


def test_tokenizer_matches_transformers_without_importing_it(models):
    from transformers import AutoTokenizer

    onnx_dir = models[1]
    # A fresh process proves the "without": the tokenizer and a whole ONNX generate leave torch and
    # transformers out of sys.modules.
    script = ("import io, sys\n"
              "from mtn_sails.config import GenerateConfig\n"
              "from mtn_sails.runtime.generation import generate\n"
              "from mtn_sails.model_dir.model_files import load_tokenizer\n"
              f"load_tokenizer({str(onnx_dir)!r}, '--onnx-output').encode('What is a loop?')\n"
              f"generate(GenerateConfig(prompt='What is SQL?', onnx_output={str(onnx_dir)!r}, max_new_tokens=3),\n"
              "         stream=io.StringIO())\n"
              "print(sorted(name for name in ('torch', 'transformers') if name in sys.modules))\n")
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
    ours, theirs = load_tokenizer(onnx_dir, "--onnx-output"), AutoTokenizer.from_pretrained(onnx_dir)
    assert ours.eos_token_id == theirs.eos_token_id
    for text in ("What is a variable?", "  two  spaces\nand a line", "Sails 🌊 naïve ⛵", "a<|endoftext|>b"):
        ids = ours.encode(text)
        assert ids == theirs(text, add_special_tokens=False)["input_ids"]
        assert ours.decode(ids) == theirs.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)


def test_prompt_longer_than_the_context_is_a_clear_error(models):
    with pytest.raises(InputError, match="shorten"):
        run(models, "onnx", "word " * 400)


@pytest.mark.parametrize("backend, option, advice", [("onnx", "--onnx-output", "mtn-sails export"),
                                                     ("torch", "--output-dir", "mtn-sails train")])
def test_missing_model_dir_exits_2_with_one_line(tmp_path, backend, option, advice):
    done = run_cli("generate", "--prompt", "hi", "--backend", backend, "--onnx-output", str(tmp_path / "none"),
                   "--output-dir", str(tmp_path / "none"), cwd=tmp_path)
    assert done.returncode == 2
    assert done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert option in lines[0] and advice in lines[0] and "mtn-sails pipeline" in lines[0]
    assert "Traceback" not in done.stderr


def test_an_onnx_dir_without_a_model_is_a_clear_error(tmp_path):
    (tmp_path / "onnx_model").mkdir()
    with pytest.raises(InputError, match="--onnx-output"):
        generate(GenerateConfig(prompt="hi", onnx_output=str(tmp_path / "onnx_model")), stream=io.StringIO())
