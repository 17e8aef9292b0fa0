"""The model card (`README.md` of a model directory, Hugging Face style), kept in step with the history."""
from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path, PureWindowsPath

from .console import warn
from .history import CARD_FILE, FORGETTING_FILE, LOSS_CURVE_FILE, Session, write_history
from .history_table import forgetting_matrix, markdown_rows, number, session_table
from .session_record import SessionRecord, as_record

EXAMPLE_QUESTION = "What is a variable?"


def save_history(model_dir: str | Path, sessions: Sequence[Session]) -> Path:
    """Write the history, its two plots and the model card that shows them; returns the history file."""
    from .template import PromptTemplate

    path = write_history(model_dir, sessions)
    images = _write_plots_or_warn(model_dir)
    prompt = PromptTemplate.load(model_dir).prompt(EXAMPLE_QUESTION)
    (Path(model_dir) / CARD_FILE).write_text(model_card(sessions, images, prompt), encoding="utf-8")
    return path


def _write_plots_or_warn(model_dir: str | Path) -> list[str]:
    """Names of the plots written into `model_dir`; a plotting failure is one warning, never a lost session."""
    try:
        from .plots import write_plots

        return [p.name for p in write_plots(model_dir)]
    except Exception as error:  # noqa: BLE001 - the pictures are optional; the trained model is not
        detail = str(error).splitlines()[0] if str(error) else ""
        warn(f"⚠️  Plots not written ({type(error).__name__}{': ' + detail if detail else ''}); "
             "the session is saved without them")
        return []


def _hub_id(base: str) -> bool:
    """True when `base` looks like a model hub id (a card's base_model must be one, not a local path)."""
    return bool(base) and base != "scratch" and not base.startswith((".", "/", "~")) and base.count("/") <= 1 \
        and ":" not in base and "\\" not in base and not Path(base).exists()


def _front_matter(base: str) -> list[str]:
    lines = ["---", "library_name: transformers", "pipeline_tag: text-generation", "tags:",
             "- mtn-sails", "- continuous-training", "- text-generation"]
    if _hub_id(base):
        lines.append(f"base_model: {json.dumps(base)}")  # a JSON string is a valid YAML scalar
    return lines + ["---", ""]


def _data_table(sessions: Sequence[Session]) -> list[str]:
    header = ["#", "data file", "records", "trained on", "held out", "replayed", "sha256"]
    rows = [[str(s.session), Path(s.data_file or "?").name, number(s.records), number(s.train_examples),
             number(s.eval_examples), number(s.replayed_examples), f"`{s.data_sha256 or '?'}`"]
            for s in map(as_record, sessions)]
    return markdown_rows(header, rows)


def _python_block(prompt: str) -> list[str]:
    return [
        "```python",
        "from transformers import AutoModelForCausalLM, AutoTokenizer",
        "",
        "path = './trained_model'  # this directory",
        "tokenizer = AutoTokenizer.from_pretrained(path)",
        "model = AutoModelForCausalLM.from_pretrained(path)",
        f"prompt = {prompt!r}  # the template in prompt_template.json",
        "inputs = tokenizer(prompt, return_tensors='pt')",
        "output = model.generate(**inputs, max_new_tokens=64, do_sample=False,",
        "                        pad_token_id=tokenizer.eos_token_id)",
        "print(tokenizer.decode(output[0, inputs.input_ids.shape[1]:], skip_special_tokens=True))",
        "```",
    ]


def _onnx_block(prompt: str) -> list[str]:
    return [
        "```python",
        "from optimum.onnxruntime import ORTModelForCausalLM",
        "from transformers import AutoTokenizer",
        "",
        "path = './onnx_model'  # the export: model.onnx with its KV cache inputs",
        "tokenizer = AutoTokenizer.from_pretrained(path)",
        "model = ORTModelForCausalLM.from_pretrained(path)",
        f"inputs = tokenizer({prompt!r}, return_tensors='pt')",
        "output = model.generate(**inputs, max_new_tokens=64, do_sample=False,",
        "                        pad_token_id=tokenizer.eos_token_id)",
        "print(tokenizer.decode(output[0, inputs.input_ids.shape[1]:], skip_special_tokens=True))",
        "```",
    ]


