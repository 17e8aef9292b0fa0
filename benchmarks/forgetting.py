"""Knowledge that stays, measured: recall of made-up facts over three sessions, with each retention lever.

    python benchmarks/forgetting.py --json-out forgetting.json    # the BENCHMARKS.md table (3 seeds)
    python benchmarks/forgetting.py --quick                        # 1 seed, 3 arms: under 4 minutes idle
    python benchmarks/forgetting.py --levers --seeds 1             # every lever and combination, one by one
    make real-base && python benchmarks/forgetting.py --base real --seeds 23 --arms defaults --no-reversed

With `--base real` the base is SmolLM2-135M-Instruct as it comes (`make real-base`) and every session runs at
the product's defaults (5e-5 then 1e-5, trained until its answers are recalled, session 0 first): no explicit
rate or epochs, which would be the scratch protocol's and wreck a pretrained model. Recall is asked through the
template stored with the model (its chat template on the real base), and two more figures come in: base kept
(the share of session 0's decisive answers the product's own `base` row still finds) and general kept (the
common.GENERAL questions the base answered right, still right through apply_chat_template and generate).
Goal there (issue 29): every kept share, the newest recall and base kept >= 0.95 at <= 10% replay.

Per seed, a small GPT-2 (4 blocks, 128 wide, a BPE vocabulary trained on the text) is pre-trained by the
product on C4 documents and stripped of its history, so it is a plain base like one from the hub
(built once per seed, cached in the run's directory). Three sessions then teach it disjoint sets of
invented facts (question -> short answer no model can know, generated from the seed), each arm with
the same facts, order, template, rate and epochs; the standard form also runs the headline arms in
reversed order. Every fact is trained; the facts of each session are split into a tuning half (even
positions) and a test half (odd): settings are chosen on the tuning half, the table reports the test half.

Per arm: session-1 and session-2 kept (recall after session 3 / recall right after the session itself),
session-3 recall against the no-replay arm's, C4 perplexity (documents never trained on), replay
exposures (old-record examples seen / new-record examples seen, per session), seconds per continued
session, and the memory a session adds. Recall is the product's probe (mtn_sails/probe.py): greedy exact
match with the stored template, as `mtn-sails generate` decodes, in one teacher-forced pass.
Goal (issue 15): kept >= 0.90 (mean over seeds, every seed >= 0.85) at <= 10% replay exposures,
session-3 recall within 5 points of no replay, session time <= 1.5x no replay.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import io
import json
import random
import shutil
import statistics
import tempfile
import threading
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path


from common import TEXT_FILE, general_right, machine, replay_share, script_parser, write_json

C4 = TEXT_FILE
GENERAL_TEXT_DOCS = 30  # the last C4 documents: never trained on, the general-text perplexity
NO_CHECKPOINTS = 10**9  # --save-steps: no resumable checkpoints; one per epoch costs more than the epoch itself
KEEP_GOAL, KEEP_FLOOR = 0.90, 0.85  # mean over seeds, and every seed
EXPOSURE_BUDGET = 0.10  # old-record examples seen per new-record example seen
NEW_RECALL_POINTS = 0.05  # session-3 recall may be at most this far below the no-replay arm's
TIME_RATIO = 1.5  # session time against the no-replay arm's
# The process's CPU seconds (one torch thread): wall seconds on a machine other jobs share measure their load too.
TIME_KEY = "cpu_seconds_per_session"
REAL_GOAL = 0.95  # issue 29, on the real base: earlier sessions kept, newest recall, base kept
SHAPES = {"tiny": (2, 64, 4), "small": (4, 128, 4)}  # n_layer, n_embd, n_head
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


def halves(facts: list[dict[str, str]]) -> dict[str, list[dict[str, str]]]:
    """The tuning half (even positions) and the test half (odd positions) of a session's facts."""
    return {"tune": facts[0::2], "test": facts[1::2]}


