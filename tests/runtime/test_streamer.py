"""streaming: text reaches the terminal token by token, whole characters only, on any encoding."""
from __future__ import annotations

import io

from mtn_sails.model_dir.model_files import load_tokenizer
from mtn_sails.runtime.streamer import TextStreamer


def test_streamer_never_writes_half_a_character(tiny_model_dir):
    tokenizer = load_tokenizer(tiny_model_dir, "--onnx-output")
    text = "Sails 🌊 naïve ⛵ done"
    stream = io.StringIO()
    streamer = TextStreamer(tokenizer, stream)
    for token in tokenizer.encode(text):
        streamer.put(token)
        assert "\ufffd" not in stream.getvalue()
    assert streamer.end() == text
    assert stream.getvalue() == text + "\n"


def test_a_terminal_that_cannot_print_emoji_gets_a_placeholder_not_a_crash(tiny_model_dir):
    tokenizer = load_tokenizer(tiny_model_dir, "--onnx-output")
    raw = io.BytesIO()
    terminal = io.TextIOWrapper(raw, encoding="ascii")
    streamer = TextStreamer(tokenizer, terminal)
    for token in tokenizer.encode("sea 🌊 wind"):
        streamer.put(token)
    assert streamer.end() == "sea 🌊 wind"  # the completion itself is kept whole
    terminal.flush()
    assert raw.getvalue().decode("ascii") == "sea ? wind\n"
