"""Structured logs: one JSON object a line, carrying the correlation (job) id and trace id."""

from __future__ import annotations

import contextvars
import datetime as dt
import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import msgspec
from aiohttp.http_exceptions import BadHttpMessage

from conveyor.shared.runtime.telemetry import current_trace_id

correlation_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("correlation_id", default=None)
job_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("job_id", default=None)

_encoder = msgspec.json.Encoder(enc_hook=repr)
_STD = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime"}


@contextmanager
def bound(*, job: str | None = None, correlation: str | None = None) -> Iterator[None]:
    """Attach a job id and correlation id to every log line written inside the block."""
    t1 = job_id.set(job) if job is not None else None
    t2 = correlation_id.set(correlation or job) if (correlation or job) else None
    try:
        yield
    finally:
        if t2 is not None:
            correlation_id.reset(t2)
        if t1 is not None:
            job_id.reset(t1)


class JsonFormatter(logging.Formatter):
    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "service": self.service,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if (cid := correlation_id.get()) is not None:
            out["correlation_id"] = cid
        if (jid := job_id.get()) is not None:
            out["job_id"] = jid
        if (tid := current_trace_id()) is not None:
            out["trace_id"] = tid
        for key, value in record.__dict__.items():
            if key not in _STD and not key.startswith("_"):
                out[key] = value
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return _encoder.encode(out).decode()


def _quiet_bad_requests(record: logging.LogRecord) -> bool:
    """aiohttp logs a request it cannot parse (a NUL in a header, a broken request line) at
    ERROR with a traceback, after answering the client 400. That is the client's mistake, and
    a hostile client could fill the log with them: one DEBUG line instead."""
    exc = record.exc_info[1] if record.exc_info else None
    if isinstance(exc, BadHttpMessage):
        record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        record.msg, record.args, record.exc_info, record.exc_text = f"bad request: {exc}", None, None, None
        return logging.getLogger("aiohttp.server").isEnabledFor(logging.DEBUG)
    return True


def setup_logging(service: str, level: str = "INFO", fmt: str = "json") -> None:
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter(service))
    else:
        handler.setFormatter(logging.Formatter(f"%(asctime)s {service} %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # aiohttp's access log duplicates our request metrics; keep it for DEBUG only.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    server_log = logging.getLogger("aiohttp.server")
    if _quiet_bad_requests not in server_log.filters:
        server_log.addFilter(_quiet_bad_requests)
