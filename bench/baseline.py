"""The baseline users compare against: Express + a Redis job queue (BullMQ) + a Node worker.

Redis runs with an append-only file fsynced every second (appendfsync everysec), the match
for JetStream's sync_interval 1s. The Node packages are pinned by package-lock.json and
installed with ``npm ci`` on first use (again whenever the lock file changes).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from bench.payloads import JOB_ID_SECRET
from bench.procs import Proc, Procs, free_port, wait_port

HERE = Path(__file__).parent / "baseline_express"


@dataclass
class Baseline:
    redis: Proc
    server: Proc
    worker: Proc | None
    port: int
    redis_port: int
    versions: dict[str, str]
    env: dict[str, str]


def missing() -> str | None:
    """Why the baseline cannot run here (None when it can)."""
    for tool in ("node", "npm", "redis-server"):
        if shutil.which(tool) is None:
            hint = " (Debian package redis-server)" if tool == "redis-server" else ""
            return f"{tool} not found{hint}"
    return None


def try_install(command: str, package: str, log: object = print) -> None:
    """Install a Debian package when its command is missing and we are root (as the project's
    machines are); otherwise leave it to the caller to say what is missing."""
    if shutil.which(command) or os.geteuid() != 0 or shutil.which("apt-get") is None:
        return
    log(f"installing Debian package {package} for the benchmark ...")  # type: ignore[operator]
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    argv = ["apt-get", "install", "-y", "-qq", "--no-install-recommends", package]
    r = subprocess.run(argv, env=env, check=False, capture_output=True, timeout=300)
    if r.returncode != 0:  # a stale package list: refresh it once and try again
        subprocess.run(["apt-get", "update", "-qq"], env=env, check=False, capture_output=True, timeout=300)
        subprocess.run(argv, env=env, check=False, capture_output=True, timeout=300)


def ensure_node_modules(log: object = print) -> None:
    lock = HERE / "package-lock.json"
    stamp = HERE / "node_modules" / ".bench-lock-sha256"
    digest = hashlib.sha256(lock.read_bytes()).hexdigest()
    if stamp.exists() and stamp.read_text() == digest:
        return
    log("installing the baseline's Node packages (npm ci) ...")  # type: ignore[operator]
    r = subprocess.run(
        ["npm", "ci", "--no-audit", "--no-fund", "--loglevel=error"],
        cwd=HERE,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    if r.returncode != 0:
        raise RuntimeError(f"npm ci failed in {HERE}:\n{r.stderr[-2000:]}")
    stamp.write_text(digest)


def versions() -> dict[str, str]:
    def out(*argv: str) -> str:
        try:
            return subprocess.run(argv, capture_output=True, text=True, timeout=10).stdout.strip()
        except OSError:
            return "?"

    def pkg(name: str) -> str:
        try:
            return str(json.loads((HERE / "node_modules" / name / "package.json").read_text())["version"])
        except (OSError, ValueError, KeyError):
            return "?"

    return {
        "node": out("node", "--version"),
        "redis": out("redis-server", "--version").split(" v=")[-1].split()[0],
        "express": pkg("express"),
        "bullmq": pkg("bullmq"),
        "ioredis": pkg("ioredis"),
    }


async def start(
    procs: Procs,
    root: Path,
    *,
    secret: str,
    callback_url: str,
    signing_secret: str,
    concurrency: int,
    worker: bool,
) -> Baseline:
    data = root / "redis"
    data.mkdir(parents=True, exist_ok=True)
    rport = free_port()
    redis = await procs.start(
        "redis",
        [
            "redis-server",
            "--port",
            str(rport),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(data),
            "--appendonly",
            "yes",
            "--appendfsync",
            "everysec",
            "--save",
            "",
            "--daemonize",
            "no",
            "--maxmemory-policy",
            "noeviction",
        ],
        port=rport,
    )
    await wait_port(redis, rport)
    port = free_port()
    env = {
        "PORT": str(port),
        "REDIS_PORT": str(rport),
        "LOVABLE_WEBHOOK_SECRET": secret,
        "CALLBACK_URL": callback_url,
        "CALLBACK_SIGNING_SECRET": signing_secret,
        "JOB_ID_SECRET": JOB_ID_SECRET,
        "CONCURRENCY": str(concurrency),
        "NODE_ENV": "production",
    }
    server = await procs.start("express-server", ["node", str(HERE / "server.js")], env=env, port=port)
    await wait_port(server, port)
    w = await start_worker(procs, env) if worker else None
    return Baseline(redis, server, w, port, rport, versions(), env)


async def start_worker(procs: Procs, env: dict[str, str]) -> Proc:
    w = await procs.start("node-worker", ["node", str(HERE / "worker.js")], env=env)
    for _ in range(100):
        if "ready" in w.tail():
            break
        if not w.alive:
            raise RuntimeError(f"node worker exited:\n{w.tail()}")
        await asyncio.sleep(0.1)
    return w
