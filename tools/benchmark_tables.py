"""BENCHMARKS.md's generated tables: each block between `<!-- table NAME -->` and `<!-- /table -->` is rendered from
committed results JSON, so a quoted figure cannot drift from the run it came from (tests/test_benchmarks.py checks).

    python tools/benchmark_tables.py           # rewrite every block from benchmarks/results/
    python tools/benchmark_tables.py --check   # exit 1, naming each block that differs from its JSON
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
BENCHMARKS_MD = REPO / "BENCHMARKS.md"
BLOCK = re.compile(r"(<!-- table (?P<name>[\w-]+) -->\n)(?P<body>.*?)(<!-- /table -->)", re.DOTALL)
SCHEDULE_RUNS = ("real_base_sessions.json", "real_base_sessions_seed23_linear.json",
                 "real_base_sessions_seed11_constant.json", "real_base_sessions_seed11_linear.json")
INTERPOLATION_RUNS = ("real_base_sessions_seed11_constant.json", "real_base_sessions_seed11_auto.json",
                      "real_base_sessions.json", "real_base_sessions_seed23_auto.json")
NULL_SPACE_RUNS = ("real_base_sessions.json", "real_base_sessions_seed23_null_space.json")
LATER_BATCH4_RUNS = ("real_base_sessions.json", "real_base_sessions_seed23_repeat.json",
                     "real_base_sessions_seed23_later_batch4.json", "real_base_sessions_seed31_defaults.json",
                     "real_base_sessions_seed31_later_batch4.json", "real_base_sessions_seed47_defaults.json",
                     "real_base_sessions_seed47_later_batch4.json")
REPLAY_BASE_RUNS = ("real_base_sessions_seed11_constant.json", "real_base_sessions_seed11_replay_base_first.json",
                    "real_base_sessions.json", "real_base_sessions_seed23_repeat.json",
                    "real_base_sessions_seed23_replay_base_first.json")


def result(name: str) -> dict:
    """One committed results JSON."""
    return json.loads((RESULTS / name).read_text(encoding="utf-8"))


def markdown(header: list[str], rows: list[list[str]]) -> str:
    """A markdown table, one line per row, ending in a newline."""
    lines = [header, ["---"] * len(header), *rows]
    return "".join("| " + " | ".join(cells) + " |\n" for cells in lines)


def share(value: float | None) -> str:
    """A share to two decimals, or a dash where there is none."""
    return "—" if value is None else f"{value:.2f}"


def rate(value: float) -> str:
    """A learning rate as the guide writes it: 5e-5."""
    mantissa, exponent = f"{value:.0e}".split("e")
    return f"{mantissa}e{int(exponent)}"


def stopped(row: dict) -> str:
    """Epochs and why the session stopped, as `17 (recalled)`."""
    return f"{row['epochs']:g} ({row['stopped']})"


def sessions_table(name: str) -> str:
    """real_base_sessions.py's run: one row per session, every earlier session's recall after it."""
    rows = [[str(row["session"]), rate(row["learning_rate"]), stopped(row), str(row["steps"]),
             share(row["recall_now"][-1]), " / ".join(share(kept) for kept in row["recall_now"][:-1]) or "—",
             share(row["base_kept"]), share(row["general_kept"]), f"{row['replay_share']:.3f}", f"{row['seconds']:.1f}"]
            for row in result(name)["sessions"]]
    return markdown(["session", "rate", "epochs (why it stopped)", "steps", "its recall", "earlier sessions now",
                     "base kept", "general kept", "replay", "s"], rows)


def schedule(run: dict) -> str:
    """The learning-rate schedule a run's sessions trained with."""
    args = run["train_args"]
    return args[args.index("--lr-schedule") + 1] if "--lr-schedule" in args else "default (constant)"


def arguments(run: dict) -> str:
    """The options a run's sessions added to the defaults (those of the sessions after the first where they differ)."""
    first = f"`{' '.join(run['train_args'])}`" if run["train_args"] else "defaults"
    return first + (f", later `{' '.join(run['later_args'])}`" if "later_args" in run else "")


def arguments_and_machine(run: dict) -> str:
    """The options a run added, the CPU and the day it ran on (repeats of one setting told apart)."""
    cpu = run["machine"]["cpu"].replace("(R)", "").split(" @")[0].removesuffix(" Processor")
    return f"{arguments(run)}, {cpu}, {run['machine']['date']}"


