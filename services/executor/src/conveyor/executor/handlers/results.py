"""Publishing results: one ``JobResult`` per job on ``results.<job_id>``.

The Nats-Msg-Id is derived from the job id, so however often a job is finished (a redelivery
after a crash between the record write and the publish), JetStream keeps one result.

That holds inside the stream's duplicate window (a day). A job can also come back after it:
a sender that retries or redelivers a webhook later (GitHub keeps redeliveries for days)
gets its event routed again, and the worker finds the job's record over. So where a job is
already over, :meth:`Results.ensure` looks in RESULTS first and publishes only when the
job's result is not there (its finisher died before publishing): the callback goes out once
for as long as RESULTS keeps results (7 days, as long as the job records last).
"""

from __future__ import annotations

import msgspec

from conveyor.shared import bus
from conveyor.shared.contracts import ids, subjects
from conveyor.shared.contracts.events import AgentResult, JobRecord, JobResult, ResultBody

_encoder = msgspec.json.Encoder()

# Headers count against the server's max_payload too (wire.publish refuses a message over it):
# a result is measured with this much kept for them.
HEADER_ROOM = 4096
# What a result message holds beyond its record's fields: the correlation id, "kind", names.
_MESSAGE_EXTRA = 128


def may_exceed(body: ResultBody, max_payload: int) -> bool:
    """Whether a result with ``body`` could come near ``max_payload``: JSON escaping makes at
    most six bytes of a character, so one well under by this count is not encoded to be
    measured (the finisher of every job asks)."""
    size = len(body.summary) + sum(map(len, body.files_changed)) + sum(map(len, body.suggestions))
    size += len(body.code_diff) if isinstance(body.code_diff, str) else 0
    return size * 6 + HEADER_ROOM * 4 > max_payload


def oversize(record: JobRecord, max_payload: int, correlation_id: str | None = None) -> str | None:
    """Why the terminal ``record`` or its result message cannot go through NATS, or None.
    Whoever ends a job asks before writing: a record or result over the server's max_payload
    is refused on every attempt, and the job would never end. The message carries the
    record's result, URL, source and job id, so the record's size bounds it."""
    if record.result is None or not may_exceed(record.result.result, max_payload - len(record.error or "")):
        return None
    size = len(_encoder.encode(record)) + len(correlation_id or "") + _MESSAGE_EXTRA
    if size + HEADER_ROOM <= max_payload:
        return None
    return (
        f"result of about {size} bytes exceeds the NATS max_payload of {max_payload} bytes "
        f"(less {HEADER_ROOM} for headers)"
    )


class Results:
    def __init__(self, conn: bus.Bus) -> None:
        self.bus = conn

    async def publish(
        self,
        result: AgentResult,
        *,
        callback_url: str | None,
        source: str,
        correlation_id: str | None,
        project: str,
    ) -> None:
        job_id = result.job_id
        message = JobResult(
            job_id=job_id,
            callback_url=callback_url,
            source=source,
            result=result,
            correlation_id=correlation_id,
            project=project,
        )
        body = _encoder.encode(message)
        headers = {subjects.H_JOB_ID: job_id}
        if correlation_id:
            headers[subjects.H_CORRELATION_ID] = correlation_id
        await self.bus.publish(
            subjects.result(job_id),
            body,
            msg_id=ids.result_msg_id(job_id),
            stream=subjects.RESULTS,
            headers=headers,
        )

    async def republish(self, record: JobRecord, correlation_id: str | None = None) -> None:
        """Publish a job's stored result just after its record ended it (a no-op for JetStream if
        it has the result already, inside the duplicate window). Fan-out children and cancelled
        jobs have no result of their own to publish."""
        if _has_result(record):
            await self._publish_stored(record, correlation_id)

    async def ensure(self, record: JobRecord, correlation_id: str | None = None) -> None:
        """For a job found over already: publish its stored result unless RESULTS has it."""
        if _has_result(record) and not await self.stored(record.job_id):
            await self._publish_stored(record, correlation_id)

    async def stored(self, job_id: str) -> bool:
        """Whether RESULTS holds a result for ``job_id``: the subject's count from stream info,
        not the message itself (a result can be most of a megabyte)."""
        subject = subjects.result(job_id)
        return bool(await self.bus.stream_messages(subjects.RESULTS, subject=subject))

    async def _publish_stored(self, record: JobRecord, correlation_id: str | None) -> None:
        assert record.result is not None
        await self.publish(
            record.result,
            callback_url=record.callback_url,
            source=record.source,
            correlation_id=correlation_id,
            project=record.project,
        )


def _has_result(record: JobRecord) -> bool:
    return record.result is not None and record.parent_id is None and record.status != "cancelled"
