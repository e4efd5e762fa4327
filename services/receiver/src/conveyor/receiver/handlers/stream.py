"""GET /api/jobs/{id}/stream: the job's record as Server-Sent Events, from a KV watch.

Any replica serves any job (the watch reads JetStream, not this process). Every event
carries ``id: <KV revision>``, so a client that reconnects with Last-Event-ID gets only what
it missed. ``event: status`` when the status changed, ``event: progress`` otherwise; the
stream closes after a terminal state, after SSE_MAX_S, when NATS goes away (``event: error``)
or when the receiver stops. A ``: heartbeat`` comment goes out every SSE_HEARTBEAT_S.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import nats.errors
from aiohttp import web
from nats.js.kv import KeyValue

from conveyor.receiver.handlers.jobs import read_access, shown
from conveyor.receiver.state import RATE_LIMIT, Receiver
from conveyor.shared import subjects
from conveyor.shared.events import encoder, job_record_decoder

log = logging.getLogger(__name__)

_DELETE_OPS = ("DEL", "PURGE")


def _last_event_id(request: web.Request) -> int | None:
    raw = request.headers.get("Last-Event-ID", "").strip()
    return int(raw) if raw.isascii() and raw.isdigit() else None


async def stream(request: web.Request) -> web.StreamResponse:
    st, record = await read_access(request)  # 404 before the stream starts
    job_id = record.job_id
    kv = st.bucket(subjects.KV_JOBS)
    with st.nats_errors():
        # A short inactivity limit: the server drops the watch soon after a client leaves.
        watcher = await kv.watch(job_id, inactive_threshold=30.0)
    headers = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    if (decision := request.get(RATE_LIMIT)) is not None:
        headers.update(decision.headers())
    resp = web.StreamResponse(status=200, headers=headers)
    st.metrics.sse_streams.inc()
    try:
        await resp.prepare(request)
        await _pump(st, resp, watcher, _last_event_id(request))
    except ConnectionError:
        log.debug("sse client for %s went away", job_id)
    finally:
        st.metrics.sse_streams.dec()
        with contextlib.suppress(Exception):
            await watcher.stop()
    return resp


async def _pump(
    st: Receiver, resp: web.StreamResponse, watcher: KeyValue.KeyWatcher, last_id: int | None
) -> None:
    loop = asyncio.get_running_loop()
    beat_s = st.settings.sse_heartbeat_s
    deadline = loop.time() + st.settings.sse_max_s
    next_beat = loop.time() + beat_s
    previous: str | None = None
    while True:
        now = loop.time()
        if st.rt.stopping.is_set() or now >= deadline:
            return
        if not st.rt.connected:
            await resp.write(
                b'event: error\ndata: {"error":"unavailable","message":"NATS is unreachable"}\n\n'
            )
            return
        if now >= next_beat:
            await resp.write(b": heartbeat\n\n")
            next_beat = now + beat_s
            continue
        try:
            entry = await watcher.updates(timeout=min(1.0, next_beat - now, deadline - now))
        except nats.errors.TimeoutError:
            continue
        if entry is None:  # the watch's "caught up" marker
            continue
        if entry.operation in _DELETE_OPS:
            await resp.write(f"id: {entry.revision}\nevent: deleted\ndata: {{}}\n\n".encode())
            return
        record = job_record_decoder.decode(entry.value or b"")
        if last_id is None or entry.revision > last_id:
            kind = "status" if record.status != previous else "progress"
            data = encoder.encode(shown(record))
            await resp.write(b"id: %d\nevent: %s\ndata: %s\n\n" % (entry.revision, kind.encode(), data))
        previous = record.status
        if record.terminal:
            return