def schedules_table(names: tuple[str, ...] = SCHEDULE_RUNS, label: Callable[[dict], str] = schedule,
                    heading: str = "schedule") -> str:
    """Runs of the same protocol side by side: each session's epochs and recall, then what the last one left."""
    rows = []
    for run in map(result, names):
        sessions = run["sessions"]
        last = sessions[-1]
        rows.append([str(run["seed"]), label(run),
                     *(f"{stopped(row)}, {share(row['recall_now'][-1])}" for row in sessions),
                     " / ".join(share(kept) for kept in last["recall_now"][:-1]), share(last["base_kept"]),
                     share(last["general_kept"]), f"{sum(row['seconds'] for row in sessions):.0f}"])
    count = len(result(names[0])["sessions"])
    return markdown(["seed", heading, *(f"session {n}: epochs (why), recall" for n in range(1, count + 1)),
                     "after the last: earlier sessions kept", "base kept", "general kept", "s, all sessions"], rows)


def arms_table(name: str, timed: bool = False) -> str:
    """One-session arms of real_base_sessions.py (a JSON of arm name to run): what each did to session 1; `timed`
    adds the replay share and the seconds (arms run one after another on a quiet machine)."""
    rows = []
    for arm, run in result(name).items():
        row = run["sessions"][0]
        rows.append([arm if arm == "defaults" else f"`{arm}`", stopped(row), share(row["recall_now"][-1]),
                     share(row["base_kept"]), share(row["general_kept"]),
                     *([f"{row['replay_share']:.3f}", f"{row['seconds']:.1f}"] if timed else [])])
    return markdown(["arm", "epochs (why)", "recall (chat path)", "base kept", "general kept",
                     *(["replay", "s"] if timed else [])], rows)


def later_arms_table(name: str) -> str:
    """real_base_sessions.py --after-first arms: sessions 2 and 3 continued from one saved first session, each arm
    with its own options for them; what session 3 left of everything."""
    rows = []
    for arm, run in result(name)["arms"].items():
        sessions, last = run["sessions"], run["sessions"][-1]
        rows.append([arm if arm == "defaults" else f"`{arm}`" if arm.startswith("--") else arm,
                     *(f"{stopped(row)}, {share(row['recall_now'][-1])}" for row in sessions),
                     " / ".join(share(kept) for kept in last["recall_now"][:-1]), share(last["base_kept"]),
                     share(last["general_kept"]), f"{sum(row['seconds'] for row in sessions):.0f}"])
    return markdown(["later sessions' options", "session 2: epochs (why), recall", "session 3: epochs (why), recall",
                     "after session 3: sessions 1 / 2 kept", "base kept", "general kept", "s, sessions 2–3"], rows)


def speed_table(name: str) -> str:
    """session_speed.py's run: per arm the median whole process and the peer's time over it."""
    run = result(name)
    mfu = run["whole_process_mfu"]
    peers = [(key, key.split("_")[0]) for key in ("trl_over", "recipe_over") if run.get(key)]
    rows = []
    for arm, median in run["median"].items():
        own = median.get("session_s", median.get("train_runtime_s"))
        ratios = [f"{run[key][arm]['median']:.2f}x ({run[key][arm]['best']:.2f}x)" if arm in run[key] else "—"
                  for key, _ in peers]
        share_ = f"{median['train_share']:.0%}" if "train_share" in median else "—"
        rows.append([arm, f"{median['process_s']:.1f}", f"{own:.1f}", share_, f"{median['peak_rss_mb']:,.0f} MB",
                     f"{median['train_loss']:.2f}", *ratios,
                     f"{mfu[arm]['mfu']:.1%} of {mfu[arm]['precision']}" if arm in mfu else "—"])
    return markdown(["arm", "process s", "session s (TRL: train_runtime)", "training steps' share", "peak RSS",
                     "training loss", *(f"{peer} s ÷ arm s (median, best)" for _, peer in peers),
                     "whole-process MFU"], rows)


