"""Where a session's seconds go: each stage timed under a name, recorded in the history (phase_s)."""
from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from typing import Iterator


@dataclass
class PhaseClock:
    """Seconds spent in each named phase of a session, in the order the phases first ran."""

    seconds: dict[str, float] = field(default_factory=dict)

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Time the block under `name` (a phase timed twice adds up)."""
        began = time.perf_counter()
        try:
            yield
        finally:
            self.add(name, time.perf_counter() - began)

    def add(self, name: str, seconds: float) -> None:
        """Count `seconds` under `name`."""
        self.seconds[name] = round(self.seconds.get(name, 0.0) + seconds, 2)

    def move(self, seconds: float, source: str, target: str) -> None:
        """Count `seconds` timed inside `source` under `target` instead (a callback's share of training)."""
        if seconds > 0 and source in self.seconds:
            self.seconds[source] = round(self.seconds[source] - seconds, 2)
            self.add(target, seconds)
