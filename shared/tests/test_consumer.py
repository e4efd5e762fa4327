"""The consumer's pull loop against a real nats-server: bounded concurrency, one pull per
batch of messages (not per message), and a prompt stop."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig
from prometheus_client import CollectorRegistry

from conveyor.shared.bus import Bus, Consumer, ConsumerMetrics, Delivery, Handler
from conveyor.shared.bus.streams import ensure_streams
from conveyor.shared.contracts import subjects
from conveyor.shared.testing.fixtures import eventually


def consumer_config(name: str, max_deliver: int | None = None) -> ConsumerConfig:
    return ConsumerConfig(
        durable_name=name,
        filter_subject="jobs.run.>",
        ack_policy=AckPolicy.EXPLICIT,
        ack_wait=10,
        max_deliver=max_deliver,
    )


def make_consumer(nats_bus: Bus, name: str, handler: Handler, *, concurrency: int, **kw: Any) -> Consumer:
    return Consumer(
        bus=nats_bus,
        stream=subjects.JOBS,
        config=consumer_config(name, kw.pop("max_deliver", None)),
        handler=handler,
        stage="test",
        metrics=ConsumerMetrics(CollectorRegistry(), "test"),
        concurrency=concurrency,
        **kw,
    )


async def test_concurrency_bounds_the_handlers_and_every_message_is_acked(
    js: JetStreamContext, nats_bus: Bus
) -> None:
    await ensure_streams(js, [subjects.JOBS, subjects.DLQ])
    running, most, done = 0, 0, []

    async def handle(msg: Delivery) -> None:
        nonlocal running, most
        running += 1
        most = max(most, running)
        await asyncio.sleep(0.01)
        running -= 1
        done.append(msg.data)

    consumer = make_consumer(nats_bus, "bounded", handle, concurrency=3)
    await consumer.start()
    try:
        for i in range(20):
            await js.publish("jobs.run.dev", b"%d" % i)

        async def all_acked() -> None:
            assert len(done) == 20
            info = await js.consumer_info(subjects.JOBS, "bounded")
            assert info.num_ack_pending == 0 and info.num_pending == 0

        await eventually(all_acked)
        assert most <= 3
    finally:
        await consumer.stop(1)


async def test_a_trickle_of_messages_needs_no_pull_request_each(
    nc: Client, js: JetStreamContext, nats_bus: Bus
) -> None:
    await ensure_streams(js, [subjects.JOBS, subjects.DLQ])
    pulls = await nc.subscribe(f"$JS.API.CONSUMER.MSG.NEXT.{subjects.JOBS}.trickle")
    done: list[bytes] = []

    async def handle(msg: Delivery) -> None:
        done.append(msg.data)

    consumer = make_consumer(nats_bus, "trickle", handle, concurrency=64)
    await consumer.start()
    try:
        for i in range(10):
            await js.publish("jobs.run.dev", b"%d" % i)

            async def handled(n: int = i + 1) -> None:
                assert len(done) == n

            await eventually(handled)
        # One open pull delivers them all as they come (plus one more per second the test takes).
        assert pulls.pending_msgs < 10
    finally:
        await consumer.stop(1)


async def test_stop_does_not_wait_out_an_open_pull(js: JetStreamContext, nats_bus: Bus) -> None:
    await ensure_streams(js, [subjects.JOBS, subjects.DLQ])

    async def handle(msg: Delivery) -> None:
        return None

    consumer = make_consumer(nats_bus, "idle", handle, concurrency=5)
    consumer.poll_s = 30.0
    await consumer.start()
    await asyncio.sleep(0)  # the loop sends its pull
    await asyncio.wait_for(consumer.stop(1), 5)


async def test_the_delivery_count_is_read_as_jetstream_wrote_it(js: JetStreamContext, nats_bus: Bus) -> None:
    await ensure_streams(js, [subjects.JOBS, subjects.DLQ])
    seen: list[tuple[int, int]] = []

    async def handle(msg: Delivery) -> None:
        seen.append((msg.attempts, msg._msg.metadata.num_delivered))  # ours and nats-py's reading
        if len(seen) < 3:
            await msg.nak()  # redelivered at once: the count goes up

    consumer = make_consumer(nats_bus, "counting", handle, concurrency=1)
    await consumer.start()
    try:
        await js.publish("jobs.run.dev", b"x")

        async def three() -> None:
            assert len(seen) == 3

        await eventually(three)
        assert seen == [(1, 1), (2, 2), (3, 3)]
    finally:
        await consumer.stop(1)


async def test_slots_freed_during_a_pull_are_covered_by_the_next_pull(
    nc: Client, js: JetStreamContext, nats_bus: Bus
) -> None:
    """With a backlog, a new pull goes out while earlier deliveries are still being handled, as
    soon as a quarter of the slots is free: not one pull per freed slot (which under load left
    slots idle for a round trip each)."""
    await ensure_streams(js, [subjects.JOBS, subjects.DLQ])
    pulls = await nc.subscribe(f"$JS.API.CONSUMER.MSG.NEXT.{subjects.JOBS}.pipelined")
    for i in range(200):
        await js.publish("jobs.run.dev", b"%d" % i)
    done: list[bytes] = []
    consumer = make_consumer(nats_bus, "pipelined", lambda msg: asyncio.sleep(0), concurrency=16)

    async def handle(msg: Delivery) -> None:
        await asyncio.sleep(0.001 * (int(msg.data) % 7))
        done.append(msg.data)

    consumer.handler = handle
    await consumer.start()
    try:

        async def all_done() -> None:
            assert len(done) == 200

        await eventually(all_done, timeout=20)
        assert sorted(done, key=int) == [b"%d" % i for i in range(200)]
        batches = []
        while pulls.pending_msgs:
            batches.append(json.loads((await pulls.next_msg()).data)["batch"])
        assert batches and min(batches) >= 4, batches
    finally:
        await consumer.stop(1)


async def test_a_last_attempt_the_dlq_could_not_take_is_dead_lettered_when_it_is_back(
    js: JetStreamContext,
    nats_bus: Bus,
) -> None:
    """The DLQ publish fails on the last attempt, so the message is NAKed: it must come back
    (JetStream would stop at its own max_deliver) and reach the DLQ once the DLQ is there."""
    await ensure_streams(js, [subjects.JOBS, subjects.DLQ])
    await js.add_consumer(subjects.JOBS, consumer_config("limited", 3))  # as an earlier version left it
    seen: list[int] = []

    async def handle(msg: Delivery) -> None:
        seen.append(msg.attempts)
        if seen[-1] == 3:
            await js.delete_stream(subjects.DLQ)  # the last attempt's DLQ copy fails
        raise RuntimeError("always fails")

    consumer = make_consumer(
        nats_bus, "limited", handle, concurrency=1, max_deliver=3, retry_base_s=0.01, retry_cap_s=0.05
    )
    await consumer.start()
    try:
        assert (await js.consumer_info(subjects.JOBS, "limited")).config.max_deliver == -1
        await js.publish("jobs.run.dev", b"x")

        async def past_the_limit() -> None:
            assert seen[-1] > 3

        await eventually(past_the_limit)
        await ensure_streams(js, [subjects.DLQ])

        async def dead_lettered() -> Any:
            info = await js.consumer_info(subjects.JOBS, "limited")
            assert info.num_pending == 0 and info.num_ack_pending == 0
            return await js.get_last_msg(subjects.DLQ, "dlq.test.jobs.run.dev")

        dead = await eventually(dead_lettered)
        assert dead.data == b"x" and int(dead.headers["Conveyor-Attempts"]) > 3
        assert "always fails" in dead.headers["Conveyor-Error"]
    finally:
        await consumer.stop(1)
