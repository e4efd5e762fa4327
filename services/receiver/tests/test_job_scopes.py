"""Jobs belong to a project: another project's job answers 404 on every route, lists show only
what the key's scope owns, and read-only keys read but do not write."""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import Any

import pytest

ADMIN = {"Authorization": "Bearer admin-test-key"}


@pytest.fixture
async def two(start_receiver, make_project, project_key) -> Any:
    async with start_receiver() as r:
        await make_project(r, "alpha", "acme")
        await make_project(r, "beta", "acme")
        await make_project(r, "gamma", "globex")
        r.keys = {p: await project_key(r, p) for p in ("alpha", "beta", "gamma")}  # type: ignore[attr-defined]
        yield r


async def _job(r, headers: dict[str, str], **body: Any) -> str:
    resp = await r.http.post("/api/jobs", json={"agent": "dev", "prompt": "x", **body}, headers=headers)
    assert resp.status_code == 202, resp.text
    return str(resp.json()["job_id"])


async def test_another_projects_job_is_a_missing_one(two) -> None:
    alpha, beta = two.keys["alpha"], two.keys["beta"]
    job = await _job(two, alpha)
    record = (await two.http.get(f"/api/jobs/{job}", headers=alpha)).json()
    assert record["project"] == "alpha"
    for method, path in (
        ("GET", f"/api/jobs/{job}"),
        ("GET", f"/api/jobs/{job}/result"),
        ("GET", f"/api/jobs/{job}/logs"),
        ("GET", f"/api/jobs/{job}/deliveries"),
        ("GET", f"/api/jobs/{job}/stream"),
        ("POST", f"/api/jobs/{job}/cancel"),
        ("GET", f"/api/agents/status/{job}"),
        ("GET", f"/api/results/{job}"),
        ("POST", f"/api/agents/cancel/{job}"),
    ):
        theirs = await two.http.request(method, path, headers=beta)
        missing = await two.http.request(method, path.replace(job, "job_" + "0" * 32), headers=beta)
        assert theirs.status_code == 404, (path, theirs.text)
        assert theirs.json()["error"] == missing.json()["error"] == "job_not_found"
    # The job is still queued: nothing of beta's reached it.
    assert (await two.http.get(f"/api/jobs/{job}", headers=alpha)).json()["status"] == "queued"


async def test_scopes_see_their_own_jobs(two, project_key) -> None:
    jobs = {p: await _job(two, two.keys[p]) for p in ("alpha", "beta", "gamma")}
    org_key = await two.http.post(
        "/api/admin/keys", json={"name": "o", "scope": "org", "org_id": "acme"}, headers=ADMIN
    )
    org = {"Authorization": f"Bearer {org_key.json()['key']}"}
    for project, job in jobs.items():
        expected = 200 if project in ("alpha", "beta") else 404
        assert (await two.http.get(f"/api/jobs/{job}", headers=org)).status_code == expected
        assert (await two.http.get(f"/api/jobs/{job}", headers=ADMIN)).status_code == 200

    async def listed(headers: dict[str, str], query: str = "") -> set[str]:
        resp = await two.http.get(f"/api/jobs{query}", headers=headers)
        assert resp.status_code == 200, resp.text
        return {j["job_id"] for j in resp.json()["jobs"]}

    assert await listed(two.keys["alpha"]) == {jobs["alpha"]}
    assert await listed(org) == {jobs["alpha"], jobs["beta"]}
    assert await listed(org, "?project=beta") == {jobs["beta"]}
    assert await listed(ADMIN) == set(jobs.values())
    resp = await two.http.get("/api/jobs?project=gamma", headers=org)
    assert (resp.status_code, resp.json()["field"]) == (404, "project")
    # An org key submits in a project of its organisation, never another's.
    assert (await _job(two, org, project="beta")) is not None
    resp = await two.http.post(
        "/api/jobs", json={"agent": "dev", "prompt": "x", "project": "gamma"}, headers=org
    )
    assert resp.status_code == 404
    # A read-only key reads and does not write.
    reader = await project_key(two, "alpha", read_only=True)
    assert (await two.http.get(f"/api/jobs/{jobs['alpha']}", headers=reader)).status_code == 200
    resp = await two.http.post(f"/api/jobs/{jobs['alpha']}/cancel", headers=reader)
    assert (resp.status_code, resp.json()["error"]) == (403, "read_only_key")
    resp = await two.http.post("/api/jobs", json={"agent": "dev", "prompt": "x"}, headers=reader)
    assert resp.status_code == 403