def model_card(sessions: Sequence[Session], images: Iterable[str] = (),
               prompt: str = f"### Instruction:\n{EXAMPLE_QUESTION}\n\n### Response:\n") -> str:
    """An HF model card (README.md): front matter, the plots in `images`, sessions, data, metrics, use."""
    images = set(images)
    sessions = [as_record(s) for s in sessions]
    last = sessions[-1] if sessions else SessionRecord(session=0)
    base = str(sessions[0].base_model or "") if sessions else ""
    count = len(sessions)
    if not base:
        origin = "a base model the history does not name"
    elif base == "scratch":
        origin = "a fresh GPT-2 built offline by `--model-name scratch`"
    else:  # named, not located: a published card should not carry the trainer's paths (/ and \ split alike)
        origin = f"`{base}`" if _hub_id(base) else f"the local model `{PureWindowsPath(base).name}`"
    lines = _front_matter(base) + [
        "# Model trained with MTN Sails",
        "",
        f"A causal language model fine-tuned with MTN Sails over {count} "
        f"session{'s' * (count != 1)}, starting from {origin}. Each later session continued from the model "
        "the previous one left (`start` below), by default at the lower learning rate 1e-5 that keeps what "
        "was learnt; prompts use the template stored in `prompt_template.json`.",
        "",
    ]
    if images & {LOSS_CURVE_FILE, FORGETTING_FILE}:
        lines += ["## Training at a glance", ""]
        if LOSS_CURVE_FILE in images:
            lines += ["Train and eval loss over all sessions, one step axis (dotted lines: session starts).", "",
                      f"![loss curve]({LOSS_CURVE_FILE})", ""]
        if FORGETTING_FILE in images:
            lines += ["Held-out perplexity of each session's data right after it was trained and after every "
                      "later session: a line going up is forgetting.", "", f"![forgetting]({FORGETTING_FILE})", ""]
    lines += ["## Sessions", "", *session_table(sessions, markdown=True), "",
              "`start`: what the session loaded (the base model, or this directory when it continued); "
              "`eval ppl`: perplexity on the session's eval split; `held-out ppl`: on the held-out slice kept "
              "in `held_out/` and re-evaluated after every later session.", "",
              "## Data", "", *_data_table(sessions), "",
              "A file's sha256 identifies exactly which data a session saw (`sha256sum FILE`).", ""]
    if count > 1:
        lines += ["## Forgetting", "", "Held-out perplexity of each session's data (rows) after each session "
                  "(columns); lower is better.", "", *forgetting_matrix(sessions), ""]
    lines += [
        "## Metrics of the last session",
        "",
        f"- train loss: {number(last.train_loss)}",
        f"- eval loss: {number(last.eval_loss)} (perplexity {number(last.eval_perplexity)})",
        f"- held-out perplexity: {number(last.held_out_perplexity)}",
        f"- learning rate {number(last.learning_rate)}, {number(last.epochs)} epoch(s), "
        f"{number(last.steps)} steps, batch size {number(last.batch_size)}, "
        f"max length {number(last.max_length)}, seed {number(last.seed)}, "
        f"replay {number(last.replay)}",
        f"- trained on {last.device or '?'} ({last.precision or '?'}, "
        f"{last.world_size or 1} process(es)) in {number(last.duration_s)} s",
        "- versions: " + (", ".join(f"{k} {v}" for k, v in (last.versions or {}).items()) or "-"),
        "",
        "## How to use",
        "",
        "With transformers (this directory is a standard `save_pretrained` model, weights in safetensors):",
        "",
        *_python_block(prompt),
        "",
        "With MTN Sails:",
        "",
        "```bash",
        f"mtn-sails generate --backend torch --output-dir ./trained_model --prompt {json.dumps(EXAMPLE_QUESTION)}",
        "mtn-sails export --output-dir ./trained_model --onnx-output ./onnx_model   # ONNX with a parity check",
        f"mtn-sails generate --onnx-output ./onnx_model --prompt {json.dumps(EXAMPLE_QUESTION)}",
        "mtn-sails history --output-dir ./trained_model --plot",
        "mtn-sails train --data-file more.json --output-dir ./trained_model   # one more session",
        "```",
        "",
        "The ONNX export (`mtn-sails export` or `pipeline`) loads with optimum and onnxruntime:",
        "",
        *_onnx_block(prompt),
        "",
        "`mtn-sails generate` applies the template itself: pass the bare question.",
        "",
    ]
    return "\n".join(lines)
