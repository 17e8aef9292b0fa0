"""Generation speed of one exported model in three runtimes, batch 1: Python onnxruntime (`generate`),
transformers.js in Node (onnxruntime-node), and transformers.js in headless Chromium (onnxruntime-web, wasm).

    python benchmarks/web_speed.py                          # distilgpt2 shape, 64 new tokens, 5 rounds
    python benchmarks/web_speed.py --quick                  # the tests' tiny model, 16 tokens, 2 rounds
    python benchmarks/web_speed.py --json-out benchmarks/results/web_speed.json

The model is generate_speed.py's distilgpt2-shaped GPT-2 (6 layers, 768 wide, vocabulary 50257,
random weights), exported with the project's exporter (--quantize) and put in a page by `mtn-sails web`.
Every runtime answers the same templated prompt, greedily, with eos held back so each decodes exactly
N tokens (Python: eos_token_id=None; transformers.js: min_new_tokens=N). Time covers the prompt pass
and the N tokens, not loading. Chromium runs twice: served cross-origin isolated as `mtn-sails web
--serve` serves it (wasm threads), and served plainly as any static host would (one thread).
Rounds are interleaved (each round runs every runtime once, after one warm-up answer each): the headline
is the median round, the best beside it.
"""
from __future__ import annotations

import functools
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from common import REPO, build_generation_model, load_average, machine, script_parser, write_json

QUESTION = "the sails catch the wind and the boat moves over the sea while the crew trims the ropes"
NODE_SCRIPT = REPO / "examples" / "node_generate.mjs"


def export_model(root: Path, quick: bool) -> Path:
    """The ONNX export (fp32 + int8) the runtimes share."""
    if quick:
        from web_model import trained_export

        return trained_export(root)[1]
    from mtn_sails.config import ExportConfig
    from mtn_sails.runtime.export import export

    trained, onnx_dir = root / "trained_model", root / "onnx_model"
    build_generation_model(trained)
    export(ExportConfig(output_dir=str(trained), onnx_output=str(onnx_dir), quantize=True))
    return onnx_dir


class PythonRuntime:
    """mtn-sails generate's decoder (onnxruntime, IO binding, one thread per physical core)."""

    name = "Python onnxruntime (mtn-sails generate)"

    def __init__(self, onnx_dir: Path, new_tokens: int) -> None:
        from mtn_sails.runtime.decoders import OnnxDecoder
        from mtn_sails.model_dir.model_files import load_tokenizer
        from mtn_sails.runtime.onnx_session import model_file, onnx_session
        from mtn_sails.data.template import PromptTemplate

        self.decoder = OnnxDecoder(onnx_session(model_file(onnx_dir)))
        self.prompt = load_tokenizer(onnx_dir, "--onnx-output").encode(PromptTemplate.load(onnx_dir).prompt(QUESTION))
        self.new_tokens = new_tokens

    def seconds(self) -> float:
        """One answer of exactly new_tokens tokens."""
        from mtn_sails.runtime.decode_loop import decode

        decoded = decode(self.decoder, self.prompt, self.new_tokens, eos_token_id=None)
        assert len(decoded.token_ids) == self.new_tokens
        return decoded.seconds


class NodeRuntime:
    """examples/node_generate.mjs: a fresh Node process per round, its second answer timed."""

    name = "transformers.js, Node (onnxruntime-node)"

    def __init__(self, onnx_dir: Path, new_tokens: int) -> None:
        self.command = ["node", str(NODE_SCRIPT), str(onnx_dir), QUESTION, "--repeat", "2",
                        "--max-new-tokens", str(new_tokens), "--min-new-tokens", str(new_tokens)]
        self.new_tokens = new_tokens
        self.load_seconds: list[float] = []

    def seconds(self) -> float:
        """The warm answer's time."""
        done = subprocess.run(self.command, cwd=REPO, capture_output=True, text=True, timeout=600, check=True)
        results = [json.loads(line) for line in done.stdout.splitlines()]
        assert results[-1]["newTokens"] == self.new_tokens, results[-1]
        self.load_seconds.append(results[-1]["loadSeconds"])
        return results[-1]["seconds"]


class PlainHandler(SimpleHTTPRequestHandler):
    """A static host without cross-origin isolation headers: the page gets one wasm thread."""

    extensions_map = {**SimpleHTTPRequestHandler.extensions_map, ".mjs": "text/javascript",
                      ".js": "text/javascript", ".wasm": "application/wasm"}

    def log_message(self, format: str, *args) -> None:  # noqa: A002
        """Quiet."""


