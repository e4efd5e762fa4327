"""AgentJob.credentials: a job's tools get its project's integration tokens. The records are
written by a real receiver (its API), read from KV ``connections``; a GitHub App installation
is exchanged for an installation token at a local fake of GitHub that checks the RS256 JWT
with the App's public key."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry

from conveyor.executor.backends.base import AgentError, AgentJob
from conveyor.executor.backends.builtin import BuiltinBackend
from conveyor.executor.credentials import CredentialsProvider
from conveyor.executor.service import SPEC as EXECUTOR
from conveyor.receiver.config import Settings as ReceiverSettings
from conveyor.receiver.service import SPEC as RECEIVER
from conveyor.shared.contracts import subjects
from conveyor.shared.domain.sealing import Sealer, new_key_setting
from conveyor.shared.runtime.config import Secret
from conveyor.shared.runtime.runner import serve
from conveyor.shared.testing.fake_oauth import FakeOAuth, new_rsa_key

KEYS = new_key_setting()
ADMIN = "credentials-admin-key"
AUTH = {"Authorization": f"Bearer {ADMIN}"}
GITHUB_TOKEN = "ghp_executorSideToken0123456789abcdef"
SLACK_TOKEN = "xoxb-9-8-executorSideSlackToken"


@pytest.fixture
async def receiver(nats_url: str) -> AsyncIterator[httpx.AsyncClient]:
    settings = ReceiverSettings(
        nats_url=nats_url,
        port=0,
        admin_api_key=Secret(ADMIN),
        conveyor_secret_keys=Secret(KEYS),
        shutdown_grace_s=1.0,
    )
    async with serve(RECEIVER, settings, registry=CollectorRegistry()) as rt:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{rt.http_port}", headers=AUTH) as http:
            resp = await http.post("/api/admin/projects", json={"project_id": "shop", "org_id": "default"})
            assert resp.status_code == 201, resp.text
            yield http


@pytest.fixture
async def fake() -> AsyncIterator[FakeOAuth]:
    f = await FakeOAuth().start()
    try:
        yield f
    finally:
        await f.stop()


@contextlib.asynccontextmanager
async def provider(
    nats_bus: Any, github_api_url: str, keys: str = KEYS
) -> AsyncIterator[CredentialsProvider]:
    kv = await nats_bus.kv(subjects.KV_CONNECTIONS)
    async with httpx.AsyncClient() as http:
        yield CredentialsProvider(kv, Sealer.parse(keys), http, github_api_url)


async def _put(http: httpx.AsyncClient, provider: str, body: dict[str, Any], project: str = "shop") -> None:
    resp = await http.put(f"/api/integrations/{provider}", params={"project": project}, json=body)
    assert resp.status_code == 200, resp.text


async def test_tokens_of_the_jobs_project(receiver, nats_bus, fake) -> None:
    await _put(receiver, "github", {"token": GITHUB_TOKEN})
    await _put(receiver, "slack", {"bot_token": SLACK_TOKEN})
    async with provider(nats_bus, fake.url) as creds:
        shop = creds.of("shop")
        assert await shop("github") == GITHUB_TOKEN
        assert await shop("slack") == SLACK_TOKEN
        assert await shop("jira") is None  # no such provider: not connected
        assert await creds.of("default")("github") is None  # another project's is not this one's
        assert fake.requests == []  # plain tokens need no call to GitHub

        assert (
            await receiver.delete("/api/integrations/github", params={"project": "shop"})
        ).status_code == 204
        assert await shop("github") is None  # removed: at once, no stale copy

    # Sealed under a key this executor does not hold: a clear error, not "not connected".
    async with provider(nats_bus, fake.url, keys=new_key_setting("other")) as wrong:
        with pytest.raises(AgentError, match="slack integration cannot be opened"):
            await wrong.of("shop")("slack")


async def test_app_installation_token_is_minted_and_kept(receiver, nats_bus, fake) -> None:
    pem, public = new_rsa_key()
    app = fake.add_app(31337, "conveyor-test", public)
    app.installations[4242] = "acme-org"
    await _put(receiver, "github", {"app_id": 31337, "installation_id": 4242, "private_key": pem})

    def minted() -> list[tuple[str, str, dict[str, str], bytes]]:
        return [r for r in fake.requests if r[1] == "/app/installations/4242/access_tokens"]

    async with provider(nats_bus, fake.url) as creds:
        token = await creds.of("shop")("github")
        # The fake answered 201 only after verifying the JWT with the App's public key.
        assert token is not None and token.startswith("ghs_") and token == fake.issued[-1]
        (call,) = minted()
        assert call[0] == "POST" and call[2]["Accept"] == "application/vnd.github+json"
        assert call[2]["Authorization"].startswith("Bearer ey")
        # Kept until shortly before expires_at: the next tool call makes no new exchange.
        assert await creds.of("shop")("github") == token
        assert len(minted()) == 1

        # Set again (another key, say): the kept token goes with the old record.
        await _put(receiver, "github", {"app_id": 31337, "installation_id": 4242, "private_key": pem})
        fresh = await creds.of("shop")("github")
        assert fresh != token and fresh == fake.issued[-1] and len(minted()) == 2

        # A key GitHub does not know for the App: GitHub's 401 is the job's error.
        other_pem, _ = new_rsa_key()
        await _put(receiver, "github", {"app_id": 31337, "installation_id": 4242, "private_key": other_pem})
        with pytest.raises(AgentError, match=r"refused an installation token for installation 4242 \(401 "):
            await creds.of("shop")("github")


async def test_a_running_job_gets_its_projects_credentials(
    receiver, js, bus, make_settings, monkeypatch
) -> None:
    """The worker hands every attempt its project's credentials (AgentJob.credentials)."""
    await _put(receiver, "slack", {"bot_token": SLACK_TOKEN})
    seen: dict[str, tuple[str | None, str | None]] = {}
    plain = BuiltinBackend.run

    async def run(self: BuiltinBackend, job: AgentJob) -> Any:
        seen[job.request.job_id] = (await job.credentials("slack"), await job.credentials("github"))
        return await plain(self, job)

    monkeypatch.setattr(BuiltinBackend, "run", run)
    async with serve(EXECUTOR, make_settings(conveyor_secret_keys=Secret(KEYS))):
        mine = await bus.job("qa", {"files": {"a.py": "x = 1\n"}}, project="shop")
        theirs = await bus.job("qa", {"files": {"a.py": "x = 1\n"}})
        await bus.until(mine, "completed")
        await bus.until(theirs, "completed")
    assert seen[mine] == (SLACK_TOKEN, None)
    assert seen[theirs] == (None, None)  # the default project connected nothing
