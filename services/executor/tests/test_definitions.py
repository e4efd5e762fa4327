"""A project's definitions as the executor runs them, against a real nats-server: resolved in
the job's project only, pipelines that survive a SIGKILLed executor and stage deadlines,
delegation from a running agent, and the retry steps."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
import pytest
from nats.js import JetStreamContext

import conveyor.executor.service as executor_service
from conveyor.executor.backends import AgentJob, Backend, make_backends
from conveyor.executor.config import AgentConfig, Settings
from conveyor.executor.handlers.definitions import Definitions
from conveyor.executor.handlers.fanout import STAGE_INPUT_MAX, FanoutDeadline, stage_input
from conveyor.executor.handlers.worker import retry_delay
from conveyor.executor.registry import build_registry
from conveyor.executor.service import SPEC
from conveyor.shared.bus.streams import ensure_kv
from conveyor.shared.contracts import subjects
from conveyor.shared.contracts.events import (
    AgentResult,
    JobRecord,
    PipelineRun,
    PipelineStage,
    ResultBody,
    utcnow,
)
from conveyor.shared.domain.agentdefs import AgentDefinition, ProjectRoutes, Stage, definition_key
from conveyor.shared.runtime.runner import serve
from conveyor.shared.testing.fixtures import eventually
from conveyor.shared.testing.procs import ServiceProcess, service_env

FILES = {"app/main.py": "import os\n\ndef main():\n    return 1\n"}
enc = msgspec.json.Encoder()


async def define(js: JetStreamContext, project: str, agent_id: str, **fields: Any) -> None:
    kv = (await ensure_kv(js, [subjects.KV_AGENTS]))[subjects.KV_AGENTS]
    d = AgentDefinition(id=agent_id, project=project, **fields)
    await kv.put(definition_key(project, agent_id), enc.encode(d))


def test_retry_steps_are_one_two_four_eight_seconds_without_jitter() -> None:
    assert [retry_delay(n, 1.0, 30.0) for n in (1, 2, 3, 4)] == [1.0, 2.0, 4.0, 8.0]
    assert retry_delay(5, 1.0, 10.0) == 10.0  # RETRY_CAP_MS still caps


def test_retries_are_configurable_up_to_three(make_settings: Callable[..., Settings]) -> None:
    agents = build_registry(make_settings(AgentConfig(name="qa", retries=3)))
    assert (agents["qa"].retries, agents["qa"].max_attempts, agents["dev"].retries) == (3, 4, 2)
    with pytest.raises(ValueError, match=r"retries must be 0\.\.3"):
        make_settings(AgentConfig(name="qa", retries=4))


async def test_a_definition_runs_in_its_own_project_only(bus, js, make_settings) -> None:
    await define(js, "a", "checker", backend="builtin", builtin="qa", retries=0)
    await bus.project("a")
    await bus.project("b")
    async with serve(SPEC, make_settings()):
        mine = await bus.job("checker", {"files": FILES}, project="a")
        rec = await bus.until(mine, "completed")
        assert (rec.agent, rec.agent_version, rec.backend) == ("checker", 1, "builtin")
        theirs = await bus.job("checker", {"files": FILES}, project="b")
        rec = await bus.until(theirs, "failed")
        assert rec.error is not None and "unknown agent 'checker'" in rec.error


@pytest.mark.parametrize("on_failure", ["stop", "continue"])
async def test_a_stage_past_its_deadline_stops_or_goes_on(bus, js, make_settings, on_failure: str) -> None:
    await define(js, "default", "sleeper", backend="builtin", builtin="sleep", retries=0)
    stages = [Stage(agents=["sleeper"], timeout_ms=1000, on_failure=on_failure), Stage(agents=["qa"])]
    await define(js, "default", "p", kind="pipeline", stages=stages)
    async with serve(SPEC, make_settings()):
        job = await bus.job("p", {"files": FILES, "ms": 60_000})
        rec = await bus.until(job, "completed", "failed", "timeout", timeout=20)
        await bus.until(f"{job}-s1-sleeper", "cancelled")  # the straggler is told to stop
        assert rec.pipeline is not None and rec.pipeline.stages[0].timed_out
        summary = (await bus.one_result(job)).result.result.summary
        if on_failure == "stop":
            assert rec.status == "timeout" and rec.children == [f"{job}-s1-sleeper"]
            assert "stage 1 (sleeper) timed out" in summary and "stopped after stage 1" in summary
        else:
            assert rec.status == "completed" and rec.children == [f"{job}-s1-sleeper", f"{job}-s2-qa"]
            assert "stage 1 (sleeper) timed out; stage 2 (qa) completed" in summary


async def test_the_built_in_full_pipeline_runs_offline(bus, make_settings) -> None:
    async with serve(SPEC, make_settings()):
        job = await bus.job("full-pipeline", {"files": FILES}, prompt="review the app")
        rec = await bus.until(job, "completed", timeout=30)
        assert rec.children == [
            f"{job}-s1-architect",
            f"{job}-s2-pm",
            f"{job}-s2-ux-design-expert",
            f"{job}-s3-dev",
            f"{job}-s4-qa",
        ]
        assert rec.progress == 100 and rec.backend == "pipeline"
        result = (await bus.one_result(job)).result
        assert result.status == "completed"
        assert result.result.summary.startswith("pipeline full-pipeline: 4 of 4 stages ran:")


async def test_a_pipeline_survives_sigkill_of_the_executor_running_its_stage(
    bus, js, nats_url: str, tmp_path: Path
) -> None:
    await define(js, "default", "slow", backend="builtin", builtin="sleep")
    await define(js, "default", "p", kind="pipeline", stages=[Stage(agents=["slow"]), Stage(agents=["qa"])])
    procs = {
        name: ServiceProcess(
            "executor",
            service_env(nats_url, ACK_WAIT_S="2", SERVICE_INSTANCE=name, LOG_FORMAT="text"),
            tmp_path / f"{name}.log",
        )
        for name in ("exec-a", "exec-b")
    }
    try:
        await asyncio.gather(*(p.start() for p in procs.values()))
        job = await bus.job("p", {"ms": 3000, "files": FILES})
        child = f"{job}-s1-slow"
        await bus.until(child, "processing")
        [first] = await eventually(lambda: bus.log_lines(child))
        victim = next(name for name in procs if f" on {name} " in first)
        await procs[victim].kill()

        rec = await bus.until(job, "completed", timeout=40)
        assert rec.children == [child, f"{job}-s2-qa"]
        assert (await bus.record(child)).attempts == 2
        [result] = await bus.results(job)
        assert result.result.status == "completed"
        survivor = next(name for name in procs if name != victim)
        assert await procs[survivor].stop() == 0, procs[survivor].tail()
        assert len(await bus.results(job)) == 1
    finally:
        for p in procs.values():
            await p.kill()


class Delegating:
    """The builtin backend, except that agent "boss" hands its task to another agent."""

    name = "builtin"

    def __init__(self, inner: Backend, to: str) -> None:
        self.inner = inner
        self.to = to

    async def run(self, job: AgentJob) -> ResultBody:
        if job.agent.name != "boss":
            return await self.inner.run(job)
        body = await job.delegate(self.to, "lint the files")
        return ResultBody(summary=f"boss got: {body.summary}", suggestions=body.suggestions)


@pytest.mark.parametrize("to", ["qa", "elsewhere"])
async def test_a_running_agent_delegates_to_another_of_its_project(
    bus, js, make_settings, monkeypatch: pytest.MonkeyPatch, to: str
) -> None:
    def backends(settings: Settings, http: Any) -> dict[str, Backend]:
        made = make_backends(settings, http)
        return {**made, "builtin": Delegating(made["builtin"], to)}

    monkeypatch.setattr(executor_service, "make_backends", backends)
    await define(js, "a", "boss", backend="builtin", builtin="noop", retries=0)
    await define(js, "b", "elsewhere", backend="builtin", builtin="qa")  # another project's
    await bus.project("a")
    async with serve(SPEC, make_settings()):
        job = await bus.job("boss", {"files": FILES}, project="a")
        if to == "elsewhere":
            rec = await bus.until(job, "failed")
            assert rec.error is not None and "the project has no agent 'elsewhere'" in rec.error
            return
        rec = await bus.until(job, "completed")
        child = await bus.record(f"{job}-d1x1-qa")
        assert (child.status, child.parent_id, child.project) == ("completed", job, "a")
        assert child.result is not None
        assert (
            rec.result is not None and rec.result.result.summary == f"boss got: {child.result.result.summary}"
        )
        assert any(f"delegated to qa as job {job}-d1x1-qa" in ln for ln in await bus.log_lines(job))
        assert await bus.results(child.job_id) == []  # no callback of its own


async def test_progress_counts_stages_and_a_cancel_stops_the_pipeline(bus, js, make_settings) -> None:
    await define(js, "default", "sleeper", backend="builtin", builtin="sleep")
    stages = [Stage(agents=["qa"]), Stage(agents=["sleeper"]), Stage(agents=["dev"])]
    await define(js, "default", "p", kind="pipeline", stages=stages)
    async with serve(SPEC, make_settings()):
        job = await bus.job("p", {"ms": 60_000, "files": FILES})
        await bus.until(f"{job}-s2-sleeper", "processing")
        rec = await bus.record(job)
        assert rec.pipeline is not None and rec.pipeline.stage == 1
        assert rec.progress == 33  # one stage of three over
        await bus.cancel(job)
        rec = await bus.until(job, "cancelled")
        assert rec.children == [f"{job}-s1-qa", f"{job}-s2-sleeper"]  # no third stage
        await bus.until(f"{job}-s2-sleeper", "cancelled")
        assert await bus.results(job) == []  # a cancelled job has no result to send


async def test_a_projects_routes_come_before_the_deployments(bus, js, make_settings) -> None:
    await define(js, "a", "own-reviewer", backend="builtin", builtin="qa", retries=0)
    routes = ProjectRoutes(project="a", routes={"agent.task_requested": ["own-reviewer"]}, version=1)
    kv = (await ensure_kv(js, [subjects.KV_AGENT_ROUTES]))[subjects.KV_AGENT_ROUTES]
    await kv.put("a", enc.encode(routes))
    await bus.project("a", agents=["qa"])  # its list of built-ins does not hold its own agents
    await bus.project("b")
    async with serve(SPEC, make_settings()):
        mine = await bus.event("agent.task_requested", {"agent": "dev", "files": FILES}, project="a")
        rec = await bus.until(mine, "completed")
        assert (rec.agent, rec.agent_version) == ("own-reviewer", 1)
        # Another project's event of the same type takes the deployment's route ($payload).
        theirs = await bus.event("agent.task_requested", {"agent": "dev", "files": FILES}, project="b")
        assert (await bus.until(theirs, "completed")).agent == "dev"


async def test_a_definition_gets_no_llm_the_operator_did_not_configure(bus, js, make_settings) -> None:
    """No OpenAI settings: a definition choosing openai fails at once instead of calling the
    public API without a key."""
    await define(js, "default", "gpt-user", backend="openai", retries=0)
    async with serve(SPEC, make_settings()):
        job = await bus.job("gpt-user", {})
        rec = await bus.until(job, "failed")
        assert rec.error is not None and "backend 'openai' is not configured in this deployment" in rec.error
        assert rec.attempts == 0


async def test_a_pipeline_refuses_an_input_its_record_cannot_keep(bus, make_settings) -> None:
    async with serve(SPEC, make_settings()):
        job = await bus.job("full-pipeline", {"blob": "x" * 300_000})
        rec = await bus.until(job, "failed")
        assert rec.error == "a pipeline's input may be at most 256 KiB" and rec.children == []


async def test_a_pipeline_left_at_a_finished_stage_is_moved_on_by_its_deadline(
    bus, js, make_settings
) -> None:
    """What an executor killed after a stage's last child ended, before it started the next
    stage, leaves behind: the record at stage 1 with every child of it over, and the stage's
    deadline message in JetStream. A new executor takes the step from the deadline message."""
    now = utcnow()
    job = f"job_{uuid.uuid4().hex[:16]}"
    child = f"{job}-s1-qa"
    result = AgentResult(
        job_id=child,
        lovable_project_id=None,
        agent_id="qa",
        status="completed",
        execution_time=1,
        timestamp=now,
        result=ResultBody(summary="qa looked first"),
    )
    await bus.jobs.put(child, enc.encode(JobRecord(
        job_id=child, status="completed", created_at=now, updated_at=now, agent="qa", parent_id=job,
        attempts=1, progress=100, finished_at=now, result=result,
    )))  # fmt: skip
    run = PipelineRun(
        name="p",
        stages=[PipelineStage(agents=["qa"], children=[child], deadline=now), PipelineStage(agents=["dev"])],
        input=msgspec.Raw(enc.encode({"files": FILES})),
    )
    await bus.jobs.put(job, enc.encode(JobRecord(
        job_id=job, status="processing", created_at=now, updated_at=now, agent="p", backend="pipeline",
        attempts=1, children=[child], pipeline=run, callback_url="http://127.0.0.1:9/cb",
    )))  # fmt: skip
    deadline = FanoutDeadline(parent_id=job, deadline=now, children=[child], stage=0)
    await js.publish(subjects.fanout_deadline(job), enc.encode(deadline), stream=subjects.JOBS)
    async with serve(SPEC, make_settings()):
        rec = await bus.until(job, "completed")
        assert rec.children == [child, f"{job}-s2-dev"]
        [published] = await bus.results(job)
        assert "stage 1 qa: qa looked first" in published.result.result.summary


def test_a_stage_input_too_large_for_a_message_keeps_the_summaries() -> None:
    now = utcnow()
    huge = ResultBody(
        summary="dev proposed a rewrite", suggestions=["x" * 1000] * 10, code_diff="+" * 700_000
    )
    child = JobRecord(
        job_id="j-s1-dev",
        status="completed",
        created_at=now,
        updated_at=now,
        agent="dev",
        result=AgentResult(
            job_id="j-s1-dev",
            lovable_project_id=None,
            agent_id="dev",
            status="completed",
            execution_time=1,
            timestamp=now,
            result=huge,
        ),
    )
    run = PipelineRun(
        name="p",
        stages=[PipelineStage(agents=["dev"], children=["j-s1-dev"]), PipelineStage(agents=["qa"])],
        input=msgspec.Raw(b'{"files": {"a.py": "x = 1\\n"}}'),
    )
    given = stage_input(run, 1, {"j-s1-dev": child})
    assert len(given) <= STAGE_INPUT_MAX
    value = msgspec.json.decode(given)
    assert value["files"] == {"a.py": "x = 1\n"} and value["pipeline"]["trimmed"] is True
    assert value["pipeline"]["previous"] == [
        {
            "stage": 1,
            "agents": ["dev"],
            "results": [{"agent": "dev", "status": "completed", "summary": "dev proposed a rewrite"}],
        }
    ]
    small = stage_input(run, 1, {"j-s1-dev": msgspec.structs.replace(child, result=None)})
    assert "trimmed" not in msgspec.json.decode(small)["pipeline"]


async def test_a_definition_newer_than_the_mirror_is_read_from_the_bucket(
    js, nats_bus, make_settings
) -> None:
    """A pipeline saved a moment before its job arrives: the job names its version, the mirror
    (here never started, so always behind) lacks it, and the bucket is read once instead."""
    settings = make_settings()
    kvs = await nats_bus.declare([], [subjects.KV_AGENTS, subjects.KV_AGENT_ROUTES])
    defs = Definitions(
        settings, build_registry(settings), kvs[subjects.KV_AGENTS], kvs[subjects.KV_AGENT_ROUTES]
    )
    await define(js, "a", "p", kind="pipeline", stages=[Stage(agents=["qa"])], version=3)
    assert defs.lookup("a", "p") is None  # the mirror has not seen it
    agent = await defs.fetch("a", "p", 3)
    assert agent is not None and (agent.backend, agent.version) == ("pipeline", 3)
    found = defs.definition("a", "p")  # what the worker reads the pipeline's plan from
    assert found is not None and found.version == 3
    assert await defs.fetch("b", "p", 3) is None  # never another project's
