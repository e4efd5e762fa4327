"""One active deployment per site: queued publishes are superseded, runs never overlap."""

from __future__ import annotations

import asyncio
from typing import Any

import msgspec

from conveyor.shared.contracts import subjects
from conveyor.shared.contracts.events import JobResult
from conveyor.shared.testing.fixtures import eventually


async def test_newer_publish_supersedes_queued_and_runs_never_overlap(
    start_deployer: Any, site_config: Any, js: Any
) -> None:
    async with start_deployer(test_slow_step="building", test_slow_step_s=1.0) as d:
        await d.store.save_draft(site_config("acme", "Version A"))
        a = (await d.store.request("acme", "publish")).deployment

        async def a_running() -> None:
            rec, _ = await d.store.deployment(a.deployment_id)
            assert rec.status not in ("pending",)

        await eventually(a_running)
        # Two more publishes while A runs: B queues, then C supersedes B.
        await d.store.save_draft(site_config("acme", "Version B"))
        b = (await d.store.request("acme", "publish")).deployment
        await d.store.save_draft(site_config("acme", "Version C"))
        c = (await d.store.request("acme", "publish")).deployment

        done_a, done_b, done_c = [await d.finished(x.deployment_id) for x in (a, b, c)]
        assert (done_a.status, done_b.status, done_c.status) == ("success", "superseded", "success")
        assert done_b.superseded_by == c.deployment_id
        assert done_a.finished_at <= done_c.started_at  # never two at once
        assert "Version C" in (await d.aget("acme")).text

        metrics = await d.metrics()
        assert 'deployments_total{status="success"} 2.0' in metrics
        assert 'deployments_total{status="superseded"} 1.0' in metrics
        assert 'deployment_step_duration_seconds_count{step="building"} 2.0' in metrics


async def test_simultaneous_publishes_of_one_config_make_one_deployment(
    deployer: Any, site_config: Any
) -> None:
    await deployer.store.save_draft(site_config("acme"))
    results = await asyncio.gather(*(deployer.store.request("acme", "publish") for _ in range(5)))
    assert len({r.deployment.deployment_id for r in results}) == 1
    assert sum(not r.duplicate for r in results) == 1
    assert (await deployer.finished(results[0].deployment.deployment_id)).status == "success"


async def test_step_deadline_fails_the_deployment_and_calls_back(
    start_deployer: Any, site_config: Any, js: Any
) -> None:
    async with start_deployer(
        test_slow_step="building", test_slow_step_s=30.0, step_deadlines={"building": 0.5}
    ) as d:
        await d.store.save_draft(site_config("acme"))
        site = await d.store.update_site(
            "acme", lambda s: msgspec.structs.replace(s, callback_url="https://owner.example/hook")
        )
        assert site is not None
        dep = (await d.store.request("acme", "publish")).deployment
        done = await d.finished(dep.deployment_id)
        assert done.status == "failed" and "deadline" in (done.error or "")
        step = done.step("building")
        assert step is not None and step.status == "failed"

        msg = await js.get_last_msg(subjects.RESULTS, subjects.result(dep.deployment_id))
        result = msgspec.json.decode(msg.data, type=JobResult)
        assert result.kind == "deployment" and result.callback_url == "https://owner.example/hook"
        assert result.result.status == "failed" and result.result.job_id == dep.deployment_id
        assert (await d.aget("acme")).status_code == 404  # nothing went live


async def test_cancel_a_queued_deployment(start_deployer: Any, site_config: Any) -> None:
    async with start_deployer(test_slow_step="creating_repo", test_slow_step_s=1.0) as d:
        await d.store.save_draft(site_config("acme", "A"))
        a = (await d.store.request("acme", "publish")).deployment
        pv = (await d.store.request("acme", "preview")).deployment  # waits behind A
        await d.store.cancel(pv.deployment_id)
        assert (await d.finished(pv.deployment_id)).status == "cancelled"
        assert (await d.finished(a.deployment_id)).status == "success"


async def test_status_events_and_success_callback(deployer: Any, site_config: Any, js: Any) -> None:
    sub = await js.subscribe(subjects.deploy_status("acme"), stream=subjects.DEPLOYS)
    await deployer.store.save_draft(site_config("acme"))
    dep = (await deployer.store.request("acme", "publish")).deployment
    await deployer.finished(dep.deployment_id)
    seen = []
    while not seen or seen[-1] != "success":
        msg = await sub.next_msg(timeout=5)
        seen.append(msgspec.json.decode(msg.data)["status"])
    assert seen == [
        "creating_repo",
        "committing_config",
        "creating_service",
        "building",
        "deploying",
        "success",
    ]
    msg = await js.get_last_msg(subjects.RESULTS, subjects.result(dep.deployment_id))
    result = msgspec.json.decode(msg.data, type=JobResult)
    assert result.result.status == "completed" and "acme.localhost" in result.result.result.summary
    assert msg.headers[subjects.MSG_ID] == f"result-{dep.deployment_id}"


async def test_old_releases_are_cleaned_up(deployer: Any, site_config: Any) -> None:
    ids = []
    for n in range(4):
        await deployer.store.save_draft(site_config("acme", f"Version {n}"))
        dep = (await deployer.store.request("acme", "publish")).deployment
        assert (await deployer.finished(dep.deployment_id)).status == "success"
        ids.append(dep.deployment_id)
    releases = sorted(p.name for p in (deployer.data_dir / "acme" / "releases").iterdir())
    assert releases == sorted(ids[-2:])  # KEEP_RELEASES=2 in these tests, live among them
    assert (await deployer.aget("acme", ids[0])).status_code == 404
