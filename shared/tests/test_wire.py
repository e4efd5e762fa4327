"""The fast publish path against a real nats-server: what arrives is what nats-py would
have sent, and nothing that could split the protocol gets through."""

from __future__ import annotations

import asyncio
import random

import nats.errors
import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg

from conveyor.shared import wire


async def test_a_published_message_arrives_with_its_headers_and_reply(nc: Client) -> None:
    got: asyncio.Queue[Msg] = asyncio.Queue()
    sub = await wire.deliver_directly(nc, "wire.>", got.put_nowait)
    headers = {"Nats-Msg-Id": "a:1", "Conveyor-Job-Id": "job_1", "traceparent": "00-ab-cd-01"}
    await wire.publish(nc, "wire.one", b'{"x":1}', "reply.here", wire.header_block(headers))
    await wire.publish(nc, "wire.two", b"plain")
    first = await asyncio.wait_for(got.get(), 5)
    second = await asyncio.wait_for(got.get(), 5)
    assert (first.subject, first.reply, first.data) == ("wire.one", "reply.here", b'{"x":1}')
    assert first.headers == headers
    assert (second.subject, second.data, second.headers) == ("wire.two", b"plain", None)
    assert sub.pending_msgs == 0 and sub._pending_size == 0
    await sub.drain()


@pytest.mark.parametrize("value", ["a\r\nPUB evil 1\r\nx", "a\nb", "a\rb"])
def test_a_header_value_with_a_line_break_is_refused(value: str) -> None:
    with pytest.raises(nats.errors.BadHeaderError):
        wire.header_block({"Conveyor-Correlation-Id": value})


@pytest.mark.parametrize("subject", ["", "a b", "a\r\nPUB x 1", "a\tb"])
async def test_a_subject_that_would_split_the_command_is_refused(nc: Client, subject: str) -> None:
    with pytest.raises(nats.errors.BadSubjectError):
        await wire.publish(nc, subject, b"x")


async def test_headers_count_against_max_payload_and_an_oversized_message_is_refused_here(nc: Client) -> None:
    # The server's limit is on the whole message: one over it, sent, would make the server drop
    # the connection and everything in flight on it.
    headers = wire.header_block({"Nats-Msg-Id": "a" * 100})
    payload = b"x" * (nc.max_payload - 10)
    with pytest.raises(nats.errors.MaxPayloadError):
        await wire.publish(nc, "wire.big", payload, headers=headers)
    await nc.flush(timeout=5)
    assert nc.is_connected and nc.stats["reconnects"] == 0


async def test_a_handler_that_raises_does_not_stop_the_connection(nc: Client) -> None:
    got: list[bytes] = []

    def handle(msg: Msg) -> None:
        if msg.data == b"bad":
            raise RuntimeError("boom")
        got.append(msg.data)

    await wire.deliver_directly(nc, "wire.raise", handle)
    await wire.publish(nc, "wire.raise", b"bad")
    await wire.publish(nc, "wire.raise", b"good")
    await nc.flush()
    for _ in range(100):
        if got:
            break
        await asyncio.sleep(0.01)
    assert got == [b"good"] and nc.is_connected


async def test_status_messages_still_reach_a_direct_subscription(nc: Client) -> None:
    """A request nobody answers comes back as an inline status (``NATS/1.0 503``): the
    handler sees it with its Status header, as a pull's end or a no-responders reply."""
    got: asyncio.Queue[Msg] = asyncio.Queue()
    inbox = nc.new_inbox()
    await wire.deliver_directly(nc, inbox, got.put_nowait)
    await wire.publish(nc, "nobody.listens.here", b"?", inbox)
    msg = await asyncio.wait_for(got.get(), 5)
    assert msg.data == b"" and msg.headers is not None and msg.headers["Status"] == "503"


def test_header_parsing_answers_as_nats_py_does() -> None:
    """The replacement gives nats-py's own answer for every block, odd ones included."""
    original = wire._nats_parse_header_lines.__func__
    assert Client._parse_header_lines is wire.parse_header_lines  # installed on import
    blocks = [
        b"Nats-Msg-Id: a\r\nNats-Expected-Stream: EVENTS\r\n\r\n",
        b"Name:Value\r\nName2:\tv2 \r\n",
        b"Bad Name: x\r\nTab\tName: y\r\n Lead: z\r\nTrail : w\r\n",
        b"Sep\x1cName: x\r\nUnit\x1fSep: y\r\nVt\x0bName: z\r\n",
        b"no colon here\r\n\r\n: empty name\r\nK: caf\xc3\xa9\r\nK2: \xff\xfe\r\n",
        b"\xc3\xa9t\xc3\xa9: non-ascii name\r\nDup: 1\r\nDup: 2\r\n",
        b"",
        b"\r\n\r\n\r\n",
    ]
    rnd = random.Random(7)
    alphabet = b"ab:- \t\r\n\x1c\x0b\x0c\xc3\xa9\xff"
    blocks += [bytes(rnd.choice(alphabet) for _ in range(rnd.randrange(60))) for _ in range(3000)]
    for block in blocks:
        assert wire.parse_header_lines(block) == original(block), block


async def test_a_burst_goes_out_as_it_grows_and_arrives_in_order(nc: Client) -> None:
    """Publishes made in one loop pass are written once the buffer holds EARLY_WRITE_BYTES,
    not only when the flusher task gets its turn after the pass."""
    got: list[bytes] = []
    done = asyncio.Event()
    count = 200

    async def collect(msg: Msg) -> None:
        got.append(msg.data)
        if len(got) == count:
            done.set()

    await nc.subscribe("burst", cb=collect)
    await nc.flush()
    payloads = [b"%05d" % i + b"x" * 1000 for i in range(count)]
    biggest = 0
    for p in payloads:  # no await that yields: the flusher task cannot run in between
        await wire.publish(nc, "burst", p)
        biggest = max(biggest, nc._pending_data_size)
    assert biggest < wire.EARLY_WRITE_BYTES + 1100
    assert nc._pending_data_size < wire.EARLY_WRITE_BYTES  # the rest waits for the flusher
    await asyncio.wait_for(done.wait(), 10)
    assert got == payloads
