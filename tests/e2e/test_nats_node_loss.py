"""Losing a NATS node loses nothing: a 3-node JetStream cluster, streams at 3 replicas, one
node killed (SIGKILL) while webhooks keep arriving; every webhook that got a 202 is delivered."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import nats
import pytest

from conveyor.shared.domain.signing import lovable_sign
from conveyor.shared.testing.fixtures import eventually
from conveyor.shared.testing.nats_server import NatsServer, start_nats_server
from conveyor.shared.testing.procs import ServiceProcess, free_port, service_env
from conveyor.shared.testing.sink import CallbackSink

SECRET = "node-loss-secret"
SIGNING = "whsec_bm9kZS1sb3NzLXNpZ25pbmcta2V5"


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[list[NatsServer]]:
    routes_ports = [free_port() for _ in range(3)]
    routes = ",".join(f"nats://127.0.0.1:{p}" for p in routes_ports)
    servers = await asyncio.gather(
        *(
            start_nats_server(
                tmp_path / f"n{i}",
                extra=[
                    "--server_name",
                    f"n{i}",
                    "--cluster_name",
                    "conveyor",
                    "--cluster",
                    f"nats://127.0.0.1:{routes_ports[i]}",
                    "--routes",
                    routes,
                ],
            )
            for i in range(3)
        )
    )
    try:
        # JetStream in a cluster answers once the nodes have elected a meta leader.
        async def meta_leader() -> None:
            nc = await nats.connect(servers[0].url)
            try:
                await nc.jetstream().account_info()
            finally:
                await nc.close()

        await eventually(meta_leader, timeout=30, interval=0.5)
        yield list(servers)
    finally:
        await asyncio.gather(*(s.stop() for s in servers))


def signed(event_id: str) -> tuple[bytes, dict[str, str]]:
    body = json.dumps(
        {"id": event_id, "type": "agent.task_requested", "project_id": "p-loss",
         "data": {"agent": "architect", "files": {"a.py": "x = 1\n"}}, "created_at": "2026-11-21T00:00:00Z"}
    ).encode()  # fmt: skip
    ts = int(time.time())
    return body, {
        "Content-Type": "application/json",
        "X-Lovable-Timestamp": str(ts),
        "X-Lovable-Signature": lovable_sign(SECRET, ts, body),
    }


async def test_killing_a_nats_node_loses_no_accepted_webhook(
    cluster: list[NatsServer], tmp_path: Path
) -> None:
    sink = await CallbackSink().start()
    env = service_env(
        ",".join(s.url for s in cluster),
        NATS_REPLICAS="3",
        LOVABLE_WEBHOOK_SECRET=SECRET,
        LOVABLE_CALLBACK_URL=sink.url,
        CALLBACK_ALLOWED_NETWORKS="127.0.0.0/8",
        CALLBACK_SIGNING_SECRETS=SIGNING,
        RATE_LIMIT_MAX="100000",
    )
    procs = [ServiceProcess(n, env, tmp_path / f"{n}.log") for n in ("receiver", "executor", "deliverer")]
    accepted: dict[str, str] = {}
    refused = 0
    try:
        await asyncio.gather(*(p.start(timeout=60) for p in procs))
        async with httpx.AsyncClient(base_url=procs[0].url, timeout=10) as http:

            async def send(count: int) -> None:
                # A sender as webhook platforms behave: a 503 is retried after Retry-After.
                nonlocal refused
                for _ in range(count):
                    event_id = f"evt_{uuid.uuid4().hex}"
                    for _attempt in range(60):
                        body, headers = signed(event_id)
                        r = await http.post("/api/webhooks/lovable", content=body, headers=headers)
                        if r.status_code == 202:
                            accepted[event_id] = r.json()["job_id"]
                            break
                        # Refused while the cluster moves leaders: never a 500, never lost.
                        assert r.status_code == 503, r.text
                        assert "Retry-After" in r.headers
                        refused += 1
                        await asyncio.sleep(min(1.0, float(r.headers["Retry-After"])))

            await send(20)
            # Kill the node that leads the EVENTS stream: leadership moves to a survivor.
            nc = await nats.connect(cluster[1].url)
            try:
                info = await nc.jetstream().stream_info("EVENTS")
            finally:
                await nc.close()
            assert info.cluster is not None and info.config.num_replicas == 3
            leader = next(
                s for s in cluster if s.args[s.args.index("--server_name") + 1] == info.cluster.leader
            )
            await leader.kill()
            await send(40)

        async def all_delivered() -> None:
            delivered = {b["jobId"] for b in sink.bodies}
            missing = set(accepted.values()) - delivered
            assert not missing, f"{len(missing)} accepted jobs not delivered yet"

        await eventually(all_delivered, timeout=90, interval=0.5)
        job_ids = [b["jobId"] for b in sink.bodies]
        assert len(accepted) == 60, f"only {len(accepted)} accepted, {refused} refusals"
        # Each accepted webhook's job delivered; none twice.
        assert sorted(set(job_ids)) == sorted(set(accepted.values()))
        assert len(job_ids) == len(set(job_ids))
    finally:
        codes = []
        for p in procs:
            with contextlib.suppress(Exception):
                codes.append(await p.stop())
        await sink.stop()
        del codes
