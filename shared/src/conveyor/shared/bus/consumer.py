"""Durable pull consumers: fetch, run a handler per message with bounded concurrency, settle.

Settlement lives here and in the Delivery a handler gets (delivery.py), nowhere else:
  handler returns            -> ack (unless the handler settled the message itself)
  RetryableError             -> nak with delay (its own, else exponential backoff with jitter)
  PermanentError, bad decode -> copy to the DLQ, then term
  any other exception        -> a bug: logged, nak with backoff; the attempt limit bounds it
  last attempt failing       -> copy to the DLQ, then term
  cancelled by shutdown      -> nak at once, so another replica picks it up now
The DLQ copy is acknowledged by JetStream before the original is terminated, so a crash
between the two leaves the message redeliverable, never lost.

The attempt limit is the config's ``max_deliver``, enforced here: the durable itself is
created with no limit. JetStream never redelivers past its own max_deliver, so a last attempt
NAKed by a shutdown, or by a DLQ publish that failed, would be left neither handled nor
dead-lettered; unlimited, it comes back and is dead-lettered on that later delivery.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import itertools
import logging
import random
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import msgspec
import nats.errors
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js.api import ConsumerConfig
from prometheus_client import CollectorRegistry, Counter, Histogram

from conveyor.shared.bus import reader, wire
from conveyor.shared.bus.delivery import Delivery
from conveyor.shared.contracts import subjects
from conveyor.shared.contracts.errors import PermanentError, RetryableError
from conveyor.shared.contracts.events import DEFAULT_PROJECT, NOT_JSON, utcnow

if TYPE_CHECKING:
    from conveyor.shared.bus.client import Bus

log = logging.getLogger(__name__)

Handler = Callable[[Delivery], Awaitable[None]]

# Status codes the server sends on a pull's deliver subject (no body, a Status header).
STATUS = "Status"
HEARTBEAT = "100"
NO_MESSAGES = "404"
REQUEST_TIMEOUT = "408"

MAX_OPEN_PULLS = 4
PULL_GRACE_S = 1.0  # past its expiry, a pull with no word from the server is taken as lost


@dataclass
class _Pull:
    token: str  # the last token of its reply subject
    left: int  # messages it may still deliver
    deadline: float  # loop time after which it is forgotten


def backoff_delay(attempt: int, base_s: float = 1.0, cap_s: float = 60.0) -> float:
    """Exponential backoff with full jitter for the ``attempt``-th delivery (1-based)."""
    ceiling = min(cap_s, base_s * (2 ** max(0, attempt - 1)))
    return random.uniform(ceiling / 2, ceiling)


class ConsumerMetrics:
    """Counters shared by every consumer of a service, on the service's registry."""

    def __init__(self, registry: CollectorRegistry, prefix: str) -> None:
        self.messages = Counter(
            f"{prefix}_messages",
            "Messages settled, by consumer and outcome.",
            ["consumer", "outcome"],
            registry=registry,
        )
        self.handle_seconds = Histogram(
            f"{prefix}_message_handle_seconds",
            "Time to handle one message, fetch to settle.",
            ["consumer"],
            registry=registry,
            buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900),
        )
        self.dead_letters = Counter(
            "dlq_messages",
            "Messages copied to the DLQ stream, by stage.",
            ["stage"],
            registry=registry,
        )


