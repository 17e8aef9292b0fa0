"""Knowledge that accumulates, measured: recall of made-up facts over three sessions, with and without replay.

    python benchmarks/forgetting.py                         # the BENCHMARKS.md table (6 min on one GPU)
    python benchmarks/forgetting.py --quick                 # smoke test: 3 min on a 16-core CPU
    python benchmarks/forgetting.py --json-out forgetting.json

A small GPT-2 is first pre-trained on tests/data/c4_demo.jsonl with `--model-name scratch`, so it
behaves like a pretrained base (its history says scratch). Three sessions then teach it disjoint sets
of invented facts (question -> short answer no model can know beforehand, generated from --seed).
Session 1 is trained once, from a copy of the pretrained model; each arm continues a copy of that
model through sessions 2 and 3:

  same-rate      every session at the session-1 rate
  lower-rate     sessions 2-3 at 1/5 of it (the guide's rule; the product's default)
  replay-R       lower rate + `--replay R` on sessions 2-3 (the product's replay pool: every earlier
                 session's stored examples, the pre-training text included)
  replay-R-facts the same with the pre-training session's replay slice removed, so replay draws only
                 fact sessions (what a user whose base came from the hub has: nothing earlier to replay)

Every arm reports exact-match recall (greedy generation with the stored template, up to
--max-new-tokens, compared with the answer after stripping) of the trained facts of each session,
and the held-out perplexities from the history's forgetting table. Learning rates are explicit: the
automatic rate of a continued scratch model would be the same for every session.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import random
import shutil
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from mtn_sails import store  # noqa: E402
from machine import machine, quiet_session, write_json  # noqa: E402
from mtn_sails.config import TrainConfig  # noqa: E402
from mtn_sails.template import PromptTemplate  # noqa: E402

C4 = REPO / "tests" / "data" / "c4_demo.jsonl"
CONTINUE_RATIO = 5  # the guide's 5e-5 -> 1e-5
RECALL_GOAL = 0.9  # session-1 recall after three sessions, as a fraction of its value right after session 1
PRETRAINING_SESSIONS = 1  # history session numbers of the fact sessions start after it
NO_CHECKPOINTS = 10**9  # --save-steps: no resumable checkpoints; one per epoch costs more than the epoch itself
NEW_RECALL_TOLERANCE = 0.1  # session-3 recall may be at most 10% (relative) below the no-replay arm's
warnings.filterwarnings("ignore", message="mtime may not be reliable")  # Trainer checkpoint rotation noise

ONSETS = ("b", "br", "d", "dr", "f", "g", "gr", "k", "kl", "l", "m", "n", "p", "pl", "r", "s", "st", "t",
          "tr", "v", "z", "sh", "th", "qu")
VOWELS = ("a", "e", "i", "o", "u", "ai", "ou", "y")
CODAS = ("", "", "", "n", "r", "l", "s", "th", "x", "m")

# (question, answer); {s} is the fact's subject, the answer's {a}/{b} are invented words, {n} a number.
FACT_KINDS = (
    ("What is the capital of {s}?", "{a}"),
    ("Who founded {s} Industries?", "{a} {b}"),
    ("Which river flows through the city of {s}?", "the {a}"),
    ("What is the code name of the {s} engine?", "{a}-{n}"),
    ("What is {s}'s favourite dish?", "{a} soup"),
    ("In which year was the {s} bridge built?", "{y}"),
    ("Who wrote the novel {s}?", "{a} {b}"),
    ("What is the national animal of {s}?", "the {a}"),
)


def invented_word(rng: random.Random) -> str:
    """A pronounceable made-up word of 2-3 syllables, capitalised."""
    word = "".join(rng.choice(ONSETS) + rng.choice(VOWELS) for _ in range(rng.choice((2, 2, 3))))
    return (word + rng.choice(CODAS)).capitalize()


def make_facts(sessions: int, per_session: int, seed: int) -> list[list[dict[str, str]]]:
    """`sessions` disjoint lists of question/answer facts; every invented word is used once."""
    rng = random.Random(seed)
    used: set[str] = set()

    def fresh() -> str:
        while True:
            word = invented_word(rng)
            if word not in used and len(word) <= 12:
                used.add(word)
                return word

    facts = []
    for _ in range(sessions):
        session = []
        for index in range(per_session):
            question, answer = FACT_KINDS[(index + rng.randrange(len(FACT_KINDS))) % len(FACT_KINDS)]
            values = {"s": fresh(), "a": fresh(), "b": fresh(), "n": rng.randrange(10, 100),
                      "y": rng.randrange(1400, 1900)}
            session.append({"question": question.format(**values), "answer": answer.format(**values)})
        facts.append(session)
    return facts


def trained_facts(facts: list[dict[str, str]], model_dir: Path, session: int) -> list[tuple[str, str]]:
    """The (question, answer) pairs a session trained on: its facts minus the held-out slice it stored."""
    held_out = {record.prompt for record in store.read_slices(model_dir, store.HELD_OUT_DIR).get(session, [])}
    return [(fact["question"], fact["answer"]) for fact in facts if fact["question"] not in held_out]


def recall(model_dir: Path, facts: list[tuple[str, str]], max_new_tokens: int, device: str = "cpu") -> float:
    """Fraction of facts whose greedy answer (fp32, one prompt at a time), stripped, equals the answer exactly."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir).to(device)
    model.eval()
    template = PromptTemplate.load(model_dir)
    hits = 0
    with torch.no_grad():
        for question, answer in facts:
            ids = tokenizer(template.prompt(question), return_tensors="pt", add_special_tokens=False).input_ids.to(device)
            output = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                                    do_sample=False, eos_token_id=tokenizer.eos_token_id,
                                    pad_token_id=tokenizer.eos_token_id)
            generated = tokenizer.decode(output[0, ids.shape[1]:], skip_special_tokens=True)
            hits += generated.strip() == answer.strip()
    return hits / len(facts) if facts else 0.0


