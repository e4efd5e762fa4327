"""Consumer spans, made only when something exports them.

With no span processor (no exporter configured) a span per callback is dropped anyway and
costs a few percent of the CPU per callback. The incoming trace context is still attached
then, so ``traceparent`` goes on to the callback unchanged and the trace stays one.
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
def message_span(
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
