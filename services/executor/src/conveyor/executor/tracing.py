"""Consumer spans, made only when something exports them.

A span per job costs several percent of a no-op job's CPU; with no span processor (no
exporter configured) it would be dropped anyway. Then the incoming trace context is still
attached, so ``traceparent`` goes on unchanged in what we publish and the trace stays one.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping

from opentelemetry import context, trace

from conveyor.shared.telemetry import consumer_span, extract_context


def exporting(tracer: trace.Tracer) -> bool:
    processor = getattr(tracer, "span_processor", None)
    return bool(getattr(processor, "_span_processors", True))


@contextlib.contextmanager
def job_span(
    tracer: trace.Tracer, enabled: bool, name: str, headers: Mapping[str, str] | None, subject: str
) -> Iterator[None]:
    if enabled:
        with consumer_span(tracer, name, headers, subject):
            yield
        return
    if not headers or "traceparent" not in headers:
        yield
        return
    token = context.attach(extract_context(headers))
    try:
        yield
    finally:
        context.detach(token)
