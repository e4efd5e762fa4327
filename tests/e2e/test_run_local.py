"""``make run`` (scripts/run_local.py) as a person uses it: it starts everything, prints its
keys and a curl command, the command's webhook comes back as a signed callback, and Ctrl-C
stops it all. Its keys are its own: random, made on the first run, kept in
<data>/local-keys.json (mode 0600) and the same on the next run; none is a published default.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import stat
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from conveyor.shared.testing.procs import free_port

ROOT = Path(__file__).resolve().parents[2]
KEY_NAMES = (
    "ADMIN_API_KEY",
    "LOVABLE_API_KEY",
    "LOVABLE_WEBHOOK_SECRET",
    "CALLBACK_SIGNING_SECRETS",
    "CONVEYOR_SECRET_KEYS",
)
# What the script used before: anyone who read it could administer a `make run`.
PUBLISHED = {
    "dev-admin-key-change-me",
    "dev-api-key-change-me",
    "dev-secret-change-me",
    "whsec_ZGV2LWNhbGxiYWNrLXNpZ25pbmcta2V5LTAx",
}
READY = "Ctrl-C stops everything."


class LocalRun:
    def __init__(self, proc: asyncio.subprocess.Process, receiver: str) -> None:
        self.proc = proc
        self.receiver = receiver
        self.lines: list[str] = []

    async def read_until(self, want: str, timeout: float = 90) -> str:
        """Lines up to and including the first that contains ``want``."""
        assert self.proc.stdout is not None
        async with asyncio.timeout(timeout):
            while True:
                raw = await self.proc.stdout.readline()
                if not raw:
                    raise AssertionError(f"make run ended before {want!r}:\n" + "".join(self.lines[-40:]))
                self.lines.append(raw.decode())
                if want in self.lines[-1]:
                    return "".join(self.lines)

    async def stop(self) -> int:
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGINT)
        assert self.proc.stdout is not None
        async with asyncio.timeout(90):
            rest = await self.proc.stdout.read()
            self.lines.append(rest.decode())
            return await self.proc.wait()


@pytest.fixture
def run_env(tmp_path: Path) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in (*KEY_NAMES, "NATS_URL", "PORT", "CONVEYOR_CONFIG", "LOVABLE_CALLBACK_URL", "DATA_DIR")
    }
    ports = {name: str(free_port()) for name in ("RECEIVER", "EXECUTOR", "DELIVERER", "DEPLOYER", "SINK")}
    env.update({f"{name}_PORT": port for name, port in ports.items()})
    env.update(
        RUN_DATA_DIR=str(tmp_path / "data"),
        NATS_PORT=str(free_port()),
        NATS_MONITOR_PORT=str(free_port()),
        LOG_LEVEL="WARNING",
    )
    return env


async def start(env: dict[str, str], log: Path) -> LocalRun:
    with log.open("ab") as err:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, str(ROOT / "scripts" / "run_local.py"),
            env=env, cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=err,
            start_new_session=True,  # Ctrl-C goes to it alone, as from its own terminal
        )  # fmt: skip
    return LocalRun(proc, f"http://127.0.0.1:{env['RECEIVER_PORT']}")


@pytest.fixture
async def runs() -> AsyncIterator[list[LocalRun]]:
    started: list[LocalRun] = []
    try:
        yield started
    finally:
        for run in started:
            if run.proc.returncode is None:
                await run.stop()


def printed_keys(output: str) -> dict[str, str]:
    keys = {}
    for line in output.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0] in KEY_NAMES:
            keys[parts[0]] = parts[1]
    return keys


def curl_command(output: str) -> str:
    """The lines the output says to paste into a shell."""
    block = output.split("(paste into another shell):", 1)[1].split("\nor:", 1)[0]
    return "\n".join(line[2:] for line in block.strip("\n").splitlines())


@pytest.mark.timeout(400)
async def test_make_run_makes_its_own_keys_and_the_printed_curl_gets_its_callback(
    run_env: dict[str, str], runs: list[LocalRun], tmp_path: Path
) -> None:
    first = await start(run_env, tmp_path / "run-1.err")
    runs.append(first)
    output = await first.read_until(READY)

    keys_file = tmp_path / "data" / "local-keys.json"
    assert stat.S_IMODE(keys_file.stat().st_mode) == 0o600
    stored = json.loads(keys_file.read_text())
    assert sorted(stored) == sorted(KEY_NAMES)
    assert printed_keys(output) == stored
    assert not PUBLISHED & set(stored.values())
    assert len(set(stored.values())) == len(KEY_NAMES)

    # The embedded nats-server runs under a Go memory limit (docs/operations.md "Size the brokers").
    async with httpx.AsyncClient(timeout=10) as http:
        varz = (await http.get(f"http://127.0.0.1:{run_env['NATS_MONITOR_PORT']}/varz")).json()
    assert varz["gomemlimit"] == 128 * 1024 * 1024

    async with httpx.AsyncClient(base_url=first.receiver, timeout=10) as http:
        admin = await http.get(
            "/api/admin/keys", headers={"Authorization": f"Bearer {stored['ADMIN_API_KEY']}"}
        )
        assert admin.status_code == 200
        old = await http.get("/api/admin/keys", headers={"Authorization": "Bearer dev-admin-key-change-me"})
        assert old.status_code == 401

    # The printed command, as pasted into a shell.
    curl = await asyncio.create_subprocess_exec(
        "bash", "-c", curl_command(output), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(curl.communicate(), 30)
    assert curl.returncode == 0, err.decode()
    job_id = json.loads(out)["job_id"]
    callback = await first.read_until(f">>> callback: job {job_id}", timeout=120)
    assert "(signature ok)" in callback.splitlines()[-1]

    # scripts/send_webhook.py finds the secret in the keys file.
    send = await asyncio.create_subprocess_exec(
        sys.executable, str(ROOT / "scripts" / "send_webhook.py"),
        "--url", f"{first.receiver}/api/webhooks/lovable",
        env=run_env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(send.communicate(), 30)
    assert send.returncode == 0 and out.startswith(b"202 "), (out, err)
    assert await first.stop() == 0

    # The next run uses the same keys.
    second = await start(run_env, tmp_path / "run-2.err")
    runs.append(second)
    again = await second.read_until(READY)
    assert printed_keys(again) == stored
    assert json.loads(keys_file.read_text()) == stored
    assert await second.stop() == 0