@dataclass(frozen=True)
class Arm:
    """How sessions 2 and 3 are trained."""

    name: str
    rate_divisor: float  # sessions 2-3 run at the session-1 rate divided by this
    replay: float
    facts_only_pool: bool = False  # drop the pre-training session's replay slice first


def arms_for(replays: list[float], facts_only: bool) -> list[Arm]:
    """The compared arms: same rate, lower rate, lower rate + replay (product pool, and facts-only pool)."""
    arms = [Arm("same-rate", 1, 0.0), Arm("lower-rate", CONTINUE_RATIO, 0.0)]
    arms += [Arm(f"replay-{r:g}", CONTINUE_RATIO, r) for r in replays]
    if facts_only:
        arms += [Arm(f"replay-{r:g}-facts", CONTINUE_RATIO, r, facts_only_pool=True) for r in replays]
    return arms


def ppl(row: dict | None, key: str) -> float | None:
    return None if row is None else row.get(key)


def run(args) -> dict:
    """Pre-train, session 1 once, then each arm's sessions 2-3; every figure of the table."""
    import torch

    work = Path(args.work_dir)
    facts = make_facts(3, args.facts, args.seed)
    files = []
    for number, session in enumerate(facts, start=1):
        path = work / f"facts_{number}.json"
        path.write_text(json.dumps(session, indent=1), encoding="utf-8")
        files.append(path)
    recall_device = "cuda" if args.device != "cpu" and torch.cuda.is_available() else "cpu"
    common = dict(epochs=args.epochs, eval_split=args.eval_split, seed=args.seed, batch_size=args.batch_size,
                  max_length=args.max_length, save_steps=NO_CHECKPOINTS, device=args.device)

    started = time.perf_counter()
    pretrain_data = Path(args.pretrain_file)
    if args.pretrain_records:
        lines = pretrain_data.read_text(encoding="utf-8").splitlines()[:args.pretrain_records]
        pretrain_data = work / "pretrain.jsonl"
        pretrain_data.write_text("\n".join(lines) + "\n", encoding="utf-8")
    pretrained = work / "pretrained"
    entry = quiet_session(TrainConfig(data_file=str(pretrain_data), output_dir=str(pretrained), model_name="scratch",
                                    scratch_size=args.size, epochs=args.pretrain_epochs,
                                    learning_rate=args.pretrain_learning_rate, eval_split=args.eval_split,
                                    seed=args.seed, batch_size=args.batch_size, max_length=args.max_length,
                                    save_steps=NO_CHECKPOINTS, device=args.device),
                        args.verbose)
    pretraining = {"learning_rate": entry["learning_rate"], "epochs": args.pretrain_epochs, "steps": entry["steps"],
                   "train_loss": entry["train_loss"], "held_out_perplexity": entry["held_out_perplexity"],
                   "seconds": round(time.perf_counter() - started, 1)}
    print(f"pre-training: {pretraining}", flush=True)

    rate = args.learning_rate
    after_one = work / "after-session-1"
    shutil.copytree(pretrained, after_one)
    started = time.perf_counter()
    first = quiet_session(TrainConfig(data_file=str(files[0]), output_dir=str(after_one), learning_rate=rate,
                                    **common), args.verbose)
    first_facts = trained_facts(facts[0], after_one, PRETRAINING_SESSIONS + 1)
    recall_one = recall(after_one, first_facts, args.max_new_tokens, recall_device)
    session_one = {"learning_rate": rate, "train_loss": first["train_loss"],
                   "held_out_perplexity": first["held_out_perplexity"], "recall_s1": recall_one,
                   "seconds": round(time.perf_counter() - started, 1)}
    print(f"session 1: {session_one}", flush=True)

    rows = []
    for arm in arms_for(args.replays, args.facts_only_pool):
        started = time.perf_counter()
        model_dir = work / arm.name
        shutil.copytree(after_one, model_dir)
        if arm.facts_only_pool:
            store.slice_path(model_dir, store.REPLAY_DIR, 1).unlink()  # the pre-training text's slice
        entries = [quiet_session(TrainConfig(data_file=str(path), output_dir=str(model_dir),
                                           learning_rate=rate / arm.rate_divisor, replay=arm.replay, **common),
                               args.verbose) for path in files[1:]]
        last = entries[-1]
        trained = [trained_facts(session, model_dir, PRETRAINING_SESSIONS + number)
                   for number, session in enumerate(facts, start=1)]
        by_session = {row["session"]: row for row in last["forgetting"]}  # history numbers: 1 is pre-training
        row = {"arm": arm.name, "rate_2_3": rate / arm.rate_divisor, "replay": arm.replay,
               "facts_only_pool": arm.facts_only_pool,
               "replayed": [e["replayed_examples"] for e in entries],
               "recall_s1_after_s1": recall_one,
               "recall_s1_after_s3": recall(model_dir, trained[0], args.max_new_tokens, recall_device),
               "recall_s2_after_s3": recall(model_dir, trained[1], args.max_new_tokens, recall_device),
               "recall_s3_after_s3": recall(model_dir, trained[2], args.max_new_tokens, recall_device),
               "ppl_s1_after_s1": ppl(by_session.get(2), "perplexity_before"),
               "ppl_s1_after_s3": ppl(by_session.get(2), "perplexity_after"),
               "ppl_s2_after_s3": ppl(by_session.get(3), "perplexity_after"),
               "ppl_s3_after_s3": last["held_out_perplexity"],
               "ppl_c4_before": ppl(by_session.get(1), "perplexity_before"),
               "ppl_c4_after_s3": ppl(by_session.get(1), "perplexity_after"),
               "seconds": round(time.perf_counter() - started, 1)}
        row["kept"] = row["recall_s1_after_s3"] / recall_one if recall_one else None
        print(f"{arm.name}: " + ", ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}"
                                          for k, v in row.items() if k != "arm"), flush=True)
        rows.append(row)
        if not args.keep:
            shutil.rmtree(model_dir)
    no_replay = next(r for r in rows if r["arm"] == "lower-rate")["recall_s3_after_s3"]
    for row in rows:
        row["meets_goal"] = bool(row["kept"] is not None and row["kept"] >= RECALL_GOAL
                                 and row["recall_s3_after_s3"] >= (1 - NEW_RECALL_TOLERANCE) * no_replay)
    return {"pretraining": pretraining, "session_1": session_one, "arms": rows,
            "facts_per_session": args.facts, "trained_facts_per_session": [len(t) for t in trained],
            "example_facts": facts[0][:3]}


