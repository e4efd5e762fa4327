"""Identifiers. Job ids are subject tokens and KV keys, so they use [a-z0-9_-] only."""

from __future__ import annotations

import hashlib
import uuid


def new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


def derived_id(prefix: str, *parts: str) -> str:
    """A stable id from its parts: the same delivery id always names the same job, so a
    replayed webhook or a retried ``Idempotency-Key`` request points at the first job."""
    digest = hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:32]
    return f"{prefix}_{digest}"


def job_id_for_delivery(source: str, delivery_id: str) -> str:
    return derived_id("job", "webhook", source, delivery_id)


def child_job_id(parent_id: str, agent: str) -> str:
    """Fan-out children: readable, stable, and still one subject token."""
    return f"{parent_id}-{agent}"


def result_msg_id(job_id: str) -> str:
    """Nats-Msg-Id of a job's result: a redelivered job that publishes again is dropped."""
    return f"result-{job_id}"
