"""The ingest cost ladder: the receiver's essential work, added one step at a time.

``python -m bench.ladder --port P --nats URL --level N`` serves POST /api/webhooks/lovable:

0. read the body, answer 202 (the HTTP floor);
1. + verify the Lovable signature, decode the JSON, build and encode the WebhookEvent;
2. + publish it to EVENTS and wait for the PubAck (Nats-Msg-Id set, the real stream config);
3. + create the "queued" JobRecord in KV ``jobs`` while the publish is in flight (everything
   the receiver's contract requires before a 202);
4. + the shared runner's error and metrics middlewares (what every service's HTTP gets).

Each level's CPU per request, next to the receiver's, shows how much of the receiver's cost
is the work the contract requires and how much is everything around it.
"""

from __future__ import annotations

import argparse
import asyncio

import msgspec
import nats
from aiohttp import web
from prometheus_client import CollectorRegistry

from bench import serving
from bench.payloads import JOB_ID_SECRET
from conveyor.shared.bus.streams import ensure_kv, ensure_streams
from conveyor.shared.contracts import ids, subjects
from conveyor.shared.contracts.events import JobRecord, WebhookEvent, encoder, utcnow
from conveyor.shared.domain.signing import SignatureError, lovable_verify
from conveyor.shared.runtime.http import HttpMetrics, error_middleware, metrics_middleware

LEVELS = ("bare", "verify+encode", "publish", "publish+kv", "middlewares")


class Body(msgspec.Struct):
    id: str
    type: str
    project_id: str | None = None


async def serve(port: int, url: str, level: int, secret: str) -> None:
    nc = await nats.connect(url, name="bench-ladder") if level >= 2 else None
    js = nc.jetstream() if nc else None
    kv = None
    if js is not None:
        await ensure_streams(js, [subjects.EVENTS])
        kv = (await ensure_kv(js, [subjects.KV_JOBS]))[subjects.KV_JOBS]
    decoder = msgspec.json.Decoder(Body)

    async def accept(request: web.Request) -> web.Response:
        raw = await request.read()
        if level == 0:
            return web.Response(status=202, body=b'{"job_id":"x"}', content_type="application/json")
        try:
            lovable_verify(
                [secret],
                raw,
                request.headers.get("X-Lovable-Timestamp"),
                request.headers.get("X-Lovable-Signature"),
            )
        except SignatureError as exc:
            return web.json_response({"error": exc.reason}, status=401)
        body = decoder.decode(raw)
        delivery = body.id  # signed, as the receiver takes it
        job_id = ids.job_id_for_delivery(JOB_ID_SECRET.encode(), "lovable", delivery)
        now = utcnow()
        event = WebhookEvent(
            event_id=delivery, job_id=job_id, source="lovable", type=body.type, received_at=now,
            payload=msgspec.Raw(raw), project_id=body.project_id,
        )  # fmt: skip
        data = encoder.encode(event)
        if js is not None:
            headers = {subjects.MSG_ID: f"lovable:{delivery}"}
            create = None
            if level >= 3 and kv is not None:
                record = JobRecord(
                    job_id=job_id, status="queued", created_at=now, updated_at=now, source="lovable",
                    event_type=body.type, project_id=body.project_id,
                )  # fmt: skip
                create = asyncio.ensure_future(kv.create(job_id, encoder.encode(record)))
            await js.publish(
                subjects.event("lovable", body.type), data, stream=subjects.EVENTS, headers=headers
            )
            if create is not None:
                await create
        return web.Response(
            status=202, body=b'{"job_id":"' + job_id.encode() + b'"}', content_type="application/json"
        )

    middlewares = (
        [error_middleware, metrics_middleware(HttpMetrics(CollectorRegistry()))] if level >= 4 else []
    )
    app = web.Application(middlewares=middlewares, client_max_size=1024 * 1024)
    app.router.add_post("/api/webhooks/{source}", accept)
    await serving.until_signalled(app, port)
    if nc is not None:
        await nc.close()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--nats", default="")
    p.add_argument("--level", type=int, choices=range(len(LEVELS)), required=True)
    p.add_argument("--secret", required=True)
    a = p.parse_args()
    serving.run_fast(serve(a.port, a.nats, a.level, a.secret))


if __name__ == "__main__":
    main()
