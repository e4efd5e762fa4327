"""Results waiting for a later attempt are parked in JetStream, not held by the consumer.

A result that must wait (its endpoint's circuit is open, or an attempt failed and the next
is due later) used to be NAKed with a delay. A NAKed message stays unacknowledged until it
comes back, and the results consumer hands out at most ``CALLBACK_MAX_ACK_PENDING`` of those
across replicas: one endpoint down for hours, with that many results for it, stopped every
other endpoint's callbacks too.

Parking stores the result instead, as a one-shot scheduled message (ADR-51, ``@at``) in the
work-queue stream ``PARKED``: ``parked.hold.<job_id>`` holds the body and headers, and at
the due time the server publishes it to ``parked.results.<job_id>``, which the consumer
``deliverer-parked`` takes like any result. Only once the hold is stored (its PubAck) is the
waiting message acknowledged, so a crash in between leaves it to be delivered again, never
lost; holding it twice is harmless, because a later hold on the same subject replaces the
earlier one. When parking fails, the caller falls back to the NAK with the same delay.

A result paused again and again by a circuit that stays open is parked for longer each time
(the cool-down, doubled per pause, up to ``CALLBACK_RETRY_MAX_DELAY_S``), so an endpoint that
is down for hours costs each of its results a look every ten minutes, not every 30 seconds.
The count travels with the result in the ``Conveyor-Paused`` header.
"""

from __future__ import annotations

import datetime as dt
import random

from conveyor.shared import bus
from conveyor.shared.contracts import subjects

PAUSED = "Conveyor-Paused"  # how many times the circuit has paused this result


def is_parked(msg: bus.Delivery) -> bool:
    """Whether ``msg`` is a parked result that came back (not the executor's original)."""
    return msg.subject.startswith(subjects.PARKED_RESULTS_PREFIX)


def pauses_of(msg: bus.Delivery) -> int:
    value = (msg.headers or {}).get(PAUSED, "")
    return int(value) if value.isdigit() else 0


def pause_s(pauses: int, wait_s: float, cooldown_s: float, max_s: float) -> float:
    """How long the ``pauses``-th pause (1-based) parks a result: never less than the circuit's
    own ``wait_s``; from the second pause on, the cool-down doubled per pause, up to ``max_s``,
    spread by up to a tenth so that the results come back one by one."""
    if pauses <= 1:
        return wait_s
    longer = min(max_s, cooldown_s * 2 ** min(pauses - 1, 32))
    return max(wait_s, longer * random.uniform(1.0, 1.1))


class Parking:
    def __init__(self, conn: bus.Bus) -> None:
        self.bus = conn

    async def hold(self, msg: bus.Delivery, job_id: str, delay_s: float, *, paused: bool = False) -> None:
        """Store ``msg`` to come back on ``parked.results.<job_id>`` in ``delay_s``; returns once
        JetStream has it (raises otherwise: then nothing is parked)."""
        due = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=max(delay_s, 0.0))
        headers = {k: v for k, v in (msg.headers or {}).items() if not k.startswith("Nats-")}
        if paused:
            headers[PAUSED] = str(pauses_of(msg) + 1)
        else:  # an attempt was made: the count is of pauses since the last one
            headers.pop(PAUSED, None)
        headers.update(
            {
                subjects.H_SCHEDULE: "@at " + due.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
                subjects.H_SCHEDULE_TARGET: subjects.parked_result(job_id),
            }
        )
        # The result's own headers (traceparent too) go with it as they are.
        await self.bus.publish(
            subjects.parked_hold(job_id), msg.data, stream=subjects.PARKED, headers=headers, trace=False
        )
