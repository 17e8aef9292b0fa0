"""The benchmark scripts keep running: the training-speed scripts, session_speed.py and cpu_threads.py in their
smallest forms, run.py's bookkeeping; and they share one helpers module, import no other script, and leave the
product as it is (no monkeypatching)."""
from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import load_benchmark

REPO = Path(__file__).resolve().parents[1]
BENCHMARKS = REPO / "benchmarks"
SCRIPTS = sorted(BENCHMARKS.glob("*.py"))
COMMON = BENCHMARKS / "common.py"  # the one module allowed to change sys.path
TINY = ["--model-shape", "tiny", "--max-length", "64", "--limit-records", "48", "--vocab-size", "500"]


def _run(script: str, *args: str, timeout: int = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(BENCHMARKS / script), *args], cwd=REPO, capture_output=True,
                          text=True, timeout=timeout)


@pytest.mark.slow
def test_train_speed_smallest_form_writes_its_figures(tmp_path):
    out = tmp_path / "train_speed.json"
    done = _run("train_speed.py", *TINY, "--steps", "2", "--text-steps", "2", "--json-out", str(out))
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["model"]["shape"] == "tiny" and report["model"]["vocab_size"] > 256
    assert report["peak_fp32_matmul_gflops"] > 0
    assert set(report["arms"]) == {"pairs/plain", "pairs/sails", "text/plain", "text/sails"}
    for arm in report["arms"].values():
        assert arm["steps"] == 2
        assert 0 < arm["real_tokens"] <= arm["padded_tokens"]
        for key in ("real_tokens_per_s", "padding_fraction", "mfu", "mfu_with_lm_head", "train_runtime_s"):
            assert arm[key] is not None
        assert set(arm["startup"]) == {"tokenise_s", "to_first_step_s"}
    assert report["arms"]["pairs/plain"]["padded_tokens"] == 2 * 8 * 64  # padded to max_length, every step
    assert report["arms"]["text/sails"]["padding_fraction"] == 0  # packed blocks
    assert set(report["ratios"]) == {"pairs_sails_over_plain", "text_sails_over_plain"}


@pytest.mark.slow
def test_train_speed_rounds_feed_the_products_own_batches_in_order(tmp_path):
    out = tmp_path / "train_speed.json"
    done = _run("train_speed.py", *TINY, "--phases", "pairs", "--rounds", "2", "--round-batches", "2",
                "--json-out", str(out))
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(out.read_text())
    assert [r["first_turn"] for r in report["rounds"]] == ["pairs/plain", "pairs/sails"]  # the starter alternates
    assert all(arm["steps"] == 2 for r in report["rounds"] for arm in r["arms"].values())
    assert len(report["ratios"]["pairs_sails_over_plain_rounds"]) == 2


@pytest.mark.slow
def test_train_levers_and_overheads_smallest_forms_write_their_figures(tmp_path):
    levers, overheads = tmp_path / "levers.json", tmp_path / "overheads.json"
    done = _run("train_levers.py", *TINY, "--steps", "2", "--json-out", str(levers))
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(levers.read_text())
    assert set(report["arms"]) == {"levers/sails", "levers/sails+unfused", "levers/sails+bf16",
                                   "levers/sails+full-logits"}
    assert all(arm["steps"] == 2 and arm["real_tokens"] > 0 for arm in report["arms"].values())
    assert set(report["ratios"]) == {"unfused_over_sails", "bf16_over_sails", "full-logits_over_sails"}
    done = _run("train_overheads.py", *TINY, "--steps", "2", "--json-out", str(overheads))
    assert done.returncode == 0, done.stderr[-3000:]
    assert {"eval_s", "checkpoint_s", "share_of_epoch"} <= set(json.loads(overheads.read_text())["overheads"])


