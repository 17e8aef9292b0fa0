"""The README's picture of `mtn-sails web`: the tests' tiny trained model answering in headless Chromium.

    python benchmarks/web_screenshot.py docs/web_page.png

Builds the model tests/test_web.py uses (12 QA pairs learned), writes its page with `mtn-sails web`,
serves it as `--serve` does, asks one question through the form and saves a PNG once the answer is in.
"""
from __future__ import annotations

import argparse
import functools
import tempfile
import threading
from http.server import ThreadingHTTPServer
from pathlib import Path

import common  # noqa: F401  (this checkout and tests/ on sys.path: web_model, chromium, test_web)

QUESTION = "What is HTTP?"


def main() -> None:
    """Write the screenshot."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("png", type=Path, help="where the screenshot goes")
    args = parser.parse_args()
    from chromium import Chromium
    from test_web import ask
    from web_model import trained_export

    from mtn_sails.config import WebConfig
    from mtn_sails.console import mute
    from mtn_sails.runtime.web import PageHandler, build_site

    with tempfile.TemporaryDirectory(prefix="mtn-sails-shot-") as tmp:
        onnx_dir = trained_export(Path(tmp))[1]
        mute(True)
        site = build_site(WebConfig(onnx_output=str(onnx_dir), out=str(Path(tmp) / "web_app"))).out_dir
        server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(PageHandler, directory=str(site)))
        threading.Thread(target=server.serve_forever, daemon=True).start()
        try:
            with Chromium(f"http://127.0.0.1:{server.server_address[1]}/", width=900, height=640) as browser:
                answer = ask(browser, QUESTION)
                browser.screenshot(args.png)
        finally:
            server.shutdown()
    print(f"{args.png}: {QUESTION!r} -> {answer['text']!r}")


if __name__ == "__main__":
    main()
