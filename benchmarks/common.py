"""What every benchmark shares: where it ran, matmul peaks, interleaved rounds, arm statistics, its JSON.

Scripts run as `python benchmarks/NAME.py` from the repository root, which puts benchmarks/ first on
sys.path, so `import common` works; this module then puts the checkout itself on sys.path (see below).
Imports nothing heavy at module level: validate_speed and tokenize_scale time processes without torch.
"""
from __future__ import annotations

import contextlib
import datetime
import importlib
import io
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Sequence

REPO = Path(__file__).resolve().parents[1]
LLAMA_CPP_SITE = REPO / ".cache" / "llama_cpp" / "site"  # llama-cpp-python, built by _llama_cpp.py
# The one sys.path change of the benchmarks. The checkout goes right after benchmarks/: its mtn_sails (the
# venv's editable install may point at another checkout) and tools/. tests/ goes last: the model builders
# some benchmarks share with the tests (web_model, model_families, chromium), behind every installed package;
# then the benchmarks' own build of llama-cpp-python (behind the venv, so never a second numpy).
for _folder, _where in ((REPO, 1), (REPO / "tests", len(sys.path) + 1), (LLAMA_CPP_SITE, len(sys.path) + 2)):
    if str(_folder) not in sys.path:
        sys.path.insert(_where, str(_folder))

FIXTURES = REPO / "tests" / "fixtures"
PAIRS_FILE = FIXTURES / "alpaca_en_demo.json"  # 999 Alpaca records
TEXT_FILE = FIXTURES / "c4_demo.jsonl"  # 300 web documents
N_POSITIONS = 1024  # distilgpt2's, for every shape
GPT2_SHAPES = {  # GPT2Config fields
    "distilgpt2": dict(n_layer=6, n_embd=768, n_head=12),
    "small": dict(n_layer=4, n_embd=256, n_head=4),  # --scratch-size small
    "tiny": dict(n_layer=2, n_embd=64, n_head=4),  # tests
}
GENERATION_SHAPE = dict(**GPT2_SHAPES["distilgpt2"], vocab_size=50257, n_positions=N_POSITIONS)  # distilgpt2's
# General questions the real base answers right, greedy (the key word is in its reply), held out from session 0's
# bundled prompts (a test checks it): what the base keeps in real_base_sessions.py is not what session 0 replays or
# probes, and int8_forms.py reports on prompts its gate never saw.
GENERAL = [("What is the capital of Greece?", "Athens"), ("What is the capital of Sweden?", "Stockholm"),
           ("What is the capital of Norway?", "Oslo"), ("What is the capital of Poland?", "Warsaw"),
           ("What is the capital of Ireland?", "Dublin"), ("What is the capital of Thailand?", "Bangkok"),
           ("What is the capital of South Korea?", "Seoul"), ("What is the capital of Austria?", "Vienna"),
           ("What is the capital of Cuba?", "Havana"), ("What is the chemical symbol for silver?", "Ag"),
           ("What is the chemical symbol for potassium?", "K"), ("Who wrote Hamlet?", "Shakespeare"),
           ("How many days are in a year?", "365"), ("What do bees collect from flowers?", "nectar"),
           ("What language is spoken in Portugal?", "Portuguese"),
           ("What is the currency of Europe's euro zone called?", "euro")]


def script_parser(doc: str, epilog: bool = False):
    """A benchmark's argument parser: its docstring's first paragraph as the description (and with `epilog`, the
    second, its commands, after the options), laid out as written."""
    import argparse

    paragraphs = doc.split("\n\n")
    return argparse.ArgumentParser(description=paragraphs[0], epilog=paragraphs[1] if epilog else None,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)


# ------------------------------------------------------------------------------------------- the machine


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (or what platform knows)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


VECTOR_EXTENSIONS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16", "amx_int8")


def vector_extensions() -> list[str]:
    """The CPU's vector extensions that change which kernels run (int8 dot products, bf16, AMX)."""
    try:
        flags = set(next(line for line in Path("/proc/cpuinfo").read_text().splitlines()
                         if line.startswith("flags")).split(":", 1)[1].split())
    except (OSError, StopIteration):
        return []
    return [name for name in VECTOR_EXTENSIONS if name in flags]


def load_average() -> list[float]:
    """The 1, 5 and 15 minute load averages (other jobs on a shared machine disturb timings)."""
    return list(os.getloadavg())


