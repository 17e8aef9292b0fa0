"""The hub probe follows huggingface_hub's settings: endpoint, proxies, offline mode; real sockets, no mocks."""
from __future__ import annotations

import http.server
import os
import socket
import subprocess
import sys
import threading

import pytest

from mtn_sails.training.hub import hub_hint

PROBE = ("import time; from mtn_sails.training.hub import hub_reachable\n"
         "started = time.perf_counter(); reachable = hub_reachable()\n"
         "print(reachable, f'{time.perf_counter() - started:.3f}s')")


def closed_port() -> int:
    """A local port nothing listens on (bound, then released)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def endpoint():
    """A local HTTP server standing in for the hub: answers every HEAD with 200 and counts the requests."""
    requests_seen = []

    class Hub(http.server.BaseHTTPRequestHandler):
        def do_HEAD(self):  # noqa: N802 - http.server's name
            requests_seen.append(self.path)
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hub)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", requests_seen
    server.shutdown()
    server.server_close()


def probe(**settings: str) -> tuple[bool, str]:
    """hub_reachable() in a fresh process (huggingface_hub reads its settings at import) with these variables."""
    env = {name: value for name, value in os.environ.items()
           if name.upper() not in {"HF_ENDPOINT", "HF_HUB_OFFLINE", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY",
                                   "NO_PROXY", "TRANSFORMERS_OFFLINE"}}
    result = subprocess.run([sys.executable, "-c", PROBE], env={**env, **settings}, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    answer, elapsed = result.stdout.split()
    return answer == "True", elapsed


def test_a_local_endpoint_that_answers_is_reachable(endpoint):
    url, seen = endpoint
    reachable, elapsed = probe(HF_ENDPOINT=url)
    assert reachable, elapsed
    assert seen == ["/"]  # one request, no retries


def test_an_endpoint_on_a_closed_port_is_unreachable():
    reachable, elapsed = probe(HF_ENDPOINT=f"http://127.0.0.1:{closed_port()}")
    assert not reachable, elapsed


def test_a_proxy_on_a_closed_port_makes_the_default_hub_unreachable():
    reachable, elapsed = probe(HTTPS_PROXY=f"http://127.0.0.1:{closed_port()}")
    assert not reachable, elapsed


def test_the_proxy_is_used_even_when_the_endpoint_itself_would_answer(endpoint):
    url, seen = endpoint
    reachable, elapsed = probe(HF_ENDPOINT=url, HTTP_PROXY=f"http://127.0.0.1:{closed_port()}")
    assert not reachable, elapsed
    assert seen == []  # the request went to the (dead) proxy, as huggingface_hub's own downloads would


def test_offline_mode_answers_without_touching_the_network(endpoint):
    url, seen = endpoint
    reachable, elapsed = probe(HF_ENDPOINT=url, HF_HUB_OFFLINE="1")
    assert not reachable, elapsed
    assert seen == []


def test_the_hint_names_the_way_out_and_the_reason():
    unreachable = hub_hint("distilgpt2")
    assert unreachable.startswith("cannot load base model 'distilgpt2': not a local model directory")
    assert "--model-name scratch" in unreachable and "\n" not in unreachable
    assert "could not provide it: 404" in hub_hint("no-such/model", reachable=True, detail="404")
