"""`conveyor orgs|projects|keys` as an operator runs them (subprocesses) against a real receiver."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from conveyor.shared.contracts import subjects
from conveyor.shared.domain.sealing import new_key_setting
from conveyor.shared.testing.nats_server import NatsServer
from conveyor.shared.testing.procs import ServiceProcess, service_env

ADMIN = "cli-admin-key-0123456789"
HOOK = "a-webhook-secret-from-the-environment"


@pytest.fixture
async def receiver(nats_server: NatsServer, tmp_path: Path) -> AsyncIterator[ServiceProcess]:
    env = service_env(nats_server.url, ADMIN_API_KEY=ADMIN, CONVEYOR_SECRET_KEYS=new_key_setting())
    proc = ServiceProcess("receiver", env, tmp_path / "receiver.log")
    await proc.start()
    try:
        yield proc
    finally:
        await proc.stop()


async def cli(url: str, *args: str, code: int = 0, **env: str) -> str:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "conveyor.cli",
        *args,
        "--url",
        url,
        env={**os.environ, "CONVEYOR_ADMIN_KEY": ADMIN, **env},
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == code, (proc.returncode, out.decode(), err.decode())
    return out.decode() + err.decode()


async def test_projects_and_keys_from_the_command_line(receiver: ServiceProcess, js) -> None:
    url = receiver.url
    await cli(url, "orgs", "create", "Acme", "--id", "acme")
    made = json.loads(
        await cli(
            url,
            "projects",
            "create",
            "Shop",
            "--org",
            "acme",
            "--id",
            "shop",
            "--external-id",
            "lovable:lp-shop",
            "--max-running",
            "4",
            "--webhook-secret-from",
            "lovable=SHOP_HOOK",
            "--json",
            SHOP_HOOK=HOOK,
        )
    )
    assert made["project_id"] == "shop" and made["callback_secret"].startswith("whsec_")
    raw = (await (await js.key_value(subjects.KV_PROJECTS)).get("shop")).value
    assert HOOK.encode() not in raw  # sealed by the receiver

    listed = await cli(url, "projects", "list")
    assert "project_id=shop" in listed and "project_id=default" in listed
    shown = await cli(url, "projects", "show", "shop")
    assert HOOK not in shown and "webhook lovable" in shown
    await cli(url, "projects", "update", "shop", "--disable")
    assert json.loads(await cli(url, "projects", "show", "shop", "--json"))["enabled"] is False
    await cli(url, "projects", "update", "shop", "--budget-day-usd", "2.5", "--progress-callbacks", "on")
    shop = json.loads(await cli(url, "projects", "show", "shop", "--json"))
    assert (shop["budget_day_usd"], shop["budget_month_usd"], shop["progress_callbacks"]) == (2.5, 0.0, True)

    key = json.loads(await cli(url, "keys", "create", "ci", "--project", "shop", "--read-only", "--json"))
    assert (key["scope"], key["project_id"], key["read_only"]) == ("project", "shop", True)
    assert key["key"].startswith("cvk_")
    assert f"key_id={key['key_id']}" in await cli(url, "keys", "list")
    await cli(url, "keys", "revoke", key["key_id"])

    # Refusals print the receiver's error and exit 1; a missing variable is refused before sending.
    out = await cli(url, "projects", "show", "nope", code=1)
    assert "project_not_found" in out
    out = await cli(
        url, "projects", "create", "X", "--org", "acme", "--webhook-secret-from", "lovable=UNSET_VAR", code=1
    )
    assert "UNSET_VAR" in out
