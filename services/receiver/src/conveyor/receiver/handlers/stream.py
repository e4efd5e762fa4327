"""GET /api/jobs/{id}/stream: the job's record as Server-Sent Events, from a KV watch, and the
text its model streams as ``event: output`` frames.

Any replica serves any job (the watch reads JetStream, not this process). Every event
carries ``id: <KV revision>``, so a client that reconnects with Last-Event-ID gets only what
it missed. ``event: status`` when the status changed, ``event: progress`` otherwise; the
stream closes after a terminal state, after SSE_MAX_S, when NATS goes away (``event: error``)
or when the receiver stops. A ``: heartbeat`` comment goes out every SSE_HEARTBEAT_S.

Output frames (``data: {"attempt", "seq", "text"}``, no ``id``: they do not move
Last-Event-ID) come from a core NATS subscription to ``joboutput.<job_id>`` (executor
handlers/meter.py says why not a stream): text sent before the client connected is not
replayed (``seq`` starts above 1), and the job's result carries the whole answer. Both
sources feed one queue, so frames go out in the order they arrived; the executor publishes
the last text before it writes the terminal record.

Each stream holds a KV watch (a consumer on the server) for up to SSE_MAX_S, so a process
serves at most SSE_MAX_STREAMS at once, and SSE_MAX_STREAMS_PER_CLIENT for one API key (or,
without a key, one client address); past either, 429. The slot is given back when the stream
ends, however it ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from aiohttp import web

from conveyor.receiver.handlers.jobs import load, shown
from conveyor.receiver.state import STATE, Receiver
from conveyor.shared import bus
from conveyor.shared.contracts import subjects
from conveyor.shared.contracts.events import NOT_JSON, encoder, job_output_decoder, job_record_decoder
from conveyor.shared.runtime.http import HTTPError

log = logging.getLogger(__name__)

MAX_QUEUED_OUTPUT = 256  # output frames waiting for a slow client, at most


def _last_event_id(request: web.Request) -> int | None:
    raw = request.headers.get("Last-Event-ID", "").strip()
    return int(raw) if raw.isascii() and raw.isdigit() else None


async def stream(request: web.Request) -> web.StreamResponse:
    st = request.app[STATE]
    principal = await st.reader(request)
    record, _ = await load(st, request.match_info["job_id"], principal)  # 404 before the stream starts
    job_id = record.job_id
    # Streams are counted per key; without one, per client address. Admin keys have no
    # per-client limit (as they have no rate limit), only the process's.
    client = (
        None
        if principal is not None and principal.admin
        else (f"k:{principal.key_id}" if principal is not None else f"a:{st.client_address(request)}")
    )
    full = st.streams.take(client)
    if full is not None:
        st.metrics.rate_limited.labels("stream").inc()
        raise HTTPError(
            429,
            "too_many_streams",
            f"{full} (SSE_MAX_STREAMS, SSE_MAX_STREAMS_PER_CLIENT); close one or retry later",
            headers={"Retry-After": str(st.settings.retry_after_s)},
        )
    try:
        return await _serve(request, st, job_id)
    finally:
        st.streams.give(client)


async def _serve(request: web.Request, st: Receiver, job_id: str) -> web.StreamResponse:
    kv = st.bucket(subjects.KV_JOBS)
    feed = _Feed()
    with st.nats_errors():
        # The text first, so none sent after the record's first frame is missed.
        sub = await st.rt.bus.listen(subjects.job_output(job_id), feed.on_output)
        try:
            # A short inactivity limit: the server drops the watch soon after a client leaves.
            watcher = await kv.watch(job_id, inactive_threshold=30.0)
        except BaseException:
            with contextlib.suppress(Exception):
                await sub.stop()
            raise
    reader = asyncio.create_task(feed.read(watcher), name=f"sse-{job_id}")
    resp = web.StreamResponse(status=200, headers=st.stream_headers(request))
    st.metrics.sse_streams.inc()
    try:
        await resp.prepare(request)
        await _pump(st, request, resp, feed, _last_event_id(request))
    except ConnectionError:
        log.debug("sse client for %s went away", job_id)
    finally:
        st.metrics.sse_streams.dec()
        reader.cancel()
        with contextlib.suppress(BaseException):
            await reader
        with contextlib.suppress(Exception):
            await sub.stop()
        with contextlib.suppress(Exception):
            await watcher.stop()
    return resp


class _Feed:
    """The record's changes (from the KV watch) and the job's streamed text (core NATS,
    ``joboutput.<job_id>``) in the order they arrived, for one stream."""

    def __init__(self) -> None:
        self.items: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        self.outputs = 0  # output frames queued and not written yet

    async def on_output(self, msg: bus.Message) -> None:
        if self.outputs >= MAX_QUEUED_OUTPUT:
            return  # a client that cannot keep up loses text (the ``seq`` numbers show where)
        try:
            out = job_output_decoder.decode(msg.data)
        except NOT_JSON:
            return
        data = encoder.encode({"attempt": out.attempt, "seq": out.seq, "text": out.text})
        self.outputs += 1
        self.items.put_nowait(("output", b"event: output\ndata: %s\n\n" % data))

    async def read(self, watcher: bus.Watcher) -> None:
        # Iterated, not ``updates(timeout=)``: its asyncio.wait_for can swallow the cancel that
        # ends this task when an entry arrives at the same moment (Python 3.11).
        try:
            async for entry in watcher:
                if entry is not None:  # None: the watch's "caught up" marker
                    self.items.put_nowait(("record", entry))
        except Exception as exc:
            self.items.put_nowait(("error", exc))


async def _pump(
    st: Receiver,
    request: web.Request,
    resp: web.StreamResponse,
    feed: _Feed,
    last_id: int | None,
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
        if request.transport is None or request.transport.is_closing():
            return  # the client left: its slot and watch are freed now, not at the next write
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
            async with asyncio.timeout(min(1.0, next_beat - now, deadline - now)):
                kind, item = await feed.items.get()
        except TimeoutError:
            continue
        if kind == "output":
            feed.outputs -= 1
            await resp.write(item)
            continue
        if kind == "error":
            raise item
        entry = item
        if entry.deleted:
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
