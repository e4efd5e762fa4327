"""The command backend with real subprocesses: success, non-zero exit, bad input, timeout and
cancel, and no process left behind (the program's children included)."""

from __future__ import annotations

import os
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from conveyor.executor.config import AgentConfig
from conveyor.executor.service import SPEC
from conveyor.shared.runtime.runner import serve
from conveyor.shared.testing.fixtures import eventually

AGENT = r"""
import json, os, subprocess, sys, time
job = json.load(sys.stdin)
if isinstance(job["input"].get("data"), dict):  # an event routed here: its payload's data
    job["input"] = job["input"]["data"]
mode = job["input"].get("mode", "ok")
print("reading the job", file=sys.stderr, flush=True)
if mode == "ok":
    print(json.dumps({"summary": "ran in " + os.getcwd(), "suggestions": [
        "home=" + os.environ.get("HOME", ""),
        "leak=" + os.environ.get("EXECUTOR_TEST_SECRET", "none"),
        "job=" + os.environ["CONVEYOR_JOB_ID"] + " prompt=" + str(job["prompt"]),
    ]}))
elif mode == "fail":
    print("something broke", file=sys.stderr)
    sys.exit(3)
elif mode == "bad-input":
    print("cannot use this input", file=sys.stderr)
    sys.exit(65)
elif mode == "progress":
    print("progress: 40", file=sys.stderr, flush=True)
    while not os.path.exists(job["input"]["go"]):
        time.sleep(0.05)
    print(json.dumps({"summary": "done"}))
elif mode == "big":
    print(json.dumps({"summary": "x" * job["input"]["bytes"]}))
elif mode == "garbage":
    print("not json at all")
elif mode == "hang":
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    with open(job["input"]["pids"], "w") as fh:
        fh.write(f"{os.getpid()} {child.pid}")
    time.sleep(600)
"""


@pytest.fixture
def agent_script(tmp_path: Path) -> Path:
    path = tmp_path / "agent.py"
    path.write_text(textwrap.dedent(AGENT))
    return path


def cmd(script: Path, tmp_path: Path, **kw: Any) -> AgentConfig:
    return AgentConfig(
        name="cli", backend="command", command=[sys.executable, str(script)], **{"retries": 0, **kw}
    )


