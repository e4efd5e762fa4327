"""The executor in-process against a real nats-server: routing, running, results, fan-out,
cancellation, redelivery, dead letters and metrics."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any

import httpx
import msgspec

from conveyor.executor.builtin import ANALYSES
from conveyor.executor.config import AgentConfig, Settings
from conveyor.executor.service import SPEC
from conveyor.shared.contracts import subjects
from conveyor.shared.contracts.events import JobRecord, JobRequest
from conveyor.shared.runtime.runner import serve
from conveyor.shared.testing.fixtures import eventually, forget_message_ids

FILES = {"app/main.py": "import os\n\ndef main():\n    return 1\n", "app/util.py": "X = 1\n"}


async def test_api_job_runs_builtin_agent_and_publishes_one_result(
    bus, make_settings: Callable[..., Settings]
) -> None:
    async with serve(SPEC, make_settings()) as rt:
        job_id = await bus.job("qa", {"files": FILES}, callback_url="http://127.0.0.1:9/cb")
        rec = await bus.until(job_id, "completed")
        assert rec.progress == 100 and rec.attempts == 1 and rec.backend == "builtin" and rec.agent == "qa"
        assert rec.started_at is not None and rec.finished_at is not None
        result = await bus.one_result(job_id)
        assert result.callback_url == "http://127.0.0.1:9/cb"
        assert result.result.status == "completed" and result.result.agent_id == "qa"
        assert "'os' imported but unused" in " ".join(result.result.result.suggestions)
        assert any("attempt 1 of 3" in line for line in await bus.log_lines(job_id))
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{rt.http_port}") as http:
            metrics = (await http.get("/metrics")).text
        assert 'agent_execution_duration_seconds_count{agent="qa",status="completed"} 1.0' in metrics
        assert 'jobs_in_progress{agent="qa"} 0.0' in metrics
        assert 'job_retries_total{agent="qa"} 0.0' in metrics


async def test_event_routed_to_the_agent_the_payload_names(bus, make_settings) -> None:
    async with serve(SPEC, make_settings()):
        job_id = await bus.event("agent.task_requested", {"agent": "architect", "files": FILES})
        rec = await bus.until(job_id, "completed")
        assert rec.agent == "architect"
        result = await bus.one_result(job_id)
        assert "app/main.py" in result.result.result.summary
        assert result.result.lovable_project_id == "proj-1"


async def test_fan_out_runs_children_in_parallel_and_publishes_one_parent_result(bus, make_settings) -> None:
    diff = "--- a/app/x.py\n+++ b/app/x.py\n@@ -0,0 +1,2 @@\n+import pickle\n+data = pickle.loads(blob)\n"
    async with serve(SPEC, make_settings()):
        parent = await bus.event("code.review_requested", {"diff": diff, "files": FILES})
        rec = await bus.until(parent, "completed")
        assert rec.children == [f"{parent}-dev", f"{parent}-qa"] and rec.progress == 100
        for child in rec.children:
            crec = await bus.record(child)
            assert crec.status == "completed" and crec.parent_id == parent and crec.result is not None
            assert await bus.results(child) == []  # children have no callback of their own
        result = (await bus.one_result(parent)).result
        assert result.status == "completed" and result.agent_id == "dev+qa"
        assert "dev completed, qa completed" in result.result.summary
        assert any(
            s.startswith("[dev] app/x.py:2: unsafe deserialisation") for s in result.result.suggestions
        )
        assert any(s.startswith("[qa] ") for s in result.result.suggestions)


async def test_fan_out_keeps_partial_results_and_names_the_failed_child(bus, make_settings) -> None:
    broken = AgentConfig(name="broken", backend="command", command=["false"], retries=0)
    cfg = make_settings(broken, routes={"test.mixed": ["qa", "broken"]})
    async with serve(SPEC, cfg):
        parent = await bus.event("test.mixed", {"files": FILES})
        rec = await bus.until(parent, "failed")
        assert rec.error is not None and "broken failed" in rec.error
        result = (await bus.one_result(parent)).result
        assert result.status == "failed"
        assert "qa completed, broken failed" in result.result.summary
        assert "command false exited with 1" in result.result.summary
        assert any(s.startswith("[qa] ") for s in result.result.suggestions)


async def test_fan_out_deadline_completes_parent_with_what_finished(bus, make_settings) -> None:
    slow = AgentConfig(name="slowpoke", builtin="sleep", backend="builtin")
    cfg = make_settings(slow, routes={"test.slow": ["qa", "slowpoke"]}, fanout_deadline_ms=1500)
    async with serve(SPEC, cfg):
        parent = await bus.event("test.slow", {"files": FILES, "ms": 60_000})
        rec = await bus.until(parent, "timeout")
        result = (await bus.one_result(parent)).result
        assert result.status == "timeout"
        assert "slowpoke did not finish" in result.result.summary and "qa completed" in result.result.summary
        # The straggler is told to stop.
        await bus.until(f"{parent}-slowpoke", "cancelled")
        assert rec.finished_at is not None


async def test_cancel_before_start_means_the_job_never_runs(bus, make_settings) -> None:
    async with serve(SPEC, make_settings()):
        job_id = "job_cancelled_early"
        await bus.cancel(job_id)
        await bus.job("sleep", {"ms": 60_000}, job_id=job_id)
        rec = await bus.until(job_id, "cancelled")
        assert rec.attempts == 0 and rec.started_at is None
        assert await bus.results(job_id) == []


async def test_cancel_stops_a_running_job(bus, make_settings) -> None:
    async with serve(SPEC, make_settings()):
        job_id = await bus.job("sleep", {"ms": 60_000})
        await bus.until(job_id, "processing")
        await bus.cancel(job_id, "user pressed stop")
        rec = await bus.until(job_id, "cancelled", timeout=5)
        assert rec.error == "user pressed stop" and rec.result is None
        assert await bus.results(job_id) == []

        async def logged() -> None:  # the log is written just after the record
            assert any("cancelled: user pressed stop" in line for line in await bus.log_lines(job_id))

        await eventually(logged)


async def test_cancel_of_a_fan_out_parent_cancels_its_children(bus, make_settings) -> None:
    slow = AgentConfig(name="slow-a", builtin="sleep", backend="builtin")
    cfg = make_settings(slow, routes={"test.slow": ["slow-a", "sleep"]})
    async with serve(SPEC, cfg):
        parent = await bus.event("test.slow", {"ms": 60_000})
        await bus.until(f"{parent}-slow-a", "processing")
        await bus.until(f"{parent}-sleep", "processing")
        await bus.cancel(parent)
        await bus.until(parent, "cancelled", timeout=5)
        for child in (f"{parent}-slow-a", f"{parent}-sleep"):
            assert (await bus.record(child)).status == "cancelled"
        assert await bus.results(parent) == []


async def test_redelivered_job_publishes_no_second_result_and_never_regresses(bus, make_settings) -> None:
    async with serve(SPEC, make_settings()):
        job_id = await bus.job("noop")
        first = await bus.until(job_id, "completed")
        # The same job again (as after a crash between record and ack): nothing changes.
        again = JobRequest(job_id=job_id, agent="noop", created_at=dt.datetime.now(dt.UTC))
        await bus.js.publish(
            subjects.job_run("noop"), msgspec.json.encode(again), headers={subjects.MSG_ID: "other"}
        )
        second = await bus.job("noop")  # a later job proves the first redelivery was handled
        await bus.until(second, "completed")
        assert (await bus.record(job_id)).updated_at == first.updated_at
        assert len(await bus.results(job_id)) == 1


async def test_a_job_requested_again_after_the_duplicate_window_sends_no_second_result(
    bus, make_settings
) -> None:
    """A sender's late retry (GitHub redelivers for days) is routed again once JetStream has
    forgotten its ids: the worker finds the job over and its result in RESULTS, so there is no
    second result and so no second callback."""
    async with serve(SPEC, make_settings()):
        job_id = await bus.job("noop")
        first = await bus.until(job_id, "completed")
        await forget_message_ids(bus.js, subjects.JOBS, "jobs.probe")
        await forget_message_ids(bus.js, subjects.RESULTS, "results.probe")
        again = JobRequest(job_id=job_id, agent="noop", created_at=dt.datetime.now(dt.UTC))
        ack = await bus.js.publish(
            subjects.job_run("noop"), msgspec.json.encode(again), headers={subjects.MSG_ID: job_id}
        )
        assert not ack.duplicate  # JetStream took it: only the executor can drop it now
        second = await bus.job("noop")  # a later job proves the repeat was handled
        await bus.until(second, "completed")
        assert (await bus.record(job_id)).updated_at == first.updated_at
        assert len(await bus.results(job_id)) == 1


async def test_a_job_found_over_without_its_result_in_results_publishes_it(bus, make_settings) -> None:
    """The finisher wrote the terminal record and died before publishing: the next delivery of
    the job finds it over, sees RESULTS has nothing for it, and publishes the stored result."""
    async with serve(SPEC, make_settings()):
        job_id = await bus.job("noop")
        first = await bus.until(job_id, "completed")
        await bus.one_result(job_id)
        await bus.js.purge_stream(subjects.RESULTS, subject=subjects.result(job_id))  # never published
        await forget_message_ids(bus.js, subjects.JOBS, "jobs.probe")
        await forget_message_ids(bus.js, subjects.RESULTS, "results.probe")
        again = JobRequest(job_id=job_id, agent="noop", created_at=dt.datetime.now(dt.UTC))
        await bus.js.publish(
            subjects.job_run("noop"), msgspec.json.encode(again), headers={subjects.MSG_ID: job_id}
        )
        result = await bus.one_result(job_id)
        assert result.result == first.result  # the stored one, not a second run
        assert (await bus.record(job_id)).updated_at == first.updated_at


async def test_unknown_agent_fails_at_once_with_a_dead_letter_and_a_failed_result(bus, make_settings) -> None:
    async with serve(SPEC, make_settings()) as rt:
        job_id = await bus.job("nobody")
        rec = await bus.until(job_id, "failed")
        assert rec.error is not None and "unknown agent 'nobody'" in rec.error
        result = (await bus.one_result(job_id)).result
        assert result.status == "failed" and result.agent_id == "nobody"
        [dead] = await bus.dead_letters("nobody")
        assert dead.headers["Conveyor-Original-Subject"] == "jobs.run.nobody"
        assert "unknown agent" in dead.headers["Conveyor-Error"]
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{rt.http_port}") as http:
            assert 'dlq_messages_total{stage="executor"} 1.0' in (await http.get("/metrics")).text


async def test_unreadable_messages_are_dead_lettered_byte_for_byte(bus, make_settings) -> None:
    """A job request or event that is not JSON of its type is copied to the DLQ as it was and
    never retried; the executor goes on with the next message."""
    async with serve(SPEC, make_settings()):
        await bus.js.publish("jobs.run.dev", b"not json", headers={subjects.MSG_ID: "bad-1"})
        await bus.js.publish("events.lovable.agent.task_requested", b'{"job_id": 7}')
        # Not UTF-8: msgspec raises UnicodeDecodeError, not a DecodeError; once taken for a bug
        # and retried for ever on the workers' consumer, which has no delivery limit.
        await bus.js.publish("jobs.run.qa", b'{"job_id": "j\xff"}', headers={subjects.MSG_ID: "bad-2"})
        later = await bus.job("noop")
        await bus.until(later, "completed")

        async def both() -> tuple[Any, Any]:
            job = await bus.js.get_last_msg(subjects.DLQ, "dlq.executor.jobs.run.dev")
            event = await bus.js.get_last_msg(
                subjects.DLQ, subjects.dlq("executor", "events.lovable.agent.task_requested")
            )
            return job, event

        job, event = await eventually(both)
        assert job.data == b"not json" and event.data == b'{"job_id": 7}'
        assert job.headers["Conveyor-Error"].startswith("unreadable body: ")
        assert event.headers["Conveyor-Error"].startswith("unreadable body: ")
        assert job.headers["Conveyor-Attempts"] == "1"
        not_utf8 = await eventually(lambda: bus.js.get_last_msg(subjects.DLQ, "dlq.executor.jobs.run.qa"))
        assert not_utf8.data == b'{"job_id": "j\xff"}'
        assert not_utf8.headers["Conveyor-Error"].startswith("unreadable body: ")


async def test_unroutable_event_fails_its_job_so_the_caller_hears(bus, make_settings) -> None:
    async with serve(SPEC, make_settings()):
        job_id = await bus.event("agent.task_requested", {"agent": "ghost"})
        rec = await bus.until(job_id, "failed")
        assert "unknown agent 'ghost'" in (rec.error or "")
        assert (await bus.one_result(job_id)).result.status == "failed"


async def test_a_project_runs_only_the_agents_it_lists(bus, make_settings) -> None:
    """A project's ``agents`` hold for webhook jobs too, not only for what the API submits."""
    await bus.project("narrow", agents=["qa"])
    async with serve(SPEC, make_settings()):
        refused = await bus.event("agent.task_requested", {"agent": "dev"}, project="narrow")
        rec = await bus.until(refused, "failed")
        assert "agent 'dev' is not enabled for project 'narrow'" in (rec.error or "")
        assert (await bus.one_result(refused)).result.status == "failed"
        allowed = await bus.event("agent.task_requested", {"agent": "qa", "files": FILES}, project="narrow")
        await bus.until(allowed, "completed")
        anywhere = await bus.event("agent.task_requested", {"agent": "dev", "files": FILES})
        await bus.until(anywhere, "completed")  # the default project lists none: every agent


