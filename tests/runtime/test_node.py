"""transformers.js in Node loads the export folder as it is and answers as Python's generate does."""
from __future__ import annotations

import pytest

from web_model import node_generate, python_generate, trained_export, web_export  # noqa: F401 (a fixture)

pytestmark = pytest.mark.slow

QUESTIONS = ["What is a variable?", "What does a loop do?", "What is SQL?", "Tell me about loops and lists."]


def test_node_greedy_tokens_equal_python_onnxruntime_fp32(web_export):
    _, onnx_dir = web_export
    node = node_generate(onnx_dir, QUESTIONS, "--max-new-tokens", "40")
    assert [result["question"] for result in node] == QUESTIONS
    stopped = 0
    for result in node:
        python = python_generate(onnx_dir, result["question"], 40)
        assert result["promptTokens"] == python["promptTokens"]  # the stored template, tokenised alike
        assert result["tokenIds"] == python["tokenIds"], result["question"]
        assert result["text"] == python["text"]
        assert result["stoppedAtEos"] == python["stoppedAtEos"]
        stopped += result["stoppedAtEos"]
    assert stopped >= 3  # the trained answers end with eos, so stopping is checked too
    assert node[0]["text"] == "A variable is a name that refers to a value stored in memory."


def test_node_reads_the_int8_model(web_export):
    _, onnx_dir = web_export
    node = node_generate(onnx_dir, QUESTIONS[:2], "--max-new-tokens", "40", "--int8")
    for result in node:
        python = python_generate(onnx_dir, result["question"], 40, int8=True)
        assert result["tokenIds"] == python["tokenIds"], result["question"]


def test_node_sampling_answers_within_the_token_budget(web_export):
    from mtn_sails.model_dir.model_files import load_tokenizer

    _, onnx_dir = web_export
    node = node_generate(onnx_dir, ["What is CSS?"], "--max-new-tokens", "12", "--temperature", "1.5",
                         "--top-p", "0.9", "--repeat", "3")
    tokenizer = load_tokenizer(onnx_dir, "--onnx-output")
    assert len(node) == 3
    for result in node:
        assert len(result["tokenIds"]) <= 12 and (result["tokenIds"] or result["stoppedAtEos"])
        assert result["text"] == tokenizer.decode(result["tokenIds"])  # streamed text is the tokens' text


@pytest.mark.parametrize("family, instruct", [("llama", False), ("qwen2", True)])
def test_node_greedy_tokens_equal_python_for_other_families(tmp_path_factory, family, instruct):
    """Llama: the BOS the template writes, GQA, RoPE, untied head; Qwen2 instruct: the prompt its own
    chat template rendered (stored as a pattern JavaScript fills in) and <|im_end|> as the stop."""
    _, onnx_dir = trained_export(tmp_path_factory.getbasetemp() / f"web_{family}", family, instruct)
    node = node_generate(onnx_dir, QUESTIONS[:3], "--max-new-tokens", "40")
    for result in node:
        python = python_generate(onnx_dir, result["question"], 40)
        assert result["promptTokens"] == python["promptTokens"], result["question"]
        assert result["tokenIds"] == python["tokenIds"], result["question"]
        assert result["text"] == python["text"]
    assert any(result["stoppedAtEos"] for result in node)
    # Their int8 is the fused graph in 8-bit weight blocks (GroupQueryAttention, MatMulNBits): transformers.js
    # loads it as "q8".
    for result in node_generate(onnx_dir, QUESTIONS[:2], "--max-new-tokens", "40", "--int8"):
        assert result["tokenIds"] == python_generate(onnx_dir, result["question"], 40, int8=True)["tokenIds"]


def test_an_answer_that_is_only_eos_streams_empty_text_instead_of_failing(web_export):
    """Sampling can draw eos first: the answer is then empty, and transformers.js' decode([]) throws."""
    import json
    import subprocess

    from helpers import REPO

    _, onnx_dir = web_export
    script = f"""
import {{ AutoTokenizer, env }} from "@huggingface/transformers";
import {{ AnswerStreamer }} from "./mtn_sails/runtime/web_page/sails.mjs";
env.allowRemoteModels = false;
env.localModelPath = {json.dumps(str(onnx_dir.parent) + "/")};
const tokenizer = await AutoTokenizer.from_pretrained({json.dumps(onnx_dir.name)});
const pieces = [];
const streamer = new AnswerStreamer(tokenizer, (text) => pieces.push(text));
streamer.put([[1n, 2n]]);  // the prompt
streamer.end();
console.log(JSON.stringify({{ text: streamer.text(), pieces }}));
"""
    done = subprocess.run(["node", "--input-type=module", "-e", script], cwd=REPO, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout.splitlines()[-1]) == {"text": "", "pieces": []}