def gone(pid: int) -> bool:
    """True once ``pid`` has exited (a zombie waiting for a reaper counts as exited)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return True
    return state == "Z"


async def pids_of(path: Path) -> list[int]:
    async def ready() -> list[int]:
        pids = [int(p) for p in path.read_text().split()]
        assert len(pids) == 2
        return pids

    return await eventually(ready, timeout=10)


async def test_success_runs_in_its_own_directory_with_an_allowlisted_environment(
    bus, make_settings, agent_script, tmp_path, monkeypatch
) -> None:
    monkeypatch.setenv("EXECUTOR_TEST_SECRET", "must-not-leak")
    workroot = tmp_path / "work"
    async with serve(SPEC, make_settings(cmd(agent_script, tmp_path), command_workdir=str(workroot))):
        job_id = await bus.job("cli", {"mode": "ok"}, prompt="do it")
        await bus.until(job_id, "completed")
        body = (await bus.one_result(job_id)).result.result
        workdir = str(workroot / f"{job_id}-1")
        assert body.summary == f"ran in {workdir}"
        assert body.suggestions == [f"home={workdir}", "leak=none", f"job={job_id} prompt=do it"]
        assert "reading the job" in await bus.log_lines(job_id)
        assert not Path(workdir).exists()  # the per-job directory is removed afterwards


async def test_non_zero_exit_is_a_failed_attempt_with_stderr(
    bus, make_settings, agent_script, tmp_path
) -> None:
    async with serve(SPEC, make_settings(cmd(agent_script, tmp_path, retries=1))):
        job_id = await bus.job("cli", {"mode": "fail"})
        rec = await bus.until(job_id, "failed")
        assert rec.attempts == 2  # exit 3 may pass: retried once
        assert rec.error is not None and "exited with 3: reading the job | something broke" in rec.error


async def test_exit_65_means_bad_input_and_is_not_retried(bus, make_settings, agent_script, tmp_path) -> None:
    async with serve(SPEC, make_settings(cmd(agent_script, tmp_path, retries=2))):
        job_id = await bus.job("cli", {"mode": "bad-input"})
        rec = await bus.until(job_id, "failed")
        assert rec.attempts == 1 and "exited with 65: reading the job | cannot use this input" in (
            rec.error or ""
        )


async def test_progress_lines_move_the_job_progress(bus, make_settings, agent_script, tmp_path) -> None:
    go = tmp_path / "go"
    async with serve(SPEC, make_settings(cmd(agent_script, tmp_path))):
        job_id = await bus.job("cli", {"mode": "progress", "go": str(go)})

        async def at_40() -> None:
            rec = await bus.record(job_id)
            assert rec.status == "processing" and rec.progress == 40

        await eventually(at_40)
        go.touch()
        assert (await bus.until(job_id, "completed")).progress == 100


async def test_output_that_is_not_the_contract_fails_clearly(
    bus, make_settings, agent_script, tmp_path
) -> None:
    async with serve(SPEC, make_settings(cmd(agent_script, tmp_path))):
        job_id = await bus.job("cli", {"mode": "garbage"})
        rec = await bus.until(job_id, "failed")
        assert "output no JSON object found: 'not json at all'" in (rec.error or "")


async def test_a_result_over_max_payload_fails_the_job_at_once(
    bus, make_settings, agent_script, tmp_path
) -> None:
    """A result NATS cannot carry is not a crash to retry: the job fails on its first attempt,
    and the caller hears why in a result that fits."""
    async with serve(SPEC, make_settings(cmd(agent_script, tmp_path, retries=2))) as rt:
        limit = rt.bus.max_payload
        job_id = await bus.job("cli", {"mode": "big", "bytes": limit + 1000})
        rec = await bus.until(job_id, "failed")
        assert rec.attempts == 1
        assert rec.error is not None and rec.error.startswith("result of ")
        assert f"bytes exceeds the NATS max_payload of {limit} bytes" in rec.error
        result = (await bus.one_result(job_id)).result
        assert result.status == "failed" and result.result.summary == f"cli failed: {rec.error}"
        assert rec.error in await bus.log_lines(job_id)


async def test_timeout_kills_the_process_group(bus, make_settings, agent_script, tmp_path) -> None:
    pidfile = tmp_path / "pids"
    async with serve(SPEC, make_settings(cmd(agent_script, tmp_path, timeout_ms=1500))):
        job_id = await bus.job("cli", {"mode": "hang", "pids": str(pidfile)})
        pids = await pids_of(pidfile)
        rec = await bus.until(job_id, "timeout")
        assert (await bus.one_result(job_id)).result.status == "timeout"
        assert rec.attempts == 1

        async def all_gone() -> None:
            assert all(gone(p) for p in pids), pids

        await eventually(all_gone, timeout=5)


async def test_cancel_kills_the_process_group(bus, make_settings, agent_script, tmp_path) -> None:
    pidfile = tmp_path / "pids"
    async with serve(SPEC, make_settings(cmd(agent_script, tmp_path))):
        job_id = await bus.job("cli", {"mode": "hang", "pids": str(pidfile)})
        pids = await pids_of(pidfile)
        assert not any(gone(p) for p in pids)
        await bus.cancel(job_id)
        await bus.until(job_id, "cancelled", timeout=5)

        async def all_gone() -> None:
            assert all(gone(p) for p in pids), pids

        await eventually(all_gone, timeout=5)
        assert await bus.results(job_id) == []


def test_no_stray_children_of_this_process() -> None:
    """Every agent process the tests above started is gone (none is a child of pytest any more)."""
    children = Path(f"/proc/{os.getpid()}/task/{os.getpid()}/children").read_text().split()
    assert not [c for c in children if not gone(int(c))]


async def test_a_fan_out_whose_combined_result_is_over_max_payload_still_ends(
    bus, make_settings, agent_script, tmp_path
) -> None:
    """Each child's result fits; their sum, the parent's result, does not. The parent ends
    failed with a small result that says where the children's results are, instead of never
    ending (its record and result were refused on every try, so no callback went out)."""
    one, two = cmd(agent_script, tmp_path), cmd(agent_script, tmp_path)
    two = AgentConfig(name="cli2", backend="command", command=one.command, retries=0)
    async with serve(SPEC, make_settings(one, two, routes={"test.big": ["cli", "cli2"]})) as rt:
        limit = rt.bus.max_payload
        parent = await bus.event("test.big", {"mode": "big", "bytes": limit * 6 // 10})
        rec = await bus.until(parent, "failed", timeout=20)
        for child in rec.children:
            assert (await bus.record(child)).status == "completed"  # each one fitted
        assert rec.error is not None and f"bytes exceeds the NATS max_payload of {limit} bytes" in rec.error
        result = (await bus.one_result(parent)).result
        assert result.status == "failed"
        assert result.result.summary.startswith(rec.error)
        assert all(f"/api/jobs/{child}/result" in result.result.summary for child in rec.children)