@dataclass(frozen=True)
class Arm:
    """How every fact session of one arm is trained: TrainConfig options on top of the shared ones."""

    name: str
    settings: dict = field(default_factory=dict)
    both_orders: bool = False  # also run sessions 3, 2, 1
    joint: bool = False  # one session on all three fact sets (the ceiling)

    def first_session_key(self) -> str:
        """What session 1 depends on (it has nothing earlier to replay, distil or choose a weight against)."""
        keys = ("freeze_layers", "lr_schedule", "warmup_ratio", "method", "replay_base", "null_space")
        if self.settings.get("replay_base") == "first":  # session 1 replays the base: how it replays matters too
            keys += ("replay", "replay_select", "replay_draw", "replay_weight", "distill_weight", "distill_on")
        fixed = {k: self.settings[k] for k in keys if k in self.settings}
        weight = self.settings.get("interpolate", "off")
        if weight not in ("off", "auto"):
            fixed["interpolate"] = weight
        return json.dumps(fixed, sort_keys=True)


NO_REPLAY = {"replay": 0.0, "distill_weight": 0.0, "interpolate": "off", "freeze_layers": 0}
TODAY = {"replay": 1.0, "replay_select": "uniform", "replay_draw": "session", "replay_weight": 1.0,
         "distill_weight": 0.0, "distill_on": "replayed",
         "interpolate": "off", "freeze_layers": 0, "lr_schedule": "linear", "warmup_ratio": 0.0}
BASELINES = [
    Arm("no-replay", {**TODAY, **NO_REPLAY}, both_orders=True),
    Arm("uniform-0.1", {**TODAY, "replay": 0.1}),
    Arm("today-0.5-share", TODAY),  # --replay 0.5 before this issue: as many replayed examples as new ones
    Arm("joint", {**TODAY, **NO_REPLAY}, joint=True),
    Arm("defaults", {}, both_orders=True),  # whatever TrainConfig's defaults are now
]
EPOCH = {**TODAY, "replay": 0.1, "replay_draw": "epoch"}
TARGETED = {**EPOCH, "replay_select": "targeted"}
LEVERS = [
    Arm("epoch-0.1", EPOCH),
    Arm("targeted-0.1", TARGETED),
    Arm("targeted-weight-2", {**TARGETED, "replay_weight": 2.0}),
    Arm("targeted-weight-4", {**TARGETED, "replay_weight": 4.0}),
    Arm("targeted-weight-8", {**TARGETED, "replay_weight": 8.0}),
    Arm("epoch-distill", {**EPOCH, "distill_weight": 1.0, "distill_on": "replayed"}),
    Arm("targeted-distill-answers", {**TARGETED, "distill_weight": 1.0, "distill_on": "answers"}),
    Arm("targeted-distill", {**TARGETED, "distill_weight": 1.0, "distill_on": "replayed"}),
    Arm("targeted-distill-all", {**TARGETED, "distill_weight": 1.0, "distill_on": "all"}),
    Arm("targeted-distill-0.5", {**TARGETED, "distill_weight": 0.5, "distill_on": "replayed"}),
    Arm("targeted-distill-2", {**TARGETED, "distill_weight": 2.0, "distill_on": "replayed"}),
    Arm("freeze-1", {**TODAY, **NO_REPLAY, "freeze_layers": 1}),
    Arm("targeted-distill-freeze-1", {**TARGETED, "distill_weight": 1.0, "freeze_layers": 1}),
    Arm("interpolate-auto", {**TODAY, **NO_REPLAY, "interpolate": "auto"}),
    Arm("targeted-distill-interpolate", {**TARGETED, "distill_weight": 1.0, "interpolate": "auto"}),
    Arm("rewarm-cosine", {**TODAY, **NO_REPLAY, "lr_schedule": "cosine", "warmup_ratio": 0.1}),
    Arm("targeted-distill-rewarm", {**TARGETED, "distill_weight": 1.0, "lr_schedule": "cosine",
                                    "warmup_ratio": 0.1}),
    # LoRA (rank 8, merged after every session): how much an adapter's low rank alone protects (issue 16)
    Arm("lora-no-replay", {**TODAY, **NO_REPLAY, "method": "lora"}),
    Arm("lora-defaults", {"method": "lora"}),
    # a pretrained base (--base real): session 1 replays the base's own answers too (session 0's replay slice)
    Arm("replay-base-first", {"replay_base": "first"}),
    # the stored answers whose prompts share most words with the session's: what the session pulls on
    Arm("nearest", {"replay_select": "nearest"}),
    Arm("replay-base-first-nearest", {"replay_base": "first", "replay_select": "nearest"}),
    # changes kept off the inputs the base's answers and earlier sessions' examples use (training/null_space.py)
    Arm("null-space-0.95", {"null_space": 0.95}),
]


