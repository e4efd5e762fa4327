"""The bus: the only code in Conveyor that imports nats-py. Services use what is named here.

A running service has one :class:`Bus` (``rt.bus``; the runner connects it). Everything it
does with NATS goes through it::

    from conveyor.shared import bus

    # Publish onto a stream, wait for the PubAck. msg_id: deduplicated by JetStream;
    # stream: refused unless that stream holds the subject; traceparent added for you.
    ack = await rt.bus.publish(subjects.result(job_id), body, msg_id=job_id, stream=subjects.RESULTS)
    fut = await rt.bus.send(...)            # the same, not waiting: await fut later
    reply = await rt.bus.request(subject, data, timeout_s=2)   # core request/reply

    # KV: one way to read and write a key.
    jobs = await rt.bus.kv(subjects.KV_JOBS)     # or rt.kv[subjects.KV_JOBS]
    entry = await jobs.get(job_id)               # Entry(key, value, revision); NotFound
    entry = await jobs.lookup(job_id)            # Entry or None
    rev = await jobs.create(job_id, data)        # Conflict if it has a value
    rev = await jobs.update(job_id, data, last=entry.revision)   # compare-and-set; Conflict
    await jobs.put(key, data); await jobs.delete(key, last=rev); keys = await jobs.keys()
    watcher = await jobs.watch(job_id)           # async for entry in watcher / watcher.next(t)

    # Durable consumers: the runner starts them; a handler gets a Delivery.
    await rt.consume(subjects.JOBS, bus.ConsumerConfig(durable_name=...), handle, stage=..., concurrency=8)

    async def handle(msg: bus.Delivery) -> None:
        msg.subject, msg.data, msg.headers, msg.attempts
        # Return: acked. Raise RetryableError: NAK with delay. PermanentError or an
        # unreadable body: dead-lettered, then terminated. Or settle it yourself, once:
        await msg.nak(delay=5); await msg.ack(); await msg.term(); msg.leave()
        async with bus.heartbeat(msg, every_s=10): ...   # in-progress acks during long work

    # Errors: catch these, never nats-py's.
    except bus.NotFound: ...      # no such key / message / stream
    except bus.Conflict: ...      # compare-and-set lost (alias WrongRevision)
    except bus.Timeout: ...       # no answer in time (also a builtin TimeoutError)
    except bus.Unavailable: ...   # no connection, no responders, no stream: retry later
    except bus.BusError: ...      # any of them (TooLarge, BadRequest too)

A bucket read on every request is kept in memory by ``bus.KvMirror`` (a watch that is
remade when a NATS restart loses it). Stream reads and admin (``stream_messages``,
``subject_counts``, ``next_message``, ``get_msg``, ``last_msg``, ``delete_msg``, ``purge``,
``stream_state``, ``add_consumer``, ``consumer_state``, ``declare``; states as the
bus's own ``StreamState`` and ``ConsumerState``, not nats-py's) are on :class:`Bus` as well. Stream and
bucket configurations are in ``bus.streams``.

Fast paths (fastpaths.py): a leaner parser, publish path and KV requests are installed when
the bus connects, for the nats-py minor version pinned in shared/pyproject.toml only; any
other version, or ``CONVEYOR_FAST_PATHS=0``, runs on stock nats-py (one warning line).

Tests may use nats-py directly (``conveyor.shared.testing`` fixtures); nothing else may:
tests/test_boundaries.py checks it.
"""

from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from conveyor.shared.bus.client import Bus, ConsumerState, Message, Stored, StreamState, Subscription
from conveyor.shared.bus.consumer import Consumer, ConsumerMetrics, Handler, backoff_delay, dead_letter
from conveyor.shared.bus.delivery import Delivery, heartbeat
from conveyor.shared.bus.errors import (
    BadRequest,
    BusError,
    Conflict,
    NotFound,
    Timeout,
    TooLarge,
    Unavailable,
    WrongRevision,
)
from conveyor.shared.bus.jsrequests import PubAck
from conveyor.shared.bus.kv import Entry, Kv, Watcher
from conveyor.shared.bus.kvmirror import KvMirror, keep_watching
from conveyor.shared.bus.streams import DEFAULT_RETENTION, Retention

__all__ = [
    "DEFAULT_RETENTION",
    "AckPolicy",
    "BadRequest",
    "Bus",
    "BusError",
    "Conflict",
    "Consumer",
    "ConsumerConfig",
    "ConsumerMetrics",
    "ConsumerState",
    "DeliverPolicy",
    "Delivery",
    "Entry",
    "Handler",
    "Kv",
    "KvMirror",
    "Message",
    "NotFound",
    "PubAck",
    "Retention",
    "Stored",
    "StreamState",
    "Subscription",
    "Timeout",
    "TooLarge",
    "Unavailable",
    "Watcher",
    "WrongRevision",
    "backoff_delay",
    "dead_letter",
    "heartbeat",
    "keep_watching",
]
