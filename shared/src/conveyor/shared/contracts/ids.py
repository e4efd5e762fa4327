"""Identifiers. Job ids are subject tokens and KV keys, so they use [a-z0-9_-] only."""

from __future__ import annotations

import hashlib
import hmac
import uuid


def new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


def derived_id(prefix: str, *parts: str) -> str:
    """A stable id from its parts, for parts nobody outside sees (a schedule and its copy)."""
    digest = hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:32]
    return f"{prefix}_{digest}"


def keyed_id(key: bytes, prefix: str, *parts: str) -> str:
    """A stable id from its parts that only the holder of ``key`` can compute: the same
    delivery always names the same job, so a replayed webhook or a retried
    ``Idempotency-Key`` request points at the first job, but knowing a sender's event id is
    not knowing its job id (a job id is what its status and result are read by)."""
    digest = hmac.digest(key, "\x1f".join(parts).encode(), "sha256").hex()[:32]
    return f"{prefix}_{digest}"


def job_id_for_delivery(key: bytes, source: str, dedupe_key: str) -> str:
    """A webhook's job: ``dedupe_key`` is the signed part that names the delivery."""
    return keyed_id(key, "job", "webhook", source, dedupe_key)


def api_job_id(key: bytes, key_id: str, idempotency_key: str) -> str:
    """An API job submitted with an ``Idempotency-Key``."""
    return keyed_id(key, "job", "api", key_id, idempotency_key)


def child_job_id(parent_id: str, agent: str) -> str:
    """Fan-out children: readable, stable, and still one subject token."""
    return f"{parent_id}-{agent}"


def result_msg_id(job_id: str) -> str:
    """Nats-Msg-Id of a job's result: a redelivered job that publishes again is dropped."""
    return f"result-{job_id}"
