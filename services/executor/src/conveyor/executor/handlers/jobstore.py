"""Job records in KV ``jobs`` and execution logs in KV ``job_logs``.

Every write is a compare-and-set on the key's revision, so two writers never overwrite each
other blindly: a writer that loses re-reads and decides again, and a terminal record is
never moved anywhere else.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass

import msgspec

from conveyor.shared import bus
from conveyor.shared.contracts import subjects
from conveyor.shared.contracts.errors import PermanentError
from conveyor.shared.contracts.events import JobLog, JobRecord, LogLine, job_log_decoder, job_record_decoder

MAX_LOG_LINES = 1000
_encoder = msgspec.json.Encoder()


def checked_job_id(job_id: str) -> str:
    """A job id from a message, refused for good if it cannot be a subject token or KV key."""
    if not subjects.is_token(job_id):
        raise PermanentError(f"job id {job_id!r} cannot be a subject token or KV key")
    return job_id


class Conflict(Exception):
    """Someone else wrote the record since we read it."""


@dataclass(frozen=True)
class Versioned:
    record: JobRecord | None
    revision: int  # 0: no record yet

    @property
    def terminal(self) -> bool:
        return self.record is not None and self.record.terminal


Change = Callable[[JobRecord | None], JobRecord | None]


class JobStore:
    def __init__(self, jobs: bus.Kv, logs: bus.Kv) -> None:
        self.jobs = jobs
        self.logs = logs

    async def load(self, job_id: str) -> Versioned:
        found = await self.jobs.lookup(job_id)
        if found is None:
            return Versioned(None, 0)
        return Versioned(job_record_decoder.decode(found.value), found.revision)

    async def save(self, job_id: str, record: JobRecord, revision: int) -> int:
        data = _encoder.encode(record)
        try:
            if revision == 0:
                return await self.jobs.create(job_id, data)
            return await self.jobs.update(job_id, data, revision)
        except bus.Conflict as exc:
            raise Conflict(job_id) from exc

    async def advance(
        self, job_id: str, current: Versioned, change: Change, *, tries: int = 10
    ) -> tuple[bool, Versioned]:
        """Apply ``change`` to the newest record until the write sticks.

        ``change`` gets the record as it is and returns the new one, or None to leave it alone
        (a terminal record, a job someone else now owns). Returns (written, what is stored)."""
        for n in range(tries):
            new = change(current.record)
            if new is None:
                return False, current
            try:
                revision = await self.save(job_id, new, current.revision)
            except Conflict:
                if n:
                    # Direct gets may be answered by a replica a moment behind: let it catch up.
                    await asyncio.sleep(0.005 * n)
                current = await self.load(job_id)
                continue
            return True, Versioned(new, revision)
        raise Conflict(f"{job_id}: the record kept changing under {tries} writes")

    async def read_log(self, job_id: str) -> list[LogLine]:
        try:
            entry = await self.logs.get(job_id)
        except bus.NotFound:
            return []
        return list(job_log_decoder.decode(entry.value).lines) if entry.value else []

    async def write_log(self, job_id: str, lines: list[LogLine]) -> None:
        """Store the job's whole log (one writer per job at a time: the executor running it)."""
        if lines:
            await self.logs.put(job_id, _encoder.encode(JobLog(job_id=job_id, lines=lines[-MAX_LOG_LINES:])))
