"""Headless Chromium driven over the DevTools protocol on a pipe (no port, no extra package).

Used by tests/test_web.py and benchmarks/web_speed.py. Chromium reads commands on fd 3 and writes
answers on fd 4, one JSON message each, NUL-terminated (--remote-debugging-pipe).
"""
from __future__ import annotations

import base64
import json
import os
import select
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

# Headless on a machine without a GPU or network: software WebAssembly only, nothing phoned home.
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--remote-debugging-pipe")


def chromium_binary() -> str:
    """The Chromium (or Chrome) on PATH; .ci/run installs Debian's `chromium` when there is none."""
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return shutil.which(name)
    raise FileNotFoundError("no chromium on PATH: apt-get install chromium (.ci/run does it)")


class Chromium:
    """One headless browser with one page open at `url`; use as a context manager."""

    def __init__(self, url: str, width: int = 1000, height: int = 800, extra_flags: tuple[str, ...] = ()) -> None:
        self.profile = tempfile.mkdtemp(prefix="sails-chromium-")
        commands_read, self._commands = os.pipe()
        self._answers, answers_write = os.pipe()

        def wire_pipes() -> None:  # in the child: fd 3 reads our commands, fd 4 carries its answers
            os.dup2(commands_read, 3)
            os.dup2(answers_write, 4)

        self.log = tempfile.TemporaryFile()  # chromium's own stderr: a file, since a full pipe would stall it
        self.process = subprocess.Popen(
            [chromium_binary(), *FLAGS, *extra_flags, f"--user-data-dir={self.profile}",
             f"--window-size={width},{height}", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=self.log, preexec_fn=wire_pipes, pass_fds=(3, 4))
        os.close(commands_read)
        os.close(answers_write)
        self._next_id = 0
        self._buffer = b""
        self.console: list[str] = []  # the page's console lines and uncaught errors, for failure messages
        target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        self.session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        self.send("Runtime.enable", session=True)
        self.send("Page.enable", session=True)
        self.send("Emulation.setDeviceMetricsOverride", {"width": width, "height": height, "deviceScaleFactor": 1,
                                                         "mobile": False}, session=True)
        self.send("Page.navigate", {"url": url}, session=True)

    def send(self, method: str, params: dict | None = None, session: bool = False, timeout: float = 60) -> dict:
        """Send one command and wait for its answer (events seen meanwhile go to `console`)."""
        self._next_id += 1
        message = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = self.session
        os.write(self._commands, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            reply = self._read(deadline - time.monotonic())
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self._note(reply)

    def _read(self, timeout: float) -> dict:
        while b"\0" not in self._buffer:
            ready, _, _ = select.select([self._answers], [], [], max(0.0, timeout))
            if not ready:
                raise TimeoutError(f"chromium did not answer in time; console: {self.console[-10:]}")
            chunk = os.read(self._answers, 1 << 20)
            if not chunk:
                self.log.seek(0)
                raise RuntimeError(f"chromium exited: {self.log.read().decode(errors='replace')[-2000:]}")
            self._buffer += chunk
        message, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(message)

    def _note(self, event: dict) -> None:
        params = event.get("params", {})
        if event.get("method") == "Runtime.consoleAPICalled":
            self.console.append(" ".join(str(arg.get("value", arg.get("description", ""))) for arg in params["args"]))
        elif event.get("method") == "Runtime.exceptionThrown":
            details = params["exceptionDetails"]
            self.console.append(details.get("exception", {}).get("description") or details.get("text", ""))

    def evaluate(self, expression: str, timeout: float = 60):
        """The value of a JavaScript expression in the page (promises awaited)."""
        result = self.send("Runtime.evaluate", {"expression": expression, "awaitPromise": True,
                                                "returnByValue": True}, session=True, timeout=timeout)
        if "exceptionDetails" in result:
            error = result["exceptionDetails"].get("exception", {}).get("description")
            raise RuntimeError(f"{expression[:80]}: {error}")
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout: float):
        """Poll a JavaScript expression until it is truthy; returns its value (TimeoutError past `timeout`)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                value = self.evaluate(expression, timeout=max(1.0, deadline - time.monotonic()))
            except RuntimeError:  # the page is still navigating: its context is not there yet
                value = None
            if value:
                return value
            time.sleep(0.2)
        raise TimeoutError(f"{expression} still false after {timeout:.0f} s; console: {self.console[-10:]}")

    def screenshot(self, path: Path) -> Path:
        """A PNG of the page as it is now."""
        data = self.send("Page.captureScreenshot", {"format": "png"}, session=True)["data"]
        Path(path).write_bytes(base64.b64decode(data))
        return Path(path)

    def close(self) -> None:
        """Close the browser (killed if it does not go within 10 s) and remove its profile."""
        try:
            if self.process.poll() is None:
                os.write(self._commands, json.dumps({"id": 0, "method": "Browser.close"}).encode() + b"\0")
                self.process.wait(timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            self.process.kill()
            self.process.wait()
        finally:
            for fd in (self._commands, self._answers):
                try:
                    os.close(fd)
                except OSError:
                    pass
            self.log.close()
            shutil.rmtree(self.profile, ignore_errors=True)

    def __enter__(self) -> "Chromium":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
