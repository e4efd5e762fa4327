"""The fast publish path against a real nats-server: what arrives is what nats-py would
have sent (test_reader.py reads it back), and nothing that could split the protocol gets
through."""

from __future__ import annotations

import asyncio

import nats.errors
import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg

from conveyor.shared.bus import wire


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