@pytest.mark.slow
def test_session_speed_quick_form_times_whole_processes_of_every_program(tmp_path):
    out = tmp_path / "session_speed.json"
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "session_speed.py"), "--quick", "--arms", "trl",
                           "recipe", "sails", "sails+bf16", "sails+continuing", "--json-out", str(out)], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads(out.read_text())
    [round_] = report["rounds"]
    assert set(round_) - {"order", "load_average"} == {"trl", "recipe", "sails", "sails+bf16", "sails+continuing"}
    assert round_["sails+bf16"]["precision"] == "bf16"
    assert round_["sails"]["precision"] == "fp32"  # the quick form's 64-wide model: auto keeps fp32
    for arm in ("trl", "recipe", "sails"):
        assert round_[arm]["process_s"] > 0 and round_[arm]["peak_rss_mb"] > 0 and round_[arm]["train_loss"] > 0
    assert 0 < round_["sails"]["session_s"] < round_["sails"]["process_s"]  # the rest is start-up and exit
    continuing = round_["sails+continuing"]  # a second session: it continues the first and asks no session 0
    assert 0 < continuing["train_share"] < 1 and "session_0" not in {
        phase for phase, seconds in continuing["phase_s"].items() if seconds >= 0.5}
    mfu = report["whole_process_mfu"]
    assert mfu["recipe"]["examples"] == mfu["trl"]["examples"] == 16 and mfu["sails"]["examples"] < 16  # held out
    for arm in ("trl", "sails"):  # their loss scores the answers, not the prompts
        assert mfu[arm]["scored"] < mfu[arm]["tokens"]
    assert all(0 < mfu[arm]["mfu"] < 1 for arm in round_ if arm not in ("order", "load_average", "sails+continuing"))
    assert set(report["recipe_over"]) == set(report["trl_over"]) == {"sails", "sails+bf16", "sails+continuing"}


@pytest.mark.slow
def test_cpu_threads_smallest_form_times_every_setting_in_its_own_process(tmp_path):
    out = tmp_path / "cpu_threads.json"
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "cpu_threads.py"), "--model-shape", "small",
                           "--seq", "16", "--steps", "2", "--rounds", "1", "--busy", "0", "--json-out", str(out)],
                          cwd=REPO, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(out.read_text())
    settings = {(row["threads"], row["precision"]) for row in report["rows"]}
    assert {(report["machine"]["torch_threads"], "fp32"), (1, "bf16")} <= settings
    for row in report["rows"]:
        assert len(row["step_s"]) == 1 and row["tokens_per_s"] > 0  # the warm-up step is left out
    default_fp32 = [row for row in report["rows"] if row["threads"] == report["machine"]["torch_threads"]
                    and row["precision"] == "fp32"]
    assert default_fp32[0]["vs_default_fp32_same_load"] == 1.0


def test_run_flattens_figures_and_lists_every_script(monkeypatch):
    run = load_benchmark("run", monkeypatch)
    figures: dict = {}
    run.flatten({"a": {"b": 1.5, "ok": True, "name": "x"}, "rows": [{"loss": 2}], "machine": {"nproc": 2}},
                "bench", figures)
    assert figures == {"bench.a.b": 1.5, "bench.a.ok": True, "bench.rows.0.loss": 2}
    scripts = {p.stem for p in (REPO / "benchmarks").glob("*.py") if not p.stem.startswith("_")  # helpers
               and 'if __name__ == "__main__":' in p.read_text(encoding="utf-8")} - {"run"}
    assert set(run.discover()) == scripts
    assert {"train_speed", "train_levers", "train_overheads", "train_startup", "tokenize_scale",
            "cpu_threads"} <= scripts


# ------------------------------------------------------------------------------------ how the scripts are built


def _is_script(path: Path) -> bool:
    return 'if __name__ == "__main__":' in path.read_text(encoding="utf-8")


