"""When to try a callback again: the schedule, jitter, and a capped Retry-After."""

from __future__ import annotations

import random
from dataclasses import dataclass, field


@dataclass(frozen=True)
class RetryPolicy:
    schedule_s: list[float]
    max_attempts: int = 3
    jitter: float = 0.2
    max_delay_s: float = 600.0
    retry_after_max_s: float = 300.0
    rand: random.Random = field(default_factory=random.Random, compare=False)

    def base_delay(self, attempt: int) -> float:
        """Delay after failed attempt ``attempt`` (1-based), before jitter."""
        n = len(self.schedule_s)
        if attempt <= n:
            return self.schedule_s[attempt - 1]
        # Past the schedule: keep doubling the last step (exponential), within the cap.
        return min(self.max_delay_s, self.schedule_s[-1] * 2 ** min(attempt - n, 32))

    def delay(self, attempt: int, retry_after_s: float | None = None) -> float:
        """Jittered backoff; an endpoint's Retry-After wins when longer, up to its cap."""
        base = self.base_delay(attempt)
        delay = base * self.rand.uniform(1 - self.jitter, 1 + self.jitter) if self.jitter else base
        if retry_after_s is not None:
            delay = max(delay, min(retry_after_s, self.retry_after_max_s))
        return delay

    def exhausted(self, attempt: int) -> bool:
        return attempt >= self.max_attempts
