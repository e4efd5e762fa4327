"""A deployer process killed mid-pipeline: a new process resumes after the last finished step."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
from nats.js import JetStreamContext

from conveyor.deployer.providers.gitcli import git
from conveyor.shared.testing.fixtures import eventually
from conveyor.shared.testing.procs import ServiceProcess, service_env


def deployer_proc(nats_url: str, tmp_path: Path, name: str, **env: str) -> ServiceProcess:
    base = service_env(
        nats_url, DATA_DIR=str(tmp_path / "sites"), ACK_WAIT_S="1.5", LEASE_S="1.5", LOG_FORMAT="text", **env
    )
    return ServiceProcess("deployer", base, tmp_path / f"{name}.log")


async def test_killed_deployer_resumes_and_finishes(
    nats_url: str, js: JetStreamContext, tmp_path: Path, site_config: Any, store: Any
) -> None:
    first = await deployer_proc(
        nats_url, tmp_path, "first", TEST_SLOW_STEP="building", TEST_SLOW_STEP_S="120"
    ).start()
    second = deployer_proc(nats_url, tmp_path, "second")
    try:
        await store.save_draft(site_config("acme", "Survives a crash"))
        dep = (await store.request("acme", "publish")).deployment

        async def building() -> Any:
            rec, _ = await store.deployment(dep.deployment_id)
            assert rec.status == "building", rec.status
            return rec

        before = await eventually(building, timeout=20)
        commit = before.external["commit_sha"]
        await first.kill()  # SIGKILL: no drain, no nak

        await second.start()

        async def finished() -> Any:
            rec, _ = await store.deployment(dep.deployment_id)
            assert rec.terminal, rec.status
            return rec

        done = await eventually(finished, timeout=30)
        assert done.status == "success", (done.error, second.tail())
        assert done.attempts == 2
        assert done.external["commit_sha"] == commit
        # Finished steps were not run again; the interrupted one ran twice.
        assert {s.name: s.attempts for s in done.steps} == {
            "creating_repo": 1,
            "committing_config": 1,
            "creating_service": 1,
            "building": 2,
            "deploying": 1,
        }
        repo = tmp_path / "sites" / "acme" / "repo.git"
        log = (await git("log", "--format=%H", "main", git_dir=repo)).decode().split()
        assert log == [commit]
        async with httpx.AsyncClient() as client:
            page = await client.get(f"{second.url}/", headers={"Host": f"acme.localhost:{second.port}"})
        assert page.status_code == 200 and "Survives a crash" in page.text
    finally:
        await first.kill()
        await second.stop()