async def test_terminal_record_is_never_overwritten(bus, make_settings) -> None:
    async with serve(SPEC, make_settings()):
        job_id = "job_already_cancelled"
        now = dt.datetime.now(dt.UTC)
        done = JobRecord(job_id=job_id, status="cancelled", created_at=now, updated_at=now, progress=100)
        await bus.jobs.create(job_id, msgspec.json.encode(done))
        await bus.job("qa", {"files": FILES}, job_id=job_id, queued=False)
        later = await bus.job("noop")
        await bus.until(later, "completed")
        assert (await bus.record(job_id)).status == "cancelled"
        assert await bus.results(job_id) == []


async def test_shutdown_gives_the_attempt_back_and_another_executor_finishes(bus, make_settings) -> None:
    async with serve(SPEC, make_settings(shutdown_grace_s=0.2)):
        job_id = await bus.job("sleep", {"ms": 1500})
        await bus.until(job_id, "processing")
    rec = await bus.record(job_id)
    assert rec.status == "queued" and rec.attempts == 0 and "shutdown" in (rec.error or "")
    async with serve(SPEC, make_settings()):
        rec = await bus.until(job_id, "completed")
        assert rec.attempts == 1  # the interrupted attempt was not counted
        assert len(await bus.results(job_id)) == 1


