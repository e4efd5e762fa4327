"""GET /health, /health/agent and /health/lovable (the runner serves /health/live,
/health/ready and /metrics). Figures that cost a JetStream round trip are cached briefly,
since probes call these often."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from conveyor.receiver.handlers.webhooks import respond
from conveyor.receiver.schemas import AgentHealth, Health, LovableHealth
from conveyor.receiver.state import NATS_DOWN, STATE, Receiver
from conveyor.shared import bus
from conveyor.shared.contracts import subjects
from conveyor.shared.contracts.events import job_record_decoder

_SAMPLE = 200  # job-record updates looked at for /health/agent
_QUEUE_CACHE_S = 1.0
_AGENT_CACHE_S = 5.0


@dataclass
class _Cache:
    values: dict[str, tuple[float, Any]] = field(default_factory=dict)

    def get(self, key: str) -> Any:
        hit = self.values.get(key)
        return hit[1] if hit is not None and hit[0] > time.monotonic() else None

    def put(self, key: str, value: Any, ttl: float) -> Any:
        self.values[key] = (time.monotonic() + ttl, value)
        return value


_cache: web.AppKey[_Cache] = web.AppKey("health_cache", _Cache)


def install(app: web.Application) -> None:
    app[_cache] = _Cache()


async def _queue_depth(st: Receiver, cache: _Cache) -> int | None:
    if (depth := cache.get("queue_depth")) is not None:
        return int(depth)
    if not st.available or st.js is None:
        return None
    try:
        depth = await st.js.stream_messages(subjects.JOBS)
    except (*NATS_DOWN, bus.NotFound):
        return None
    return int(cache.put("queue_depth", depth, _QUEUE_CACHE_S))


async def health(request: web.Request) -> web.Response:
    st = request.app[STATE]
    depth = await _queue_depth(st, request.app[_cache])
    ok = st.available
    body = Health(
        status="ok" if ok else "degraded",
        uptime=round(time.time() - st.started, 3),
        queue_depth=depth,
        nats_connected=st.rt.connected,
        instance=st.rt.instance,
    )
    return respond(
        200 if ok else 503, body, {"Retry-After": str(st.settings.retry_after_s)} if not ok else None
    )


async def agent(request: web.Request) -> web.Response:
    st = request.app[STATE]
    cache = request.app[_cache]
    if (cached := cache.get("agent")) is not None:
        return respond(200, cached)
    st.require_nats()
    with st.nats_errors():
        waiting, sample = await asyncio.gather(_workers_waiting(st), _recent_records(st))
    finished = [r for r in sample if r.terminal]
    failed = sum(1 for r in finished if r.status in ("failed", "timeout"))
    times = [r.finished_at or r.updated_at for r in finished]
    body = AgentHealth(
        agents_available=list(st.agents),
        workers_waiting=waiting,
        last_execution=max(times) if times else None,
        error_rate=round(failed / len(finished), 4) if finished else None,
        sample_size=len(sample),
    )
    return respond(200, cache.put("agent", body, _AGENT_CACHE_S))


async def _workers_waiting(st: Receiver) -> int | None:
    assert st.js is not None
    try:
        return (await st.js.consumer_state(subjects.JOBS, subjects.WORKERS)).waiting
    except bus.NotFound:
        return 0


async def _recent_records(st: Receiver) -> list[Any]:
    """The latest record of each job among the last ``_SAMPLE`` updates of KV ``jobs``."""
    assert st.js is not None
    stream = f"KV_{subjects.KV_JOBS}"
    state = await st.js.stream_state(stream)
    if not state.messages:
        return []
    start = max(state.first_seq, state.last_seq - _SAMPLE + 1)
    latest: dict[str, Any] = {}
    for data in await st.js.read_from(stream, f"$KV.{subjects.KV_JOBS}.>", start_seq=start, max_msgs=_SAMPLE):
        with contextlib.suppress(Exception):
            record = job_record_decoder.decode(data)
            latest[record.job_id] = record
    return list(latest.values())


async def lovable(request: web.Request) -> web.Response:
    st = request.app[STATE]
    last: dt.datetime | None = None
    if st.available and st.js is not None:
        with contextlib.suppress(*NATS_DOWN, bus.NotFound):
            msg = await st.js.last_msg(subjects.EVENTS, "events.lovable.>")
            last = msg.time
    if last is None:  # NATS unreachable, or nothing stored: what this replica saw
        seen = st.last_webhook.get("lovable")
        last = dt.datetime.fromtimestamp(seen, dt.UTC) if seen else None
    body = LovableHealth(
        last_webhook_received=last,
        secret_configured="lovable" in st.sources,
        callback_url_configured=bool(st.settings.lovable_callback_url),
    )
    return respond(200, body)