def generation_table(run: dict) -> str:
    """llama_cpp_speed.py's run: per arm decode speed, its ratio to each llama.cpp arm, first-token times, memory."""
    lengths = run["settings"]["prompt_tokens"]
    short, long_ = sorted(lengths, key=int)
    peers = [arm for arm in run["arms"] if arm.startswith("llama.cpp")]
    rows = []
    for arm, row in run["arms"].items():
        decode = row[f"decode_tokens_per_s_{short}"]
        rows.append([arm, f"{row['model_mb']} MB", f"{decode['median']} ({decode['best']})",
                     *(f"{row['decode_vs'][peer]:.2f}x" for peer in peers),
                     f"{row[f'first_token_s_{short}']['median']:.3f} s", f"{row[f'first_token_s_{long_}']['median']:.3f} s",
                     f"{row['peak_rss_mb']:,} MB", f"{row['same_tokens_as_fp32']}/{run['settings']['new_tokens']}"])
    return markdown(["arm", "file", f"decode tokens/s after {lengths[short]} prompt tokens (median, best)",
                     *(f"vs {peer.split(' (')[0]}" for peer in peers), f"first token, {lengths[short]}-token prompt",
                     f"first token, {lengths[long_]}-token prompt", "peak RSS", "greedy tokens as fp32's"], rows)


def int8_forms_table(run: dict) -> str:
    """int8_forms.py's run: per form its file, agreement with fp32 on the gate and held-out prompts, speed."""
    facts = run.get("facts")
    starts = any("gate_starts_as_fp32" in row for row in run["forms"].values())  # runs since the answer gate
    rows = []
    for form, row in sorted(run["forms"].items(), key=lambda item: item[0] != "fp32"):
        measured = "gate_agreement" in row
        trained = [row.get("facts_as_fp32", f"{facts['fp32_as_trained']}/{facts['count']} as trained")] if facts else []
        rows.append([form, f"{row['mb']} MB", f"{row['gate_agreement']:.3f}" if measured else "—",
                     f"{row['held_out_agreement']:.3f}" if measured else "—",
                     *([row.get("gate_starts_as_fp32", "—"), row.get("held_out_starts_as_fp32", "—")] if starts else []),
                     row.get("answers_as_fp32", "—"), *trained, f"{row['decode_tokens_per_s']['median']}", f"{row['vs_fp32']:.2f}x"])
    return markdown(["form", "file", "agreement, gate prompts", "agreement, held-out questions",
                     *(["gate answers starting as fp32's", "held-out answers starting as fp32's"] if starts else []),
                     "held-out answers word for word as fp32's", *(["trained facts as fp32's"] if facts else []),
                     "decode tokens/s (median)", "vs fp32"], rows)


def train_rounds_table(run: dict) -> str:
    """train_speed.py's rounds: per round each arm's real tokens/s and padding, the ratio; the median round last."""
    def cells(arms: dict) -> list[str]:
        plain, sails = arms["pairs/plain"], arms["pairs/sails"]
        return [f"{plain['real_tokens_per_s']:.1f} ({plain['padding_fraction']:.1%})",
                f"{sails['real_tokens_per_s']:.1f} ({sails['padding_fraction']:.1%}, {sails['mean_padded_length']:.0f})",
                f"{sails['mfu_with_lm_head']:.1%}"]

    ratios = run["ratios"]["pairs_sails_over_plain_rounds"]
    rows = [[str(r["round"]), *cells(r["arms"]), f"{ratio:.2f}x"] for r, ratio in zip(run["rounds"], ratios)]
    rows.append(["**median**", *cells(run["arms"]), f"**{run['ratios']['pairs_sails_over_plain']:.2f}x**"])
    return markdown(["round", "recipe real tokens/s (padding)", "mtn_sails real tokens/s (padding, mean padded length)",
                     "mtn_sails MFU, output layer at every real token", "ratio"], rows)


def forgetting_table(run: dict, half: str = "test") -> str:
    """forgetting.py's arms on one half of the facts: mean (lowest) kept, recall, the base's rows, replay."""
    def cell(stat: dict) -> str:
        return "—" if stat["mean"] is None else f"{stat['mean']:.2f} ({stat['min']:.2f})"

    rows = [[name, cell(s["first_kept"]), cell(s["second_kept"]), cell(s["last_recall"]), cell(s["base_kept"]),
             cell(s["general_kept"]), f"{s['replay_share_max']:.3f}", f"{s['seconds_per_session']['mean']:.0f}",
             "yes" if s["meets_goal"] else "no"]
            for name, s in run["summaries"][half].items()]
    return markdown(["arm", "s1 kept", "s2 kept", "s3 recall", "base kept", "general kept", "replay (most)",
                     "s / continued session", "goal"], rows)