class PeakMemory:
    """The largest resident memory of this process while the block runs, sampled every 20 ms (MB above the start)."""

    def __enter__(self) -> "PeakMemory":
        import psutil

        self._process = psutil.Process()
        self.start = self.peak = self._process.memory_info().rss
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._done.wait(0.02):
            self.peak = max(self.peak, self._process.memory_info().rss)

    def __exit__(self, *exc) -> None:
        self._done.set()
        self._thread.join()
        self.added_mb = round((self.peak - self.start) / 2**20, 1)


def session(config, verbose: bool) -> dict:
    """One real training session; its history entry, seconds and added memory."""
    from mtn_sails.training.session import train

    started, cpu_started = time.perf_counter(), time.process_time()
    with PeakMemory() as memory, (contextlib.nullcontext() if verbose else contextlib.redirect_stdout(io.StringIO())):
        entry = train(config).session
    record = entry.to_json() if hasattr(entry, "to_json") else dict(entry)
    return {"entry": record, "seconds": round(time.perf_counter() - started, 1),
            "cpu_seconds": round(time.process_time() - cpu_started, 1), "added_mb": memory.added_mb}


def load(model_dir: Path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(model_dir), AutoTokenizer.from_pretrained(model_dir)


def recall(model, tokenizer, template, facts: list[dict[str, str]]) -> float:
    """The product's probe recall of `facts` (greedy exact match with the model's stored template)."""
    from mtn_sails.data.files import Record
    from mtn_sails.training.probe import score_probe

    records = [Record(index=i, kind="pair", shape="question/answer", prompt=f["question"], response=f["answer"])
               for i, f in enumerate(facts)]
    return score_probe(model, tokenizer, template, records, batch_size=64).recall


def recall_halves(model_dir: Path, model, tokenizer, facts: list[dict[str, str]]) -> dict[str, float]:
    """Recall of the tuning and the test half of one session's facts."""
    from mtn_sails.data.template import template_beside

    template = template_beside(model_dir)
    return {half: recall(model, tokenizer, template, part) for half, part in halves(facts).items()}


def general_perplexity(model, tokenizer, max_length: int) -> float:
    """Perplexity of the last C4 documents (never trained on), as the product evaluates plain text."""
    from mtn_sails.data.files import Record
    from mtn_sails.data.template import PromptTemplate
    from mtn_sails.training.forgetting import evaluate_records
    from mtn_sails.training.scoring import perplexity

    lines = C4.read_text(encoding="utf-8").splitlines()[-GENERAL_TEXT_DOCS:]
    records = [Record(index=i, kind="text", shape="text", text=json.loads(line)["text"]) for i, line in enumerate(lines)]
    return round(perplexity(evaluate_records(model, tokenizer, records, PromptTemplate(), max_length)), 1)


def real_base(args) -> tuple[Path, dict]:
    """The real base as it comes, with the general questions it answers right and its C4 perplexity."""
    from tools.real_base import real_base_dir

    model, tokenizer = load(real_base_dir())
    return real_base_dir(), {"general_right": general_right(model, tokenizer),
                             "general_ppl": general_perplexity(model, tokenizer, args.max_length)}


def build_base(work: Path, seed: int, args) -> tuple[Path, dict]:
    """The seed's pre-trained base: a fresh GPT-2 and tokenizer, trained on C4 by the product, history removed."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from mtn_sails.model_dir import store
    from mtn_sails.config import TrainConfig
    from mtn_sails.model_dir.history_file import HISTORY_FILE
    from mtn_sails.training.scratch import train_tokenizer
    from mtn_sails.data.template import PromptTemplate

    base = work / f"base-seed{seed}"
    if (base / "base.json").is_file():
        return base, json.loads((base / "base.json").read_text())
    lines = C4.read_text(encoding="utf-8").splitlines()[:args.pretrain_records]
    texts = [json.loads(line)["text"] for line in lines]
    data = work / f"pretrain-seed{seed}.jsonl"
    data.write_text("\n".join(lines) + "\n", encoding="utf-8")
    import torch

    layers, width, heads = SHAPES[args.size]
    tokenizer = train_tokenizer(texts, args.vocab_size)
    torch.manual_seed(seed)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=len(tokenizer), n_positions=args.max_length, n_embd=width,
                                       n_layer=layers, n_head=heads, activation_function="gelu_pytorch_tanh",
                                       bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id,
                                       pad_token_id=tokenizer.eos_token_id))
    model.save_pretrained(base)
    tokenizer.save_pretrained(base)
    PromptTemplate().save(base)
    done = session(TrainConfig(data_file=str(data), output_dir=str(base), epochs=args.pretrain_epochs,
                               learning_rate=args.pretrain_learning_rate, eval_split=0, seed=seed,
                               batch_size=args.batch_size, max_length=args.max_length, save_steps=NO_CHECKPOINTS,
                               device=args.device), args.verbose)
    for leftover in (HISTORY_FILE, store.HELD_OUT_DIR, store.REPLAY_DIR, store.PROBE_DIR):
        path = base / leftover
        shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
    model, tokenizer = load(base)
    info = {"seconds": done["seconds"], "steps": done["entry"]["steps"],
            "general_ppl": general_perplexity(model, tokenizer, args.max_length)}
    (base / "base.json").write_text(json.dumps(info))
    return base, info


def fact_file(work: Path, seed: int, number: int, facts: list[dict[str, str]]) -> Path:
    path = work / f"facts-seed{seed}-{number}.json"
    path.write_text(json.dumps(facts, indent=1), encoding="utf-8")
    return path


def session_options(args, seed: int) -> dict:
    """TrainConfig options every fact session shares: the scratch protocol's rate and epochs, the defaults on the
    real base."""
    shared = dict(eval_split=0, seed=seed, save_steps=NO_CHECKPOINTS, device=args.device)
    if args.base == "real":
        return shared
    return dict(shared, learning_rate=args.learning_rate, epochs=args.epochs, batch_size=args.batch_size,
                max_length=args.max_length)


def start_from(base: Path, model_dir: Path, args) -> dict:
    """How a first session starts from `base`: the real base named as --model-name (its session 0 runs), a scratch
    base copied into the model directory."""
    if args.base == "real":
        return {"model_name": str(base)}
    shutil.copytree(base, model_dir)
    return {}


def real_base_kept(sessions: list[dict], general_now: list[bool], general_before: list[bool]) -> dict:
    """After the last session: the product's base row (session 0's decisive answers kept), the general questions
    still right, and the replay share of every session."""
    rows = sessions[-1]["entry"].get("forgetting") or []
    base_kept = next((row["kept"] for row in rows if row["session"] == 0), None)
    right = sum(general_before)
    return {"base_kept": base_kept,
            "general_kept": sum(n and b for n, b in zip(general_now, general_before)) / right if right else None,
            "general_now": general_now,
            "replay_share": [replay_share(s["entry"]) for s in sessions]}


def run_order(arm: Arm, base: Path, base_info: dict, files: list[Path], facts: list[list[dict]], order: list[int],
              seed: int, work: Path, first_sessions: dict, args) -> dict:
    """Sessions in `order` (fact-set numbers) for one arm; recall per half after each session and at the end."""
    from mtn_sails.config import TrainConfig

    common = session_options(args, seed)
    model_dir = work / f"{arm.name}-seed{seed}-{''.join(map(str, order))}"
    shutil.rmtree(model_dir, ignore_errors=True)
    own, sessions = {}, []
    key = (seed, tuple(order[:1]), arm.first_session_key())
    for position, number in enumerate(order):
        if position == 0 and key in first_sessions:  # session 1 has no earlier session: shared by such arms
            shutil.copytree(first_sessions[key]["dir"], model_dir)
            sessions.append(first_sessions[key]["session"])
            own[number] = first_sessions[key]["own"]
            continue
        start = start_from(base, model_dir, args) if position == 0 else {}
        sessions.append(session(TrainConfig(data_file=str(files[number - 1]), output_dir=str(model_dir),
                                            **start, **common, **arm.settings), args.verbose))
        model, tokenizer = load(model_dir)
        own[number] = recall_halves(model_dir, model, tokenizer, facts[number - 1])
        if position == 0:
            first_sessions[key] = {"dir": work / f"first-seed{seed}-{len(first_sessions)}", "session": sessions[0],
                                   "own": own[number]}
            shutil.copytree(model_dir, first_sessions[key]["dir"])
    model, tokenizer = load(model_dir)
    final = {number: recall_halves(model_dir, model, tokenizer, facts[number - 1]) for number in order}
    result = summarise_order(order, own, final, sessions[1:])
    result["general_ppl"] = general_perplexity(model, tokenizer, args.max_length)
    if args.base == "real":
        result.update(real_base_kept(sessions, general_right(model, tokenizer), base_info["general_right"]))
    if not args.keep:
        shutil.rmtree(model_dir)
    return result


def summarise_order(order: list[int], own: dict, final: dict, continued: list[dict]) -> dict:
    """Kept, recall and cost figures of one run; 'first'/'second'/'last' are positions in the order."""
    result: dict = {"order": order}
    for half in ("tune", "test"):
        for label, number in zip(("first", "second"), order[:2]):
            before = own[number][half]
            result[f"{label}_kept_{half}"] = final[number][half] / before if before else None
        result[f"last_recall_{half}"] = final[order[-1]][half]
        result[f"first_own_{half}"] = own[order[0]][half]
    result["exposures"] = [exposure_ratio(s["entry"]) for s in continued]
    result["seconds_per_session"] = round(statistics.mean(s["seconds"] for s in continued), 1) if continued else None
    result["cpu_seconds_per_session"] = round(statistics.mean(s["cpu_seconds"] for s in continued), 1) \
        if continued else None
    result["added_mb"] = max((s["added_mb"] for s in continued), default=None)
    result["interpolation_alpha"] = [s["entry"].get("interpolation_alpha") for s in continued]
    return result


def exposure_ratio(entry: dict) -> float:
    """Old-record examples seen per new-record example seen in one session."""
    new = entry["train_examples"] * entry["epochs"]
    return round(entry.get("replayed_examples", 0) / new, 4) if new else 0.0


def run_joint(arm: Arm, base: Path, facts: list[list[dict]], seed: int, work: Path, args) -> dict:
    """One session on all three fact sets: what the model can hold at once."""
    from mtn_sails.config import TrainConfig

    model_dir = work / f"{arm.name}-seed{seed}"
    start = start_from(base, model_dir, args)
    data = fact_file(work, seed, 0, [fact for session_facts in facts for fact in session_facts])
    done = session(TrainConfig(data_file=str(data), output_dir=str(model_dir), **start,
                               **session_options(args, seed), **arm.settings), args.verbose)
    model, tokenizer = load(model_dir)
    result = {"order": [0], "seconds_per_session": done["seconds"], "cpu_seconds_per_session": done["cpu_seconds"],
              "added_mb": done["added_mb"], "exposures": [0.0],
              "general_ppl": general_perplexity(model, tokenizer, args.max_length)}
    recalls = [recall_halves(model_dir, model, tokenizer, f) for f in facts]
    for half in ("tune", "test"):
        result.update({f"first_kept_{half}": recalls[0][half], f"second_kept_{half}": recalls[1][half],
                       f"last_recall_{half}": recalls[2][half]})
    shutil.rmtree(model_dir, ignore_errors=True)
    return result


def aggregate(runs: list[dict], half: str) -> dict:
    """Mean and minimum over the runs (seeds, orders) of one arm, on one half of the facts."""
    def values(key: str) -> list[float]:
        return [r[key] for r in runs if r.get(key) is not None]

    summary = {}
    for key in (f"first_kept_{half}", f"second_kept_{half}", f"last_recall_{half}", "general_ppl",
                "seconds_per_session", "cpu_seconds_per_session", "added_mb", "base_kept", "general_kept"):
        found = values(key)
        summary[key.replace(f"_{half}", "")] = {"mean": round(statistics.mean(found), 3) if found else None,
                                                "min": round(min(found), 3) if found else None}
    summary["exposures_max"] = max((x for r in runs for x in r["exposures"]), default=0.0)
    summary["replay_share_max"] = max((x for r in runs for x in r.get("replay_share", [])), default=None)
    summary["runs"] = len(runs)
    return summary


def meets_goal(summary: dict, reference: dict) -> bool:
    """The issue's goal for one arm's summary, against the no-replay arm's."""
    kept = [summary["first_kept"], summary["second_kept"]]
    if any(k["mean"] is None for k in kept) or reference["last_recall"]["mean"] is None:
        return False
    return (all(k["mean"] >= KEEP_GOAL and k["min"] >= KEEP_FLOOR for k in kept)
            and summary["exposures_max"] <= EXPOSURE_BUDGET + 1e-9
            and summary["last_recall"]["mean"] >= reference["last_recall"]["mean"] - NEW_RECALL_POINTS
            and summary[TIME_KEY]["mean"] <= TIME_RATIO * reference[TIME_KEY]["mean"])