def _trees(path: Path) -> list[ast.Module]:
    """The script's syntax tree, and those of the Python programs it holds as strings (run with `python -c`)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    trees = [tree]
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and "mtn_sails" in node.value \
                and "\n" in node.value:
            try:
                trees.append(ast.parse(node.value))
            except SyntaxError:
                pass
    return trees


def _is_sys_path(node: ast.AST) -> bool:
    return isinstance(node, ast.Attribute) and node.attr == "path" and isinstance(node.value, ast.Name) \
        and node.value.id == "sys"


def _sys_path_changes(tree: ast.Module) -> list[int]:
    """Lines that change sys.path: a call of one of its methods, or an assignment to it or a slice of it."""
    lines = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and _is_sys_path(node.func.value):
            lines.append(node.lineno)
        elif isinstance(node, (ast.Assign, ast.AugAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if any(_is_sys_path(t) or (isinstance(t, ast.Subscript) and _is_sys_path(t.value)) for t in targets):
                lines.append(node.lineno)
    return sorted(lines)


def _product_names(tree: ast.Module) -> set[str]:
    """Names the module binds to mtn_sails modules or objects by importing them."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "mtn_sails":
            names |= {alias.asname or alias.name for alias in node.names}
        elif isinstance(node, ast.Import):
            names |= {alias.asname or alias.name.split(".")[0] for alias in node.names
                      if alias.name.split(".")[0] == "mtn_sails"}
    return names


def _base_name(node: ast.AST) -> str | None:
    while isinstance(node, (ast.Attribute, ast.Subscript)):
        node = node.value
    return node.id if isinstance(node, ast.Name) else None


def _monkeypatches(tree: ast.Module) -> list[int]:
    """Lines that assign an attribute of something imported from mtn_sails, directly or through setattr."""
    product = _product_names(tree)
    lines = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.ctx, (ast.Store, ast.Del)) \
                and _base_name(node) in product:
            lines.append(node.lineno)
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("setattr", "delattr") \
                and node.args and _base_name(node.args[0]) in product:
            lines.append(node.lineno)
    return sorted(lines)


def test_benchmarks_change_sys_path_in_one_place_only():
    changes = {path.name: lines for path in SCRIPTS for tree in _trees(path) if (lines := _sys_path_changes(tree))}
    assert set(changes) <= {COMMON.name}, changes
    assert len(changes.get(COMMON.name, [])) <= 1, changes


def test_no_benchmark_defines_its_own_shared_helpers():
    shared = {node.name for node in ast.parse(COMMON.read_text(encoding="utf-8")).body
              if isinstance(node, ast.FunctionDef) and not node.name.startswith("_")}
    assert {"machine", "cpu_model", "matmul_peak_flops", "interleaved_rounds", "arm_statistics", "write_json"} <= shared
    offenders = [f"{path.name}: {node.name}" for path in SCRIPTS if path != COMMON
                 for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
                 if isinstance(node, ast.FunctionDef)
                 and (node.name in shared or node.name.lstrip("_").startswith(("machine", "median")))]
    assert offenders == []


