"""CORS per project in a real browser: headless Chromium on a page of an allowed origin opens
the job's EventSource (the key in the query, as EventSource cannot send headers) and sees the job
end; the same page on another origin is blocked by the browser itself."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from aiohttp import web

from conveyor.shared.domain.sealing import new_key_setting
from conveyor.shared.testing.browser import chromium_command
from conveyor.shared.testing.nats_server import NatsServer
from conveyor.shared.testing.procs import ServiceProcess, service_env
from conveyor.shared.testing.rawhttp import serve_app

ADMIN = "cors-e2e-admin-key"
AUTH = {"Authorization": f"Bearer {ADMIN}"}
PAGE = """<!doctype html><meta charset="utf-8"><title>stream</title><script>
const report = (what) => fetch("/report", {method: "POST", body: what});
const es = new EventSource(%r);
es.addEventListener("status", (e) => {
  const s = JSON.parse(e.data).status;
  if (["completed", "failed", "timeout", "cancelled"].includes(s)) { es.close(); report("ended:" + s); }
});
es.onerror = () => { es.close(); report("error"); };
</script>"""


class Page:
    """A page server on its own port (its own origin) that records what the page reports."""

    def __init__(self) -> None:
        self.reports: asyncio.Queue[str] = asyncio.Queue()
        self.stream_url = ""
        self.runner: web.AppRunner | None = None
        self.port = 0

    async def start(self) -> Page:
        async def page(request: web.Request) -> web.Response:
            return web.Response(text=PAGE % self.stream_url, content_type="text/html")

        async def report(request: web.Request) -> web.Response:
            await self.reports.put(await request.text())
            return web.Response(status=204)

        app = web.Application()
        app.router.add_get("/", page)
        app.router.add_post("/report", report)
        self.runner, port = await serve_app(app)
        self.port = port
        return self

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()


async def open_in_chromium(url: str, profile: Path, page: Page, timeout: float = 60.0) -> str:
    """Load ``url`` in headless Chromium until the page reports; the browser is then stopped."""
    proc = await asyncio.create_subprocess_exec(
        *chromium_command(profile, url),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        return await asyncio.wait_for(page.reports.get(), timeout)
    finally:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()


@pytest.fixture
async def receiver(nats_server: NatsServer, tmp_path: Path) -> AsyncIterator[ServiceProcess]:
    env = service_env(nats_server.url, ADMIN_API_KEY=ADMIN, CONVEYOR_SECRET_KEYS=new_key_setting())
    procs = [ServiceProcess(n, env, tmp_path / f"{n}.log") for n in ("receiver", "executor")]
    await asyncio.gather(*(p.start() for p in procs))
    try:
        yield procs[0]
    finally:
        await asyncio.gather(*(p.stop() for p in procs))


async def test_an_allowed_origin_streams_a_job_and_another_is_blocked(
    receiver: ServiceProcess, tmp_path: Path
) -> None:
    allowed, other = await Page().start(), await Page().start()
    try:
        async with httpx.AsyncClient(base_url=receiver.url, timeout=10, headers=AUTH) as http:
            made = await http.post(
                "/api/admin/projects",
                json={
                    "project_id": "web",
                    "org_id": "default",
                    "name": "web",
                    "cors_origins": [allowed.origin],
                },
            )
            assert made.status_code == 201, made.text
            key = (await http.post("/api/admin/keys", json={"name": "web", "project_id": "web"})).json()[
                "key"
            ]
            job = await http.post(
                "/api/jobs",
                json={"agent": "qa", "prompt": "check"},
                headers={"Authorization": f"Bearer {key}"},
            )
            assert job.status_code == 202, job.text
            stream_url = f"{receiver.url}/api/jobs/{job.json()['job_id']}/stream?api_key={key}"

            # The preflight a page's fetch with a key would send: answered for this origin only.
            for origin, expected in ((allowed.origin, 204), (other.origin, 403)):
                pre = await http.options(
                    "/api/jobs",
                    headers={"Origin": origin, "Access-Control-Request-Method": "POST"},
                )
                assert pre.status_code == expected, pre.text
            assert pre.headers.get("Access-Control-Allow-Origin") is None
        allowed.stream_url = other.stream_url = stream_url

        seen = await open_in_chromium(allowed.origin + "/", tmp_path / "allowed", allowed)
        assert seen == "ended:completed"
        # The same stream from a page on another origin: the browser refuses to hand it over.
        seen = await open_in_chromium(other.origin + "/", tmp_path / "other", other)
        assert seen == "error"
    finally:
        await allowed.stop()
        await other.stop()
