"""Text to the terminal as tokens arrive, never half a character, on any terminal encoding."""
from __future__ import annotations

from typing import TextIO

from ..console import can_encode
from ..model_dir.model_files import TextTokenizer


class TextStreamer:
    """Writes decoded text to a stream as tokens arrive (like transformers' TextStreamer, prompt skipped).

    The whole completion is decoded each time and only the new characters are written; text ending
    in a partial UTF-8 character (U+FFFD) waits for the token that completes it.
    """

    def __init__(self, tokenizer: TextTokenizer, stream: TextIO) -> None:
        self.tokenizer = tokenizer
        self.stream = stream
        self.token_ids: list[int] = []
        self.written = 0

    def text(self) -> str:
        """The completion so far."""
        return self.tokenizer.decode(self.token_ids)

    def put(self, token_id: int) -> None:
        """Take one new token and write whatever whole characters it completes."""
        self.token_ids.append(token_id)
        text = self.text()
        if not text.endswith("\ufffd"):
            self._write(text[self.written:])
            self.written = len(text)

    def end(self) -> str:
        """Write what is left and a final newline; returns the whole completion."""
        text = self.text()
        self._write(text[self.written:] + "\n")
        self.written = len(text)
        return text

    def _write(self, piece: str) -> None:
        if not piece:
            return
        encoding = getattr(self.stream, "encoding", None)  # None: an in-memory text stream takes any text
        if encoding and not can_encode(piece, self.stream):
            piece = piece.encode(encoding, "replace").decode(encoding)
        self.stream.write(piece)
        self.stream.flush()