def meets_real_goal(summary: dict) -> bool:
    """Issue 29's goal on the real base: every kept share, the newest recall and the base's answers >= 0.95 in
    every run, at <= 10% replay."""
    shares = [summary[key]["min"] for key in ("first_kept", "second_kept", "last_recall", "base_kept")]
    return (all(share is not None and share >= REAL_GOAL for share in shares)
            and (summary["replay_share_max"] or 0.0) <= EXPOSURE_BUDGET + 1e-9)


def run(args) -> dict:
    """Every seed's base, then every arm's runs; the summaries on the tuning and the test half."""
    work = Path(args.work_dir)
    arms = [a for a in BASELINES + LEVERS if a.name in args.arms] if args.arms else list(BASELINES)
    if args.levers:
        arms += [a for a in LEVERS if a not in arms]
    runs: dict[str, list[dict]] = {arm.name: [] for arm in arms}
    bases = {}
    for seed in args.seeds:
        base, bases[seed] = real_base(args) if args.base == "real" else build_base(work, seed, args)
        print(f"seed {seed}: base {bases[seed]}", flush=True)
        facts = make_facts(3, args.facts, seed)
        files = [fact_file(work, seed, number, f) for number, f in enumerate(facts, start=1)]
        first_sessions: dict = {}
        for arm in arms:
            orders = [[1, 2, 3]] + ([[3, 2, 1]] if (arm.both_orders or args.every_order) and args.reversed else [])
            for order in orders:
                result = run_joint(arm, base, facts, seed, work, args) if arm.joint else \
                    run_order(arm, base, bases[seed], files, facts, order, seed, work, first_sessions, args)
                result["seed"] = seed
                runs[arm.name].append(result)
                print(f"  {arm.name} {result['order']}: " + ", ".join(
                    f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}" for k, v in result.items()
                    if k not in ("order", "seed")), flush=True)
    summaries = {half: {name: aggregate(found, half) for name, found in runs.items()} for half in ("tune", "test")}
    for half, by_arm in summaries.items():
        reference = by_arm["no-replay"] if "no-replay" in by_arm else None
        for summary in by_arm.values():
            summary["meets_goal"] = meets_real_goal(summary) if args.base == "real" else \
                bool(reference) and meets_goal(summary, reference)
    return {"bases": bases, "runs": runs, "summaries": summaries,
            "settings_by_arm": {arm.name: arm.settings for arm in arms},
            "example_facts": make_facts(1, 3, args.seeds[0])[0]}


