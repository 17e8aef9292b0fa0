"""The session history stored in a model directory, its printout, and the model card kept in step."""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path, PureWindowsPath
from typing import Any, Iterable

from .console import show, warn
from .errors import InputError

HISTORY_FILE = "training_history.json"
CARD_FILE = "README.md"
LOSS_CURVE_FILE = "loss_curve.png"  # written by plots.write_plots, shown by the model card
FORGETTING_FILE = "forgetting.png"
EXAMPLE_QUESTION = "What is a variable?"


def load_history(model_dir: str | Path) -> list[dict[str, Any]]:
    """The sessions recorded in `model_dir`, oldest first ([] when there is no history)."""
    path = Path(model_dir) / HISTORY_FILE
    if not path.is_file():
        return []
    try:
        return list(json.loads(path.read_text(encoding="utf-8"))["sessions"])
    except (OSError, ValueError, KeyError, TypeError):
        raise InputError(f"{path}: unreadable training history") from None


def save_history(model_dir: str | Path, sessions: list[dict[str, Any]]) -> Path:
    """Write the history, its two plots and the model card that shows them; returns the history file."""
    from .template import PromptTemplate

    path = Path(model_dir) / HISTORY_FILE
    path.write_text(json.dumps({"sessions": sessions}, indent=2) + "\n", encoding="utf-8")
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


def _number(value: Any, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)


SESSION_COLUMNS = (("#", "session"), ("date", "date"), ("data", "data_file"), ("trained on", "train_examples"),
                   ("start", "start"), ("lr", "learning_rate"), ("epochs", "epochs"),
                   ("train loss", "train_loss"), ("eval loss", "eval_loss"), ("eval ppl", "eval_perplexity"),
                   ("held-out ppl", "held_out_perplexity"), ("time s", "duration_s"))


def _cell(session: dict[str, Any], key: str) -> str:
    value = session.get(key)
    if key == "date" and isinstance(value, str):
        return value[:19].replace("T", " ")
    if key in ("data_file", "start") and isinstance(value, str):
        return Path(value).name if "/" in value else value
    return _number(value)


def _markdown_rows(header: list[str], rows: Iterable[list[str]]) -> list[str]:
    def line(cells: list[str]) -> str:
        return "| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |"

    return [line(header), "|" + "---|" * len(header)] + [line(row) for row in rows]


def session_table(sessions: list[dict[str, Any]], markdown: bool = False) -> list[str]:
    """The sessions as aligned text rows (or a Markdown table)."""
    header = [title for title, _ in SESSION_COLUMNS]
    rows = [[_cell(s, key) for _, key in SESSION_COLUMNS] for s in sessions]
    if markdown:
        return _markdown_rows(header, rows)
    widths = [max(len(r[i]) for r in [header] + rows) for i in range(len(header))]
    return ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in [header] + rows]


def forgetting_table(session: dict[str, Any]) -> list[str]:
    """Rows of the forgetting table stored with one session (empty when it has none)."""
    rows = session.get("forgetting") or []
    lines = []
    for row in rows:
        lines.append(f"  session {row['session']}: perplexity {_number(row.get('perplexity_before'))} "
                     f"-> {_number(row.get('perplexity_after'))} (x{_number(row.get('ratio'), 3)})")
    return lines


def forgetting_series(sessions: list[dict[str, Any]]) -> dict[int, list[tuple[int, float | None]]]:
    """Per session: [(session after which it was measured, held-out perplexity of its data)], the first
    point right after it was trained, the others from the forgetting rows of later sessions."""
    series: dict[int, dict[int, float | None]] = {}
    for index, session in enumerate(sessions):
        number = int(session.get("session", index + 1))
        series.setdefault(number, {})[number] = session.get("held_out_perplexity")
    for index, session in enumerate(sessions):
        after = int(session.get("session", index + 1))
        for row in session.get("forgetting") or []:
            points = series.setdefault(int(row["session"]), {})
            if points.get(int(row["session"])) is None and row.get("perplexity_before") is not None:
                points[int(row["session"])] = row["perplexity_before"]
            points[after] = row.get("perplexity_after")
    return {number: sorted(points.items()) for number, points in sorted(series.items())}