async def test_agent_concurrency_runs_one_at_a_time_without_using_attempts(bus, make_settings) -> None:
    one = AgentConfig(name="one", backend="builtin", builtin="sleep", concurrency=1)
    async with serve(SPEC, make_settings(one)):
        a, b = await bus.job("one", {"ms": 500}), await bus.job("one", {"ms": 500})
        ra, rb = await bus.until(a, "completed"), await bus.until(b, "completed")
        assert ra.attempts == rb.attempts == 1
        first, second = sorted((ra, rb), key=lambda r: r.started_at or r.created_at)
        assert first.finished_at is not None and second.started_at is not None
        assert second.started_at >= first.finished_at


async def test_an_instant_agent_that_crashes_fails_after_its_attempts(
    bus, make_settings, monkeypatch
) -> None:
    """A bug in an instant backend is a failed attempt, not a message NAKed forever."""

    def crash(payload: Any, agent: str) -> Any:
        raise ZeroDivisionError("division by zero")

    monkeypatch.setitem(ANALYSES, "crash", crash)
    agent = AgentConfig(name="crash", backend="builtin", instant=True, retries=1)
    async with serve(SPEC, make_settings(agent)):
        job_id = await bus.job("crash")
        rec = await bus.until(job_id, "failed")
        assert rec.attempts == 2 and rec.error == "ZeroDivisionError: division by zero"
        result = (await bus.one_result(job_id)).result
        assert result.status == "failed" and "failed after 2 attempt(s)" in result.result.summary
        [dead] = await bus.dead_letters("crash")
        assert "ZeroDivisionError" in dead.headers["Conveyor-Error"]