async def dead_letter(
    bus: Bus,
    msg: Delivery,
    *,
    stage: str,
    error: str,
    last_status: int | None = None,
    attempts: int | None = None,
    subject: str | None = None,
) -> None:
    """Copy ``msg`` to ``dlq.<stage>.<subject>``: body byte for byte, the story in headers.
    ``subject`` (default: the message's own) is the original subject recorded for replay."""
    subject = subject or msg.subject
    headers = {k: v for k, v in (msg.headers or {}).items() if not k.startswith("Nats-")}
    stream, seq = msg.stream, msg.stream_seq
    if msg.headers and subjects.MSG_ID in msg.headers:
        headers["Conveyor-Original-Msg-Id"] = msg.headers[subjects.MSG_ID]
    headers.update(
        {
            subjects.H_ORIGINAL_SUBJECT: subject,
            subjects.H_ORIGINAL_STREAM: stream,
            subjects.H_ORIGINAL_SEQ: str(seq),
            subjects.H_STAGE: stage,
            subjects.H_ERROR: error[:1000].replace("\r", " ").replace("\n", " "),
            subjects.H_ATTEMPTS: str(attempts if attempts is not None else msg.attempts),
            subjects.H_FAILED_AT: utcnow().isoformat(),
            # One dead letter per original message even if this runs twice.
            subjects.MSG_ID: f"dlq-{stage}-{stream}-{seq}" if seq else f"dlq-{stage}-{time.time_ns()}",
        }
    )
    if last_status is not None:
        headers[subjects.H_LAST_STATUS] = str(last_status)
    if subjects.H_PROJECT not in headers and (project := project_of(msg.data)) is not None:
        headers[subjects.H_PROJECT] = project
    await bus.publish(
        subjects.dlq(stage, subject), msg.data, stream=subjects.DLQ, headers=headers, trace=False
    )


class _Owned(msgspec.Struct):
    project: str = DEFAULT_PROJECT


_owned_decoder = msgspec.json.Decoder(_Owned)


def project_of(data: bytes) -> str | None:
    """The project a message belongs to, from its body (every message we publish carries one;
    older ones are the default project's). None for a body that is not ours to read: such a dead
    letter is an operator's (admin keys) alone."""
    try:
        return _owned_decoder.decode(data).project
    except NOT_JSON:
        return None


