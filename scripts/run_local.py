"""``make run``: nats-server (JetStream, data under .data/), the four services, a callback sink.

Everything started here is a child of this process and is stopped by it on Ctrl-C (SIGINT)
or SIGTERM: services first (they drain), then nats-server. Settings given in the
environment override the defaults below; if NATS_URL is given, that server is used and no
embedded one is started. RUN_DATA_DIR moves .data/ elsewhere.

The admin and API keys, the webhook secret and the callback signing secret are random, made
on the first run and kept in .data/local-keys.json (mode 0600), so every later run (and
scripts/send_webhook.py) uses the same ones; delete the file for new ones.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime as dt
import json
import os
import secrets
import signal
import sys
from pathlib import Path

import httpx
from aiohttp import web

from conveyor.shared.domain.signing import SignatureError, standard_verify
from conveyor.shared.testing.nats_server import LOCAL_MEMORY_LIMIT, start_nats_server

ROOT = Path(__file__).resolve().parent.parent
DATA = Path(os.environ.get("RUN_DATA_DIR") or ROOT / ".data")
SERVICES = ("receiver", "executor", "deliverer", "deployer")
DEFAULT_PORTS = {"receiver": 3100, "executor": 3101, "deliverer": 3102, "deployer": 3103}


def env(name: str, default: str) -> str:
    return os.environ.get(name) or default


def _new_keys() -> dict[str, str]:
    return {
        "ADMIN_API_KEY": "cvk_admin_" + secrets.token_urlsafe(32),
        "LOVABLE_API_KEY": "cvk_" + secrets.token_urlsafe(32),
        "LOVABLE_WEBHOOK_SECRET": secrets.token_urlsafe(32),
        "CALLBACK_SIGNING_SECRETS": "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode(),
        # Seals the secrets of projects made with `conveyor projects create` (sealing.py).
        "CONVEYOR_SECRET_KEYS": "k1:" + base64.b64encode(secrets.token_bytes(32)).decode(),
    }


def local_keys(path: Path) -> dict[str, str]:
    """This checkout's keys and secrets: read from ``path``, or made now and written there
    (readable by its owner only) when it is missing or lacks one."""
    keys: dict[str, str] = {}
    if path.exists():
        loaded = json.loads(path.read_text())
        if isinstance(loaded, dict):
            keys = {k: v for k, v in loaded.items() if isinstance(v, str) and v}
    fresh = _new_keys()
    if all(k in keys for k in fresh) and path.stat().st_mode & 0o077 == 0:
        return keys
    keys = {**fresh, **keys}
    tmp = path.with_suffix(".tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(keys, fh, indent=2)
        fh.write("\n")
    os.replace(tmp, path)
    return keys


def shown(path: Path) -> str:
    """``path`` relative to the checkout when it is inside it."""
    try:
        return str(path.relative_to(ROOT))
    except ValueError:
        return str(path)


async def run_sink(port: int, signing_secrets: list[str], log_path: Path) -> web.AppRunner:
    """A local callback endpoint: verifies the signature, appends each callback to a file."""

    async def receive(request: web.Request) -> web.Response:
        body = await request.read()
        try:
            standard_verify(signing_secrets, body, request.headers)
            verified = "signature ok"
        except SignatureError as exc:
            verified = f"signature INVALID: {exc.reason}"
        try:
            doc = json.loads(body)
        except ValueError:
            doc = {"raw": body.decode(errors="replace")}
        record = {"received_at": dt.datetime.now(dt.UTC).isoformat(), "verified": verified, "body": doc}
        with log_path.open("a") as fh:
            fh.write(json.dumps(record) + "\n")
        summary = (doc.get("result") or {}).get("summary", "") if isinstance(doc, dict) else ""
        print(
            f"\n>>> callback: job {doc.get('jobId')} agent {doc.get('agentId')} status {doc.get('status')} "
            f"({verified})\n    {summary[:200]}",
            flush=True,
        )
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_post("/{tail:.*}", receive)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner


async def wait_ready(name: str, url: str, proc: asyncio.subprocess.Process, timeout: float = 60) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    async with httpx.AsyncClient(timeout=1) as client:
        while asyncio.get_running_loop().time() < deadline:
            if proc.returncode is not None:
                raise RuntimeError(
                    f"{name} exited with {proc.returncode}; see {shown(DATA / 'logs' / name)}.log"
                )
            with contextlib.suppress(httpx.HTTPError):
                if (await client.get(f"{url}/health/ready")).status_code == 200:
                    return
            await asyncio.sleep(0.2)
    raise RuntimeError(f"{name} not ready after {timeout}s; see {shown(DATA / 'logs' / name)}.log")


async def main() -> int:
    (DATA / "logs").mkdir(parents=True, exist_ok=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)

    keys_file = DATA / "local-keys.json"
    keys = {name: env(name, value) for name, value in local_keys(keys_file).items()}
    secret = keys["LOVABLE_WEBHOOK_SECRET"]
    signing = keys["CALLBACK_SIGNING_SECRETS"]
    sink_port = int(env("SINK_PORT", "3199"))
    sink_log = DATA / "callbacks.jsonl"
    ports = {s: int(env(f"{s.upper()}_PORT", str(p))) for s, p in DEFAULT_PORTS.items()}
    ports["receiver"] = int(env("PORT", str(ports["receiver"])))

    nats = None
    nats_url = os.environ.get("NATS_URL")
    if not nats_url:
        nats = await start_nats_server(
            DATA / "nats",
            port=int(env("NATS_PORT", "4222")),
            extra=["-m", env("NATS_MONITOR_PORT", "8222")],
            env={"GOMEMLIMIT": env("NATS_GOMEMLIMIT", LOCAL_MEMORY_LIMIT)},
        )
        nats_url = nats.url
    sink = await run_sink(sink_port, signing.split(","), sink_log)

    common = {
        "NATS_URL": nats_url,
        "LOVABLE_WEBHOOK_SECRET": secret,
        "LOVABLE_CALLBACK_URL": env("LOVABLE_CALLBACK_URL", f"http://127.0.0.1:{sink_port}/callbacks"),
        "CALLBACK_ALLOWED_NETWORKS": env("CALLBACK_ALLOWED_NETWORKS", "127.0.0.0/8,::1/128"),
        "CALLBACK_SIGNING_SECRETS": signing,
        "ADMIN_API_KEY": keys["ADMIN_API_KEY"],
        "LOVABLE_API_KEY": keys["LOVABLE_API_KEY"],
        "CONVEYOR_SECRET_KEYS": keys["CONVEYOR_SECRET_KEYS"],
        "DATA_DIR": env("DATA_DIR", str(DATA / "deployer")),
        "LOG_LEVEL": env("LOG_LEVEL", "INFO"),
    }
    procs: dict[str, asyncio.subprocess.Process] = {}
    code = 0
    try:
        for name in SERVICES:
            log = (DATA / "logs" / f"{name}.log").open("ab")
            procs[name] = await asyncio.create_subprocess_exec(
                sys.executable, "-m", f"conveyor.{name}",
                env={**os.environ, **common, "PORT": str(ports[name]), "HOST": "127.0.0.1"},
                stdout=log, stderr=log,
            )  # fmt: skip
            log.close()
        await asyncio.gather(*(wait_ready(n, f"http://127.0.0.1:{ports[n]}", p) for n, p in procs.items()))

        receiver = f"http://127.0.0.1:{ports['receiver']}"
        print(f"""
