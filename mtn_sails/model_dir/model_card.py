"""The model card (`README.md` of a model directory, Hugging Face style), kept in step with the history."""
from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path, PureWindowsPath

from ..console import warn
from ..config import DEFAULT_ONNX_OUTPUT, DEFAULT_OUTPUT_DIR
from ..config import (CONTINUE_LEARNING_RATE, SCRATCH_CONTINUE_LEARNING_RATE, SCRATCH_LEARNING_RATE,
                       STANDARD_LEARNING_RATE)
from .history_file import CARD_FILE, FORGETTING_FILE, LOSS_CURVE_FILE, Session, has_recall, write_history
from .history_table import (SESSION_COLUMNS, forgetting_matrix, markdown_rows, number, session_metrics,
                            session_table)
from .session_record import SessionRecord, as_record

# The card shows one perplexity: the Trainer's eval and the held-out slice are the same records (they differ
# only past MAX_HELD_OUT_RECORDS held out, or for packed text); training_history.json keeps both.
CARD_COLUMNS = tuple(column for column in SESSION_COLUMNS if column[1] != "eval_perplexity")

EXAMPLE_QUESTION = "What is a variable?"


def save_history(model_dir: str | Path, sessions: Sequence[Session], model_path: str | None = None,
                 onnx_path: str = DEFAULT_ONNX_OUTPUT) -> Path:
    """Write the history, its two plots and the model card that shows them; returns the history file.
    The card's examples name `model_path` (default: `model_dir`), where the user will find the model."""
    from ..data.template import PromptTemplate

    path = write_history(model_dir, sessions)
    images = _write_plots_or_warn(model_dir)
    prompt = PromptTemplate.load(model_dir).prompt(EXAMPLE_QUESTION)
    card = model_card(sessions, images, prompt, model_path or str(model_dir), onnx_path)
    (Path(model_dir) / CARD_FILE).write_text(card, encoding="utf-8")
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


def _python_block(prompt: str, model_path: str) -> list[str]:
    return [
        "```python",
        "from transformers import AutoModelForCausalLM, AutoTokenizer",
        "",
        f"path = {model_path!r}  # this directory",
        "tokenizer = AutoTokenizer.from_pretrained(path)",
        "model = AutoModelForCausalLM.from_pretrained(path)",
        f"prompt = {prompt!r}  # the template in prompt_template.json",
        "inputs = tokenizer(prompt, return_tensors='pt')",
        "output = model.generate(**inputs, max_new_tokens=64, do_sample=False,",
        "                        pad_token_id=tokenizer.eos_token_id)",
        "print(tokenizer.decode(output[0, inputs.input_ids.shape[1]:], skip_special_tokens=True))",
        "```",
    ]


def _onnx_block(prompt: str, onnx_path: str) -> list[str]:
    return [
        "```python",
        "from optimum.onnxruntime import ORTModelForCausalLM",
        "from transformers import AutoTokenizer",
        "",
        f"path = {onnx_path!r}  # the export: onnx/model.onnx with its KV cache inputs",
        "tokenizer = AutoTokenizer.from_pretrained(path)",
        "model = ORTModelForCausalLM.from_pretrained(path)",
        f"inputs = tokenizer({prompt!r}, return_tensors='pt')",
        "output = model.generate(**inputs, max_new_tokens=64, do_sample=False,",
        "                        pad_token_id=tokenizer.eos_token_id)",
        "print(tokenizer.decode(output[0, inputs.input_ids.shape[1]:], skip_special_tokens=True))",
        "```",
    ]


def _origin(base: str) -> str:
    if not base:
        return "a base model the history does not name"
    if base == "scratch":
        return "a fresh GPT-2 built offline by `--model-name scratch`"
    # named, not located: a published card should not carry the trainer's paths (/ and \ split alike)
    return f"`{base}`" if _hub_id(base) else f"the local model `{PureWindowsPath(base).name}`"


def _glance(images: set[str], recall: bool) -> list[str]:
    if not images & {LOSS_CURVE_FILE, FORGETTING_FILE}:
        return []
    lines = ["## Training at a glance", ""]
    if LOSS_CURVE_FILE in images:
        lines += ["Train and eval loss over all sessions, one step axis (dotted lines: session starts).", "",
                  f"![loss curve]({LOSS_CURVE_FILE})", ""]
    if FORGETTING_FILE in images:
        what = ("Answer recall of each session's probe (its trained questions) right after it was trained and "
                "after every later session: a line going down is forgetting.") if recall else (
                "Held-out perplexity of each session's data right after it was trained and after every later "
                "session: a line going up is forgetting.")
        lines += [what, "", f"![forgetting]({FORGETTING_FILE})", ""]
    return lines


