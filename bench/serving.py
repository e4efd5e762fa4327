"""How the benchmark's own HTTP servers (the floor, the ladder, the callback sink) run: on
127.0.0.1 until SIGINT or SIGTERM, saying "ready" on stdout once they listen, with the
process settings the services get from their runner (event loop, garbage collector), so a
floor or a ladder step differs from the receiver only in the work it does."""

from __future__ import annotations

import asyncio
import gc
import signal
from collections.abc import Coroutine
from typing import Any

from aiohttp import web

from conveyor.shared.runtime.runner import GC_THRESHOLDS


async def until_signalled(app: web.Application, port: int) -> None:
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    await ready_until_signalled()
    await runner.cleanup()


async def ready_until_signalled() -> None:
    """Once listening: freeze the start-up heap (as the runner does once a service is set up),
    say "ready", and return on SIGINT or SIGTERM."""
    gc.freeze()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    print("ready", flush=True)
    await stop.wait()


def run_fast(main: Coroutine[Any, Any, None]) -> None:
    """On uvloop when it is installed and with the services' collector thresholds."""
    gc.set_threshold(*GC_THRESHOLDS)
    try:
        import uvloop  # type: ignore[import-not-found]
    except ImportError:
        asyncio.run(main)
    else:
        uvloop.run(main)