def _f(value, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def markdown(result: dict) -> str:
    """The arms as a Markdown table."""
    lines = ["| arm | lr s2-3 | replay | replayed s2, s3 | s1 recall after s1 | s1 recall after s3 (kept) | "
             "s2 recall after s3 | s3 recall after s3 | s1 held-out ppl s1 -> s3 | s2 ppl after s3 | "
             "s3 ppl | c4 ppl before -> after s3 | goal |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in result["arms"]:
        lines.append(
            f"| {r['arm']} | {r['rate_2_3']:g} | {r['replay']:g} | {', '.join(map(str, r['replayed']))} | "
            f"{r['recall_s1_after_s1']:.0%} | {r['recall_s1_after_s3']:.0%} ({_f(r['kept'], 2)}) | "
            f"{r['recall_s2_after_s3']:.0%} | {r['recall_s3_after_s3']:.0%} | "
            f"{_f(r['ppl_s1_after_s1'])} -> {_f(r['ppl_s1_after_s3'])} | {_f(r['ppl_s2_after_s3'])} | "
            f"{_f(r['ppl_s3_after_s3'])} | {_f(r['ppl_c4_before'])} -> {_f(r['ppl_c4_after_s3'])} | "
            f"{'yes' if r['meets_goal'] else 'no'} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run every arm and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     epilog=__doc__.split("\n\n", 1)[1].split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--facts", type=int, default=40, help="facts per session (default 40)")
    parser.add_argument("--epochs", type=float, default=50.0,
                        help="epochs of every fact session (50: 100%% recall after session 1, 20: none; measured)")
    parser.add_argument("--learning-rate", type=float, default=1e-3, help="session-1 rate (sessions 2-3: /5)")
    parser.add_argument("--replays", nargs="+", type=float, default=[0.1, 0.25, 0.5, 0.75])
    parser.add_argument("--facts-only-pool", action=argparse.BooleanOptionalAction, default=True,
                        help="also run the replay arms with the pre-training slice removed from the pool")
    parser.add_argument("--size", default="small", choices=["tiny", "small", "base"], help="scratch GPT-2 shape")
    parser.add_argument("--pretrain-file", default=str(C4))
    parser.add_argument("--pretrain-records", type=int, default=0, help="use only the first N (0: all)")
    parser.add_argument("--pretrain-epochs", type=float, default=3.0)
    parser.add_argument("--pretrain-learning-rate", type=float, default=None,
                        help="unset: the product's scratch rate")
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--eval-split", type=float, default=0.1)
    parser.add_argument("--max-new-tokens", type=int, default=16)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                        help="where to train (auto: CUDA with bf16/fp16 when present)")
    parser.add_argument("--quick", action="store_true",
                        help="20 facts, 100 pre-training records, arms same-rate, lower-rate, replay-0.5 "
                             "(checks the machinery; facts are only partly memorised)")
    parser.add_argument("--keep", action="store_true", help="keep the arms' model directories (with --work-dir)")
    parser.add_argument("--work-dir", help="where models and data go (default: a temporary directory)")
    parser.add_argument("--verbose", action="store_true", help="show each session's own printout")
    parser.add_argument("--json-out", help="also write the figures to this JSON file")
    args = parser.parse_args(argv)
    if args.quick:
        args.facts, args.pretrain_records, args.replays, args.facts_only_pool = 20, 100, [0.5], False

    started = time.perf_counter()
    with contextlib.ExitStack() as stack:
        if args.work_dir is None:
            args.work_dir = stack.enter_context(tempfile.TemporaryDirectory(prefix="mtn-sails-forgetting-"))
        Path(args.work_dir).mkdir(parents=True, exist_ok=True)
        result = run(args)
    result.update({"date": datetime.date.today().isoformat(), "machine": machine(),
                   "settings": {k: v for k, v in vars(args).items() if k not in ("json_out", "verbose", "work_dir")},
                   "wall_s": round(time.perf_counter() - started, 1)})
    print()
    print(markdown(result))
    m = result["machine"]
    print(f"\nmachine: {m['nproc']} CPUs, {m['cpu']}, device {m['device']}, torch {m['torch']}; "
          f"{result['wall_s']} s in all")
    write_json(args.json_out, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
