"""The bus: one NATS connection and everything a service does with it."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, NamedTuple, Protocol

import nats
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, ConsumerInfo, DeliverPolicy

from conveyor.shared.bus import fastpaths, reader, streamread
from conveyor.shared.bus.consumer import Consumer, ConsumerMetrics, Handler
from conveyor.shared.bus.errors import Timeout, mapped
from conveyor.shared.bus.jsrequests import EXPECTED_STREAM, JsRequests, PubAck
from conveyor.shared.bus.kv import Kv
from conveyor.shared.bus.streams import DEFAULT_RETENTION, Retention, ensure_kv, ensure_streams
from conveyor.shared.contracts import subjects
from conveyor.shared.runtime.telemetry import inject_headers


class Message(Protocol):
    """A message read back: a request's reply, a subscription's message."""

    subject: str
    data: bytes
    headers: dict[str, str] | None


class Stored(NamedTuple):
    """A message as a stream keeps it."""

    seq: int
    subject: str
    data: bytes
    headers: dict[str, str] | None
    time: dt.datetime | None = None


class StreamState(NamedTuple):
    """What a stream holds now (``subjects``: counts per subject, when read with a filter)."""

    messages: int
    bytes: int
    first_seq: int
    last_seq: int
    consumers: int
    subjects: dict[str, int]


class ConsumerState(NamedTuple):
    """A durable consumer's backlog: not yet delivered, delivered and not acknowledged, and
    pull requests waiting for messages."""

    pending: int
    ack_pending: int
    waiting: int
    redelivered: int


class Subscription:
    """A core NATS subscription (``bus.subscribe``); ``stop()`` ends it."""

    def __init__(self, sub: Any) -> None:
        self._sub = sub

    async def stop(self) -> None:
        with mapped():
            await self._sub.unsubscribe()


class Bus:
    """One connection to NATS: publish, request, KV, stream reads, durable consumers."""

    def __init__(self, nc: NATS, *, timeout_s: float = 5.0) -> None:
        self._nc = nc
        self._js: JetStreamContext = nc.jetstream(timeout=timeout_s)
        self._requests = JsRequests(nc, timeout_s)
        self._kv: dict[str, Kv] = {}
        self._started = False

    # -- connection ---------------------------------------------------------------------------

    @classmethod
    async def connect(
        cls,
        servers: str | list[str],
        *,
        name: str | None = None,
        reconnect: bool = True,
        timeout_s: float = 5.0,
        connect_timeout_s: float = 2.0,
        fast_paths: bool | None = None,
        on_error: Callable[[Exception], Awaitable[None]] | None = None,
        on_disconnect: Callable[[], Awaitable[None]] | None = None,
        on_reconnect: Callable[[], Awaitable[None]] | None = None,
    ) -> Bus:
        """Install the fast paths (if wanted and nats-py is the supported version: fastpaths.py),
        connect, and start the reply subscription. ``reconnect``: keep reconnecting for ever
        (services) rather than fail at the first loss (one-shot tools)."""
        fastpaths.install(fast_paths)
        options: dict[str, Any] = {"name": name, "connect_timeout": connect_timeout_s}
        if reconnect:
            options.update(max_reconnect_attempts=-1, reconnect_time_wait=1, allow_reconnect=True)
        else:
            # max_reconnect_attempts=1: nats-py retries the initial connect forever at 0.
            options.update(allow_reconnect=False, max_reconnect_attempts=1, reconnect_time_wait=0.2)
        for key, cb in (
            ("error_cb", on_error),
            ("disconnected_cb", on_disconnect),
            ("reconnected_cb", on_reconnect),
        ):
            if cb is not None:
                options[key] = cb
        with mapped():
            nc = await nats.connect(servers=servers, **options)
        bus = cls(nc, timeout_s=timeout_s)
        await bus.start()
        return bus

    async def start(self) -> None:
        if not self._started:
            await self._requests.start()
            self._started = True

    async def close(self, *, drain_s: float = 10.0) -> None:
        """Stop the reply subscription, drain (what is in flight gets its answer; ``drain_s=0``:
        no drain), close."""
        if self._started:
            self._started = False
            try:
                await self._requests.stop()
            except Exception:  # closing anyway
                pass
        if drain_s > 0 and self._nc.is_connected:
            try:
                await asyncio.wait_for(self._nc.drain(), drain_s)
            except Exception:  # a drain that cannot finish: close below
                pass
        try:
            await self._nc.close()
        except Exception:
            pass

    @property
    def connected(self) -> bool:
        return self._nc.is_connected

    @property
    def closed(self) -> bool:
        return self._nc.is_closed

    @property
    def reconnects(self) -> int:
        """How many times the connection was made again after a loss."""
        return int(self._nc.stats["reconnects"])

    @property
    def max_payload(self) -> int:
        """The most one message (headers and body) may be on the connected server."""
        return int(self._nc.max_payload)

    # -- publishing ---------------------------------------------------------------------------

    @staticmethod
    def _headers(
        headers: Mapping[str, str] | None, msg_id: str | None, stream: str | None, trace: bool
    ) -> dict[str, str]:
        out = inject_headers(dict(headers) if headers else None) if trace else dict(headers or {})
        if msg_id is not None:
            out[subjects.MSG_ID] = msg_id
        if stream is not None:
            out[EXPECTED_STREAM] = stream
        return out

    async def publish(
        self,
        subject: str,
        data: bytes,
        *,
        msg_id: str | None = None,
        stream: str | None = None,
        headers: Mapping[str, str] | None = None,
        timeout_s: float | None = None,
        trace: bool = True,
    ) -> PubAck:
        """Store ``data`` on a stream's ``subject`` and wait for JetStream's PubAck.

        ``msg_id``: JetStream drops a second message with it inside the duplicate window
        (``ack.duplicate``). ``stream``: refused unless that stream holds the subject.
        ``trace``: the current trace context goes in the headers (``traceparent``).
        Errors: Timeout, Unavailable (no stream, no connection), TooLarge, BusError."""
        return await self._requests.publish(
            subject, data, self._headers(headers, msg_id, stream, trace), timeout_s=timeout_s
        )

    async def send(
        self,
        subject: str,
        data: bytes,
        *,
        msg_id: str | None = None,
        stream: str | None = None,
        headers: Mapping[str, str] | None = None,
        timeout_s: float | None = None,
        trace: bool = True,
    ) -> asyncio.Future[PubAck]:
        """:meth:`publish` without waiting: the future ends with the PubAck or the error.
        Two sends before awaiting either go out in one flush."""
        return await self._requests.send(
            subject, data, self._headers(headers, msg_id, stream, trace), timeout_s=timeout_s
        )

    async def publish_unacked(self, subject: str, data: bytes) -> None:
        """A plain publish onto a stream's subject: stored by JetStream, no acknowledgement asked
        for or waited on. For what may be lost without losing accepted work (a list entry)."""
        with mapped():
            await self._requests.publish_unacked(subject, data)

    async def notify(self, subject: str, data: bytes, headers: Mapping[str, str] | None = None) -> None:
        """A core NATS publish (no stream, no acknowledgement)."""
        with mapped():
            await self._nc.publish(subject, data, headers=dict(headers) if headers else None)

    async def request(
        self,
        subject: str,
        data: bytes = b"",
        headers: Mapping[str, str] | None = None,
        *,
        timeout_s: float | None = None,
    ) -> Message:
        """Request/reply: the reply, or Timeout / Unavailable (nobody listens)."""
        return await self._requests.request(
            subject, data, dict(headers) if headers else None, timeout_s=timeout_s
        )

    async def subscribe(self, subject: str, handle: Callable[[Message], None]) -> Subscription:
        """``handle(msg)`` for each core NATS message on ``subject`` (it must not block)."""
        with mapped():
            return Subscription(await reader.deliver_directly(self._nc, subject, handle))

    async def listen(
        self,
        subject: str,
        handle: Callable[[Message], Awaitable[None]],
        *,
        queue: str = "",
        pending_msgs_limit: int = 65_536,
    ) -> Subscription:
        """``await handle(msg)`` for each core NATS message on ``subject``, one at a time from
        the subscription's own task (for handlers that wait); with ``queue``, each message
        reaches one member of the queue group."""
        with mapped():
            sub = await self._nc.subscribe(
                subject, queue=queue, cb=handle, pending_msgs_limit=pending_msgs_limit
            )
        return Subscription(sub)

    async def flush(self, timeout_s: float = 5.0) -> None:
        """Wait until the server has seen everything sent so far (e.g. a new subscription)."""
        with mapped():
            await self._nc.flush(timeout=timeout_s)

    # -- KV -----------------------------------------------------------------------------------

    async def declare(
        self,
        streams: list[str],
        buckets: list[str],
        *,
        replicas: int = 1,
        retention: Retention = DEFAULT_RETENTION,
    ) -> dict[str, Kv]:
        """Create or converge the named streams and KV buckets (streams.py); their handles."""
        with mapped():
            await ensure_streams(self._js, streams, replicas=replicas, retention=retention)
            handles = await ensure_kv(self._js, buckets, replicas=replicas, retention=retention)
        for name, handle in handles.items():
            self._kv[name] = Kv(handle, self._requests)
        return {name: self._kv[name] for name in handles}

    async def kv(self, bucket: str, *, timeout_s: float | None = None) -> Kv:
        """The bucket ``bucket`` (NotFound if it does not exist). ``timeout_s``: how long its
        calls wait for JetStream (default: the bus's)."""
        key = bucket if timeout_s is None else f"{bucket}@{timeout_s}"
        kv = self._kv.get(key)
        if kv is None:
            js = self._js if timeout_s is None else self._nc.jetstream(timeout=timeout_s)
            with mapped():
                kv = self._kv[key] = Kv(await js.key_value(bucket), self._requests)
        return kv

    # -- streams ------------------------------------------------------------------------------

    async def stream_state(self, stream: str, *, subjects_filter: str | None = None) -> StreamState:
        """What ``stream`` holds now; with ``subjects_filter``, its count per matching subject."""
        with mapped():
            st = (await self._js.stream_info(stream, subjects_filter=subjects_filter)).state
        return StreamState(
            messages=st.messages or 0,
            bytes=st.bytes or 0,
            first_seq=st.first_seq or 0,
            last_seq=st.last_seq or 0,
            consumers=st.consumer_count or 0,
            subjects=dict(st.subjects or {}),
        )

    async def stream_messages(self, stream: str, *, subject: str | None = None) -> int:
        """How many messages ``stream`` holds (on ``subject`` only, when given)."""
        if subject is None:
            return (await self.stream_state(stream)).messages
        return sum((await self.subject_counts(stream, subject)).values())

    async def subject_counts(self, stream: str, subject_filter: str) -> dict[str, int]:
        """How many messages ``stream`` holds on each subject matching ``subject_filter``."""
        return (await self.stream_state(stream, subjects_filter=subject_filter)).subjects

    async def get_msg(
        self, stream: str, seq: int = 0, *, subject: str | None = None, next: bool = False
    ) -> Stored:
        """The message at ``seq`` (with ``next``: the first at or after it, on ``subject``)."""
        with mapped():
            raw = await self._js.get_msg(stream, seq, subject=subject, next=next)
        return Stored(raw.seq or 0, raw.subject or "", raw.data or b"", raw.headers, raw.time)

    async def last_msg(self, stream: str, subject: str) -> Stored:
        """The last message on ``subject``; NotFound when there is none."""
        with mapped():
            raw = await self._js.get_last_msg(stream, subject)
        return Stored(raw.seq or 0, raw.subject or "", raw.data or b"", raw.headers, raw.time)

    async def delete_msg(self, stream: str, seq: int) -> None:
        with mapped():
            await self._js.delete_msg(stream, seq)

    async def purge(self, stream: str, *, subject: str | None = None) -> None:
        """Remove every message of ``stream`` (on ``subject`` only, when given)."""
        with mapped():
            await self._js.purge_stream(stream, subject=subject)

    async def next_message(
        self,
        stream: str,
        subject_filter: str,
        *,
        seq: int | None = None,
        since: dt.datetime | None = None,
    ) -> streamread.Stored | None:
        """The first message on ``subject_filter`` at or after ``seq`` (or stored at or after
        ``since``); None when there is none. A direct get: any replica answers, no consumer.
        Lists page through streams this way (streamread.py)."""
        return await streamread.next_message(self._requests, stream, subject_filter, seq=seq, since=since)

    # -- consumers ----------------------------------------------------------------------------

    async def add_consumer(self, stream: str, config: ConsumerConfig) -> ConsumerInfo:
        """Create or converge a durable (the server's create is create-or-update)."""
        with mapped():
            return await self._js.add_consumer(stream, config)

    async def consumer_state(
        self, stream: str, name: str, *, timeout_s: float | None = None
    ) -> ConsumerState:
        """The backlog of ``stream``'s durable consumer ``name`` (NotFound when it has none)."""
        with mapped():
            info = await self._js.consumer_info(stream, name, timeout=timeout_s)
        return ConsumerState(
            pending=info.num_pending or 0,
            ack_pending=info.num_ack_pending or 0,
            waiting=info.num_waiting or 0,
            redelivered=info.num_redelivered or 0,
        )

    async def read_from(
        self, stream: str, subject_filter: str, *, start_seq: int, max_msgs: int, timeout_s: float = 1.0
    ) -> list[bytes]:
        """The bodies of up to ``max_msgs`` messages of ``stream`` on ``subject_filter`` from
        ``start_seq`` on, read in one pull by a short-lived in-memory consumer; what arrives
        within ``timeout_s``."""
        config = ConsumerConfig(
            deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
            opt_start_seq=start_seq,
            ack_policy=AckPolicy.NONE,
            inactive_threshold=10.0,
            mem_storage=True,
        )
        with mapped():
            psub = await self._js.pull_subscribe(subject_filter, stream=stream, config=config)
        try:
            with mapped():
                return [msg.data for msg in await psub.fetch(max_msgs, timeout=timeout_s)]
        except Timeout:
            return []
        finally:
            try:
                await psub.unsubscribe()
            except Exception:  # the server drops it when inactive anyway
                pass

    def consumer(
        self,
        stream: str,
        config: ConsumerConfig,
        handler: Handler,
        *,
        stage: str,
        metrics: ConsumerMetrics,
        concurrency: int,
        batch: int,
        poll_s: float = 1.0,
        retry_base_s: float = 1.0,
        retry_cap_s: float = 60.0,
    ) -> Consumer:
        """A durable pull consumer on this connection (not yet started): consumer.py."""
        return Consumer(
            bus=self,
            stream=stream,
            config=config,
            handler=handler,
            stage=stage,
            metrics=metrics,
            concurrency=concurrency,
            batch=batch,
            poll_s=poll_s,
            retry_base_s=retry_base_s,
            retry_cap_s=retry_cap_s,
        )
