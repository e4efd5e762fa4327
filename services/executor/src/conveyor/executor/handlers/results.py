"""Publishing results: one ``JobResult`` per job on ``results.<job_id>``.

The Nats-Msg-Id is derived from the job id, so however often a job is finished (a redelivery
after a crash between the record write and the publish), JetStream keeps one result.
"""

from __future__ import annotations

import msgspec

from conveyor.shared import ids, subjects
from conveyor.shared.events import AgentResult, JobRecord, JobResult
from conveyor.shared.jsrequests import EXPECTED_STREAM, JsRequests
from conveyor.shared.telemetry import inject_headers

_encoder = msgspec.json.Encoder()


class Results:
    def __init__(self, requests: JsRequests) -> None:
        self.requests = requests

    async def publish(
        self,
        result: AgentResult,
        *,
        callback_url: str | None,
        source: str,
        correlation_id: str | None,
    ) -> None:
        job_id = result.job_id
        body = JobResult(
            job_id=job_id,
            callback_url=callback_url,
            source=source,
            result=result,
            correlation_id=correlation_id,
        )
        headers = {subjects.MSG_ID: ids.result_msg_id(job_id), subjects.H_JOB_ID: job_id}
        if correlation_id:
            headers[subjects.H_CORRELATION_ID] = correlation_id
        headers = inject_headers(headers)
        headers[EXPECTED_STREAM] = subjects.RESULTS
        await self.requests.publish(subjects.result(job_id), _encoder.encode(body), headers)

    async def republish(self, record: JobRecord, correlation_id: str | None = None) -> None:
        """Publish a finished job's stored result again (a no-op for JetStream if it already has it).
        Fan-out children and cancelled jobs have no result of their own to publish."""
        if record.result is None or record.parent_id is not None or record.status == "cancelled":
            return
        await self.publish(
            record.result,
            callback_url=record.callback_url,
            source=record.source,
            correlation_id=correlation_id,
        )