def test_benchmarks_import_no_other_script():
    scripts = {path.stem for path in SCRIPTS if _is_script(path)}
    offenders = []
    for path in SCRIPTS:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            modules = [alias.name for alias in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            offenders += [f"{path.name} imports {module}" for module in modules
                          if module.removeprefix("benchmarks.") in scripts or module == "benchmarks"]
    assert offenders == []


def test_benchmarks_do_not_monkeypatch_the_product():
    offenders = {path.name: lines for path in SCRIPTS for tree in _trees(path) if (lines := _monkeypatches(tree))}
    assert offenders == {}


def test_the_monkeypatch_check_sees_an_assignment_and_a_setattr():
    patched = ast.parse("from mtn_sails.training import trainer as t\nimport mtn_sails.cli\n"
                        "t.SailsTrainer = object\nsetattr(mtn_sails.cli, 'main', print)\nx = t.run_training\n")
    assert _monkeypatches(patched) == [3, 4]
    assert _sys_path_changes(ast.parse("import sys\nsys.path.insert(0, 'x')\nsys.path[:0] = ['y']\n")) == [2, 3]


def test_the_real_base_benchmark_asks_general_questions_session_0_never_saw(monkeypatch):
    from mtn_sails.data.general_prompts import general_prompts

    bench = load_benchmark("real_base_sessions", monkeypatch)
    assert len(bench.GENERAL) >= 12 and not {question for question, _ in bench.GENERAL} & set(general_prompts())


def test_the_real_base_benchmark_gives_later_sessions_their_own_options(monkeypatch):
    bench = load_benchmark("real_base_sessions", monkeypatch)
    data, output = Path("s.json"), Path("out")
    first = bench.session_command(1, data, output, 23, ["--null-space", "0.95"], ["--null-space", "0.6"])
    later = bench.session_command(2, data, output, 23, ["--null-space", "0.95"], ["--null-space", "0.6"])
    same = bench.session_command(3, data, output, 23, ["--replay", "0.2"], None)
    assert first[first.index("--null-space") + 1] == "0.95" and "--model-name" in first
    assert later[later.index("--null-space") + 1] == "0.6" and "--model-name" not in later
    assert same[-2:] == ["--replay", "0.2"]


def test_the_forgetting_benchmark_runs_the_real_base_at_the_products_defaults(monkeypatch):
    bench = load_benchmark("forgetting", monkeypatch)
    args = bench.argparse.Namespace(base="real", device="cpu", learning_rate=2e-3, epochs=80.0, batch_size=8,
                                    max_length=64)
    assert bench.session_options(args, 5) == {"eval_split": 0, "seed": 5, "save_steps": bench.NO_CHECKPOINTS,
                                              "device": "cpu"}  # no scratch rate, epochs or length
    args.base = "scratch"
    assert bench.session_options(args, 5)["learning_rate"] == 2e-3
    sessions = [{"entry": {"train_examples": 12, "epochs": 10, "replayed_examples": 10,
                           "forgetting": [{"session": 0, "kept": 0.5}, {"session": 1, "kept": 1.0}]}}]
    kept = bench.real_base_kept(sessions, [True, False, True], [True, True, False])
    assert kept == {"base_kept": 0.5, "general_kept": 0.5, "general_now": [True, False, True],
                    "replay_share": [round(10 / 130, 4)]}
    summary = {key: {"min": 1.0} for key in ("first_kept", "second_kept", "last_recall", "base_kept")}
    assert bench.meets_real_goal({**summary, "replay_share_max": 0.08})
    assert not bench.meets_real_goal({**summary, "replay_share_max": 0.2})
    assert not bench.meets_real_goal({**summary, "base_kept": {"min": 0.9}, "replay_share_max": 0.08})


def test_the_training_speed_arms_take_the_real_base_with_its_chat_template(monkeypatch):
    arms = load_benchmark("training_arms", monkeypatch)
    model, tokenizer, template, info = arms.real_base_model()
    assert template.kind == "chat" and info["n_layer"] == model.config.num_hidden_layers == 30
    assert info["vocab_size"] == len(tokenizer) == model.config.vocab_size

# ------------------------------------------------------------------------------ BENCHMARKS.md's generated tables


def test_benchmarks_md_generated_tables_equal_the_json_they_come_from():
    from tools import benchmark_tables as tables

    text = tables.BENCHMARKS_MD.read_text(encoding="utf-8")
    assert sorted(match["name"] for match in tables.BLOCK.finditer(text)) == sorted(tables.TABLES)
    assert tables.stale_blocks(text) == [], "run python tools/benchmark_tables.py"


def test_a_figure_changed_by_hand_in_a_generated_table_is_caught():
    import re

    from tools import benchmark_tables as tables

    text = tables.rendered(tables.BENCHMARKS_MD.read_text(encoding="utf-8"))
    block = next(tables.BLOCK.finditer(text))
    body = block["body"]
    last_digit = [m.start() for m in re.finditer(r"\d", body)][-1]
    edited_body = body[:last_digit] + str((int(body[last_digit]) + 1) % 10) + body[last_digit + 1:]
    edited = text[:block.start("body")] + edited_body + text[block.end("body"):]
    assert tables.stale_blocks(edited) == [block["name"]]
