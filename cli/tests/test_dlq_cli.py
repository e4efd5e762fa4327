"""`conveyor dlq` as an operator runs it (a subprocess) against real dead letters."""

from __future__ import annotations

import asyncio
import json
import sys

import pytest
from nats.js import JetStreamContext

from conveyor.shared.bus import Bus, Delivery, dead_letter
from conveyor.shared.bus.streams import ensure_streams
from conveyor.shared.contracts import subjects


async def cli(nats_url: str, *args: str, code: int = 0) -> tuple[str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "conveyor.cli",
        *args,
        "--server",
        nats_url,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == code, (proc.returncode, out.decode(), err.decode())
    return out.decode(), err.decode()


@pytest.fixture
async def letters(js: JetStreamContext, nats_bus: Bus) -> dict[str, int]:
    """Dead letters written by the shared dead_letter(): two from "execute", one from "deliver"."""
    await ensure_streams(js, [subjects.JOBS, subjects.RESULTS, subjects.DLQ])
    psub = await js.pull_subscribe(">", durable="cli-test", stream=subjects.JOBS)
    seqs: dict[str, int] = {}
    for i, body in enumerate((b'{"n":1}', b'{"n":2}')):
        await js.publish(
            "jobs.run.dev", body, headers={subjects.MSG_ID: f"job-{i}", "traceparent": f"00-{i}"}
        )
        (msg,) = await psub.fetch(1, timeout=5)
        await dead_letter(nats_bus, Delivery(msg), stage="execute", error=f"boom {i}", last_status=None)
        await msg.ack()
        seqs[f"execute-{i}"] = (await js.stream_info(subjects.DLQ)).state.last_seq
    await psub.unsubscribe()
    rsub = await js.pull_subscribe(">", durable="cli-test-results", stream=subjects.RESULTS)
    await js.publish("results.job_x", b'{"result":"x"}')
    (msg,) = await rsub.fetch(1, timeout=5)
    await dead_letter(nats_bus, Delivery(msg), stage="deliver", error="HTTP 500", last_status=500, attempts=3)
    await msg.ack()
    await rsub.unsubscribe()
    seqs["deliver"] = (await js.stream_info(subjects.DLQ)).state.last_seq
    return seqs


async def test_list_and_show(nats_url: str, letters: dict[str, int]) -> None:
    out, _ = await cli(nats_url, "dlq", "list", "--json")
    rows = [json.loads(line) for line in out.splitlines()]
    assert [r["seq"] for r in rows] == sorted(letters.values())
    deliver = next(r for r in rows if r["stage"] == "deliver")
    assert deliver["original_subject"] == "results.job_x"
    assert deliver["last_status"] == "500" and deliver["attempts"] == "3" and deliver["error"] == "HTTP 500"

    out, _ = await cli(nats_url, "dlq", "list", "--stage", "execute")
    assert "jobs.run.dev" in out and "boom 0" in out and "results.job_x" not in out

    out, _ = await cli(nats_url, "dlq", "show", str(letters["deliver"]), "--json")
    shown = json.loads(out)
    assert (
        shown["body"] == {"result": "x"} and shown["headers"][subjects.H_ORIGINAL_SUBJECT] == "results.job_x"
    )
    out, _ = await cli(nats_url, "dlq", "show", str(letters["deliver"]))
    assert "Conveyor-Error: HTTP 500" in out and '"result": "x"' in out

    _, err = await cli(nats_url, "dlq", "show", "9999", code=1)
    assert "no dead letter #9999" in err


async def test_replay_one_then_all_of_a_stage(
    nats_url: str, js: JetStreamContext, letters: dict[str, int]
) -> None:
    out, _ = await cli(nats_url, "dlq", "replay", str(letters["deliver"]))
    assert f"#{letters['deliver']} -> results.job_x (RESULTS" in out and "replayed 1 of 1" in out
    replayed = await js.get_last_msg(subjects.RESULTS, "results.job_x")
    assert replayed.data == b'{"result":"x"}'
    headers = replayed.headers or {}
    assert headers[subjects.MSG_ID] == f"replay-DLQ-{letters['deliver']}"
    assert not any(k.startswith("Conveyor-") for k in headers)  # the dead letter's story stays behind

    # Bulk, by stage, with a progress bar on stderr; the dead letters are deleted after.
    out, _ = await cli(nats_url, "dlq", "replay", "--all", "--stage", "execute")
    assert "replayed 2 of 2" in out
    jobs = await js.stream_info(subjects.JOBS)
    assert jobs.state.messages == 2  # the two originals were acked off the work queue; these are the replays
    last = await js.get_last_msg(subjects.JOBS, "jobs.run.dev")
    assert last.data == b'{"n":2}' and (last.headers or {})["traceparent"] == "00-1"
    assert (await js.stream_info(subjects.DLQ)).state.messages == 0

    _, err = await cli(nats_url, "dlq", "replay", str(letters["deliver"]), code=1)
    assert "no such dead letter" in err


async def test_purge_needs_yes_and_removes(
    nats_url: str, js: JetStreamContext, letters: dict[str, int]
) -> None:
    _, err = await cli(nats_url, "dlq", "purge", "--all", code=2)
    assert "without --yes" in err
    out, _ = await cli(nats_url, "dlq", "purge", str(letters["execute-0"]), "--yes")
    assert "deleted" in out
    out, _ = await cli(nats_url, "dlq", "purge", "--all", "--stage", "deliver", "--yes")
    assert "purged 1" in out
    info = await js.stream_info(subjects.DLQ)
    assert info.state.messages == 1  # execute-1 is left
    await cli(nats_url, "dlq", "get", code=2)  # usage errors exit 2
    await cli(nats_url, "dlq", "replay", "1", "--all", code=2)


async def test_unreachable_server_is_one_line() -> None:
    _, err = await cli("nats://127.0.0.1:1", "dlq", "list", "--timeout", "1", code=2)
    assert err.strip().startswith("conveyor: cannot connect to NATS") and "Traceback" not in err
