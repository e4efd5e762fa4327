"""Conveyor as the benchmark runs it: a fresh nats-server and the services as real processes."""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from pathlib import Path

from bench.payloads import JOB_ID_SECRET
from bench.procs import Nats, Proc, Procs, free_port, start_nats, wait_http

SIGNING_SECRET = "whsec_" + base64.b64encode(b"bench-callback-signing-key-0001").decode()


@dataclass
class System:
    nats: Nats
    services: dict[str, Proc] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)

    @property
    def receiver_port(self) -> int:
        return self.services["receiver"].port

    def watch(self) -> dict[str, Proc]:
        """The processes whose CPU and memory the report shows."""
        return {"nats-server": self.nats.proc, **self.services}


def config_toml(path: Path, *, agents: list[dict[str, object]], routes: dict[str, list[str]]) -> Path:
    """A CONVEYOR_CONFIG file with the executor's extra agents and routes."""
    lines = ["[executor]"]
    if routes:
        lines.append("[executor.routes]")
        for key, names in routes.items():
            lines.append(f'"{key}" = [{", ".join(repr(n).replace(chr(39), chr(34)) for n in names)}]')
    for agent in agents:
        lines.append("[[executor.agents]]")
        for k, v in agent.items():
            lines.append(f"{k} = {_toml(v)}")
    path.write_text("\n".join(lines) + "\n")
    return path


def _toml(v: object) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return str(v)
    return '"' + str(v).replace("\\", "\\\\").replace('"', '\\"') + '"'


async def start(
    procs: Procs,
    root: Path,
    name: str,
    *,
    services: list[str],
    secret: str,
    callback_url: str,
    log_level: str,
    extra: dict[str, dict[str, str]] | None = None,
    nats_prof: bool = False,
    nats_env: dict[str, str] | None = None,
) -> System:
    nats = await start_nats(procs, f"{name}-nats", root / f"{name}-js", prof=nats_prof, env=nats_env)
    env = {
        "NATS_URL": nats.url,
        "LOVABLE_WEBHOOK_SECRET": secret,
        "LOVABLE_CALLBACK_URL": callback_url,
        "CALLBACK_ALLOWED_NETWORKS": "127.0.0.0/8",
        "CALLBACK_SIGNING_SECRETS": SIGNING_SECRET,
        "JOB_ID_SECRET": JOB_ID_SECRET,
        # The webhook limiter stays on (its counters are real KV writes) but never trips.
        "RATE_LIMIT_MAX": "1000000000",
        "LOG_LEVEL": log_level,
        "SHUTDOWN_GRACE_S": "5",
        "DEPLOYER_DATA_DIR": str(root / f"{name}-deployer"),
    }
    system = System(nats, env=env)
    for svc in services:
        await add_service(procs, system, name, svc, (extra or {}).get(svc, {}))
    return system


async def add_service(
    procs: Procs, system: System, run: str, svc: str, extra: dict[str, str], key: str = ""
) -> Proc:
    """Start ``python -m conveyor.<svc>`` and wait for /health/ready."""
    port = free_port()
    env = {**system.env, **extra, "PORT": str(port), "HOST": "127.0.0.1"}
    key = key or svc
    p = await procs.python(f"{run}-{key}", f"conveyor.{svc}", env=env, port=port)
    await wait_http(p, f"http://127.0.0.1:{port}/health/ready", timeout=60)
    system.services[key] = p
    return p
