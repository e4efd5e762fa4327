"""Hostile webhooks: what a sender, or someone who captured one of its requests, must not be
able to do. Weak secrets are refused at start; headers outside the signature steer nothing
(duplicates and rate limits follow the signed content); job ids cannot be computed from what
a third party sees; a webhook's prompt is held to the limit POST /api/jobs has."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime as dt
import hashlib
import hmac
import json
import subprocess
import sys
from typing import Any

import msgspec
import pytest
from standardwebhooks.webhooks import Webhook

from conveyor.receiver.config import Settings, WebhookSource
from conveyor.receiver.state import STATE
from conveyor.shared.contracts import ids, subjects
from conveyor.shared.contracts.errors import ConfigError
from conveyor.shared.runtime.config import Secret, load_settings

URL = "/api/webhooks/lovable"
GITHUB_SECRET = "github-hostile-test-secret"
WHSEC = "whsec_" + base64.b64encode(b"standard-hostile-test-secret").decode()


def source(name: str, scheme: str, secrets: list[str]) -> WebhookSource:
    return msgspec.convert(
        {"name": name, "scheme": scheme, "secrets": secrets},
        WebhookSource,
        dec_hook=lambda t, v: Secret(v) if t is Secret else v,
    )


def github_headers(body: bytes, delivery: str, event: str = "pull_request") -> dict[str, str]:
    digest = hmac.new(GITHUB_SECRET.encode(), body, hashlib.sha256).hexdigest()
    return {"X-Hub-Signature-256": f"sha256={digest}", "X-GitHub-Event": event, "X-GitHub-Delivery": delivery}


def standard_headers(msg_id: str, body: bytes) -> dict[str, str]:
    now = dt.datetime.now(dt.UTC)
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(now.timestamp())),
        "webhook-signature": Webhook(WHSEC).sign(msg_id, now, body.decode()),
    }


# --- weak secrets ---------------------------------------------------------------------------

WEAK = ["", "   ", "whsec_", "whsec_!!!!", "short-secret"]


def _sources(scheme: str, secret: str) -> str:
    good = [{"name": "a", "scheme": "lovable", "secrets": ["lovable-hostile-secret"]}]
    good.append({"name": "b", "scheme": "github", "secrets": [GITHUB_SECRET]})
    return json.dumps([*good, {"name": "c", "scheme": scheme, "secrets": [WHSEC, secret]}])


@pytest.mark.parametrize("secret", WEAK)
@pytest.mark.parametrize(
    ("setting", "env"),
    [
        ("LOVABLE_WEBHOOK_SECRET", lambda s: {"LOVABLE_WEBHOOK_SECRET": s}),
        ("GITHUB_WEBHOOK_SECRET", lambda s: {"GITHUB_WEBHOOK_SECRET": s}),
        ("WEBHOOK_SOURCES[2].secrets[1]", lambda s: {"WEBHOOK_SOURCES": _sources("standard", s)}),
        ("WEBHOOK_SOURCES[2].secrets[1]", lambda s: {"WEBHOOK_SOURCES": _sources("lovable", s)}),
        ("JOB_ID_SECRET", lambda s: {"JOB_ID_SECRET": s}),
    ],
)
def test_weak_secrets_are_refused_at_start_naming_the_setting(setting: str, env: Any, secret: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_settings(Settings, env(secret), section="receiver")
    text = str(err.value)
    assert setting in text and "\n" not in text
    if secret.strip():
        assert secret not in text  # the message says what is wrong, never the secret


def test_one_weak_secret_of_a_rotation_is_enough_to_refuse() -> None:
    env = {"GITHUB_WEBHOOK_SECRET": f"{GITHUB_SECRET}, whsec_"}
    with pytest.raises(ConfigError, match=r"GITHUB_WEBHOOK_SECRET \(secret 2 of 2\): has 6 bytes"):
        load_settings(Settings, env, section="receiver")


def test_standard_secret_whose_base64_does_not_decode_is_refused() -> None:
    # "whsec_" + 22 bytes that are not base64: the old lenient decode made them a short key.
    env = {"WEBHOOK_SOURCES": _sources("standard", "whsec_" + "~" * 40)}
    with pytest.raises(ConfigError, match=r"WEBHOOK_SOURCES\[2\]\.secrets\[1\].*base64"):
        load_settings(Settings, env, section="receiver")


def test_strong_secrets_are_accepted() -> None:
    env = {
        "LOVABLE_WEBHOOK_SECRET": "lovable-hostile-secret, lovable-hostile-secret-2",
        "WEBHOOK_SOURCES": _sources("standard", "whsec_" + base64.b64encode(b"k" * 16).decode()),
        "JOB_ID_SECRET": "j" * 16,
    }
    s = load_settings(Settings, env, section="receiver")
    assert [w.name for w in s.webhook_sources] == ["a", "b", "c"]


def test_the_receiver_process_exits_with_one_line_naming_the_setting() -> None:
    env = {"PATH": "/usr/bin:/bin", "WEBHOOK_SOURCES": _sources("standard", "whsec_!!!!")}
    proc = subprocess.run(
        [sys.executable, "-m", "conveyor.receiver"], env=env, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "WEBHOOK_SOURCES[2].secrets[1]" in lines[0], proc.stderr
    assert "!!!!" not in proc.stderr


# --- headers outside the signature ------------------------------------------------------------


async def test_a_captured_lovable_webhook_under_a_new_delivery_header_is_a_duplicate(
    receiver, lovable, bus
) -> None:
    body = lovable.body(id="evt_captured")
    captured = lovable.headers(body)
    first = await receiver.http.post(URL, content=body, headers=captured | {"X-Lovable-Delivery": "d-1"})
    assert first.status_code == 202 and first.json()["duplicate"] is False
    for n in range(2, 5):
        again = await receiver.http.post(
            URL, content=body, headers=captured | {"X-Lovable-Delivery": f"d-{n}"}
        )
        assert again.status_code == 202
        assert again.json()["duplicate"] is True and again.json()["job_id"] == first.json()["job_id"]
    assert await bus.count(subjects.EVENTS) == 1
    assert await bus.job_keys() == [first.json()["job_id"]]


async def test_the_project_header_does_not_choose_the_rate_limit_bucket(start_receiver, lovable, bus) -> None:
    async with start_receiver(rate_limit_max=2) as r:
        codes = []
        for n in range(4):
            body = lovable.body(id=f"evt_rl_{n}", project_id="p-signed")
            headers = lovable.headers(body) | {"X-Lovable-Project-Id": f"fresh-bucket-{n}"}
            codes.append((await r.http.post(URL, content=body, headers=headers)).status_code)
        assert codes == [202, 202, 429, 429]
        assert await bus.count(subjects.EVENTS) == 2


async def test_the_same_github_body_under_another_delivery_id_is_a_duplicate(start_receiver, bus) -> None:
    async with start_receiver(webhook_sources=[source("github", "github", [GITHUB_SECRET])]) as r:
        body = json.dumps({"action": "opened", "number": 7}).encode()
        first = await r.http.post("/api/webhooks/github", content=body, headers=github_headers(body, "d-1"))
        assert first.status_code == 202 and first.json()["duplicate"] is False
        again = await r.http.post("/api/webhooks/github", content=body, headers=github_headers(body, "d-2"))
        assert again.status_code == 202
        assert again.json() | {"duplicate": False} == first.json() and again.json()["duplicate"] is True
        # Another body is another delivery.
        other = json.dumps({"action": "closed", "number": 7}).encode()
        third = await r.http.post("/api/webhooks/github", content=other, headers=github_headers(other, "d-3"))
        assert third.status_code == 202 and third.json()["job_id"] != first.json()["job_id"]
        assert await bus.count(subjects.EVENTS) == 2


# --- job ids ----------------------------------------------------------------------------------


async def test_a_job_id_cannot_be_computed_from_the_event_id(receiver, lovable) -> None:
    body = lovable.body(id="evt_public")
    job_id = (await receiver.http.post(URL, content=body, headers=lovable.headers(body))).json()["job_id"]
    # What anyone who saw the event could compute before: sha256 of source and event id.
    public = (
        "job_" + hashlib.sha256("\x1f".join(["webhook", "lovable", "evt_public"]).encode()).hexdigest()[:32]
    )
    assert job_id != public
    admin = {"Authorization": "Bearer admin-test-key"}
    assert (await receiver.http.get(f"/api/jobs/{public}", headers=admin)).status_code == 404
    assert (await receiver.http.get(f"/api/jobs/{job_id}", headers=admin)).status_code == 200
    # And reads need a key by default: knowing a job id is not enough to read it.
    assert (await receiver.http.get(f"/api/jobs/{job_id}")).status_code == 401


async def test_api_job_ids_with_an_idempotency_key_are_keyed_too(receiver) -> None:
    made = await receiver.http.post(
        "/api/admin/keys", json={"name": "t"}, headers={"Authorization": "Bearer admin-test-key"}
    )
    key, key_id = made.json()["key"], made.json()["key_id"]
    headers = {"Authorization": f"Bearer {key}", "Idempotency-Key": "order-7"}
    first = await receiver.http.post("/api/jobs", json={"agent": "dev", "prompt": "x"}, headers=headers)
    again = await receiver.http.post("/api/jobs", json={"agent": "dev", "prompt": "x"}, headers=headers)
    job_id = first.json()["job_id"]
    assert again.json()["job_id"] == job_id and again.json()["duplicate"] is True
    public = "job_" + hashlib.sha256("\x1f".join(["api", key_id, "order-7"]).encode()).hexdigest()[:32]
    assert job_id != public
    assert job_id == ids.api_job_id(receiver.rt.app[STATE].job_id_key, key_id, "order-7")


async def test_replicas_without_a_configured_secret_agree_on_one_kept_in_kv(
    start_receiver, lovable, js
) -> None:
    async with together(start_receiver(), start_receiver()) as (a, b):
        key = a.rt.app[STATE].job_id_key
        assert key == b.rt.app[STATE].job_id_key and len(key) == 32
        body = lovable.body(id="evt_two_replicas")
        on_a = await a.http.post(URL, content=body, headers=lovable.headers(body))
        on_b = await b.http.post(URL, content=body, headers=lovable.headers(body))
        assert on_a.json()["job_id"] == on_b.json()["job_id"] and on_b.json()["duplicate"] is True
    kv = await js.key_value(subjects.KV_SECRETS)
    assert (await kv.get("job_id")).value == key
    # A receiver started later (a restart) finds the same key: a redelivery names the same job.
    async with start_receiver() as c:
        assert c.rt.app[STATE].job_id_key == key


async def test_a_configured_secret_is_the_key(start_receiver, lovable) -> None:
    secret = "configured-job-id-secret"
    async with start_receiver(job_id_secret=Secret(secret)) as r:
        body = lovable.body(id="evt_configured")
        resp = await r.http.post(URL, content=body, headers=lovable.headers(body))
        assert resp.json()["job_id"] == ids.job_id_for_delivery(secret.encode(), "lovable", "evt_configured")


def together(*managers: Any) -> Any:
    """Enter several async context managers at once (replicas starting together)."""

    @contextlib.asynccontextmanager
    async def both() -> Any:
        async with contextlib.AsyncExitStack() as stack:
            yield await asyncio.gather(*(stack.enter_async_context(m) for m in managers))

    return both()


# --- prompts ----------------------------------------------------------------------------------


@pytest.mark.parametrize("fast", [True, False], ids=["lean path", "aiohttp"])
async def test_a_webhook_prompt_over_max_prompt_chars_is_refused_naming_the_field(
    start_receiver, lovable, bus, fast: bool
) -> None:
    async with start_receiver(fast_webhooks=fast) as receiver:
        await _prompts_refused(receiver, lovable, bus)


async def _prompts_refused(receiver: Any, lovable: Any, bus: Any) -> None:
    body = lovable.body("agent.task_requested", data={"prompt": "x" * 200_000})
    resp = await receiver.http.post(URL, content=body, headers=lovable.headers(body))
    assert resp.status_code == 422, resp.text
    assert resp.json()["field"] == "data.prompt" and "5000" in resp.json()["message"]
    for data, top, field in (
        ({"task": "y" * 5001}, {}, "data.task"),
        ({}, {"instructions": "z" * 5001}, "instructions"),
    ):
        body = lovable.body("agent.task_requested", data=data, **top)
        resp = await receiver.http.post(URL, content=body, headers=lovable.headers(body))
        assert (resp.status_code, resp.json()["field"]) == (422, field)
    await bus.assert_nothing_accepted()
    # At the limit, and long fields that are not prompts, are accepted as before.
    body = lovable.body("agent.task_requested", data={"prompt": "x" * 5000, "files": {"a.py": "#" * 200_000}})
    assert (await receiver.http.post(URL, content=body, headers=lovable.headers(body))).status_code == 202


async def test_prompt_limits_apply_to_every_scheme_and_follow_the_setting(start_receiver, bus) -> None:
    sources = [source("github", "github", [GITHUB_SECRET]), source("acme", "standard", [WHSEC])]
    async with start_receiver(webhook_sources=sources, max_prompt_chars=100) as r:
        body = json.dumps({"action": "opened", "prompt": "p" * 101}).encode()
        resp = await r.http.post("/api/webhooks/github", content=body, headers=github_headers(body, "d-9"))
        assert (resp.status_code, resp.json()["field"]) == (422, "prompt")
        body = json.dumps({"type": "task.created", "data": {"task": "t" * 101}}).encode()
        resp = await r.http.post("/api/webhooks/acme", content=body, headers=standard_headers("m-1", body))
        assert (resp.status_code, resp.json()["field"]) == (422, "data.task")
        await bus.assert_nothing_accepted()
        body = json.dumps({"type": "task.created", "data": {"task": "t" * 100}}).encode()
        resp = await r.http.post("/api/webhooks/acme", content=body, headers=standard_headers("m-2", body))
        assert resp.status_code == 202


async def test_a_prompt_is_checked_only_after_the_signature(receiver, lovable, bus) -> None:
    body = lovable.body("agent.task_requested", data={"prompt": "x" * 6000})
    resp = await receiver.http.post(
        URL, content=body, headers=lovable.headers(body, secret="not-the-secret-at-all")
    )
    assert resp.status_code == 401
    await bus.assert_nothing_accepted()
