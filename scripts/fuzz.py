"""``make fuzz``: schemathesis over every operation of the receiver's /openapi.json, against a
live system started as ``make run`` starts it (nats-server and the four services, each a real
process on 127.0.0.1), with generated secrets and an admin key given to the fuzzer.

Phases: the document's examples, coverage, fuzzing (FUZZ_CASES cases shared out over the
operations) and stateful sequences that follow the document's links (a 202's job id into
GET /api/jobs/{job_id}, a schedule into its PATCH and DELETE, ...). Checks: no 5xx, status
codes, content types, headers and bodies as documented, auth not ignored, a created resource
readable and a deleted one gone. Then: every job a 202 accepted can be read back (nothing
accepted was lost), and no service crashed or failed to stop cleanly.

    FUZZ_CASES=300 .venv/bin/python scripts/fuzz.py      # a quick run
    .venv/bin/python scripts/fuzz.py --cases 10000 --seed 1

Everything (service logs, nats data, schemathesis reports, the accepted jobs) goes to
.data/fuzz/<time>/. Exit status 0 only when every check passed. Not part of ``make test``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import collections
import contextlib
import datetime as dt
import json
import math
import os
import re
import secrets
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from conveyor.shared.testing.nats_server import start_nats_server
from conveyor.shared.testing.procs import ServiceProcess, service_env
from conveyor.shared.testing.sink import CallbackSink

ROOT = Path(__file__).resolve().parent.parent
SERVICES = ("receiver", "executor", "deliverer", "deployer")
# Every check but positive_data_acceptance (the document cannot say everything the API
# checks, e.g. that a callback URL is absolute http(s)) and object_level_authorization (one key).
CHECKS = (
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_headers_conformance",
    "response_schema_conformance",
    "negative_data_rejection",
    "missing_required_header",
    "unsupported_method",
    "allow_header_conformance",
    "ignored_auth",
    "use_after_free",
    "ensure_resource_availability",
)
TERMINAL = {"completed", "failed", "timeout", "cancelled"}


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cases", type=int, default=int(os.environ.get("FUZZ_CASES", "10000")))
    # One worker: schemathesis is CPU-bound in Python, and hypothesis on Python 3.11 can trip over
    # its own source parsing ("AST constructor recursion depth mismatch") with several threads.
    p.add_argument("--workers", type=int, default=int(os.environ.get("FUZZ_WORKERS", "1")))
    p.add_argument(
        "--seed", type=int, default=int(os.environ["FUZZ_SEED"]) if "FUZZ_SEED" in os.environ else None
    )
    p.add_argument("--drain-s", type=float, default=300.0, help="how long accepted jobs may take to end")
    return p.parse_args()


def secrets_for_run() -> dict[str, str]:
    whsec = lambda: "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()  # noqa: E731
    return {
        "admin": "cvk_fuzz_" + secrets.token_urlsafe(32),
        "lovable": secrets.token_urlsafe(32),
        "github": secrets.token_urlsafe(32),
        "standard": whsec(),
        "callbacks": whsec(),
    }


def service_settings(nats_url: str, run: Path, sink: CallbackSink, keys: dict[str, str]) -> dict[str, str]:
    """What ``make run`` sets, with generated secrets, plus what keeps a fuzz run bounded."""
    return service_env(
        nats_url,
        ADMIN_API_KEY=keys["admin"],
        LOVABLE_WEBHOOK_SECRET=keys["lovable"],
        GITHUB_WEBHOOK_SECRET=keys["github"],
        WEBHOOK_SOURCES=json.dumps([{"name": "std", "scheme": "standard", "secrets": [keys["standard"]]}]),
        LOVABLE_CALLBACK_URL=sink.url,
        CALLBACK_ALLOWED_NETWORKS="127.0.0.0/8",
        CALLBACK_SIGNING_SECRETS=keys["callbacks"],
        LLM_BACKEND="builtin",  # no model API is called
        DATA_DIR=str(run / "deployer"),
        LOG_LEVEL="WARNING",
        # Bounded waits: a test send answers 202 pending, a job's event stream ends soon.
        TEST_SEND_WAIT_S="0.5",
        SSE_MAX_S="3",
        SSE_HEARTBEAT_S="1",
        CALLBACK_MAX_ATTEMPTS="2",
        CALLBACK_RETRY_SCHEDULE_S="1",
    )


def schemathesis_command(receiver: str, args: argparse.Namespace, per_operation: int, run: Path) -> list[str]:
    config = run / "schemathesis.toml"
    config.write_text(f'[cache]\ndirectory = "{run / "cache"}"\n')  # not .schemathesis/ in the tree
    cmd = [
        sys.executable, "-m", "schemathesis.cli", "--config-file", str(config),
        # The document as a file and the base URL apart: loaded from its URL, schemathesis leaves
        # GET /openapi.json itself out.
        "run", str(run / "openapi.json"), "--url", receiver,
        "--phases", "examples,coverage,fuzzing,stateful",
        "--checks", os.environ.get("FUZZ_CHECKS") or ",".join(CHECKS),
        "--max-examples", str(per_operation),
        "--workers", str(args.workers),
        "--request-timeout", "20",
        "--generation-database", "none",
        "--suppress-health-check", "all",
        "--continue-on-failure",
        "--report", "junit,ndjson",
        "--report-dir", str(run / "report"),
        "--no-color",
    ]  # fmt: skip
    if args.seed is not None:
        cmd += ["--seed", str(args.seed)]
    return cmd


async def verify_accepted(receiver: str, admin: str, run: Path, drain_s: float) -> dict[str, Any]:
    """Every job id a 202 named: readable with GET /api/jobs/{id}; and how they ended."""
    lines = (run / "accepted.jsonl").read_text().splitlines() if (run / "accepted.jsonl").exists() else []
    jobs = {json.loads(line)["job_id"] for line in lines}
    missing: set[str] = set()
    status: dict[str, str] = {}
    deadline = time.monotonic() + drain_s
    async with httpx.AsyncClient(
        base_url=receiver, timeout=10, headers={"Authorization": f"Bearer {admin}"}
    ) as http:
        pending = set(jobs)
        while pending:
            for job_id in sorted(pending):
                r = await http.get(f"/api/jobs/{job_id}")
                if r.status_code == 404:
                    missing.add(job_id)
                elif r.status_code == 200:
                    status[job_id] = r.json()["status"]
                else:
                    raise RuntimeError(f"GET /api/jobs/{job_id}: {r.status_code} {r.text[:200]}")
            pending = {j for j in jobs - missing if status.get(j) not in TERMINAL}
            if not pending or time.monotonic() > deadline:
                break
            await asyncio.sleep(2)
    return {
        "accepted": len(jobs),
        "answers_202_with_job": len(lines),
        "unreadable": sorted(missing),
        "by_status": dict(collections.Counter(status.values())),
        "unfinished_after_drain": sorted(j for j in jobs - missing if status.get(j) not in TERMINAL),
    }


def logged_errors(path: Path) -> dict[str, int]:
    """Distinct error-level log lines of a service (JSON logs), with how often each came."""
    found: collections.Counter[str] = collections.Counter()
    for line in path.read_text(errors="replace").splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            found[f"(not JSON) {line[:160]}"] += 1
            continue
        if entry.get("level") in ("error", "critical"):
            # The exception's own line: the last one not indented (a traceback's frames are).
            exc = [ln for ln in (entry.get("exc") or "").splitlines() if ln and not ln[0].isspace()]
            found[f"{entry.get('logger')}: {entry.get('msg', '')[:120]} {exc[-1][:160] if exc else ''}"] += 1
    return dict(found.most_common(20))


def report_counts(run: Path) -> dict[str, Any]:
    calls: dict[str, int] = (
        json.loads((run / "calls.json").read_text()) if (run / "calls.json").exists() else {}
    )
    by_class: collections.Counter[str] = collections.Counter()
    server_errors = {}
    for key, n in calls.items():
        code = key.rsplit(" ", 1)[1]
        by_class[f"{code[0]}xx"] += n
        if code.startswith("5"):
            server_errors[key] = n
    operations = {key.rsplit(" ", 1)[0] for key in calls}
    return {
        "requests": sum(calls.values()),
        "by_class": dict(sorted(by_class.items())),
        "operations_called": len(operations),
        "server_errors": server_errors,
    }


async def main() -> int:
    args = parse_args()
    run = ROOT / ".data" / "fuzz" / dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    (run / "logs").mkdir(parents=True, exist_ok=True)
    keys = secrets_for_run()
    nats = await start_nats_server(run / "nats")
    sink = await CallbackSink().start()
    env = service_settings(nats.url, run, sink, keys)
    procs = {name: ServiceProcess(name, env, run / "logs" / f"{name}.log") for name in SERVICES}
    summary: dict[str, Any] = {"run": str(run.relative_to(ROOT)), "cases_asked": args.cases}
    ok = False
    try:
        await asyncio.gather(*(p.start(timeout=60) for p in procs.values()))
        receiver = procs["receiver"].url
        async with httpx.AsyncClient(timeout=10) as http:
            doc = (await http.get(f"{receiver}/openapi.json")).json()
        (run / "openapi.json").write_text(json.dumps(doc, indent=1))
        operations = sum(len(item) for item in doc["paths"].values())
        per_operation = max(1, math.ceil(args.cases / operations))
        summary |= {"operations": operations, "max_examples_per_operation": per_operation}
        hook_env = {
            **os.environ,
            "SCHEMATHESIS_HOOKS": str(ROOT / "scripts" / "fuzz_hooks.py"),
            "HYPOTHESIS_STORAGE_DIRECTORY": str(run / "hypothesis"),
            "FUZZ_OUT": str(run),
            "FUZZ_SINK_URL": sink.url,
            "FUZZ_WEBHOOK_SECRETS": json.dumps(
                {
                    "lovable": ["lovable", keys["lovable"]],
                    "github": ["github", keys["github"]],
                    "std": ["standard", keys["standard"]],
                }
            ),
        }
        cmd = schemathesis_command(receiver, args, per_operation, run)
        print(f"fuzzing {receiver} ({operations} operations, {per_operation} cases each); output in {run}")
        started = time.monotonic()
        # The key goes in a header the command line does not show.
        cmd += ["--header", f"Authorization: Bearer {keys['admin']}"]
        fuzzer = await asyncio.create_subprocess_exec(
            *cmd, env=hook_env, cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
        )
        assert fuzzer.stdout is not None
        with (run / "schemathesis.txt").open("wb") as out:
            while chunk := await fuzzer.stdout.read(1 << 16):  # shown as it comes, and kept
                sys.stdout.buffer.write(chunk)
                sys.stdout.flush()
                out.write(chunk)
        summary["schemathesis_exit"] = await fuzzer.wait()
        if m := re.search(rb"\n\s+(\d+) generated", (run / "schemathesis.txt").read_bytes()):
            summary["cases_generated"] = int(m.group(1))
        summary["fuzz_seconds"] = round(time.monotonic() - started)
        summary |= report_counts(run)
        summary["jobs"] = await verify_accepted(receiver, keys["admin"], run, args.drain_s)
        summary["callbacks_received"] = len(sink.received)
        summary["crashed"] = [
            n for n, p in procs.items() if p.proc is not None and p.proc.returncode is not None
        ]
    finally:
        codes = await asyncio.gather(*(p.stop() for p in procs.values()))
        summary["stop_codes"] = dict(zip(procs, codes, strict=True))
        await sink.stop()
        await nats.stop()
    summary["errors_logged"] = {n: e for n, p in procs.items() if (e := logged_errors(p.log_path))}
    jobs = summary.get("jobs", {})
    ok = (
        summary.get("schemathesis_exit") == 0
        and not summary.get("server_errors")
        and not jobs.get("unreadable")
        and not jobs.get("unfinished_after_drain")
        and not summary.get("crashed")
        and all(code == 0 for code in summary["stop_codes"].values())
    )
    summary["passed"] = ok
    (run / "summary.json").write_text(json.dumps(summary, indent=1))
    print(json.dumps(summary, indent=1))
    return 0 if ok else 1


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(asyncio.run(main()))
    sys.exit(130)