def _cell(stat: dict, percent: bool = True) -> str:
    if stat["mean"] is None:
        return "-"
    fmt = (lambda v: f"{v:.2f}") if percent else (lambda v: f"{v:g}")
    return f"{fmt(stat['mean'])} (min {fmt(stat['min'])})"


def markdown(result: dict, half: str = "test") -> str:
    """The arms as a Markdown table on one half of the facts."""
    real = result["settings"]["base"] == "real"
    extra = " base kept | general kept |" if real else ""
    lines = [f"| arm | s1 kept | s2 kept | s3 recall |{extra} exposures | C4 ppl | CPU s / session | wall s | + MB | goal |",
             "|---|---|---|---|" + "---|" * (2 * real) + "---|---|---|---|---|---|"]
    for name, s in result["summaries"][half].items():
        cells = f" {_cell(s['base_kept'])} | {_cell(s['general_kept'])} |" if real else ""
        lines.append(f"| {name} | {_cell(s['first_kept'])} | {_cell(s['second_kept'])} | {_cell(s['last_recall'])} |"
                     f"{cells} {s['exposures_max']:.3f} | {_cell(s['general_ppl'], False)} | "
                     f"{_cell(s['cpu_seconds_per_session'], False)} | {_cell(s['seconds_per_session'], False)} | "
                     f"{_cell(s['added_mb'], False)} | "
                     f"{'yes' if s['meets_goal'] else 'no'} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run the arms and print the test-half table."""
    parser = script_parser(__doc__, epilog=True)
    parser.add_argument("--facts", type=int, default=20,
                        help="facts per session, half tuning, half test (20: 2 replayed per epoch at 0.1)")
    parser.add_argument("--epochs", type=float, default=80.0, help="epochs of every fact session")
    parser.add_argument("--learning-rate", type=float, default=2e-3, help="rate of every fact session")
    parser.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3])
    parser.add_argument("--arms", nargs="*", help="arms to run, by name (default: every baseline)")
    parser.add_argument("--levers", action="store_true", help="also every lever and combination")
    parser.add_argument("--reversed", action=argparse.BooleanOptionalAction, default=True,
                        help="run the headline arms in order 3, 2, 1 too")
    parser.add_argument("--every-order", action="store_true", help="run every arm (the levers too) in order 3, 2, 1 too")
    parser.add_argument("--base", default="scratch", choices=["scratch", "real"],
                        help="a small GPT-2 pre-trained here per seed, or SmolLM2-135M-Instruct at the defaults")
    parser.add_argument("--size", default="small", choices=sorted(SHAPES), help="the GPT-2 shape")
    parser.add_argument("--vocab-size", type=int, default=4000)
    parser.add_argument("--pretrain-records", type=int, default=100, help="C4 documents the base learns")
    parser.add_argument("--pretrain-epochs", type=float, default=2.0)
    parser.add_argument("--pretrain-learning-rate", type=float, default=1e-3)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (1: 3-5x faster than 2 on this project's busy 2-core machines)")
    parser.add_argument("--device", default="cpu", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--quick", action="store_true", help="1 seed, 12 facts, arms no-replay, uniform-0.1, "
                                                             "defaults, forward order only")
    parser.add_argument("--keep", action="store_true", help="keep the arms' model directories (with --work-dir)")
    parser.add_argument("--work-dir", help="where models and data go (default: a temporary directory)")
    parser.add_argument("--verbose", action="store_true", help="show each session's own printout")
    parser.add_argument("--json-out", help="also write the figures to this JSON file")
    args = parser.parse_args(argv)
    if args.quick:
        args.seeds, args.facts, args.reversed = args.seeds[:1], min(args.facts, 12), False
        args.arms = args.arms or ["no-replay", "uniform-0.1", "defaults"]
    if args.base == "real":  # the product's own rate, epochs, batch and length: the scratch protocol's are unused
        args.arms = args.arms or ["defaults"]
        args.epochs = args.learning_rate = args.batch_size = args.size = args.vocab_size = None
        args.pretrain_records = args.pretrain_epochs = args.pretrain_learning_rate = None
    import torch

    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    with contextlib.ExitStack() as stack:
        if args.work_dir is None:
            args.work_dir = stack.enter_context(tempfile.TemporaryDirectory(prefix="mtn-sails-forgetting-"))
        Path(args.work_dir).mkdir(parents=True, exist_ok=True)
        result = run(args)
    result.update({"date": datetime.date.today().isoformat(), "machine": machine("torch"),
                   "settings": {k: v for k, v in vars(args).items() if k not in ("json_out", "verbose", "work_dir")},
                   "wall_s": round(time.perf_counter() - started, 1)})
    print("\nTuning half:\n" + markdown(result, "tune") + "\n\nTest half:\n" + markdown(result, "test"))
    m = result["machine"]
    print(f"\nmachine: {m['nproc']} CPUs, {m['cpu']}, device {m['device']}, torch {m['torch']}, "
          f"{args.threads} thread(s); {result['wall_s']} s in all")
    write_json(args.json_out, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