class BrowserRuntime:
    """The page `mtn-sails web` wrote, in headless Chromium; answer() called in the page on its loaded model."""

    def __init__(self, site: Path, new_tokens: int, isolated: bool) -> None:
        from chromium import Chromium
        from mtn_sails.runtime.web import PageHandler

        handler = PageHandler if isolated else PlainHandler
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(handler, directory=str(site)))
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        started = time.perf_counter()
        self.browser = Chromium(f"http://127.0.0.1:{self.server.server_address[1]}/")
        self.browser.wait_for("window.sails && (window.sails.ready || window.sails.error)", 600)
        assert self.browser.evaluate("window.sails.error") is None, self.browser.console
        self.load_seconds = time.perf_counter() - started
        self.threads = self.browser.evaluate("document.getElementById('status').textContent").split("with ")[-1]
        self.name = f"transformers.js, Chromium wasm ({self.threads.rstrip('.')}" + (
            ", cross-origin isolated)" if isolated else ", plain static host)")
        self.new_tokens = new_tokens

    def seconds(self) -> float:
        """One answer, timed inside the page."""
        result = self.browser.evaluate(
            f"import('./sails.mjs').then(m => m.answer(window.sails.loaded, {json.dumps(QUESTION)}, "
            f"{{maxNewTokens: {self.new_tokens}, minNewTokens: {self.new_tokens}}}))", timeout=600)
        assert result["newTokens"] == self.new_tokens, result
        return result["seconds"]

    def close(self) -> None:
        """Browser and server down."""
        self.browser.close()
        self.server.shutdown()


def figures(name: str, seconds: list[float], new_tokens: int, python_seconds: list[float]) -> dict:
    """Median and best tokens/s of a runtime's rounds, and its speed relative to Python's in the same round."""
    rates = [new_tokens / value for value in seconds]
    ratios = [python / value for python, value in zip(python_seconds, seconds)]  # a round shares its disturbance
    return {"runtime": name, "median_tokens_per_s": statistics.median(rates), "best_tokens_per_s": max(rates),
            "median_speed_vs_python": statistics.median(ratios), "rounds_seconds": seconds}


def main() -> None:
    """Measure and print; --json-out writes the report."""
    parser = script_parser(__doc__)
    parser.add_argument("--quick", action="store_true", help="the tests' tiny model, 16 tokens, 2 rounds")
    parser.add_argument("--rounds", type=int, default=None, help="timed rounds per runtime (default 5, quick 2)")
    parser.add_argument("--json-out", help="write the report here")
    args = parser.parse_args()
    new_tokens, rounds = (16, 2) if args.quick else (64, 5)
    rounds = args.rounds or rounds
    load_before = load_average()  # other processes on a shared machine disturb timings
    with tempfile.TemporaryDirectory(prefix="mtn-sails-web-bench-") as tmp:
        onnx_dir = export_model(Path(tmp), args.quick)
        site = Path(tmp) / "web_app"
        subprocess.run([sys.executable, str(REPO / "main.py"), "web", "--onnx-output", str(onnx_dir), "--out",
                        str(site), "--quiet"], check=True, cwd=tmp)
        runtimes = [PythonRuntime(onnx_dir, new_tokens), NodeRuntime(onnx_dir, new_tokens),
                    BrowserRuntime(site, new_tokens, isolated=True), BrowserRuntime(site, new_tokens, isolated=False)]
        try:
            for runtime in runtimes:
                runtime.seconds()  # warm-up
            timings: list[list[float]] = [[] for _ in runtimes]
            for round_number in range(rounds):
                for runtime, times in zip(runtimes, timings):
                    times.append(runtime.seconds())
                print(f"round {round_number + 1}/{rounds}: " + ", ".join(
                    f"{new_tokens / times[-1]:.1f}" for times in timings) + " tokens/s", flush=True)
        finally:
            for runtime in runtimes:
                getattr(runtime, "close", lambda: None)()
        graph_bytes = (onnx_dir / "onnx" / "model.onnx").stat().st_size
    report = {"machine": {**machine(), "load_average_before": load_before, "load_average_after": load_average(),
                          "node": subprocess.run(["node", "--version"], capture_output=True, text=True).stdout.strip(),
                          "chromium": subprocess.run(["chromium", "--version"], capture_output=True,
                                                     text=True).stdout.strip()},
              "settings": {"model": "tiny (tests)" if args.quick else "distilgpt2 shape, random weights",
                           "fp32_graph_bytes": graph_bytes, "batch": 1, "new_tokens": new_tokens,
                           "rounds": rounds, "decoding": "greedy, eos held back"},
              "results": [figures(runtime.name, times, new_tokens, timings[0])
                          for runtime, times in zip(runtimes, timings)],
              "load_seconds": {"node_median": statistics.median(runtimes[1].load_seconds),
                               "chromium_isolated": runtimes[2].load_seconds, "chromium_plain": runtimes[3].load_seconds}}
    for row in report["results"]:
        print(f"{row['runtime']}: median {row['median_tokens_per_s']:.1f} tokens/s, best "
              f"{row['best_tokens_per_s']:.1f}, {row['median_speed_vs_python']:.2f}x Python in the same round")
    write_json(args.json_out, report)


if __name__ == "__main__":
    main()
