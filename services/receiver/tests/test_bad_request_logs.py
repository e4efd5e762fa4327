"""A request aiohttp cannot parse is the client's mistake: answered 400 and logged as one DEBUG
line, not an ERROR with a traceback per request (a hostile client could fill the log)."""

from __future__ import annotations

from pathlib import Path

from conveyor.shared.testing.nats_server import NatsServer
from conveyor.shared.testing.procs import ServiceProcess, service_env
from conveyor.shared.testing.rawhttp import Raw


async def test_unparseable_requests_are_not_logged_as_errors(nats_server: NatsServer, tmp_path: Path) -> None:
    proc = ServiceProcess("receiver", service_env(nats_server.url), tmp_path / "receiver.log")
    await proc.start()
    try:
        port = int(proc.url.rsplit(":", 1)[1])
        for _ in range(20):
            conn = await Raw.open(port)
            await conn.send(b"GET /health/live HTTP/1.1\r\nHost: x\r\nX-Bad: a\x00b\r\n\r\n")
            assert (await conn.answer()).status == 400
            conn.close()
        conn = await Raw.open(port)
        await conn.send(b"GET /health/live HTTP/1.1\r\nHost: x\r\n\r\n")
        assert (await conn.answer()).status == 200  # still serving
        conn.close()
    finally:
        await proc.stop()
    log = proc.log_path.read_text(errors="replace")
    assert "Error handling request" not in log and "Traceback" not in log, log[-2000:]
