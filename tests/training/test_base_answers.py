"""Session 0, the base: the base's greedy answers to the general prompts, kept only where it ends them and
reproduces them, split into a probe and a replay pool that never share a prompt; a random model has none."""
from __future__ import annotations

import json

import pytest

from helpers import run_cli, write_qa


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval(), AutoTokenizer.from_pretrained(tiny_model_dir)


def _single_greedy(model, tokenizer, template, prompt: str, limit: int) -> str | None:
    """One prompt alone through HF generate: no padding, the reference the batched answers must equal."""
    import torch

    from mtn_sails.data.records import Record
    from mtn_sails.training.probe import probe_items

    ids = probe_items(tokenizer, template, [Record(0, "pair", "prompt/completion", prompt=prompt, response=".")])
    prompt_ids = torch.tensor([ids[0].prompt_ids])
    out = model.generate(prompt_ids, attention_mask=torch.ones_like(prompt_ids), max_new_tokens=limit,
                         do_sample=False, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.eos_token_id)[0, prompt_ids.shape[1]:].tolist()
    eos = tokenizer.eos_token_id
    return tokenizer.decode(out[:out.index(eos)], clean_up_tokenization_spaces=False) if eos in out else None


def test_batched_answers_equal_each_prompt_answered_alone(tiny):
    from mtn_sails.data.general_prompts import general_prompts
    from mtn_sails.data.template import PromptTemplate
    from mtn_sails.training.base_answers import greedy_answers

    model, tokenizer = tiny
    prompts = list(general_prompts()[:6])
    template = PromptTemplate()
    # a random model rarely ends an answer: let the token it says third for the first prompt end every answer
    first = model.generate(**tokenizer(template.prompt(prompts[0]), return_tensors="pt"), max_new_tokens=3,
                           do_sample=False, pad_token_id=tokenizer.eos_token_id)[0, -1].item()
    tokenizer.eos_token_id = first
    try:
        batched = greedy_answers(model, tokenizer, template, prompts, max_new_tokens=12, batch_size=4)
        alone = [_single_greedy(model, tokenizer, template, prompt, 12) for prompt in prompts]
    finally:
        tokenizer.eos_token = tokenizer.pad_token
    assert batched == alone and batched[0] is not None


def test_a_larger_model_decodes_fewer_prompts_at_once_within_the_cache_budget():
    from transformers import GPT2Config, LlamaConfig

    from mtn_sails.training.base_answers import KV_CACHE_BUDGET, MAX_DECODE_ROWS, decode_rows

    smollm2_135m = LlamaConfig(hidden_size=576, num_attention_heads=9, num_key_value_heads=3, num_hidden_layers=30)
    smollm2_1_7b = LlamaConfig(hidden_size=2048, num_attention_heads=32, num_key_value_heads=32,
                               num_hidden_layers=24)
    assert decode_rows(smollm2_135m, 100) == MAX_DECODE_ROWS
    rows = decode_rows(smollm2_1_7b, 100)
    assert 8 <= rows < MAX_DECODE_ROWS and rows * 24 * 2 * 2048 * 100 * 4 <= KV_CACHE_BUDGET
    assert decode_rows(GPT2Config(n_layer=2, n_embd=64, n_head=2), 100) == MAX_DECODE_ROWS


def test_the_shared_prefix_leaves_every_prompt_a_token_of_its_own():
    from mtn_sails.training.base_answers import shared_prefix

    assert shared_prefix([[1, 2, 3, 4], [1, 2, 3, 5, 6], [1, 2, 7]]) == 2
    assert shared_prefix([[1, 2, 3], [1, 2, 3, 4]]) == 2  # the shorter one keeps its last token to be read
    assert shared_prefix([[5], [5]]) == 0 and shared_prefix([[1, 2], [3, 2]]) == 0


def test_a_random_model_has_no_session_0_and_its_session_stores_none(tiny, tiny_model_dir, tmp_path):
    from mtn_sails.data.general_prompts import general_prompts
    from mtn_sails.data.template import PromptTemplate
    from mtn_sails.training.base_answers import record_base

    model, tokenizer = tiny
    assert record_base(model, tokenizer, PromptTemplate(), general_prompts()) is None
    output = tmp_path / "trained_model"
    done = run_cli("train", "--data-file", str(write_qa(tmp_path / "qa.json")), "--model-name", str(tiny_model_dir),
                   "--output-dir", str(output), "--epochs", "1")
    assert done.returncode == 0, done.stderr[-2000:]
    assert "🧭 Session 0: the base ends too few answers to keep (no session 0)" in done.stdout
    session = json.loads((output / "training_history.json").read_text())["sessions"][0]
    assert session.get("base_probe_count") is None and not (output / "probe" / "session_000.jsonl").exists()


def test_the_general_prompts_are_many_distinct_and_short():
    from mtn_sails.data.general_prompts import general_prompts

    prompts = general_prompts()
    assert len(prompts) >= 200 and len(set(prompts)) == len(prompts)
    assert all(0 < len(prompt) <= 120 for prompt in prompts)


def test_the_base_row_is_named_base_in_the_tables_and_the_warning(capsys):
    from mtn_sails.config import TrainConfig
    from mtn_sails.model_dir.history_table import forgetting_line, forgetting_matrix
    from mtn_sails.model_dir.session_record import ForgettingRow, SessionRecord
    from mtn_sails.training.report import report_session

    row = ForgettingRow(0, recall_before=1.0, recall_after=0.5, answer_logprob_before=-0.7,
                        answer_logprob_after=-0.9, probe_count=60, kept=0.5)
    session = SessionRecord(1, recall=1.0, probe_count=6, forgetting=[row], base_probe_count=60, base_recall=1.0)
    assert forgetting_line(row).startswith("  base: recall 1 -> 0.5, kept 50%")
    assert any(line.startswith("| base | 0.5") for line in forgetting_matrix([session], "recall"))
    report_session(session, __import__("pathlib").Path("m"), None, TrainConfig(data_file="x.json"))
    warning = capsys.readouterr().out
    assert "⚠️  The base lost its own answers to general prompts: recall 1.00 -> 0.50 (keeps 50%" in warning
    # replay of a dozen records an epoch rehearses one base answer: the null space is what kept the base on SmolLM2
    assert "train session 1 with --null-space 0.95 to keep the inputs" in warning and "--replay 0.2" not in warning
    later = SessionRecord(2, recall=1.0, probe_count=6, forgetting=[row])
    report_session(later, __import__("pathlib").Path("m"), None, TrainConfig(data_file="x.json"))
    assert "train it with --null-space 0.6 to keep the inputs" in capsys.readouterr().out
    report_session(later, __import__("pathlib").Path("m"), None, TrainConfig(data_file="x.json", null_space=0.6))
    assert "a higher --null-space (this session: 0.6)" in capsys.readouterr().out
    earlier = ForgettingRow(1, recall_before=1.0, recall_after=0.5, answer_logprob_before=-0.7,
                            answer_logprob_after=-0.9, probe_count=6, kept=0.5)
    report_session(SessionRecord(2, recall=1.0, probe_count=6, forgetting=[earlier]), __import__("pathlib").Path("m"),
                   None, TrainConfig(data_file="x.json"))
    assert "⚠️  Session 1 lost answers" in (out := capsys.readouterr().out) and "train it with --replay 0.2" in out