async def test_an_instant_agent_routed_from_an_event_runs_without_the_jobs_hop(bus, make_settings) -> None:
    """The router runs an instant agent's job on the event's delivery: nothing is ever queued
    on JOBS, and the job ends as through the workers (one attempt, one result). Other agents
    still queue on JOBS."""
    async with serve(SPEC, make_settings()):
        job_id = await bus.event("agent.task_requested", {"agent": "noop"})
        rec = await bus.until(job_id, "completed")
        assert rec.attempts == 1 and rec.agent == "noop" and rec.backend == "builtin"
        assert rec.started_at is not None and rec.finished_at is not None and rec.progress == 100
        result = await bus.one_result(job_id)
        assert result.result.status == "completed" and result.result.agent_id == "noop"
        assert (await bus.js.stream_info(subjects.JOBS)).state.last_seq == 0
        slow = await bus.event("agent.task_requested", {"agent": "architect", "files": FILES})
        await bus.until(slow, "completed")
        assert (await bus.js.stream_info(subjects.JOBS)).state.last_seq == 1


async def test_an_event_routed_again_after_its_instant_job_ended_publishes_only_a_missing_result(
    bus, make_settings
) -> None:
    """The router finished the job and died before publishing (or the sender retried after the
    duplicate window): routing the event again publishes the stored result, never a second run."""
    async with serve(SPEC, make_settings()):
        job_id = await bus.event("agent.task_requested", {"agent": "noop"})
        first = await bus.until(job_id, "completed")
        await bus.one_result(job_id)
        await bus.js.purge_stream(subjects.RESULTS, subject=subjects.result(job_id))
        await forget_message_ids(bus.js, subjects.RESULTS, "results.probe")
        # The same event once more (another message id: as a redelivery, the router sees it again).
        ev = await bus.js.get_last_msg(subjects.EVENTS, "events.lovable.agent.task_requested")
        await bus.js.publish(ev.subject, ev.data, headers={subjects.MSG_ID: f"lovable:{job_id}:again"})
        result = await bus.one_result(job_id)
        assert result.result == first.result
        assert (await bus.record(job_id)).updated_at == first.updated_at


async def test_an_instant_agent_routed_from_an_event_that_fails_takes_the_workers_path(
    bus, make_settings, monkeypatch
) -> None:
    """A routed instant job that does not complete is queued on JOBS as any other, with no
    attempt used: the workers count its attempts, retry it and dead-letter it."""

    def crash(payload: Any, agent: str) -> Any:
        raise ZeroDivisionError("division by zero")

    monkeypatch.setitem(ANALYSES, "crash", crash)
    agent = AgentConfig(name="crash", backend="builtin", instant=True, retries=1)
    async with serve(SPEC, make_settings(agent)):
        job_id = await bus.event("agent.task_requested", {"agent": "crash"})
        rec = await bus.until(job_id, "failed")
        assert rec.attempts == 2 and rec.error == "ZeroDivisionError: division by zero"
        result = (await bus.one_result(job_id)).result
        assert result.status == "failed" and "failed after 2 attempt(s)" in result.result.summary
        [dead] = await bus.dead_letters("crash")
        assert dead.headers["Conveyor-Original-Subject"] == "jobs.run.crash"
