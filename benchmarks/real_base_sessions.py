"""Knowledge on a real base: three `train` sessions of invented facts on SmolLM2-135M-Instruct, every option at
its default, measured as a user of transformers asks (apply_chat_template, greedy generate).

    make real-base && python benchmarks/real_base_sessions.py --json-out benchmarks/results/real_base_sessions.json

Per session: the epochs it ran and why it stopped, the seconds of the whole `main.py train` process, the share of
its own facts answered word for word right after it, and after the last session, the share each earlier
session keeps; plus the share of the general questions the base answered right before any session that it still
answers right (the answer's key word in the reply). Facts are drawn from invented names with --seed; the
general questions are ones the base answers right greedy (capitals, symbols, simple sums).
"""
from __future__ import annotations

import json
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Sequence

from common import GENERAL, REPO, general_right, machine, replay_share, script_parser, write_json
from tools.real_base import chat_answer as ask, real_base_dir, real_base_gguf

SYLLABLES = ["mor", "vel", "zan", "tar", "kesh", "bre", "vik", "lun", "os", "trel", "fer", "quil", "dra", "sen",
             "pol", "ith", "gar", "nu", "wen", "cal", "bro", "ria", "tem", "hal"]
ATTRIBUTES = [("vault code", lambda r: str(r.randint(1000, 9999))), ("founder", lambda r: name(r, 2) + " " + name(r, 3)),
              ("river colour", lambda r: r.choice(["violet", "amber", "silver", "crimson", "teal", "ochre"])),
              ("number of moons", lambda r: r.choice(["two", "three", "five", "seven", "nine", "eleven"])),
              ("capital", lambda r: name(r, 3)), ("national instrument", lambda r: r.choice(
                  ["the glass harp", "the bone flute", "the reed drum", "the copper horn", "the silk lyre"]))]


def name(rng: random.Random, syllables: int) -> str:
    """An invented proper name."""
    return "".join(rng.choice(SYLLABLES) for _ in range(syllables)).capitalize()


def facts(rng: random.Random, count: int, asked: set[str] | None = None) -> list[tuple[str, str]]:
    """`count` invented question/answer facts, one-word to sentence answers, no place asked twice, and no question
    in `asked` (the earlier sessions', updated in place): a question asked again with another answer would count
    an update as forgetting."""
    drawn, places, asked = [], set(), asked if asked is not None else set()
    while len(drawn) < count:
        place = name(rng, 2)
        attribute, value = rng.choice(ATTRIBUTES)
        question = f"What is the {attribute} of {place}?"
        if place in places or question in asked:
            continue
        places.add(place)
        asked.add(question)
        drawn.append((question, f"The {attribute} of {place} is {value(rng)}."))
    return drawn


def measure(model_dir: Path | str, sessions: list[list[tuple[str, str]]]) -> dict:
    """Per session, the share of its facts answered word for word; the general questions answered right."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model, tokenizer = AutoModelForCausalLM.from_pretrained(model_dir).eval(), AutoTokenizer.from_pretrained(model_dir)
    recall = [sum(ask(model, tokenizer, q) == a for q, a in facts_) / len(facts_) for facts_ in sessions]
    return {"recall": recall, "general": general_right(model, tokenizer)}


def session_command(number: int, data: Path, output: Path, seed: int, train_args: Sequence[str],
                    later_args: Sequence[str] | None) -> list[str]:
    """The `main.py train` command of session `number`: the first from the .gguf file with `train_args`, the later
    ones continuing `output` with `later_args` where given."""
    options = train_args if number == 1 or later_args is None else later_args
    command = [sys.executable, str(REPO / "main.py"), "train", "--data-file", str(data), "--output-dir", str(output),
               "--eval-split", "0", "--seed", str(seed), *options]
    return command + ["--model-name", str(real_base_gguf())] * (number == 1)


def run(seed: int, per_session: int, work: Path, sessions: int = 3, train_args: Sequence[str] = (),
        later_args: Sequence[str] | None = None, after_first: Path | None = None) -> dict:
    """Default sessions (plus `train_args`; after the first, `later_args` where given) from the .gguf file into one
    directory; the figures after each. `after_first`: the model directory a first session of this seed left, copied
    and continued from session 2 on, so that later-session arms start from one and the same model."""
    rng = random.Random(seed)
    asked: set[str] = set()
    session_facts = [facts(rng, per_session, asked) for _ in range(sessions)]
    output = work / "trained_model"
    if after_first is not None:
        shutil.copytree(after_first, output)
    base = measure(real_base_dir(), [])
    rows = []
    for number, session in enumerate(session_facts, start=1):
        if number == 1 and after_first is not None:
            continue
        data = work / f"session_{number}.json"
        data.write_text(json.dumps([{"question": q, "answer": a} for q, a in session]), encoding="utf-8")
        command = session_command(number, data, output, seed, train_args, later_args)
        started = time.perf_counter()
        done = subprocess.run(command, capture_output=True, text=True)
        seconds = time.perf_counter() - started
        if done.returncode:
            raise SystemExit(done.stderr[-2000:])
        record = json.loads((output / "training_history.json").read_text())["sessions"][-1]
        after = measure(output, session_facts[:number])
        rows.append({"session": number, "seconds": round(seconds, 1), "epochs": record["epochs"],
                     "stopped": record.get("stopped"), "learning_rate": record["learning_rate"],
                     "steps": record["steps"], "recall_now": after["recall"],
                     "probe_recall": record["recall"], "replayed": record.get("replayed_examples"),
                     "replay_share": replay_share(record),
                     "base_kept": next((row["kept"] for row in record["forgetting"] if row["session"] == 0), None),
                     "general_kept": sum(g and b for g, b in zip(after["general"], base["general"]))
                     / max(1, sum(base["general"]))})
        print(json.dumps(rows[-1]), flush=True)
    later = {"later_args": list(later_args)} if later_args is not None else {}
    if after_first is not None:
        later["after_first"] = True
    return {"seed": seed, "facts_per_session": per_session, "train_args": list(train_args), **later,
            "base_general_right": sum(base["general"]), "general_questions": len(GENERAL), "sessions": rows}


def main() -> int:
    parser = script_parser(__doc__)
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--facts", type=int, default=12, help="facts per session")
    parser.add_argument("--work", default=None, help="working directory (default: a temporary one)")
    parser.add_argument("--sessions", type=int, default=3)
    parser.add_argument("--train-args", default="", help="options added to every session, e.g. '--replay 0.5'")
    parser.add_argument("--later-args", default=None, help="options for the sessions after the first instead of "
                        "--train-args, e.g. a lower --null-space")
    parser.add_argument("--after-first", default=None, help="a trained model directory a one-session run of this "
                        "seed left (its --work's trained_model): copied and continued from session 2, to compare "
                        "later-session options from one start")
    parser.add_argument("--json-out", default=None)
    args = parser.parse_args()
    import tempfile

    with tempfile.TemporaryDirectory() as temporary:
        result = run(args.seed, args.facts, Path(args.work or temporary), args.sessions, args.train_args.split(),
                     None if args.later_args is None else args.later_args.split(),
                     Path(args.after_first) if args.after_first else None)
    result["machine"] = machine("torch")
    write_json(args.json_out, result)
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
