"""Offline agents: deterministic analyses of the payload, useful with no API key at all.

Each analysis is a plain function ``(Payload, agent name) -> ResultBody``; ``sleep`` is the one
that waits, and is run by the builtin backend itself.
"""

from __future__ import annotations

from collections.abc import Callable

from conveyor.executor.builtin import architect, dev, pm, qa, ux
from conveyor.executor.builtin.payload import Payload
from conveyor.shared.contracts.events import ResultBody

Analysis = Callable[[Payload, str], ResultBody]


def noop(payload: Payload, agent: str) -> ResultBody:
    return ResultBody(summary=f"{agent}: nothing to do (noop agent)")


ANALYSES: dict[str, Analysis | None] = {
    "dev": dev.analyse,
    "qa": qa.analyse,
    "architect": architect.analyse,
    "pm": pm.analyse,
    "ux-design-expert": ux.analyse,
    "noop": noop,
    "sleep": None,  # asynchronous: handled by the backend
    "pr-review": None,  # fetches a pull request's diff: handled by the backend (tools.review)
}

__all__ = ["ANALYSES", "Analysis", "Payload"]
