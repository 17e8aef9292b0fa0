"""mtn-sails web: the page it writes, its server, and the page answering in headless Chromium like Python does."""
from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import asdict
from pathlib import Path

import pytest

from chromium import Chromium
from helpers import REPO, run_cli
from mtn_sails.runtime.onnx_session import ONNX_FILE, QUANTIZED_ONNX_FILE
from mtn_sails.data.template import PromptTemplate
from mtn_sails.runtime.web import PAGE_FILES, VENDOR_FILES, find_node_modules
from web_model import python_generate, web_export  # noqa: F401 (a fixture)

pytestmark = pytest.mark.slow

LOAD_SECONDS = 120  # transformers.js, the wasm runtime and the model, on a busy 2-core machine
ANSWER_SECONDS = 120


def write_page(onnx_dir: Path, out: Path, *options: str, env: dict | None = None):
    """`mtn-sails web` as a user runs it."""
    return run_cli("web", "--onnx-output", str(onnx_dir), "--out", str(out), *options, cwd=out.parent, env=env)


class Server:
    """`mtn-sails web --serve --port 0` in a subprocess: its address, then Ctrl-C."""

    def __init__(self, onnx_dir: Path, out: Path) -> None:
        self.out = out
        self.process = subprocess.Popen(
            [sys.executable, str(REPO / "main.py"), "web", "--onnx-output", str(onnx_dir), "--out", str(out),
             "--serve", "--port", "0"], cwd=out.parent, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env={**os.environ, "PYTHONIOENCODING": "utf-8"},
            # Ctrl-C reaches it even when the test runner was started in the background (nohup, `&`), which
            # leaves SIGINT ignored in every child: Python then installs no KeyboardInterrupt handler.
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        self.lines: list[str] = []
        self._queue: queue.Queue = queue.Queue()
        threading.Thread(target=self._read_lines, daemon=True).start()
        deadline = time.monotonic() + 60
        while not any("Serving" in line for line in self.lines):
            try:
                self.lines.append(self._queue.get(timeout=max(0.1, deadline - time.monotonic())).rstrip("\n"))
            except queue.Empty:
                self.process.kill()
                raise AssertionError(f"no address printed: {self.lines} {self.process.stderr.read()[-2000:]}")
        self.url = next(word for word in self.lines[-1].split() if word.startswith("http://"))

    def _read_lines(self) -> None:
        for line in self.process.stdout:
            self._queue.put(line)

    def stop(self) -> tuple[int, str]:
        """Ctrl-C, as a user stops it; (exit code, what it printed after the address)."""
        self.process.send_signal(signal.SIGINT)
        try:
            code = self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            raise
        time.sleep(0.2)  # the reader thread drains the last lines
        rest = []
        while not self._queue.empty():
            rest.append(self._queue.get())
        return code, "".join(rest)


@pytest.fixture(scope="module")
def served(web_export, tmp_path_factory):
    """The page for the trained tiny model, served by `mtn-sails web --serve`."""
    server = Server(web_export[1], tmp_path_factory.mktemp("site") / "web_app")
    yield server
    server.stop()


def ask(browser: Chromium, question: str, sampling: bool = False, int8: bool = False) -> dict:
    """Type a question into the page, press Ask, wait for the streamed answer; what the page showed."""
    browser.wait_for("window.sails && (window.sails.ready || window.sails.error)", LOAD_SECONDS)
    before = browser.evaluate("window.sails.answered")
    browser.evaluate(f"""(() => {{
        document.getElementById('question').value = {json.dumps(question)};
        document.querySelector('input[name=mode][value={"sample" if sampling else "greedy"}]').checked = true;
        document.getElementById('int8').checked = {json.dumps(int8)};
        document.getElementById('send').click();
        return true; }})()""")
    browser.wait_for(f"window.sails.answered > {before} || window.sails.error", ANSWER_SECONDS)
    assert browser.evaluate("window.sails.error") is None, browser.console
    shown = browser.evaluate("document.getElementById('answer').textContent")
    return {**browser.evaluate("window.sails.last"), "shown": shown}


def test_the_page_answers_in_chromium_as_python_does(served, web_export, tmp_path):
    _, onnx_dir = web_export
    with Chromium(served.url) as browser:
        for question in ("What is a variable?", "What is HTTP?"):
            page = ask(browser, question)
            python = python_generate(onnx_dir, question, 64)
            assert page["tokenIds"] == python["tokenIds"], question
            assert page["shown"] == page["text"] == python["text"]
            assert page["stoppedAtEos"] and python["stoppedAtEos"]
        status = browser.evaluate("document.getElementById('status').textContent")
        assert "Ready" in status and "fp32" in status
        shot = browser.screenshot(tmp_path / "page.png")
    assert shot.stat().st_size > 10_000
    assert page["text"] == "HTTP is the protocol browsers and servers use to exchange web pages and data."


def test_the_page_samples_and_runs_the_int8_model(served, web_export):
    _, onnx_dir = web_export
    with Chromium(served.url) as browser:
        sampled = ask(browser, "What is CSS?", sampling=True)
        assert sampled["temperature"] > 0 and len(sampled["tokenIds"]) <= sampled["maxNewTokens"]
        assert sampled["shown"] == sampled["text"]
        int8 = ask(browser, "What is a list?", int8=True)
        assert "int8" in browser.evaluate("document.getElementById('status').textContent")
    assert int8["tokenIds"] == python_generate(onnx_dir, "What is a list?", 64, int8=True)["tokenIds"]


@pytest.mark.parametrize("case", ["no WebAssembly", "opened from disk"])
def test_a_browser_that_cannot_run_the_model_is_told_why(served, case):
    if case == "no WebAssembly":
        # V8 without its JIT has no WebAssembly, as in hardened browsers (Lockdown Mode, "super duper secure mode")
        url, flags, expected = served.url, ("--js-flags=--jitless",), "no WebAssembly"
    else:
        url, flags, expected = (served.out.resolve() / "index.html").as_uri(), (), "through a web server"
    with Chromium(url, extra_flags=flags) as browser:
        state = browser.wait_for("document.getElementById('status')?.dataset.state === 'error' && "
                                 "document.getElementById('status').textContent", LOAD_SECONDS)
    assert expected in state


def test_serve_answers_with_the_headers_the_page_needs_and_stops_on_ctrl_c(exported, tmp_path):
    _, onnx_dir, _ = exported
    server = Server(onnx_dir, tmp_path / "web_app")
    try:
        assert server.url.startswith("http://127.0.0.1:")
        with urllib.request.urlopen(server.url + "vendor/ort-wasm-simd-threaded.wasm", timeout=10) as reply:
            assert reply.headers["Content-Type"] == "application/wasm"
            assert reply.headers["Cross-Origin-Opener-Policy"] == "same-origin"  # threads: SharedArrayBuffer
            assert reply.headers["Cross-Origin-Embedder-Policy"] == "require-corp"
        with urllib.request.urlopen(server.url + "app.js", timeout=10) as reply:
            assert reply.headers["Content-Type"].startswith("text/javascript")
        with urllib.request.urlopen(server.url, timeout=10) as reply:
            assert b"<title>MTN Sails" in reply.read()
    finally:
        code, rest = server.stop()
    assert code == 0 and "Stopped serving" in rest


def test_web_writes_an_offline_page_with_the_model_linked_not_copied(exported, tmp_path):
    _, onnx_dir, _ = exported
    out = tmp_path / "web_app"
    done = write_page(onnx_dir, out)
    assert done.returncode == 0, done.stderr
    assert f"Page written to {out}" in done.stdout and "int8" in done.stdout
    for name in PAGE_FILES:
        text = (out / name).read_text(encoding="utf-8")
        assert "http://" not in text and "https://" not in text, name  # no CDN: everything is beside the page
    node_modules = find_node_modules()
    for source, name in VENDOR_FILES.items():
        assert (out / "vendor" / name).read_bytes() == (node_modules / source).read_bytes()
    for graph in (ONNX_FILE, QUANTIZED_ONNX_FILE):
        assert (out / "model" / graph).stat().st_ino == (onnx_dir / graph).stat().st_ino  # one copy of the bytes
    for name in ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json"):
        assert (out / "model" / name).read_bytes() == (onnx_dir / name).read_bytes()
    site = json.loads((out / "site.json").read_text())
    assert site["dtypes"] == ["fp32", "q8"] and site["model"] == "model"
    assert site["template"] == asdict(PromptTemplate.load(onnx_dir))
    again = write_page(onnx_dir, out, "--quiet")
    assert again.returncode == 0, again.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["web_app"]  # replaced whole, nothing left beside it


def test_web_reads_an_export_with_the_graph_at_the_root(exported, tmp_path):
    import shutil

    _, onnx_dir, _ = exported
    legacy = tmp_path / "onnx_model"
    shutil.copytree(onnx_dir, legacy)
    (legacy / ONNX_FILE).rename(legacy / "model.onnx")
    (legacy / QUANTIZED_ONNX_FILE).unlink()
    done = write_page(legacy, tmp_path / "web_app")
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "web_app" / "model" / ONNX_FILE).is_file()
    assert json.loads((tmp_path / "web_app" / "site.json").read_text())["dtypes"] == ["fp32"]


@pytest.mark.parametrize("case", ["no export", "a folder of the user's", "no transformers.js", "a busy port"])
def test_web_refuses_with_one_line_and_changes_nothing(exported, tmp_path, case):
    import socket

    _, onnx_dir, _ = exported
    out, env, expected, options = tmp_path / "web_app", None, "--onnx-output", ()
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    if case == "a busy port":
        options, expected = ("--serve", "--port", str(busy.getsockname()[1])), "--port"
    elif case == "no export":
        onnx_dir = tmp_path / "nothing"
    elif case == "a folder of the user's":
        out.mkdir()
        (out / "notes.txt").write_text("mine")
        expected = "--out"
    else:
        (tmp_path / "empty").mkdir()
        env, expected = {"MTN_SAILS_NODE_MODULES": str(tmp_path / "empty")}, "npm ci"
    before = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*"))
    done = write_page(onnx_dir, out, *options, env=env)
    busy.close()
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0] and "Traceback" not in done.stderr, done.stderr
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*")) == before
