"""Per-endpoint circuit breakers, one set per deliverer process.

closed --(N consecutive failures)--> open --(cool-down over)--> half-open: one probe goes out;
its success closes the circuit, its failure opens it for another cool-down. While a circuit
is open, results for that endpoint wait in JetStream (parked, see parking.py, for at least
the remaining cool-down) and are not counted as attempts. Replicas keep their own
breakers: each learns from its own calls.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass

log = logging.getLogger(__name__)


@dataclass
class _Circuit:
    failures: int = 0
    open_until: float = 0.0  # 0: closed
    probing: bool = False


class Breakers:
    def __init__(
        self, threshold: int, cooldown_s: float, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.threshold = threshold
        self.cooldown_s = cooldown_s
        self.clock = clock
        # Only endpoints that are failing have an entry; a success removes it.
        self._circuits: dict[str, _Circuit] = {}

    def wait_s(self, endpoint: str) -> float | None:
        """None: go ahead (closed, or this call is the half-open probe). Else: pause this long."""
        if self.threshold <= 0:
            return None
        c = self._circuits.get(endpoint)
        if c is None or not c.open_until:
            return None
        remaining = c.open_until - self.clock()
        if remaining > 0:
            # Spread the paused results so they do not all come back in the same instant.
            return remaining + random.uniform(0, min(1.0, self.cooldown_s / 10))
        if c.probing:
            return min(self.cooldown_s, 1.0) * random.uniform(1.0, 2.0)
        c.probing = True
        return None

    def success(self, endpoint: str) -> None:
        c = self._circuits.pop(endpoint, None)
        if c is not None and c.open_until:
            log.info("circuit closed for %s", endpoint)

    def failure(self, endpoint: str) -> None:
        if self.threshold <= 0:
            return
        c = self._circuits.setdefault(endpoint, _Circuit())
        c.failures += 1
        was_probe, c.probing = c.probing, False
        if was_probe or c.failures >= self.threshold:
            if not c.open_until or was_probe:
                log.warning(
                    "circuit open for %s after %d consecutive failures; pausing %.1fs",
                    endpoint,
                    c.failures,
                    self.cooldown_s,
                )
            c.open_until = self.clock() + self.cooldown_s

    def abandon(self, endpoint: str) -> None:
        """The probe never got an answer either way (shutdown): let the next call probe."""
        c = self._circuits.get(endpoint)
        if c is not None:
            c.probing = False

    def open_count(self) -> int:
        now = self.clock()
        return sum(1 for c in self._circuits.values() if c.open_until > now)
