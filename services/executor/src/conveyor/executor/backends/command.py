"""The command backend: a program (a coding-agent CLI in headless mode, a script) given the job
as JSON on stdin, answering the result as JSON on stdout.

Each attempt runs in its own process group and its own working directory (also its HOME),
with only allow-listed environment variables. On timeout, cancel or shutdown the whole group
gets SIGTERM, then SIGKILL after a short grace, so children a program started go with it.
stderr lines become the job's log; a line ``progress: <0-100>`` moves the job's progress,
``output: <text>`` streams a line of text to the job's SSE stream (and progress callbacks),
and ``usage: <model> <input tokens> <output tokens>`` reports what a model call used (a CLI
that calls an LLM: priced and counted against the project's budgets like any LLM agent's).
Exit status 65 (EX_DATAERR) means the input is bad (no retry); any other non-zero status is
a failed attempt that may be retried.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import signal
import tempfile
from pathlib import Path

import msgspec

from conveyor.executor.backends.base import AgentError, AgentJob, TransientError, parse_output
from conveyor.shared.contracts.events import ResultBody, TokenUsage

EX_DATAERR = 65
KILL_GRACE_S = 0.5
_PROGRESS = re.compile(r"^\s*progress\s*[:=]\s*(\d{1,3})\s*%?\s*$", re.I)
_USAGE = re.compile(r"^\s*usage\s*[:=]\s*([\x21-\x7e]{1,200})\s+(\d{1,12})\s+(\d{1,12})\s*$", re.I)
_OUTPUT = "output: "


class _Stdin(msgspec.Struct, kw_only=True):
    job_id: str
    agent: str
    attempt: int
    prompt: str | None
    input: msgspec.Raw
    system_prompt: str
    model: str | None
    source: str
    event_type: str | None
    project_id: str | None
    parent_id: str | None
    workdir: str
    timeout_ms: int


_encoder = msgspec.json.Encoder()


def group_alive(pgid: int) -> bool:
    """Whether any process of the group still runs (zombies waiting for a reaper do not count)."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    proc = Path("/proc")
    if not proc.is_dir():
        return True
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        # fields[0] is the state, fields[2] the process group
        if fields[2] == str(pgid) and fields[0] not in ("Z", "X"):
            return True
    return False


async def kill_group(proc: asyncio.subprocess.Process, grace_s: float = KILL_GRACE_S) -> None:
    """SIGTERM the process group, SIGKILL what is left after ``grace_s``, reap the leader."""
    pgid = proc.pid
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGTERM)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + grace_s
    while group_alive(pgid) and loop.time() < deadline:
        if proc.returncode is None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(proc.wait()), 0.05)
        else:
            await asyncio.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)
    with contextlib.suppress(Exception):
        await asyncio.wait_for(proc.wait(), 2)


class CommandBackend:
    name = "command"

    def __init__(self, workdir_root: str, max_output_bytes: int, max_log_lines: int = 500) -> None:
        self.root = Path(workdir_root or Path(tempfile.gettempdir()) / "conveyor-executor")
        self.max_output = max_output_bytes
        self.max_log_lines = max_log_lines

    def environment(self, job: AgentJob, workdir: Path) -> dict[str, str]:
        env = {k: os.environ[k] for k in job.agent.env_allowlist if k in os.environ}
        env.update(job.agent.env)
        env.update(
            HOME=str(workdir),
            CONVEYOR_JOB_ID=job.request.job_id,
            CONVEYOR_AGENT=job.agent.name,
            CONVEYOR_ATTEMPT=str(job.attempt),
        )
        return env

    async def run(self, job: AgentJob) -> ResultBody:
        agent, req = job.agent, job.request
        workdir = self.root / f"{req.job_id}-{job.attempt}"
        workdir.mkdir(parents=True, exist_ok=True)
        stdin = _encoder.encode(
            _Stdin(
                job_id=req.job_id,
                agent=agent.name,
                attempt=job.attempt,
                prompt=req.prompt,
                input=req.input,
                system_prompt=agent.system_prompt,
                model=agent.model,
                source=req.source,
                event_type=req.event_type,
                project_id=req.project_id,
                parent_id=req.parent_id,
                workdir=str(workdir),
                timeout_ms=int(job.remaining_s * 1000),
            )
        )
        try:
            proc = await asyncio.create_subprocess_exec(
                *agent.command,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                cwd=workdir,
                env=self.environment(job, workdir),
                start_new_session=True,  # its own session and process group: killable as a whole
            )
        except OSError as exc:
            shutil.rmtree(workdir, ignore_errors=True)
            raise AgentError(f"cannot start {agent.command[0]!r}: {exc.strerror or exc}") from exc
        job.log("info", f"started {agent.command[0]} (pid {proc.pid}) in {workdir}")
        tail: list[str] = []
        waiter = asyncio.create_task(proc.wait())
        io = asyncio.create_task(self._io(proc, stdin, job, tail))
        try:
            await asyncio.wait({waiter, io}, return_when=asyncio.FIRST_COMPLETED)
            if io.done() and io.exception() is not None:
                raise io.exception()  # type: ignore[misc]  # output over the limit
            code = await waiter
            if not io.done():
                # The program exited; children it left may still hold its pipes open.
                await asyncio.wait({io}, timeout=0.25)
                if not io.done():
                    job.log("warning", "the program exited but left processes behind; killing them")
                    await kill_group(proc)
            out = await io
        finally:
            for task in (waiter, io):
                if not task.done():
                    task.cancel()
            # Always: a program that exited may have left children behind in its group.
            await kill_group(proc)
            await asyncio.gather(waiter, io, return_exceptions=True)
            shutil.rmtree(workdir, ignore_errors=True)
        program = os.path.basename(agent.command[0])
        if code == 0:
            return parse_output(out, f"command {program}")
        why = f"command {program} exited with {code}" + (f": {' | '.join(tail[-3:])}" if tail else "")
        if code == EX_DATAERR:
            raise AgentError(why)
        raise TransientError(why)

    async def _io(
        self, proc: asyncio.subprocess.Process, stdin: bytes, job: AgentJob, tail: list[str]
    ) -> bytes:
        assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None

        async def feed() -> None:
            assert proc.stdin is not None
            # The program may exit without reading its input: not our failure.
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                proc.stdin.write(stdin)
                await proc.stdin.drain()
                proc.stdin.close()

        async def read_out() -> bytes:
            assert proc.stdout is not None
            chunks: list[bytes] = []
            size = 0
            while chunk := await proc.stdout.read(65536):
                size += len(chunk)
                if size > self.max_output:
                    raise AgentError(f"command wrote more than {self.max_output} bytes to stdout")
                chunks.append(chunk)
            return b"".join(chunks)

        async def read_err() -> None:
            assert proc.stderr is not None
            lines = 0
            while raw := await proc.stderr.readline():
                line = raw.decode("utf-8", errors="replace").rstrip()[:1000]
                if not line:
                    continue
                if m := _PROGRESS.match(line):
                    job.progress(min(99, int(m.group(1))))
                    continue
                if line.startswith(_OUTPUT):
                    job.output(line[len(_OUTPUT) :] + "\n")
                    continue
                if m := _USAGE.match(line):
                    # BudgetExceeded from here ends the run (the process group is killed).
                    job.usage(
                        TokenUsage(
                            model=m.group(1), input_tokens=int(m.group(2)), output_tokens=int(m.group(3))
                        )
                    )
                    continue
                tail.append(line)
                del tail[:-5]
                lines += 1
                if lines <= self.max_log_lines:
                    job.log("info", line)

        out, _, _ = await asyncio.gather(read_out(), read_err(), feed())
        return out