def _forgetting(sessions: list[SessionRecord], recall: bool) -> list[str]:
    if len(sessions) < 2:
        return []
    lines = ["## Forgetting", ""]
    if recall:
        lines += ["Answer recall of each session's probe (rows: exact-match share of its trained answers, "
                  "greedy) after each session (columns); higher is better.", "",
                  *forgetting_matrix(sessions, "recall"), ""]
    return lines + ["Held-out perplexity of each session's data (rows) after each session (columns); lower is "
                    "better. Perplexity can improve while answers are lost: recall is the measure of kept facts."
                    if recall else "Held-out perplexity of each session's data (rows) after each session "
                    "(columns); lower is better.", "", *forgetting_matrix(sessions), ""]


def _metrics(last: SessionRecord) -> list[str]:
    return [
        "## Metrics of the last session",
        "",
        f"- {session_metrics(last)}",
        f"- eval loss: {number(last.eval_loss)} (perplexity {number(last.eval_perplexity)}, the Trainer's, on the "
        "same held-out records)",
        f"- learning rate {number(last.learning_rate)}, {number(last.epochs)} epoch(s), "
        f"{number(last.steps)} steps, batch size {number(last.batch_size)}, "
        f"max length {number(last.max_length)}, seed {number(last.seed)}, replay {number(last.replay)}",
        f"- trained on {last.device or '?'} ({last.precision or '?'}, "
        f"{last.world_size or 1} process(es)) in {number(last.duration_s)} s",
        "- versions: " + (", ".join(f"{k} {v}" for k, v in (last.versions or {}).items()) or "-"),
        "",
    ]


def _usage(prompt: str, model_path: str, onnx_path: str) -> list[str]:
    question = json.dumps(EXAMPLE_QUESTION)
    return [
        "## How to use",
        "",
        "With transformers (this directory is a standard `save_pretrained` model, weights in safetensors):",
        "",
        *_python_block(prompt, model_path),
        "",
        "With MTN Sails:",
        "",
        "```bash",
        f"mtn-sails generate --backend torch --output-dir {model_path} --prompt {question}",
        f"mtn-sails export --output-dir {model_path} --onnx-output {onnx_path}   # ONNX with a parity check",
        f"mtn-sails generate --onnx-output {onnx_path} --prompt {question}",
        f"mtn-sails history --output-dir {model_path} --plot",
        f"mtn-sails train --data-file more.json --output-dir {model_path}   # one more session",
        "```",
        "",
        "The ONNX export (`mtn-sails export` or `pipeline`) loads with optimum and onnxruntime:",
        "",
        *_onnx_block(prompt, onnx_path),
        "",
        "`mtn-sails generate` applies the template itself: pass the bare question.",
        "",
    ]


def model_card(sessions: Sequence[Session], images: Iterable[str] = (),
               prompt: str = f"### Instruction:\n{EXAMPLE_QUESTION}\n\n### Response:\n",
               model_path: str = DEFAULT_OUTPUT_DIR, onnx_path: str = DEFAULT_ONNX_OUTPUT) -> str:
    """An HF model card (README.md): front matter, the plots in `images`, sessions, data, forgetting, metrics
    and how to use the model at `model_path` (and its export at `onnx_path`)."""
    sessions = [as_record(s) for s in sessions]
    base = str(sessions[0].base_model or "") if sessions else ""
    count, recall = len(sessions), has_recall(sessions)
    lines = _front_matter(base) + [
        "# Model trained with MTN Sails",
        "",
        f"A causal language model fine-tuned with MTN Sails over {count} "
        f"session{'s' * (count != 1)}, starting from {_origin(base)}. Each later session continued from the "
        "model the previous one left (`start` below), by default at a lower learning rate that keeps what was "
        f"learnt ({CONTINUE_LEARNING_RATE:g} after {STANDARD_LEARNING_RATE:g} from a pretrained base; "
        f"{SCRATCH_CONTINUE_LEARNING_RATE:g} after {SCRATCH_LEARNING_RATE:g} for the offline scratch base); "
        "prompts use the template stored in `prompt_template.json`.",
        "",
        *_glance(set(images), recall),
        "## Sessions", "", *session_table(sessions, markdown=True, columns=CARD_COLUMNS), "",
        "`start`: what the session loaded (the base model, or this directory when it continued); "
        "`train loss`: the Trainer's mean over the session; `held-out ppl`: perplexity on the session's held-out "
        "records (kept in `held_out/` and re-evaluated after every later session)"
        + ("; `recall`: the share of its probe's trained answers the model gave word for word right after it."
           if recall else "."), "",
        "## Data", "", *_data_table(sessions), "",
        "A file's sha256 identifies exactly which data a session saw (`sha256sum FILE`).", "",
        *_forgetting(sessions, recall),
        *_metrics(sessions[-1] if sessions else SessionRecord(session=0)),
        *_usage(prompt, model_path, onnx_path),
    ]
    return "\n".join(lines)