TABLES: dict[str, Callable[[], str]] = {
    "int8_forms": lambda: int8_forms_table(result("int8_forms.json")),
    "int8_forms_trained": lambda: int8_forms_table(result("int8_forms_trained.json")),
    "llama_cpp_speed": lambda: generation_table(result("llama_cpp_speed.json")),
    "llama_cpp_speed_epyc": lambda: generation_table(result("llama_cpp_speed_epyc.json")),
    "int8_forms_fused": lambda: int8_forms_table(result("int8_forms_fused.json")),
    "int8_forms_fused_trained": lambda: int8_forms_table(result("int8_forms_fused_trained.json")),
    "llama_cpp_speed_fused": lambda: generation_table(result("llama_cpp_speed_fused.json")),
    "llama_cpp_speed_in_place": lambda: generation_table(result("llama_cpp_speed_in_place.json")),
    "llama_cpp_speed_last_logits": lambda: generation_table(result("llama_cpp_speed_last_logits.json")),
    "real_base_sessions": lambda: sessions_table("real_base_sessions.json"),
    "real_base_schedules": schedules_table,
    "real_base_interpolation": lambda: schedules_table(INTERPOLATION_RUNS, arguments, "options"),
    "real_base_levers_decisive": lambda: arms_table("real_base_levers_decisive_seed11.json"),
    "real_base_lora_seed11": lambda: sessions_table("real_base_lora2e-4_seed11.json"),
    "real_base_levers_replay_base": lambda: arms_table("real_base_levers_replay_base_seed11.json", timed=True),
    "real_base_levers_epyc": lambda: arms_table("real_base_levers_epyc_seed11.json", timed=True),
    "real_base_levers_nearest": lambda: arms_table("real_base_levers_nearest_seed11.json"),
    "real_base_levers_null_space": lambda: arms_table("real_base_levers_null_space_seed11.json", timed=True),
    "real_base_null_space_sessions": lambda: sessions_table("real_base_sessions_seed23_null_space.json"),
    "real_base_null_space_held_out": lambda: schedules_table(NULL_SPACE_RUNS, arguments_and_machine,
                                                             "options, machine, day"),
    "real_base_null_space_seed31": lambda: schedules_table(("real_base_sessions_seed31_session1.json",
                                                            "real_base_sessions_seed31_session1_null_space.json"),
                                                           arguments_and_machine, "options, machine, day"),
    "real_base_null_space_sessions_seed31": lambda: sessions_table("real_base_sessions_seed31_null_space.json"),
    "real_base_null_space_held_out_seed31": lambda: schedules_table(("real_base_sessions_seed31_defaults.json",
                                                                 "real_base_sessions_seed31_null_space.json"),
                                                                arguments_and_machine, "options, machine, day"),
    "real_base_later_arms_seed11": lambda: later_arms_table("real_base_later_arms_seed11.json"),
    "real_base_later_batch4_held_out": lambda: schedules_table(LATER_BATCH4_RUNS, arguments_and_machine,
                                                               "options, machine, day"),
    "real_base_replay_base": lambda: schedules_table(REPLAY_BASE_RUNS, arguments_and_machine, "options, machine, day"),
    "session_speed_real_base": lambda: speed_table("session_speed_real_base.json"),
    "session_speed_real_base_avx2": lambda: speed_table("session_speed_real_base_avx2.json"),
    "train_speed_real_base": lambda: train_rounds_table(result("train_speed_real_base.json")),
    "forgetting_real_base": lambda: forgetting_table(result("forgetting_real_base.json")),
    "forgetting_real_base_seed11": lambda: forgetting_table(result("forgetting_real_base_seed11.json")),
}


def rendered(text: str) -> str:
    """`text` with every table block rendered afresh from its JSON (a block with an unknown name is an error)."""
    def render(match: re.Match) -> str:
        name = match["name"]
        if name not in TABLES:
            raise SystemExit(f"BENCHMARKS.md names a table no renderer has: {name}")
        return match.group(1) + TABLES[name]() + match.group(4)

    return BLOCK.sub(render, text)


def stale_blocks(text: str) -> list[str]:
    """Names of the blocks in `text` whose figures differ from their JSON."""
    fresh = {match["name"]: match["body"] for match in BLOCK.finditer(rendered(text))}
    return [match["name"] for match in BLOCK.finditer(text) if fresh[match["name"]] != match["body"]]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 if a block differs")
    args = parser.parse_args()
    text = BENCHMARKS_MD.read_text(encoding="utf-8")
    if args.check:
        stale = stale_blocks(text)
        for name in stale:
            print(f"BENCHMARKS.md table {name} differs from its JSON: run python tools/benchmark_tables.py",
                  file=sys.stderr)
        return 1 if stale else 0
    BENCHMARKS_MD.write_text(rendered(text), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
