"""Rate limits counted in JetStream KV: exact under concurrency, per key, and across three
receiver processes sharing one NATS."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import nats
import pytest

from conveyor.shared.bus import Bus, Kv
from conveyor.shared.bus.streams import ensure_kv
from conveyor.shared.contracts import subjects
from conveyor.shared.domain.ratelimit import PREFETCH_MAX, Decision, RateLimiter
from conveyor.shared.testing.procs import ServiceProcess, service_env


async def limits_kv(nc: nats.NATS) -> Kv:
    """The ratelimits bucket through a bus over ``nc`` (each connection a replica's)."""
    conn = Bus(nc)
    await conn.start()
    return await conn.kv(subjects.KV_RATELIMITS)


async def test_limit_is_exact_across_independent_limiters(nats_url: str) -> None:
    """Three limiters on three connections (as three replicas would be) race for one key."""
    conns = [await nats.connect(nats_url) for _ in range(3)]
    try:
        await ensure_kv(conns[0].jetstream(), [subjects.KV_RATELIMITS])
        limiters = [RateLimiter(await limits_kv(c)) for c in conns]
        hits = [limiters[i % 3].hit("w.test.k", 25, 60.0) for i in range(90)]
        decisions = await asyncio.gather(*hits)
        assert sum(d.allowed for d in decisions) == 25
        remaining = sorted(d.remaining for d in decisions if d.allowed)
        assert remaining == list(range(25))  # every granted slot was counted exactly once
        refused = [d for d in decisions if not d.allowed]
        assert all(d.remaining == 0 and 0 < d.reset_s <= 60 for d in refused)
    finally:
        for c in conns:
            await c.close()


async def test_large_budgets_are_claimed_ahead_but_never_exceeded(nats_url: str) -> None:
    conns = [await nats.connect(nats_url) for _ in range(3)]
    try:
        kv = (await ensure_kv(conns[0].jetstream(), [subjects.KV_RATELIMITS]))[subjects.KV_RATELIMITS]
        limiters = [RateLimiter(await limits_kv(c)) for c in conns]
        decisions = await asyncio.gather(*(limiters[i % 3].hit("w.big", 1000, 60.0) for i in range(1500)))
        granted = sum(d.allowed for d in decisions)
        # Slots claimed ahead by a replica whose requests ran out stay unused: never more than
        # the limit, and at most PREFETCH_MAX per replica fewer.
        assert 1000 - 3 * PREFETCH_MAX <= granted <= 1000
        _, count = (await kv.get("w.big")).value.split()
        assert int(count) == 1000
        writes = (await conns[0].jetstream().stream_info(f"KV_{subjects.KV_RATELIMITS}")).state.last_seq
        assert writes < granted  # fewer KV writes than hits: batches and claimed slots
    finally:
        for c in conns:
            await c.close()


async def test_remaining_counts_claimed_slots_once(nats_url: str) -> None:
    nc = await nats.connect(nats_url)
    try:
        await ensure_kv(nc.jetstream(), [subjects.KV_RATELIMITS])
        kv = await limits_kv(nc)
        limiter = RateLimiter(kv)
        decisions = [await limiter.hit("w.big", 100_000, 60.0) for _ in range(3)]
        # The first write claims slots ahead; the next two are handed out from them.
        assert [d.remaining for d in decisions] == [99_999, 99_998, 99_997]
        _, count = (await kv.get("w.big")).value.split()
        assert int(count) == 1 + PREFETCH_MAX
    finally:
        await nc.close()


async def test_claimed_slots_and_full_windows_are_decided_locally(nats_url: str) -> None:
    nc = await nats.connect(nats_url)
    try:
        await ensure_kv(nc.jetstream(), [subjects.KV_RATELIMITS])
        kv = await limits_kv(nc)
        limiter = RateLimiter(kv)
        assert limiter.local("w.any", 0, 60.0) is not None  # unlimited
        assert limiter.local("w.big", 100_000, 60.0) is None  # nothing known yet: ask KV
        first = await limiter.hit("w.big", 100_000, 60.0)  # claims slots ahead
        local = limiter.local("w.big", 100_000, 60.0)
        assert local is not None and local.allowed and local.remaining == first.remaining - 1

        assert [(await limiter.hit("w.small", 2, 60.0)).allowed for _ in range(2)] == [True, True]
        full = limiter.local("w.small", 2, 60.0)  # refused without a round trip
        assert full is not None and not full.allowed
    finally:
        await nc.close()


async def test_window_reopens_after_it_ends(nats_url: str) -> None:
    nc = await nats.connect(nats_url)
    try:
        await ensure_kv(nc.jetstream(), [subjects.KV_RATELIMITS])
        kv = await limits_kv(nc)
        now = [1000.0]
        limiter = RateLimiter(kv, clock=lambda: now[0])
        assert [(await limiter.hit("k", 2, 10.0)).allowed for _ in range(3)] == [True, True, False]
        now[0] += 10.0
        assert (await limiter.hit("k", 2, 10.0)).allowed
        # A second limiter (another replica) sees the same window.
        other = RateLimiter(kv, clock=lambda: now[0])
        assert [(await other.hit("k", 2, 10.0)).allowed for _ in range(2)] == [True, False]
    finally:
        await nc.close()


@pytest.mark.parametrize(
    "decision",
    [
        Decision(True, 10, 3, 59.2),
        Decision(False, 10, 0, 0.4),
        Decision(False, 5, 0, -1.0),
        Decision(True, 0, 0, 0.0),
    ],
)
def test_header_lines_say_what_the_header_dict_says(decision: Decision) -> None:
    """The lean webhook path writes :meth:`Decision.header_lines`; aiohttp's routes use
    :meth:`Decision.headers`: the same headers, values and order."""
    lines = decision.header_lines().decode().split("\r\n")
    assert lines[-1] == ""
    assert [tuple(line.split(": ", 1)) for line in lines[:-1]] == list(decision.headers().items())


async def test_per_key_limit(receiver, new_key) -> None:
    key = await new_key(receiver, per_minute=3, per_day=100)
    h = {"Authorization": f"Bearer {key}"}
    answers = [await receiver.http.get("/api/jobs/job_x", headers=h) for _ in range(4)]
    assert [a.status_code for a in answers] == [404, 404, 404, 429]
    assert [a.headers["X-RateLimit-Remaining"] for a in answers] == ["2", "1", "0", "0"]
    assert answers[3].headers["X-RateLimit-Limit"] == "3"
    assert 1 <= int(answers[3].headers["Retry-After"]) <= 60
    assert answers[3].json()["error"] == "rate_limited"

    day = await new_key(receiver, per_minute=100, per_day=2)
    h = {"Authorization": f"Bearer {day}"}
    answers = [await receiver.http.get("/api/jobs/job_x", headers=h) for _ in range(3)]
    assert [a.status_code for a in answers] == [404, 404, 429]
    assert answers[2].headers["X-RateLimit-Limit"] == "2"
    assert int(answers[2].headers["Retry-After"]) > 3600


@pytest.fixture
async def three_receivers(nats_url: str, tmp_path: Path):
    env = service_env(
        nats_url,
        LOVABLE_WEBHOOK_SECRET="lovable-test-secret",
        ADMIN_API_KEY="admin-test-key",
        RATE_LIMIT_MAX="10",
        RATE_LIMIT_WINDOW_MS="60000",
        LOG_LEVEL="WARNING",
    )
    procs = [ServiceProcess("receiver", env, tmp_path / f"receiver-{i}.log") for i in range(3)]
    try:
        await asyncio.gather(*(p.start() for p in procs))
        yield procs
    finally:
        await asyncio.gather(*(p.stop() for p in procs))


async def test_limits_hold_across_three_receiver_processes(three_receivers, lovable, bus) -> None:
    async with httpx.AsyncClient(timeout=15) as http:

        async def send(i: int) -> httpx.Response:
            body = lovable.body(id=f"evt_{i}")
            headers = lovable.headers(body) | {"X-Lovable-Project-Id": "shared-project"}
            return await http.post(
                f"{three_receivers[i % 3].url}/api/webhooks/lovable", content=body, headers=headers
            )

        answers = await asyncio.gather(*(send(i) for i in range(30)))
        codes = [a.status_code for a in answers]
        assert codes.count(202) == 10 and codes.count(429) == 20, codes
        assert all("Retry-After" in a.headers for a in answers if a.status_code == 429)
        assert await bus.count(subjects.EVENTS) == 10

        # Per-key limits too: a key made on one replica, used on all three.
        made = await http.post(
            f"{three_receivers[0].url}/api/admin/keys",
            json={"name": "shared", "per_minute": 5},
            headers={"Authorization": "Bearer admin-test-key"},
        )
        h = {"Authorization": f"Bearer {made.json()['key']}"}
        jobs = await asyncio.gather(
            *(
                http.post(
                    f"{three_receivers[i % 3].url}/api/jobs", json={"agent": "dev", "prompt": "x"}, headers=h
                )
                for i in range(12)
            )
        )
        codes = [j.status_code for j in jobs]
        assert codes.count(202) == 5 and codes.count(429) == 7, codes
        assert await bus.count(subjects.JOBS) == 5