Conveyor is running.
  receiver     {receiver}   (API, webhooks; /health, /openapi.json)
  executor     http://127.0.0.1:{ports['executor']}/metrics
  deliverer    http://127.0.0.1:{ports['deliverer']}/metrics
  deployer     http://127.0.0.1:{ports['deployer']}/metrics   (published sites: http://<slug>.localhost:{ports['deployer']}/)
  nats         {nats_url}   (data in {shown(DATA / 'nats')})
  logs         {shown(DATA / 'logs')}/<service>.log
  callbacks    POSTed to {common['LOVABLE_CALLBACK_URL']}, printed here and appended to {shown(sink_log)}

Keys of this checkout (made on the first run, kept in {shown(keys_file)}; delete it for new ones):
  ADMIN_API_KEY             {keys['ADMIN_API_KEY']}
  LOVABLE_API_KEY           {keys['LOVABLE_API_KEY']}
  LOVABLE_WEBHOOK_SECRET    {secret}
  CALLBACK_SIGNING_SECRETS  {signing}
  CONVEYOR_SECRET_KEYS      {keys['CONVEYOR_SECRET_KEYS']}

Send a signed Lovable webhook (paste into another shell):

  BODY='{{"id":"evt-'$(date +%s%N)'","type":"code.review_requested","project_id":"demo","data":{{"files":{{"app.py":"import os\\nAPI_KEY = \\"sk_live_0123456789abcdef01234567\\"\\n"}},"diff":"--- a/app.py\\n+++ b/app.py\\n@@ -1 +1,2 @@\\n import os\\n+API_KEY = \\"sk_live_0123456789abcdef01234567\\"\\n"}},"created_at":"'$(date -u +%FT%TZ)'"}}'
  TS=$(date +%s); SIG=$(printf '%s.%s' "$TS" "$BODY" | openssl dgst -sha256 -hmac '{secret}' | sed 's/^.* //')
  curl -sS {receiver}/api/webhooks/lovable -H 'Content-Type: application/json' \\
    -H "X-Lovable-Timestamp: $TS" -H "X-Lovable-Signature: sha256=$SIG" -d "$BODY"

or:  .venv/bin/python scripts/send_webhook.py --url {receiver}/api/webhooks/lovable --secret '{secret}'

Submit a job with the API key:

  curl -sS {receiver}/api/jobs -H 'Authorization: Bearer {keys['LOVABLE_API_KEY']}' \\
    -H 'Content-Type: application/json' -d '{{"agent":"qa","prompt":"Check this"}}'

Then: curl -sS {receiver}/api/jobs/<job_id>     Ctrl-C stops everything.
""", flush=True)  # fmt: skip

        waiters = {asyncio.create_task(p.wait()): n for n, p in procs.items()}
        stopper = asyncio.create_task(stop.wait())
        done, _ = await asyncio.wait([*waiters, stopper], return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            if task in waiters:
                print(
                    f"{waiters[task]} exited unexpectedly; see {shown(DATA / 'logs' / waiters[task])}.log",
                    flush=True,
                )
                code = 1
        stopper.cancel()
    except RuntimeError as exc:
        print(exc, file=sys.stderr)
        code = 1
    finally:
        print("stopping: draining services...", flush=True)
        for p in procs.values():
            if p.returncode is None:
                p.send_signal(signal.SIGTERM)
        for name, p in procs.items():
            try:
                await asyncio.wait_for(p.wait(), 40)
            except TimeoutError:
                print(f"{name} did not stop in time; killing it", flush=True)
                p.kill()
                await p.wait()
        await sink.cleanup()
        if nats is not None:
            await nats.stop()
        print("stopped.", flush=True)
    return code


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
