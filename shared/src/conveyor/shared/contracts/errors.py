"""Error hierarchy shared by all services.

* ServiceError
  + ConfigError          -- bad settings; the service stops at start with one line naming it
  + HandlerError         -- raised by message handlers; settled in one place (consumer.settle)
    + RetryableError     -- transient; the message is NAKed with a delay and redelivered
    + PermanentError     -- can never succeed; the message is dead-lettered and TERMed
"""

from __future__ import annotations


class ServiceError(Exception):
    """Base for every error raised on purpose by our code."""


class ConfigError(ServiceError):
    """A missing or malformed setting. ``setting`` names it."""

    def __init__(self, message: str, *, setting: str | None = None) -> None:
        super().__init__(message)
        self.setting = setting


class HandlerError(ServiceError):
    """Raised by message handlers to say how the message should be settled."""


class RetryableError(HandlerError):
    """Transient failure: redeliver after ``delay_s`` seconds (None: the consumer's backoff)."""

    def __init__(self, message: str, *, delay_s: float | None = None, status_code: int | None = None) -> None:
        super().__init__(message)
        self.delay_s = delay_s
        self.status_code = status_code


class PermanentError(HandlerError):
    """The input can never be processed: dead-letter it and stop redelivery.

    ``attempts`` overrides the DLQ's attempt count when the handler counts attempts itself
    (a delivery paused by a circuit breaker is redelivered without being an attempt).
    ``subject`` files the dead letter under another original subject, the one a replay
    should go to (a parked result is filed under its ``results.<job_id>``).
    """

    def __init__(
        self,
        message: str,
        *,
        status_code: int | None = None,
        attempts: int | None = None,
        subject: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.attempts = attempts
        self.subject = subject
