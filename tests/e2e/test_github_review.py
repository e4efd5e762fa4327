"""GitHub pull requests work by default, end to end with real processes: a signed
``pull_request`` webhook (opened) -> receiver -> executor (router -> pr-review, offline) ->
the pull request's diff read from a local GitHub API -> the review posted there as a comment.

The comment's token comes from GITHUB_TOKEN, the executor's fallback for a project with no
GitHub integration of its own.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from conveyor.shared.domain.signing import github_sign
from conveyor.shared.testing.fake_github import FakeGitHub
from conveyor.shared.testing.fixtures import eventually
from conveyor.shared.testing.nats_server import NatsServer
from conveyor.shared.testing.procs import ServiceProcess, service_env

SECRET = "e2e-github-webhook-secret"
ADMIN = "e2e-admin-key"
TOKEN = "ghp_e2e_token_0123456789"
DIFF = """diff --git a/app/run.py b/app/run.py
--- a/app/run.py
+++ b/app/run.py
@@ -1,2 +1,3 @@
 import subprocess
+subprocess.run(cmd, shell=True)
 def main():
"""


@pytest.fixture
async def github() -> AsyncIterator[FakeGitHub]:
    fake = await FakeGitHub(token=TOKEN).start()
    fake.add_pull("acme/app", 12, DIFF)
    yield fake
    await fake.stop()


@pytest.fixture
async def system(
    nats_server: NatsServer, github: FakeGitHub, tmp_path: Path
) -> AsyncIterator[dict[str, ServiceProcess]]:
    env = service_env(
        nats_server.url,
        WEBHOOK_SOURCES=json.dumps([{"name": "github", "scheme": "github", "secrets": [SECRET]}]),
        ADMIN_API_KEY=ADMIN,
        GITHUB_API_URL=github.url,
        GITHUB_TOKEN=TOKEN,
    )
    procs = {
        name: ServiceProcess(name, env, tmp_path / "logs" / f"{name}.log")
        for name in ("receiver", "executor")
    }
    try:
        await asyncio.gather(*(p.start() for p in procs.values()))
        yield procs
    finally:
        codes = await asyncio.gather(*(p.stop() for p in procs.values()))
        assert list(codes) == [0, 0], {n: p.tail() for n, p in procs.items()}


def pull_request_event(action: str, number: int = 12) -> tuple[bytes, dict[str, str]]:
    body = json.dumps(
        {
            "action": action,
            "number": number,
            "pull_request": {"number": number, "title": "Run the tool", "head": {"sha": uuid.uuid4().hex}},
            "repository": {"full_name": "acme/app", "private": False},
            "sender": {"login": "octocat"},
        }
    ).encode()
    return body, {
        "Content-Type": "application/json",
        "X-GitHub-Event": "pull_request",
        "X-GitHub-Delivery": str(uuid.uuid4()),
        "X-Hub-Signature-256": github_sign(SECRET, body),
    }


async def test_a_signed_pull_request_webhook_is_reviewed_and_commented_on(
    system: dict[str, ServiceProcess], github: FakeGitHub
) -> None:
    async with httpx.AsyncClient(
        base_url=system["receiver"].url, timeout=10, headers={"Authorization": f"Bearer {ADMIN}"}
    ) as http:
        body, headers = pull_request_event("opened")
        r = await http.post("/api/webhooks/github", content=body, headers=headers)
        assert r.status_code == 202, r.text
        job_id = r.json()["job_id"]

        async def finished() -> dict[str, Any]:
            job = (await http.get(f"/api/jobs/{job_id}")).json()
            assert job["status"] == "completed", job
            return job

        job = await eventually(finished, timeout=30)
        assert job["agent"] == "pr-review"
        [comment] = github.comments
        assert (comment.repo, comment.number) == ("acme/app", 12)
        assert comment.headers["Authorization"] == f"Bearer {TOKEN}"
        assert comment.body.startswith("### Conveyor review") and "shell command" in comment.body
        logs = json.dumps((await http.get(f"/api/jobs/{job_id}/logs")).json())
        assert "review posted as a comment on acme/app#12" in logs and TOKEN not in logs

        # A closed pull request is not reviewed: its job completes with nothing posted.
        body, headers = pull_request_event("closed")
        r = await http.post("/api/webhooks/github", content=body, headers=headers)
        assert r.status_code == 202, r.text
        job_id = r.json()["job_id"]
        job = await eventually(finished, timeout=30)
        assert "nothing to review" in job["result"]["result"]["summary"]
        assert len(github.comments) == 1
