"""The session history stored in a model directory, its printout, and the model card kept in step."""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from .console import say
from .errors import InputError

HISTORY_FILE = "training_history.json"
CARD_FILE = "README.md"


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
    """Write the history and the model card that summarises it; returns the history file."""
    path = Path(model_dir) / HISTORY_FILE
    path.write_text(json.dumps({"sessions": sessions}, indent=2) + "\n", encoding="utf-8")
    (Path(model_dir) / CARD_FILE).write_text(model_card(sessions), encoding="utf-8")
    return path


def _number(value: Any, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)


SESSION_COLUMNS = (("#", "session"), ("date", "date"), ("data", "data_file"), ("records", "train_examples"),
                   ("start", "start"), ("lr", "learning_rate"), ("epochs", "epochs"),
                   ("train loss", "train_loss"), ("eval loss", "eval_loss"), ("eval ppl", "eval_perplexity"),
                   ("time s", "duration_s"))


def _cell(session: dict[str, Any], key: str) -> str:
    value = session.get(key)
    if key == "date" and isinstance(value, str):
        return value[:19].replace("T", " ")
    if key in ("data_file", "start") and isinstance(value, str):
        return Path(value).name if "/" in value else value
    return _number(value)


def session_table(sessions: list[dict[str, Any]], markdown: bool = False) -> list[str]:
    """The sessions as aligned text rows (or a Markdown table)."""
    header = [title for title, _ in SESSION_COLUMNS]
    rows = [[_cell(s, key) for _, key in SESSION_COLUMNS] for s in sessions]
    if markdown:
        return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + \
               ["| " + " | ".join(row) + " |" for row in rows]
    widths = [max(len(r[i]) for r in [header] + rows) for i in range(len(header))]
    return ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)) for row in [header] + rows]


def forgetting_table(session: dict[str, Any]) -> list[str]:
    """Rows of the forgetting table stored with one session (empty when it has none)."""
    rows = session.get("forgetting") or []
    lines = []
    for row in rows:
        lines.append(f"  session {row['session']}: perplexity {_number(row.get('perplexity_before'))} "
                     f"-> {_number(row.get('perplexity_after'))} (x{_number(row.get('ratio'), 3)})")
    return lines


def print_history(model_dir: str | Path, as_json: bool = False) -> None:
    """Print the model's sessions as a table, or as JSON `{"sessions": [...]}`."""
    sessions = load_history(model_dir)
    if as_json:
        print(json.dumps({"sessions": sessions}, indent=2))
        return
    if not sessions:
        if not Path(model_dir).is_dir():
            raise InputError(f"{model_dir}: no such model directory")
        say(f"{model_dir}: no training sessions recorded")
        return
    say(f"Training history of {model_dir} ({len(sessions)} session{'s' * (len(sessions) != 1)})")
    for line in session_table(sessions):
        say(line)
    for session in sessions:
        rows = forgetting_table(session)
        if rows:
            say(f"Forgetting after session {session['session']} (held-out perplexity, then -> now):")
            for line in rows:
                say(line)


def model_card(sessions: list[dict[str, Any]]) -> str:
    """An HF-style model card (README.md) describing the model and every session."""
    last = sessions[-1] if sessions else {}
    base = sessions[0].get("base_model", "unknown") if sessions else "unknown"
    lines = [
        "---",
        "library_name: transformers",
        "pipeline_tag: text-generation",
        "tags:",
        "- mtn-sails",
        "- continuous-training",
        f"base_model: {base}" if base != "scratch" else "base_model: null",
        "---",
        "",
        "# Model trained with MTN Sails",
        "",
        f"A causal language model fine-tuned over {len(sessions)} session(s) starting from `{base}`. "
        "Each session continued from the previous one (see the table); prompts use the template in "
        "`prompt_template.json`.",
        "",
        "## Sessions",
        "",
        *session_table(sessions, markdown=True),
        "",
        "Data files by sha256:",
        "",
        *[f"- session {s['session']}: `{Path(s.get('data_file', '?')).name}` sha256 `{s.get('data_sha256', '?')}`"
          for s in sessions],
        "",
        "## Use",
        "",
        "```python",
        "from transformers import AutoModelForCausalLM, AutoTokenizer",
        "tokenizer = AutoTokenizer.from_pretrained('PATH')",
        "model = AutoModelForCausalLM.from_pretrained('PATH')",
        "prompt = '### Instruction:\\nWhat is a variable?\\n\\n### Response:\\n'",
        "ids = tokenizer(prompt, return_tensors='pt').input_ids",
        "print(tokenizer.decode(model.generate(ids, max_new_tokens=40)[0]))",
        "```",
        "",
        "or `mtn-sails generate --backend torch --output-dir PATH --prompt 'What is a variable?'`.",
        "",
        f"Last session: learning rate {last.get('learning_rate')}, eval perplexity "
        f"{_number(last.get('eval_perplexity'))}.",
        "",
    ]
    return "\n".join(lines)
