"""A Delivery answers the server at most once per settlement, with nats-py's own bodies, on
the fast paths and on stock nats-py alike; in-progress acks do not settle."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
from nats.aio.client import Client

from conveyor.shared.bus import Delivery, fastpaths
from conveyor.shared.testing.fixtures import eventually


@pytest.fixture(params=[True, False], ids=["fast", "stock"])
def paths(request: pytest.FixtureRequest) -> Iterator[bool]:
    fastpaths.install(request.param)
    yield request.param
    fastpaths.install(True)


async def _delivery(nc: Client) -> tuple[Delivery, list[bytes]]:
    answers: list[bytes] = []

    async def answered(msg) -> None:  # type: ignore[no-untyped-def]
        answers.append(msg.data)

    await nc.subscribe("answers.>", cb=answered)
    got: asyncio.Queue = asyncio.Queue()
    await nc.subscribe("work", cb=got.put)
    # A reply subject shaped as JetStream's ($JS.ACK.<stream>.<consumer>.<delivered>...), on a
    # subject of our own so the answers can be read back.
    await nc.publish("work", b"x", reply="answers.JOBS.c.3.17.9.1700000000000000000.0")
    return Delivery(await asyncio.wait_for(got.get(), 5)), answers


async def test_settling_twice_sends_one_answer(nc: Client, paths: bool) -> None:
    msg, answers = await _delivery(nc)
    await msg.in_progress()
    await msg.in_progress()
    await msg.nak(delay=2.5)
    await msg.ack()  # already settled: nothing more goes out
    await msg.term()
    assert msg.settled

    async def three() -> None:
        assert answers == [b"+WPI", b"+WPI", b'-NAK {"delay": 2500000000}']

    await eventually(three)
    await _after_everything_sent(nc, answers)
    assert answers == [b"+WPI", b"+WPI", b'-NAK {"delay": 2500000000}', b"end"]


async def test_leave_settles_without_an_answer(nc: Client, paths: bool) -> None:
    msg, answers = await _delivery(nc)
    msg.leave()
    await msg.ack()
    await _after_everything_sent(nc, answers)
    assert msg.settled and answers == [b"end"]


async def _after_everything_sent(nc: Client, answers: list[bytes]) -> None:
    """A last message on the same connection: once it is back, everything sent before it is."""
    await nc.publish("answers.end", b"end")

    async def ended() -> None:
        assert answers and answers[-1] == b"end"

    await eventually(ended)
