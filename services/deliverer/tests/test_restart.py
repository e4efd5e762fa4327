"""The deliverer as a real process: SIGKILLed with a retry pending, the retry still happens."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from nats.js import JetStreamContext
from standardwebhooks import Webhook

from conveyor.shared.contracts import subjects
from conveyor.shared.contracts.events import DeliveryLog, delivery_log_decoder
from conveyor.shared.testing.fixtures import eventually
from conveyor.shared.testing.procs import ServiceProcess, service_env

SECRET = "whsec_cmVzdGFydC10ZXN0LXNpZ25pbmcta2V5"
ACK_WAIT_S = 3 + 30  # service.ack_wait_s: CALLBACK_TIMEOUT_S below plus 30


async def test_retry_pending_at_sigkill_happens_after_restart(
    nats_url: str, js: JetStreamContext, sink: Any, publish_result: Any, tmp_path: Path
) -> None:
    env = service_env(
        nats_url,
        CALLBACK_SIGNING_SECRETS=SECRET,
        CALLBACK_ALLOWED_NETWORKS="127.0.0.0/8",
        CALLBACK_RETRY_SCHEDULE_S="1",
        CALLBACK_RETRY_JITTER="0",
        CALLBACK_MAX_ATTEMPTS="10",
        CALLBACK_BREAKER_THRESHOLD="0",
        CALLBACK_TIMEOUT_S="3",
    )
    first = await ServiceProcess("deliverer", env, tmp_path / "deliverer-1.log").start()
    second: ServiceProcess | None = None
    try:
        sink.status = 500
        await publish_result("job_kill", sink.url())
        kv = await js.key_value(subjects.KV_DELIVERIES)

        async def retry_scheduled() -> DeliveryLog:
            log = delivery_log_decoder.decode((await kv.get("job_kill")).value or b"")
            assert log.attempts and log.attempts[-1].outcome == "retry"
            return log

        # The attempt is logged just before its NAK: from here on a retry waits in JetStream,
        # either as the NAK's 1 s delay or, if the kill lands between the log write and the
        # NAK leaving the process, as the consumer's AckWait running out.
        before = await eventually(retry_scheduled)
        await first.kill()  # SIGKILL: no drain, nothing settled on the way out
        assert first.proc is not None and first.proc.returncode == -9
        calls_before_restart = len(sink.requests)
        sink.status = 200

        second = await ServiceProcess("deliverer", env, tmp_path / "deliverer-2.log").start()

        async def delivered() -> DeliveryLog:
            log = delivery_log_decoder.decode((await kv.get("job_kill")).value or b"")
            assert log.delivered
            return log

        after = await eventually(delivered, timeout=ACK_WAIT_S + 15)
    finally:
        await first.kill()
        if second is not None:
            assert await second.stop() == 0, second.tail()

    assert len(after.attempts) >= len(before.attempts) + 1
    assert [a.outcome for a in after.attempts][:-1] == ["retry"] * (len(after.attempts) - 1)
    assert after.attempts[-1].outcome == "delivered"
    # The successful call came from the restarted process, and only once.
    assert len(sink.requests) == calls_before_restart + 1 and sink.answered(200) == 1
    Webhook(SECRET).verify(sink.requests[-1].body, sink.requests[-1].headers)
