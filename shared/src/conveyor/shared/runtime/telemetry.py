"""Tracing: provider setup from the standard OTEL_* variables, and W3C context in NATS headers.

One trace runs from the webhook to the callback: the receiver's server span is the root,
``traceparent`` rides in every NATS message's headers, and each consumer starts its span
as a child of what it extracted.
"""

from __future__ import annotations

import contextlib
import os
import weakref
from collections.abc import Iterator, Mapping
from contextlib import contextmanager

from opentelemetry import context, propagate, trace
from opentelemetry.sdk.resources import SERVICE_INSTANCE_ID, SERVICE_NAME, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor, SpanExporter

# The span processors of providers init_tracing gave an exporter: spans made through them go
# somewhere (read from the tracer's public ``span_processor``, not the SDK's private list).
_exporting: weakref.WeakSet[object] = weakref.WeakSet()


def init_tracing(service: str, instance: str, exporter: SpanExporter | None = None) -> TracerProvider:
    """A provider for this process. Exports to ``exporter`` (tests), else OTLP/HTTP when
    ``OTEL_EXPORTER_OTLP_ENDPOINT`` (or the traces variant) is set, else nowhere: spans still
    exist, so trace ids reach logs and headers."""
    resource = Resource.create(
        {SERVICE_NAME: os.environ.get("OTEL_SERVICE_NAME", service), SERVICE_INSTANCE_ID: instance}
    )
    provider = TracerProvider(resource=resource, shutdown_on_exit=False)
    if exporter is not None:
        provider.add_span_processor(SimpleSpanProcessor(exporter))
    elif any(
        os.environ.get(v) for v in ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    ):
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    else:
        return provider
    _exporting.add(provider.get_tracer(__name__).span_processor)  # type: ignore[attr-defined]
    return provider


def inject_headers(headers: dict[str, str] | None = None) -> dict[str, str]:
    """Return NATS headers carrying the current span (``traceparent``) plus ``headers``."""
    carrier = dict(headers or {})
    if context.get_current():  # an empty context (no span, no baggage) injects nothing
        propagate.inject(carrier)
    return carrier


def extract_context(headers: Mapping[str, str] | None) -> context.Context:
    """Parent context from a received message's headers (empty when there are none)."""
    return propagate.extract(dict(headers or {}))


def current_trace_id() -> str | None:
    ctx = trace.get_current_span().get_span_context()
    return format(ctx.trace_id, "032x") if ctx.is_valid else None


@contextmanager
def consumer_span(
    tracer: trace.Tracer, name: str, headers: Mapping[str, str] | None, subject: str
) -> Iterator[trace.Span]:
    """A CONSUMER span for one message, child of the publisher's context."""
    with tracer.start_as_current_span(
        name,
        context=extract_context(headers),
        kind=trace.SpanKind.CONSUMER,
        attributes={"messaging.system": "nats", "messaging.destination.name": subject},
    ) as span:
        yield span


def exporting(tracer: trace.Tracer) -> bool:
    """Whether spans made by ``tracer`` go anywhere (init_tracing gave its provider an exporter)."""
    processor = getattr(tracer, "span_processor", None)
    return processor is not None and processor in _exporting


@contextlib.contextmanager
def message_span(
    tracer: trace.Tracer, enabled: bool, name: str, headers: Mapping[str, str] | None, subject: str
) -> Iterator[None]:
    """A CONSUMER span when spans are exported; otherwise only the incoming context.

    A span per message costs several percent of a no-op message's CPU, and with no span
    processor it would be dropped anyway. The incoming trace context is still attached then,
    so ``traceparent`` goes on unchanged in what the handler publishes and the trace stays one.
    """
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
