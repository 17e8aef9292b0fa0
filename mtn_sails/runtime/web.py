"""`mtn-sails web`: an offline static page that answers with the exported model in the browser.

The page (mtn_sails/runtime/web_page/) runs transformers.js on onnxruntime-web's WebAssembly build, both
copied in from the wheel's package data (web_assets/, which setup.py fills at build time) or, in a checkout,
from the pinned npm install (package-lock.json; `make` runs `npm ci`): no CDN, so it works offline and
nothing a user types leaves the browser. The export is laid out beside the page as
transformers.js reads it (docs/WEB.md); its graphs are hard-linked where the file system allows
(no second copy of the bytes), the small files copied. The page is written to a staging directory
and swapped in whole, like every directory mtn-sails writes.
"""
from __future__ import annotations

import functools
import json
import os
import shutil
from dataclasses import asdict, dataclass, field
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from .. import __version__
from ..model_dir import store
from ..config import WebConfig
from ..console import say, show
from ..errors import InputError
from ..model_dir.model_files import context_length, read_json
from .onnx_session import ONNX_FILE, QUANTIZED_ONNX_FILE, model_file
from ..data.template import TEMPLATE_FILE, template_beside

PAGE_DIR = Path(__file__).with_name("web_page")
PAGE_FILES = ("index.html", "app.js", "sails.mjs", "style.css")
SITE_FILE = "site.json"  # what the page reads first; also marks a directory as one `web` wrote
MODEL_DIR = "model"  # the export's place in the page (transformers.js model id, relative to the page)
NODE_MODULES_ENV = "MTN_SAILS_NODE_MODULES"
# node_modules path -> name under vendor/. The self-contained bundle carries onnxruntime-web's
# JavaScript; its WebAssembly (SIMD, threads when the page is cross-origin isolated) comes beside it.
VENDOR_FILES = {
    "@huggingface/transformers/dist/transformers.min.js": "transformers.min.js",
    "onnxruntime-web/dist/ort-wasm-simd-threaded.mjs": "ort-wasm-simd-threaded.mjs",
    "onnxruntime-web/dist/ort-wasm-simd-threaded.wasm": "ort-wasm-simd-threaded.wasm",
}
ASSETS_DIR = Path(__file__).with_name("web_assets")  # a wheel's copies of VENDOR_FILES (setup.py), licences beside
# The export's small files transformers.js reads (tokenizer_config.json holds the eos and the
# decoding settings), plus the template the page renders prompts with.
MODEL_FILES = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
               "special_tokens_map.json", TEMPLATE_FILE)
REQUIRED_FILES = ("config.json", "tokenizer.json")


@dataclass(frozen=True)
class WebSite:
    """The page `web` wrote."""

    out_dir: Path
    files: dict[str, int] = field(default_factory=dict)  # path under out_dir -> bytes
    dtypes: tuple[str, ...] = ("fp32",)  # the models the page offers: fp32, and q8 (int8) when exported
    linked: int = 0  # graphs hard-linked to the export instead of copied

    def total_bytes(self) -> int:
        """Bytes the page takes to serve."""
        return sum(self.files.values())


def find_node_modules() -> Path:
    """The npm install holding transformers.js: $MTN_SAILS_NODE_MODULES, the checkout's, or ./node_modules."""
    if os.environ.get(NODE_MODULES_ENV):
        candidates = [Path(os.environ[NODE_MODULES_ENV])]
    else:
        candidates = [Path(__file__).resolve().parents[2] / "node_modules", Path.cwd() / "node_modules"]
    for candidate in candidates:
        if all((candidate / name).is_file() for name in VENDOR_FILES):
            return candidate
    raise InputError("transformers.js is not installed: run `make venv` (or `npm ci` in the mtn-sails checkout), "
                     f"or point {NODE_MODULES_ENV} at a node_modules holding @huggingface/transformers")


def vendor_sources() -> dict[str, Path]:
    """Each vendor/ file's source: the wheel's copies, unless $MTN_SAILS_NODE_MODULES names an npm install, else
    the checkout's (or ./) node_modules."""
    if not os.environ.get(NODE_MODULES_ENV) and all((ASSETS_DIR / name).is_file() for name in VENDOR_FILES.values()):
        return {name: ASSETS_DIR / name for name in VENDOR_FILES.values()}
    node_modules = find_node_modules()
    return {name: node_modules / source for source, name in VENDOR_FILES.items()}


def _check_export(onnx_dir: Path, option_value: str) -> None:
    if not model_file(onnx_dir).is_file():
        raise InputError(f"no ONNX model in {option_value} (--onnx-output); make one with "
                         "`mtn-sails pipeline --data-file FILE` or `mtn-sails export`")
    missing = [name for name in REQUIRED_FILES if not (onnx_dir / name).is_file()]
    if missing:
        raise InputError(f"{option_value} (--onnx-output) lacks {', '.join(missing)}; export it again with "
                         "`mtn-sails export`")


def _check_out(out_dir: Path, onnx_dir: Path, option_value: str) -> None:
    """Refuse an --out that would replace anything but a page `web` wrote earlier."""
    resolved, export = out_dir.resolve(), onnx_dir.resolve()
    if resolved == export or export in resolved.parents or resolved in export.parents:
        raise InputError(f"--out {option_value} must be outside the ONNX model directory (and not hold it)")
    if out_dir.exists() and (not out_dir.is_dir() or (any(out_dir.iterdir()) and not _is_site(out_dir))):
        raise InputError(f"--out {option_value} exists and is not a page mtn-sails web wrote; it would be "
                         "replaced whole: choose another --out")


def _is_site(directory: Path) -> bool:
    return read_json(directory / SITE_FILE).get("generator") == "mtn-sails web"


