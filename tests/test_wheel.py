"""The built wheel carries the web page's runtime: installed into a fresh venv, `mtn-sails web` writes and serves
the page with no Node and no checkout beside it."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import urllib.request
from pathlib import Path

import filelock
import pytest

from helpers import REPO
from mtn_sails.runtime.web import PAGE_FILES, VENDOR_FILES, find_node_modules

pytestmark = pytest.mark.slow


def build_wheel(folder: Path) -> Path:
    """`pip wheel .` of the checkout (its setup.py copies transformers.js from node_modules); the wheel's path."""
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--quiet",
                           "-w", str(folder), str(REPO)], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert done.returncode == 0, done.stderr[-3000:]
    return next(folder.glob("mtn_sails-*.whl"))


def fresh_venv(root: Path, wheel: Path) -> Path:
    """A venv without system site-packages holding the wheel and filelock alone (the one dependency `web`
    imports, linked from this environment: installing the wheel's others would bring torch); its bin/."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root)], check=True, timeout=120)
    python = root / "bin" / "python"
    # Without PYTHONPATH: the checkout's mtn_sails.egg-info (the build's) would read as "already installed".
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    done = subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--quiet",
                           str(wheel)], capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    site_packages = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                                   capture_output=True, text=True, check=True).stdout.strip()
    (root / "deps").mkdir()
    (root / "deps" / "filelock").symlink_to(Path(filelock.__file__).parent)
    (Path(site_packages) / "deps.pth").write_text(str(root / "deps") + "\n", encoding="utf-8")
    return root / "bin"


def serve(bin_dir: Path, onnx_dir: Path, out: Path, env: dict) -> tuple[subprocess.Popen, str]:
    """`mtn-sails web --serve --port 0` from the venv: the process and the address it prints."""
    process = subprocess.Popen([str(bin_dir / "mtn-sails"), "web", "--onnx-output", str(onnx_dir), "--out", str(out),
                                "--serve", "--port", "0"], cwd=out.parent, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    timer = threading.Timer(60, process.kill)  # no address within a minute: the readline below ends
    timer.start()
    lines = [process.stdout.readline()]
    while lines[-1] and "Serving" not in lines[-1]:
        lines.append(process.stdout.readline())
    timer.cancel()
    assert "Serving" in lines[-1], (lines, process.stderr.read()[-2000:])
    return process, next(word for word in lines[-1].split() if word.startswith("http://"))


def test_the_wheel_writes_and_serves_the_page_without_node_or_the_checkout(exported, tmp_path):
    _, onnx_dir, _ = exported
    wheel = build_wheel(tmp_path / "wheels")
    bin_dir = fresh_venv(tmp_path / "venv", wheel)
    work = tmp_path / "elsewhere"  # not the checkout: nothing of it is on the path or below the cwd
    work.mkdir()
    env = {"PATH": str(bin_dir), "HOME": str(work), "PYTHONIOENCODING": "utf-8"}  # no node, no npm
    probe = subprocess.run([str(bin_dir / "python"), "-c", "import importlib.util as u, mtn_sails; "
                            "print(mtn_sails.__file__, u.find_spec('torch'), u.find_spec('transformers'))"],
                           cwd=work, env=env, capture_output=True, text=True)
    assert probe.returncode == 0, probe.stderr[-2000:]
    package, torch, transformers = probe.stdout.split()
    assert package.startswith(str(tmp_path / "venv")) and (torch, transformers) == ("None", "None")
    done = subprocess.run([str(bin_dir / "mtn-sails"), "web", "--onnx-output", str(onnx_dir), "--out", "site"],
                          cwd=work, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Page written to site" in done.stdout
    site = work / "site"
    assert all((site / name).is_file() for name in PAGE_FILES)
    node_modules = find_node_modules()
    for source, name in VENDOR_FILES.items():
        assert (site / "vendor" / name).read_bytes() == (node_modules / source).read_bytes(), name
    process, url = serve(bin_dir, onnx_dir, site, env)
    try:
        with urllib.request.urlopen(url + "index.html", timeout=10) as reply:
            assert reply.status == 200 and b"<title>MTN Sails" in reply.read()
        for name in ("transformers.min.js", "ort-wasm-simd-threaded.wasm"):
            with urllib.request.urlopen(url + "vendor/" + name, timeout=30) as reply:
                assert reply.status == 200 and reply.read() == (site / "vendor" / name).read_bytes()
    finally:
        process.send_signal(signal.SIGINT)
        rest = process.communicate(timeout=30)[0]
    assert process.returncode == 0 and "Stopped serving" in rest
