"""The one build step pyproject.toml cannot say: the wheel carries the web page's runtime.

`mtn-sails web` copies transformers.js and onnxruntime-web's WebAssembly into the page it writes. A checkout
reads them from node_modules (`npm ci`, pinned by package-lock.json); a wheel carries them as package data in
mtn_sails/runtime/web_assets/ (git-ignored), copied here at build time with both packages' licences beside them,
so `pip install .` then `mtn-sails web` needs no Node. Everything else is configured in pyproject.toml.
"""
from __future__ import annotations

import ast
import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
NODE_MODULES = ROOT / "node_modules"
WEB_MODULE = ROOT / "mtn_sails" / "runtime" / "web.py"
ASSETS = ROOT / "mtn_sails" / "runtime" / "web_assets"  # web.py's ASSETS_DIR
# onnxruntime-web's npm package ships no licence file: licenses/ carries the onnxruntime repository's (MIT).
LICENSES = {NODE_MODULES / "@huggingface" / "transformers" / "LICENSE": "transformers.js.LICENSE",
            ROOT / "licenses" / "onnxruntime-web.LICENSE": "onnxruntime-web.LICENSE"}


def vendor_files() -> dict[str, str]:
    """web.py's VENDOR_FILES (node_modules path -> name), read from its source: the build imports no package."""
    for node in ast.parse(WEB_MODULE.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.Assign) and any(getattr(target, "id", "") == "VENDOR_FILES" for target in node.targets):
            return ast.literal_eval(node.value)
    raise SystemExit(f"build: VENDOR_FILES not found in {WEB_MODULE}")


def copy_web_assets() -> None:
    """Copy the page's runtime and the licences into ASSETS; fail the build when node_modules lacks them."""
    sources = {NODE_MODULES / source: name for source, name in vendor_files().items()} | LICENSES
    missing = [source for source in sources if not source.is_file()]
    if missing:
        if all((ASSETS / name).is_file() for name in sources.values()):
            return  # a build from the sdist, which carries the copies already
        raise SystemExit(f"build: {missing[0]} is missing: run `npm ci` (or `make venv`) in the checkout first; "
                         "the wheel carries transformers.js for `mtn-sails web`")
    ASSETS.mkdir(exist_ok=True)
    for source, name in sources.items():
        shutil.copyfile(source, ASSETS / name)


class BuildWithWebAssets(build_py):
    """build_py that copies the web assets first; an editable install reads node_modules and skips the copy."""

    def run(self) -> None:
        """Copy the assets (unless editable), then build as setuptools does."""
        if not self.editable_mode:
            copy_web_assets()
        super().run()


setup(cmdclass={"build_py": BuildWithWebAssets})