def link_or_copy(source: Path, target: Path) -> bool:
    """Hard-link `source` at `target` (same bytes, no second copy), else copy it; True when linked."""
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(source, target)
        return True
    except OSError:  # another file system, or one without hard links (FAT, some network shares)
        shutil.copyfile(source, target)
        return False


def site_settings(onnx_dir: Path, dtypes: list[str], max_new_tokens: int) -> dict:
    """site.json: what the page needs before it loads transformers.js."""
    model_type = read_json(onnx_dir / "config.json").get("model_type", "")
    name = onnx_dir.resolve().name + (f" ({model_type})" if model_type else "")
    return {"generator": "mtn-sails web", "mtn_sails": __version__, "name": name, "model": MODEL_DIR,
            "dtypes": dtypes, "max_new_tokens": max_new_tokens, "context": context_length(onnx_dir),
            "template": asdict(template_beside(onnx_dir))}


def write_site(onnx_dir: Path, target: Path, vendor: dict[str, Path], max_new_tokens: int) -> WebSite:
    """Write the page, the vendored runtime (`vendor`: name -> source, vendor_sources) and the model into the
    empty directory `target`."""
    for name in PAGE_FILES:
        shutil.copyfile(PAGE_DIR / name, target / name)
    (target / "vendor").mkdir()
    for name, source in vendor.items():
        shutil.copyfile(source, target / "vendor" / name)
    model = target / MODEL_DIR
    (model / "onnx").mkdir(parents=True)
    for name in MODEL_FILES:  # small, and a user may edit them in the page: copies, never links
        if (onnx_dir / name).is_file():
            shutil.copyfile(onnx_dir / name, model / name)
    dtypes, linked = [], 0
    for dtype, relative, int8 in (("fp32", ONNX_FILE, False), ("q8", QUANTIZED_ONNX_FILE, True)):
        graph = model_file(onnx_dir, int8)  # an export from before the onnx/ folder works too
        if not graph.is_file():
            continue
        # the graph and, for a model over 2 GB, its external weights (named in the graph, kept beside it)
        for part in [graph, *graph.parent.glob(graph.name + "_data")]:
            linked += link_or_copy(part, model / Path(relative).parent / part.name)
        dtypes.append(dtype)
    settings = site_settings(onnx_dir, dtypes, max_new_tokens)
    (target / SITE_FILE).write_text(json.dumps(settings, indent=2) + "\n", encoding="utf-8")
    files = {p.relative_to(target).as_posix(): p.stat().st_size for p in sorted(target.rglob("*")) if p.is_file()}
    return WebSite(target, files, tuple(dtypes), linked)


def build_site(config: WebConfig) -> WebSite:
    """Write the page for --onnx-output into --out (staged, then swapped in whole)."""
    onnx_dir, out_dir = Path(config.onnx_output), Path(config.out)
    _check_export(onnx_dir, config.onnx_output)
    _check_out(out_dir, onnx_dir, config.out)
    vendor = vendor_sources()
    # The export is locked too: no export may swap it while its files are linked and copied.
    with store.locked(onnx_dir), store.locked(out_dir):
        store.recover(out_dir)
        staging = store.fresh_staging(out_dir)
        try:
            site = write_site(onnx_dir, staging, vendor, config.max_new_tokens)
            store.replace_directory(staging, out_dir)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    return WebSite(out_dir, site.files, site.dtypes, site.linked)


class PageHandler(SimpleHTTPRequestHandler):
    """Static files with the headers the page needs: module and wasm types, cross-origin isolation."""

    extensions_map = {**SimpleHTTPRequestHandler.extensions_map, ".mjs": "text/javascript",
                      ".js": "text/javascript", ".wasm": "application/wasm", ".onnx": "application/octet-stream"}

    def end_headers(self) -> None:
        # Isolation gives the page SharedArrayBuffer, so onnxruntime-web may use several threads.
        self.send_header("Cross-Origin-Opener-Policy", "same-origin")
        self.send_header("Cross-Origin-Embedder-Policy", "require-corp")
        self.send_header("Cache-Control", "no-store")  # a re-run of `web` must not be answered from cache
        super().end_headers()

    def log_message(self, format: str, *args) -> None:  # noqa: A002 (the base class's name)
        """Requests are not logged: the terminal shows the address and errors only."""


def page_server(directory: Path, port: int) -> ThreadingHTTPServer:
    """A static server for `directory` on 127.0.0.1 (port 0: any free port); not started yet."""
    handler = functools.partial(PageHandler, directory=str(directory))
    try:
        return ThreadingHTTPServer(("127.0.0.1", port), handler)
    except OSError as error:
        raise InputError(f"--port {port}: cannot listen on 127.0.0.1 ({error.strerror or error}); "
                         "choose another --port, or 0 for any free one") from None


def web(config: WebConfig) -> WebSite:
    """Write the page; with --serve, serve it on 127.0.0.1 until Ctrl-C."""
    server = page_server(Path(config.out), config.port) if config.serve else None  # a busy port fails first
    try:
        site = build_site(config)
        linked = f", {site.linked} graph(s) hard-linked to the export" if site.linked else ""
        say(f"🌐 Page written to {config.out} ({site.total_bytes() / 1e6:.1f} MB, models: "
            f"{', '.join('int8' if d == 'q8' else d for d in site.dtypes)}{linked})")
        if server is None:
            say(f"Serve {config.out} with any static web server, or run `mtn-sails web --serve`")
            return site
        host, port = server.server_address[:2]
        show(f"🌐 Serving {config.out} at http://{host}:{port}/ (Ctrl-C to stop)")
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            say(f"Stopped serving {config.out}")
        return site
    finally:
        if server is not None:
            server.server_close()