def forgetting_matrix(sessions: list[dict[str, Any]]) -> list[str]:
    """Markdown table: held-out perplexity of each session's data (rows) after each session (columns)."""
    numbers = [int(s.get("session", i + 1)) for i, s in enumerate(sessions)]
    header = ["data of"] + [f"after {n}" for n in numbers]
    rows = []
    for number, points in forgetting_series(sessions).items():
        values = dict(points)
        rows.append([f"session {number}"] + [_number(values.get(n)) if n >= number else "" for n in numbers])
    return _markdown_rows(header, rows)


def print_history(model_dir: str | Path, as_json: bool = False, plot: bool = False) -> None:
    """Print the model's sessions as a table, or as JSON `{"sessions": [...]}`; with `plot`, also write
    loss_curve.png and forgetting.png into the model directory and print their paths."""
    if not Path(model_dir).is_dir():
        raise InputError(f"{model_dir}: no such model directory")
    sessions = load_history(model_dir)
    images = _plot_on_demand(model_dir) if plot and sessions else []
    if as_json:
        show(json.dumps({"sessions": sessions}, indent=2))
        for image in images:  # stderr, so that stdout stays one JSON document
            show(f"📈 {image}", sys.stderr)
        return
    if not sessions:
        show(f"{model_dir}: no training sessions recorded" + ("; nothing to plot" if plot else ""))
        return
    show(f"Training history of {model_dir} ({len(sessions)} session{'s' * (len(sessions) != 1)})")
    for line in session_table(sessions):
        show(line)
    for session in sessions:
        rows = forgetting_table(session)
        if rows:
            show(f"Forgetting after session {session['session']} (held-out perplexity, then -> now):")
            for line in rows:
                show(line)
    for image in images:
        show(f"📈 {image}")


def _plot_on_demand(model_dir: str | Path) -> list[Path]:
    """The plots written for `history --plot`; an unwritable directory is the user's one-line error."""
    from .plots import write_plots

    try:
        return write_plots(model_dir)
    except ImportError:  # matplotlib is imported only when drawing
        raise InputError("--plot needs matplotlib: pip install matplotlib") from None
    except OSError as error:
        raise InputError(f"cannot write plots into {model_dir}: {error.strerror or error}") from None


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


def _data_table(sessions: list[dict[str, Any]]) -> list[str]:
    header = ["#", "data file", "records", "trained on", "held out", "replayed", "sha256"]
    rows = [[str(s.get("session", i + 1)), Path(str(s.get("data_file", "?"))).name, _number(s.get("records")),
             _number(s.get("train_examples")), _number(s.get("eval_examples")), _number(s.get("replayed_examples")),
             f"`{s.get('data_sha256') or '?'}`"] for i, s in enumerate(sessions)]
    return _markdown_rows(header, rows)


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


def model_card(sessions: list[dict[str, Any]], images: Iterable[str] = (),
               prompt: str = f"### Instruction:\n{EXAMPLE_QUESTION}\n\n### Response:\n") -> str:
    """An HF model card (README.md): front matter, the plots in `images`, sessions, data, metrics, use."""
    images = set(images)
    last = sessions[-1] if sessions else {}
    base = str(sessions[0].get("base_model") or "") if sessions else ""
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
        f"- train loss: {_number(last.get('train_loss'))}",
        f"- eval loss: {_number(last.get('eval_loss'))} (perplexity {_number(last.get('eval_perplexity'))})",
        f"- held-out perplexity: {_number(last.get('held_out_perplexity'))}",
        f"- learning rate {_number(last.get('learning_rate'))}, {_number(last.get('epochs'))} epoch(s), "
        f"{_number(last.get('steps'))} steps, batch size {_number(last.get('batch_size'))}, "
        f"max length {_number(last.get('max_length'))}, seed {_number(last.get('seed'))}, "
        f"replay {_number(last.get('replay'))}",
        f"- trained on {last.get('device', '?')} ({last.get('precision', '?')}, "
        f"{last.get('world_size', 1)} process(es)) in {_number(last.get('duration_s'))} s",
        "- versions: " + (", ".join(f"{k} {v}" for k, v in (last.get("versions") or {}).items()) or "-"),
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
