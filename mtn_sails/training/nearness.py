"""How close each stored example's prompt is to this session's prompts, in words: a session pulls hardest on what
it resembles (teaching "the capital of Velmora" moves "the capital of Japan"), so `--replay-select nearest`
rehearses those first."""
from __future__ import annotations

import math
import re
from collections import Counter
from typing import Sequence

WORD = re.compile(r"\w+")
TEXT_HEAD = 500  # characters of a plain-text record that stand for what it is about


def asked(record) -> str:
    """What a record asks: its prompt, its user turns, or the start of its text."""
    users = " ".join(turn.content for turn in record.turns if turn.role == "user")
    return record.prompt or users or record.text[:TEXT_HEAD]


def _weights(text: str, idf: dict[str, float]) -> dict[str, float]:
    counts = Counter(WORD.findall(text.lower()))
    vector = {word: count * idf[word] for word, count in counts.items()}
    norm = math.sqrt(sum(value * value for value in vector.values())) or 1.0
    return {word: value / norm for word, value in vector.items()}


def nearness(pool_prompts: Sequence[str], new_prompts: Sequence[str]) -> list[float]:
    """Each pool prompt's largest tf-idf cosine with any of `new_prompts` (0 to 1; all 0 without new prompts):
    words every prompt shares ("what", "is") weigh little, the ones a topic shares ("capital") much."""
    documents = list(pool_prompts) + list(new_prompts)
    frequency = Counter(word for text in documents for word in set(WORD.findall(text.lower())))
    idf = {word: math.log((1 + len(documents)) / (1 + count)) + 1 for word, count in frequency.items()}
    new_vectors = [_weights(text, idf) for text in new_prompts]
    closest = []
    for text in pool_prompts:
        vector = _weights(text, idf)
        closest.append(max((sum(value * other.get(word, 0.0) for word, value in vector.items())
                            for other in new_vectors), default=0.0))
    return closest