def machine(*libraries: str) -> dict:
    """What the numbers were measured on; with "torch" among `libraries`, its threads and device too."""
    import psutil

    found: dict[str, Any] = {"nproc": os.cpu_count(), "physical_cores": psutil.cpu_count(logical=False),
                             "cpu": cpu_model(), "vector_extensions": vector_extensions(), "ram_gib": round(psutil.virtual_memory().total / 2**30, 1),
                             "python": platform.python_version(), "date": datetime.date.today().isoformat(),
                             "load_average_at_start": load_average()}
    for name in libraries:
        found[name] = importlib.import_module(name).__version__
    if "torch" in libraries:
        import torch

        found["torch_threads"] = torch.get_num_threads()
        found["device"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    return found


def peak_rss_bytes(children: bool = False) -> int:
    """The kernel's peak resident memory of this process (or of its waited-for children), in bytes."""
    import resource

    status = Path("/proc/self/status")
    if not children and status.exists():  # VmHWM starts afresh at exec; ru_maxrss keeps the parent's peak
        return next(int(line.split()[1]) * 1024 for line in status.read_text().splitlines()
                    if line.startswith("VmHWM:"))
    usage = resource.getrusage(resource.RUSAGE_CHILDREN if children else resource.RUSAGE_SELF)
    return usage.ru_maxrss * 1024  # KiB on Linux


# ------------------------------------------------------------------------------------------------ peaks


def matmul_peak_flops(sizes: Sequence[int], repeats: int = 3, dtype: str = "float32") -> float:
    """Best FLOP/s of torch.matmul on square n x n matrices of `dtype` (2 n^3 FLOPs each), over sizes and
    repeats."""
    import torch

    best = 0.0
    kind = getattr(torch, dtype)
    for n in sizes:
        a, b = torch.randn(n, n, dtype=kind), torch.randn(n, n, dtype=kind)
        torch.matmul(a, b)  # warm-up
        for _ in range(repeats):
            started = time.perf_counter()
            torch.matmul(a, b)
            best = max(best, 2 * n**3 / (time.perf_counter() - started))
    return best


def peak_sizes(shape: str) -> tuple[int, int]:
    """Matrix sizes of the matmul peak: large ones, smaller for the tests' tiny shape."""
    return (512, 1024) if shape == "tiny" else (2048, 4096)


def nominal_peak() -> dict:
    """The CPU's nominal fp32 peak: physical cores x FLOPs per cycle (from the vector units its flags and
    family imply) x the clock /proc/cpuinfo reports (under a hypervisor, the nominal clock, not the boost)."""
    import psutil

    info: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            info.setdefault(key.strip(), value.strip())
    except OSError:
        return {"gflops": None, "basis": "no /proc/cpuinfo"}
    flags = set(info.get("flags", "").split())
    family = int(info.get("cpu family", "0") or 0)
    amd = info.get("vendor_id") == "AuthenticAMD"
    if amd and family in (25, 26):  # Zen 3/4 run AVX-512 as two 256-bit halves; Zen 5 (family 26) has 512-bit pipes
        per_cycle, units = (64, "2 x 512-bit FMA") if family == 26 else (32, "2 x 256-bit FMA (Zen 3/4)")
    elif "avx512f" in flags:
        per_cycle, units = 64, "2 x 512-bit FMA (Xeon with two AVX-512 units)"
    elif "fma" in flags:
        per_cycle, units = 32, "2 x 256-bit FMA"
    else:
        per_cycle, units = 16, "2 x 128-bit multiply-add"
    cores = psutil.cpu_count(logical=False) or os.cpu_count() or 1
    mhz = float(info.get("cpu MHz", "0") or 0)
    return {"gflops": round(cores * per_cycle * mhz / 1e3, 1), "cores": cores, "fp32_flops_per_cycle": per_cycle,
            "vector_units": units, "clock_mhz": mhz,
            "basis": f"{cores} cores x {per_cycle} fp32 FLOPs/cycle ({units}) x {mhz:.0f} MHz (/proc/cpuinfo)"}


def non_embedding_params(model) -> int:
    """A causal LM's parameters outside its token (and GPT-2's position) embeddings: the 6 N of training FLOPs
    per token (an output layer tied to the token embeddings counted in neither)."""
    positions = getattr(getattr(model, "transformer", None), "wpe", None)
    embeddings = model.get_input_embeddings().weight.numel() + (positions.weight.numel() if positions else 0)
    return sum(p.numel() for p in model.parameters()) - embeddings


# ----------------------------------------------------------------------------------------------- rounds


def round_order(arms: Sequence[str], index: int) -> list[str]:
    """The arms of round `index` (from 0) rotated by it, so each arm starts a round in turn."""
    shift = index % len(arms)
    return [*arms[shift:], *arms[:shift]]


def interleaved_rounds(arms: dict[str, Callable[[], dict]], rounds: int, rotate: bool = True,
                       on_result: Callable[[int, str, dict], None] | None = None) -> list[dict]:
    """Every arm once per round, the order rotated between rounds when `rotate`; per round each arm's
    result, the order and the load average at both ends (a noisy minute then hits every arm alike)."""
    done = []
    for index in range(rounds):
        order = round_order(list(arms), index) if rotate else list(arms)
        load_before = load_average()
        found: dict[str, Any] = {}
        for name in order:
            found[name] = arms[name]()
            if on_result:
                on_result(index, name, found[name])
        done.append({**found, "order": order, "load_average": [load_before, load_average()]})
    return done


# ------------------------------------------------------------------------------------------- statistics


def arm_statistics(values: Sequence[float], higher_is_better: bool = True, digits: int | None = None) -> dict:
    """Median and best of one arm's rounds, and every round."""
    rounded = [round(v, digits) if digits is not None else v for v in values]
    best = max(values) if higher_is_better else min(values)
    median = statistics.median(values)
    return {"median": round(median, digits) if digits is not None else median,
            "best": round(best, digits) if digits is not None else best, "rounds": rounded}


def median_row(rows: Sequence[dict], key: str) -> dict:
    """The row of the median `key` (the lower middle of an even count: a row that was measured)."""
    return sorted(rows, key=lambda row: row[key])[(len(rows) - 1) // 2]


def ratio_statistics(numerators: Sequence[float], denominators: Sequence[float], digits: int = 2) -> dict:
    """Per round numerator / denominator (a round shares its disturbance), median and best of them."""
    return arm_statistics([n / d for n, d in zip(numerators, denominators)], digits=digits)


# -------------------------------------------------------------------------------- models, sessions, JSON


def build_generation_model(directory: Path) -> None:
    """The distilgpt2-shaped model with random weights and a scratch tokenizer, as training saves it."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    from mtn_sails.data.template import PromptTemplate
    from mtn_sails.training.scratch import train_tokenizer

    words = "the sails catch the wind and the boat moves over the sea while the crew trims the ropes".split()
    tokenizer = train_tokenizer([" ".join(words[i:] + words[:i]) for i in range(len(words))] * 20, 1000)
    config = GPT2Config(**GENERATION_SHAPE, bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id,
                        pad_token_id=tokenizer.eos_token_id)
    torch.manual_seed(0)
    GPT2LMHeadModel(config).save_pretrained(directory, safe_serialization=True)
    tokenizer.save_pretrained(directory)
    PromptTemplate().save(directory)


def quiet_session(config, verbose: bool = False) -> dict:
    """One real training session (mtn_sails.training.session.train); its history entry, its printout only if verbose."""
    from mtn_sails.training.session import train

    sink = contextlib.nullcontext() if verbose else contextlib.redirect_stdout(io.StringIO())
    with sink:
        return train(config).session


def write_json(path: str | Path | None, report: dict, indent: int = 2) -> None:
    """Write a report as indented JSON when a path was given, atomically (a reader never sees half a file)."""
    if not path:
        return
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            out.write(json.dumps(report, indent=indent) + "\n")
        os.replace(temporary, target)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def replay_share(entry: dict) -> float:
    """Replayed examples as a share of every example a session trained on (its history entry)."""
    replayed = entry.get("replayed_examples") or 0
    total = entry["train_examples"] * entry["epochs"] + replayed
    return round(replayed / total, 4) if total else 0.0


def general_right(model, tokenizer) -> list[bool]:
    """Per GENERAL question, whether the chat path's greedy reply (apply_chat_template, generate) holds its key word."""
    from tools.real_base import chat_answer

    return [key.lower() in chat_answer(model, tokenizer, question, 24).lower() for question, key in GENERAL]