@dataclass
class Consumer:
    """One durable pull consumer run by this process (several replicas share the durable)."""

    bus: Bus
    stream: str
    config: ConsumerConfig
    handler: Handler
    stage: str
    metrics: ConsumerMetrics
    concurrency: int = 5
    batch: int = 64
    poll_s: float = 1.0
    retry_base_s: float = 1.0
    retry_cap_s: float = 60.0
    # The config's max_deliver (unset: no limit); the last attempt is dead-lettered.
    max_attempts: int = field(init=False)
    _sub: Subscription | None = None
    _next: str = ""  # the durable's pull-request subject
    _task: asyncio.Task[None] | None = None
    _inflight: set[asyncio.Task[None]] = field(default_factory=set)
    _stopping: asyncio.Event = field(default_factory=asyncio.Event)
    _outcomes: dict[str, Counter] = field(default_factory=dict)
    _seconds: Histogram | None = None
    _pulls: collections.deque[_Pull] = field(default_factory=collections.deque)  # open, oldest first
    _credit: int = 0  # messages the open pulls may still deliver
    _tokens: Iterator[int] = field(default_factory=itertools.count)
    _wake: asyncio.Event = field(default_factory=asyncio.Event)  # a slot freed or a pull ended
    _refused: str = ""  # why the server ended a pull early, if it did

    def __post_init__(self) -> None:
        self.max_attempts = self.config.max_deliver or -1
        # The limit is ours (see the module docstring); the server must keep redelivering.
        self.config = dataclasses.replace(self.config, max_deliver=-1)

    @property
    def name(self) -> str:
        assert self.config.durable_name
        return self.config.durable_name

    async def start(self) -> None:
        """Create or converge the durable, subscribe to its deliveries, and start pulling."""
        # The server's create is create-or-update for a durable: replicas converge on one config.
        await self.bus.add_consumer(self.stream, self.config)
        nc = self.bus._nc
        self._next = f"{self.bus._js._prefix}.CONSUMER.MSG.NEXT.{self.stream}.{self.name}"
        self._sub = await reader.deliver_directly(nc, nc.new_inbox() + ".*", self._arrived)
        # Children looked up once: a label lookup per message costs more than the count itself.
        self._outcomes = {
            outcome: self.metrics.messages.labels(self.name, outcome)
            for outcome in ("ok", "retried", "dead_lettered", "error")
        }
        self._seconds = self.metrics.handle_seconds.labels(self.name)
        self._task = asyncio.create_task(self._loop(), name=f"consume-{self.name}")

    async def stop(self, grace_s: float) -> None:
        """Stop pulling; let in-flight work finish for ``grace_s``; nak what is left."""
        self._stopping.set()
        self._wake.set()
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._sub is not None:
            # The open pull may still deliver: drain (unsubscribe, then take in what the server
            # sent before it saw that) so each late delivery is NAKed, not left to AckWait; the
            # server drops a pull nobody listens to. Before the connection drains, too.
            sub, self._sub = self._sub, None
            try:
                await asyncio.wait_for(sub.drain(), 5)
            except Exception:
                with contextlib.suppress(Exception):
                    await sub.unsubscribe()
        if self._inflight:
            _, pending = await asyncio.wait(self._inflight, timeout=grace_s)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=5)

    async def _loop(self) -> None:
        """Keep the free slots covered by open pull requests, a few at a time.

        A pull asks for up to ``batch`` messages and stays open up to ``poll_s``, delivering
        each message as it arrives (``_arrived`` starts its handling at once). A new pull goes
        out as soon as a quarter of the slots are neither busy nor covered by an open pull, so
        the next messages are already on their way while the last ones are handled: with one
        pull at a time, slots freed during a pull's round trip stood idle, and under load most
        pulls asked for one or two messages. A steady trickle still costs one pull per
        ``poll_s`` or per quarter of the slots, not one per message.
        """
        assert self._sub is not None
        prefix = self._sub.subject[:-1]  # "<inbox>."
        nc = self.bus._nc
        loop = asyncio.get_running_loop()
        expires = int(self.poll_s * 1_000_000_000)
        threshold = max(1, min(self.batch, self.concurrency) // 4)
        while not self._stopping.is_set():
            self._forget_lapsed(loop.time())
            want = min(self.concurrency - len(self._inflight) - self._credit, self.batch)
            if want < threshold or len(self._pulls) >= MAX_OPEN_PULLS:
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self.poll_s)
                continue
            if not nc.is_connected:
                # A request buffered while reconnecting would add credit the server never sees.
                if nc.is_closed:
                    return
                await asyncio.sleep(0.2)
                continue
            token = str(next(self._tokens))
            try:
                request = b'{"batch":%d,"expires":%d}' % (want, expires)
                await wire.send(nc, self._next, request, prefix + token)
            except (nats.errors.ConnectionClosedError, nats.errors.ConnectionDrainingError):
                return
            except Exception as exc:  # NATS unreachable or restarting: keep trying
                log.warning("pull from %s failed: %s", self.name, exc)
                await asyncio.sleep(0.5)
                continue
            # A pull lost with a restarting server is forgotten by the clock.
            self._pulls.append(_Pull(token, want, loop.time() + self.poll_s + PULL_GRACE_S))
            self._credit += want
            if self._refused:
                # 409 and the like (consumer deleted, leader changing): do not hammer the server.
                log.warning("pull from %s refused: %s", self.name, self._refused)
                self._refused = ""
                await asyncio.sleep(0.5)

    def _forget_lapsed(self, now: float) -> None:
        while self._pulls and self._pulls[0].deadline < now:
            self._credit -= self._pulls.popleft().left

    def _pull_ended(self, token: str) -> None:
        for pull in self._pulls:
            if pull.token == token:
                self._pulls.remove(pull)
                self._credit -= pull.left
                break
        self._wake.set()

    def _slot_freed(self, task: asyncio.Task[None]) -> None:
        self._inflight.discard(task)
        self._wake.set()

    def _arrived(self, msg: Msg) -> None:
        """A delivery for one of our pulls, or the server's status ending one (called from the
        client's read loop: it only starts work)."""
        if not msg.data and msg.headers and (status := msg.headers.get(STATUS)):
            if status != HEARTBEAT:
                if status not in (REQUEST_TIMEOUT, NO_MESSAGES):
                    # nats-py keys the description with an enum member: match by value.
                    why = next((v for k, v in msg.headers.items() if k == "Description"), "")
                    self._refused = f"{status} {why}".strip()
                # Status messages come on the pull's own reply subject.
                self._pull_ended(msg.subject.rpartition(".")[2])
            return
        # The server serves waiting pulls oldest first, so a delivery counts against the oldest.
        if self._pulls:
            head = self._pulls[0]
            head.left -= 1
            self._credit -= 1
            if head.left <= 0:
                self._pulls.popleft()
        delivery = Delivery(msg)
        task = asyncio.create_task(
            self._nak_late(delivery) if self._stopping.is_set() else self._settle(delivery)
        )
        self._inflight.add(task)
        task.add_done_callback(self._slot_freed)

    async def _nak_late(self, msg: Delivery) -> None:
        """A delivery that arrived after stop began: straight back to the stream."""
        with contextlib.suppress(Exception):
            await msg.nak()

    async def _settle(self, msg: Delivery) -> None:
        started = time.perf_counter()
        outcome = await self.settle(msg)
        counter = self._outcomes.get(outcome) or self.metrics.messages.labels(self.name, outcome)
        counter.inc()
        seconds = self._seconds or self.metrics.handle_seconds.labels(self.name)
        seconds.observe(time.perf_counter() - started)

    async def settle(self, msg: Delivery) -> str:
        try:
            await self.handler(msg)
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):
                await msg.nak()
            raise
        except NOT_JSON as exc:
            # Every handler decodes its body first; one that cannot be read never will be.
            log.error("dead-lettering %s: unreadable body: %s", msg.subject, exc)
            return await self._dead_letter(msg, f"unreadable body: {exc}", None)
        except PermanentError as exc:
            log.error("dead-lettering %s: %s", msg.subject, exc)
            return await self._dead_letter(msg, str(exc), exc.status_code, exc.attempts, exc.subject)
        except RetryableError as exc:
            # The delivery count is parsed from the reply subject only when something failed.
            attempt = msg.attempts
            if self._last(attempt):
                log.error("dead-lettering %s after %d attempts: %s", msg.subject, attempt, exc)
                return await self._dead_letter(msg, str(exc), exc.status_code)
            delay = exc.delay_s if exc.delay_s is not None else self.retry_delay(attempt)
            await msg.nak(delay=delay)  # before the log line: the retry is scheduled sooner
            log.warning("retrying %s in %.1fs (attempt %d): %s", msg.subject, delay, attempt, exc)
            return "retried"
        except Exception as exc:
            attempt = msg.attempts
            log.exception("unexpected error handling %s (attempt %d)", msg.subject, attempt)
            if self._last(attempt):
                return await self._dead_letter(msg, f"{type(exc).__name__}: {exc}", None)
            await msg.nak(delay=self.retry_delay(attempt))
            return "error"
        await msg.ack()
        return "ok"

    def _last(self, attempt: int) -> bool:
        return self.max_attempts > 0 and attempt >= self.max_attempts

    def retry_delay(self, attempt: int) -> float:
        return backoff_delay(attempt, self.retry_base_s, self.retry_cap_s)

    async def _dead_letter(
        self,
        msg: Delivery,
        error: str,
        status: int | None,
        attempts: int | None = None,
        subject: str | None = None,
    ) -> str:
        try:
            await dead_letter(
                self.bus,
                msg,
                stage=self.stage,
                error=error,
                last_status=status,
                attempts=attempts,
                subject=subject,
            )
        except Exception:
            log.exception("could not dead-letter %s; leaving it for redelivery", msg.subject)
            with contextlib.suppress(Exception):
                await msg.nak(delay=self.retry_delay(msg.attempts))
            return "error"
        self.metrics.dead_letters.labels(self.stage).inc()
        await msg.term()
        return "dead_lettered"