async def test_job_list_filters_and_pages(two) -> None:
    alpha = two.keys["alpha"]
    before = dt.datetime.now(dt.UTC)
    made = [await _job(two, alpha, agent=agent) for agent in ("dev", "qa", "dev", "qa", "dev")]
    await asyncio.sleep(0.01)
    middle = dt.datetime.now(dt.UTC)
    later = [await _job(two, alpha) for _ in range(2)]

    pages, cursor = [], None
    while True:
        query = "?limit=3" + (f"&cursor={cursor}" if cursor else "")
        body = (await two.http.get(f"/api/jobs{query}", headers=alpha)).json()
        pages.append([j["job_id"] for j in body["jobs"]])
        cursor = body["next_cursor"]
        if cursor is None or not body["jobs"]:
            break
    assert [j for page in pages for j in page] == made + later  # oldest first, each once
    assert all(len(page) <= 3 for page in pages)

    qa = (await two.http.get("/api/jobs?agent=qa", headers=alpha)).json()["jobs"]
    assert [j["job_id"] for j in qa] == [made[1], made[3]]
    since = middle.isoformat().replace("+00:00", "Z")
    recent = (await two.http.get(f"/api/jobs?since={since}", headers=alpha)).json()["jobs"]
    assert [j["job_id"] for j in recent] == later
    until = await two.http.get("/api/jobs", params={"until": middle.isoformat()}, headers=alpha)
    assert [j["job_id"] for j in until.json()["jobs"]] == made
    queued = (await two.http.get("/api/jobs?status=queued", headers=alpha)).json()["jobs"]
    assert len(queued) == 7 and all(j["status"] == "queued" for j in queued)
    assert (await two.http.get("/api/jobs?status=completed", headers=alpha)).json()["jobs"] == []
    for bad in ("?status=done", "?limit=0", "?since=yesterday", "?cursor=-1"):
        resp = await two.http.get(f"/api/jobs{bad}", headers=alpha)
        assert resp.status_code == 400 and resp.json()["error"] == "invalid_query", bad
    since_before = await two.http.get("/api/jobs", params={"since": before.isoformat()}, headers=alpha)
    assert [j["job_id"] for j in since_before.json()["jobs"]] == made + later


async def test_project_limits_and_the_global_ceiling_hold(start_receiver, make_project, project_key) -> None:
    async with start_receiver(global_rate_limit_per_minute=5) as r:
        await make_project(r, "small", per_minute=2)
        await make_project(r, "big")
        small, big = await project_key(r, "small"), await project_key(r, "big")
        job = {"agent": "dev", "prompt": "x"}
        codes = [(await r.http.post("/api/jobs", json=job, headers=small)).status_code for _ in range(3)]
        assert codes == [202, 202, 429]
        refused = await r.http.post("/api/jobs", json=job, headers=small)
        assert "project small" in refused.json()["message"] and "X-RateLimit-Limit" in refused.headers
        # Another project has its own budget, up to the deployment's ceiling (5 in all).
        codes = [(await r.http.post("/api/jobs", json=job, headers=big)).status_code for _ in range(4)]
        assert codes == [202, 202, 202, 429]
        assert "this deployment" in (await r.http.post("/api/jobs", json=job, headers=big)).json()["message"]


async def test_a_key_cannot_name_another_projects_lovable_project(two, make_project) -> None:
    """Once: any key could choose a callback URL and get a body signed with the deployment-wide
    secret naming any lovableProjectId it liked. A Lovable project id now belongs to the project
    that claims it, and callbacks are signed with the job's project's own secret."""
    await make_project(two, "owner", external_ids=["lovable:lp-owned"])
    resp = await two.http.post(
        "/api/jobs",
        json={
            "agent": "dev",
            "prompt": "x",
            "project_id": "lp-owned",
            "callback_url": "https://x.example/cb",
        },
        headers=two.keys["alpha"],
    )
    assert (resp.status_code, resp.json()["field"]) == (422, "project_id")
    mine = await _job(two, two.keys["alpha"], project_id="lp-unclaimed")
    assert (await two.http.get(f"/api/jobs/{mine}", headers=two.keys["alpha"])).json()["project"] == "alpha"


async def test_a_key_of_another_project_cannot_cancel_a_webhook_job(two, lovable) -> None:
    """Once: a second, ordinary key cancelled a running webhook job it never created."""
    body = lovable.body()
    resp = await two.http.post("/api/webhooks/lovable", content=body, headers=lovable.headers(body))
    job_id = resp.json()["job_id"]
    cancel = await two.http.post(f"/api/jobs/{job_id}/cancel", headers=two.keys["beta"])
    assert cancel.status_code == 404
    record = (await two.http.get(f"/api/jobs/{job_id}", headers=ADMIN)).json()
    assert record["status"] == "queued" and record["project"] == "default"


async def test_agents_a_key_may_run(two, make_project, project_key) -> None:
    await make_project(two, "narrow", agents=["qa", "dev"])
    narrow = await project_key(two, "narrow")
    got = (await two.http.get("/api/agents", headers=narrow)).json()
    assert got["project"] == "narrow" and got["agents"] == ["dev", "qa"]
    # Each is shown as a read-only definition too (GET /api/agents lists the project's own).
    assert [(d["id"], d["read_only"], d["version"]) for d in got["definitions"]] == [
        ("dev", True, 0),
        ("qa", True, 0),
    ]
    assert (
        await two.http.post("/api/jobs", json={"agent": "pm", "prompt": "x"}, headers=narrow)
    ).status_code == 422
    everything = (await two.http.get("/api/agents", headers=two.keys["alpha"])).json()
    assert everything["project"] == "alpha" and {"dev", "qa", "pm", "architect"} <= set(everything["agents"])
    assert (await two.http.get("/api/agents", params={"project": "narrow"}, headers=ADMIN)).json() == got
    resp = await two.http.get("/api/agents", params={"project": "narrow"}, headers=two.keys["gamma"])
    assert resp.status_code == 404
