"""The bundled general prompts a pretrained base answers before its first session (session 0, the base).

Written for this project (its licence), one per line in general_prompts.txt: short questions, instructions
and tasks across geography, science, arithmetic, language, everyday facts and conversation, each asking for a
short answer, so that what the base says can be checked word for word after every later session.
"""
from __future__ import annotations

from functools import lru_cache
from importlib import resources


@lru_cache(maxsize=1)
def general_prompts() -> tuple[str, ...]:
    """Every bundled general prompt, in file order."""
    text = resources.files(__package__).joinpath("general_prompts.txt").read_text(encoding="utf-8")
    return tuple(line.strip() for line in text.splitlines() if line.strip())
