"""The local provider end to end through the real service: publish, republish, rollback, preview."""

from __future__ import annotations

from typing import Any

from conveyor.deployer.providers.gitcli import git
from conveyor.shared.contracts.deploys import SiteConfig


async def git_log(repo: Any, ref: str = "main") -> list[str]:
    return (await git("log", "--format=%H %s", ref, git_dir=repo)).decode().splitlines()


async def test_publish_republish_and_rollback(deployer: Any, site_config: Any) -> None:
    first: SiteConfig = site_config("acme", "Fresh bread, every morning")
    await deployer.store.save_draft(first)
    a = (await deployer.store.request("acme", "publish")).deployment
    done_a = await deployer.finished(a.deployment_id)
    assert done_a.status == "success", done_a.error
    assert [s.status for s in done_a.steps] == ["done"] * 5
    assert done_a.url == f"http://acme.localhost:{deployer.port}/"

    page = await deployer.aget("acme")
    assert page.status_code == 200
    assert "<title>Acme Bakery</title>" in page.text and "Fresh bread, every morning" in page.text
    assert page.headers["X-Conveyor-Release"] == a.deployment_id

    second = site_config("acme", "Now with croissants")
    await deployer.store.save_draft(second)
    b = (await deployer.store.request("acme", "publish")).deployment
    done_b = await deployer.finished(b.deployment_id)
    assert done_b.status == "success", done_b.error
    page = await deployer.aget("acme")
    assert "Now with croissants" in page.text and "Fresh bread" not in page.text

    releases = deployer.data_dir / "acme" / "releases"
    before = sorted(p.name for p in releases.iterdir())
    r = (await deployer.store.request("acme", "rollback", rollback_of=a.deployment_id)).deployment
    done_r = await deployer.finished(r.deployment_id)
    assert done_r.status == "success", done_r.error
    page = await deployer.aget("acme")
    assert "Fresh bread, every morning" in page.text
    assert page.headers["X-Conveyor-Release"] == a.deployment_id  # the first build, served again
    building = done_r.step("building")
    assert building is not None and building.status == "skipped"
    assert done_r.external["reused_from"] == a.deployment_id
    assert sorted(p.name for p in releases.iterdir()) == before  # nothing was rebuilt

    site, _ = await deployer.store.site("acme")
    assert site.live_deployment_id == r.deployment_id
    history = await git_log(deployer.data_dir / "acme" / "repo.git")
    assert [line.split(" ", 1)[1] for line in history] == [
        f"Roll back to {a.deployment_id}",
        "Publish Acme Bakery",
        "Publish Acme Bakery",
    ]
    assert done_b.external["commit_sha"] == history[1].split()[0]


async def test_preview_leaves_live_alone(deployer: Any, site_config: Any) -> None:
    await deployer.store.save_draft(site_config("acme", "Live headline"))
    live = (await deployer.store.request("acme", "publish")).deployment
    assert (await deployer.finished(live.deployment_id)).status == "success"

    await deployer.store.save_draft(site_config("acme", "Draft headline"))
    pv = (await deployer.store.request("acme", "preview")).deployment
    done = await deployer.finished(pv.deployment_id)
    assert done.status == "success", done.error
    assert done.url == f"http://{pv.deployment_id}--acme.localhost:{deployer.port}/"

    assert "Draft headline" in (await deployer.aget("acme", pv.deployment_id)).text
    page = await deployer.aget("acme")
    assert "Live headline" in page.text and page.headers["X-Conveyor-Release"] == live.deployment_id
    site, _ = await deployer.store.site("acme")
    assert site.live_deployment_id == live.deployment_id and site.latest_preview == pv.deployment_id

    repo = deployer.data_dir / "acme" / "repo.git"
    assert len(await git_log(repo, "main")) == 1  # previews commit to their own branch
    assert (await git_log(repo, f"preview/{pv.deployment_id}"))[0].endswith("Preview Acme Bakery")


async def test_same_config_again_returns_the_existing_deployment(deployer: Any, site_config: Any) -> None:
    await deployer.store.save_draft(site_config("acme"))
    first = await deployer.store.request("acme", "publish")
    again = await deployer.store.request("acme", "publish")
    assert again.duplicate and again.deployment.deployment_id == first.deployment.deployment_id
    assert (await deployer.finished(first.deployment.deployment_id)).status == "success"
    after = await deployer.store.request("acme", "publish")
    assert after.duplicate and after.deployment.deployment_id == first.deployment.deployment_id


async def test_unknown_hosts_and_paths(deployer: Any) -> None:
    assert (await deployer.aget("nosuchsite")).status_code == 404
    async with __import__("httpx").AsyncClient() as client:
        r = await client.get(f"http://127.0.0.1:{deployer.port}/health/live")
        assert r.status_code == 200  # the service's own routes still answer on other hosts
