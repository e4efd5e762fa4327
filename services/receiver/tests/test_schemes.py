"""Each webhook scheme against an independent implementation: the `standardwebhooks` package,
GitHub's published example, and HMAC computed directly for Lovable."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import json
import time
from typing import Any

import msgspec
from standardwebhooks.webhooks import Webhook

from conveyor.receiver.config import WebhookSource
from conveyor.shared.contracts import subjects
from conveyor.shared.contracts.events import webhook_event_decoder
from conveyor.shared.domain import signing
from conveyor.shared.runtime.config import Secret

# GitHub's documented example (docs: "Validating webhook deliveries").
GITHUB_SECRET = "It's a Secret to Everybody"
GITHUB_PAYLOAD = b"Hello, World!"
GITHUB_SIGNATURE = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"

WHSEC_OLD = "whsec_" + base64.b64encode(b"old-standard-secret-32-bytes-long!").decode()
WHSEC_NEW = "whsec_" + base64.b64encode(b"new-standard-secret-32-bytes-long!").decode()


def source(name: str, scheme: str, secrets: list[str], **kw: Any) -> WebhookSource:
    return msgspec.convert(
        {"name": name, "scheme": scheme, "secrets": secrets, **kw},
        WebhookSource,
        dec_hook=lambda t, v: Secret(v) if t is Secret else v,
    )


def test_github_published_example_verifies() -> None:
    signing.github_verify([GITHUB_SECRET], GITHUB_PAYLOAD, GITHUB_SIGNATURE)
    assert signing.github_sign(GITHUB_SECRET, GITHUB_PAYLOAD) == GITHUB_SIGNATURE


async def test_github_example_passes_the_signature_check_over_http(start_receiver, bus) -> None:
    async with start_receiver(webhook_sources=[source("github", "github", [GITHUB_SECRET])]) as r:
        resp = await r.http.post(
            "/api/webhooks/github",
            content=GITHUB_PAYLOAD,
            headers={
                "X-Hub-Signature-256": GITHUB_SIGNATURE,
                "X-GitHub-Event": "push",
                "X-GitHub-Delivery": "72d3162e-cc78-11e3-81ab-4c9367dc0958",
            },
        )
        # Authentic, but "Hello, World!" is not a JSON event: the body check, not the signature, refuses it.
        assert resp.status_code == 400
        assert resp.json()["error"] == "invalid_json"
        await bus.assert_nothing_accepted()


async def test_github_event_accepted_and_unrouted_event_ignored(start_receiver, bus, js) -> None:
    async with start_receiver(
        webhook_sources=[source("github", "github", ["old-github-secret-0001", GITHUB_SECRET])]
    ) as r:
        body = json.dumps({"action": "opened", "number": 7}).encode()
        headers = {
            "X-Hub-Signature-256": "sha256="
            + hmac.new(GITHUB_SECRET.encode(), body, hashlib.sha256).hexdigest(),
            "X-GitHub-Event": "pull_request",
            "X-GitHub-Delivery": "d-1",
        }
        resp = await r.http.post("/api/webhooks/github", content=body, headers=headers)
        assert resp.status_code == 202, resp.text
        # X-GitHub-Delivery is not signed: the body's digest names the delivery.
        digest = hashlib.sha256(body).hexdigest()
        assert resp.json()["job_id"] == r.job_id("github", digest)
        msg = await js.get_last_msg(subjects.EVENTS, "events.github.pull_request")
        event = webhook_event_decoder.decode(msg.data)
        assert (event.source, event.type, event.event_id) == ("github", "pull_request", "d-1")
        assert msg.headers and msg.headers[subjects.MSG_ID] == f"github:{digest}"

        headers |= {"X-GitHub-Event": "star", "X-GitHub-Delivery": "d-2"}
        resp = await r.http.post("/api/webhooks/github", content=body, headers=headers)
        assert resp.status_code == 202
        assert resp.json() == {"status": "ignored", "event": "star", "delivery_id": "d-2"}
        assert await bus.count(subjects.EVENTS) == 1


def standard_headers(secret: str, msg_id: str, body: bytes, ts: dt.datetime | None = None) -> dict[str, str]:
    """Headers signed by the `standardwebhooks` package, not by our code."""
    ts = ts or dt.datetime.now(dt.UTC)
    signature = Webhook(secret).sign(msg_id, ts, body.decode())
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(ts.timestamp())),
        "webhook-signature": signature,
    }


async def test_standard_webhooks_signed_by_the_reference_package(start_receiver, bus, js) -> None:
    cfg = source("acme", "standard", [WHSEC_OLD, WHSEC_NEW])
    async with start_receiver(webhook_sources=[cfg]) as r:
        body = json.dumps(
            {"type": "invoice.paid", "timestamp": "2026-01-01T00:00:00Z", "data": {"n": 1}}
        ).encode()
        # Signed with the old secret, then the new one (a rotation in progress): both verify.
        for n, secret in enumerate((WHSEC_OLD, WHSEC_NEW)):
            headers = standard_headers(secret, f"msg_{n}", body)
            resp = await r.http.post("/api/webhooks/acme", content=body, headers=headers)
            assert resp.status_code == 202, resp.text
            assert resp.json()["job_id"] == r.job_id("acme", f"msg_{n}")

        # Several signatures in one header (sender-side rotation): one good one is enough.
        bad = Webhook("whsec_" + base64.b64encode(b"x" * 32).decode()).sign(
            "msg_9", dt.datetime.now(dt.UTC), "{}"
        )
        good = standard_headers(WHSEC_NEW, "msg_9", body)
        good["webhook-signature"] = f"{bad} {good['webhook-signature']}"
        assert (await r.http.post("/api/webhooks/acme", content=body, headers=good)).status_code == 202

        # Our own signer agrees with the package, and the package verifies what we sign.
        ts = int(time.time())
        ours = signing.standard_headers([WHSEC_NEW], "msg_x", body, timestamp=ts)
        Webhook(WHSEC_NEW).verify(body, ours)
        assert await bus.count(subjects.EVENTS) == 3
        msg = await js.get_last_msg(subjects.EVENTS, "events.acme.invoice.paid")
        assert webhook_event_decoder.decode(msg.data).payload == msgspec.Raw(body)


async def test_standard_webhooks_stale_signature_from_package_refused(start_receiver, bus) -> None:
    async with start_receiver(webhook_sources=[source("acme", "standard", [WHSEC_OLD])]) as r:
        body = b'{"type":"invoice.paid"}'
        old = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=400)
        resp = await r.http.post(
            "/api/webhooks/acme", content=body, headers=standard_headers(WHSEC_OLD, "m1", body, old)
        )
        assert resp.status_code == 401
        assert "too old" in resp.json()["message"]
        await bus.assert_nothing_accepted()


async def test_lovable_signature_and_rotation(start_receiver, lovable, bus, js) -> None:
    old, new = "old-lovable-secret-01", "new-lovable-secret-01"
    async with start_receiver(lovable_webhook_secret=Secret(f"{old}, {new}")) as r:
        for n, secret in enumerate((old, new)):
            body = lovable.body("code.review_requested", id=f"evt_{n}", project_id="p9")
            resp = await r.http.post(
                "/api/webhooks/lovable", content=body, headers=lovable.headers(body, secret=secret)
            )
            assert resp.status_code == 202, resp.text
            data = resp.json()
            assert data["job_id"] == r.job_id("lovable", f"evt_{n}")
            assert data["status_url"] == f"/api/jobs/{data['job_id']}"
            assert data["stream_url"] == f"/api/jobs/{data['job_id']}/stream"
            assert resp.headers["Location"] == data["status_url"]
        msg = await js.get_last_msg(subjects.EVENTS, "events.lovable.code.review_requested")
        event = webhook_event_decoder.decode(msg.data)
        assert (event.project_id, event.event_id) == ("p9", "evt_1")

        # The body's id is the delivery id: an X-Lovable-Delivery header (not signed) is not read.
        body = lovable.body(id="evt_body")
        headers = lovable.headers(body, secret=new) | {"X-Lovable-Delivery": "dlv-42"}
        resp = await r.http.post("/api/webhooks/lovable", content=body, headers=headers)
        assert resp.json()["job_id"] == r.job_id("lovable", "evt_body")
