"""The key job ids are derived with (``ids.job_id_for_delivery``, ``ids.api_job_id``).

Every replica must hold the same key, or a redelivery reaching another replica would name
another job. JOB_ID_SECRET sets it; without it the first receiver to start stores a random
key in the KV bucket ``secrets`` with a create (which only one writer can win) and every
replica, that one included, uses what the bucket holds. No API reads that bucket.
"""

from __future__ import annotations

import secrets

from conveyor.shared import bus
from conveyor.shared.runtime.config import Secret

KEY = "job_id"  # its key in the secrets bucket


async def job_id_key(kv: bus.Kv, configured: Secret | None) -> bytes:
    """JOB_ID_SECRET's bytes when set, else the bucket's key (made now if there is none)."""
    if configured is not None:
        return configured.reveal().encode()
    try:
        return await _stored(kv)
    except bus.NotFound:
        pass
    fresh = secrets.token_bytes(32)
    try:
        await kv.create(KEY, fresh)
    except bus.Conflict:
        return await _stored(kv)  # another replica made one first: use that one
    return fresh


async def _stored(kv: bus.Kv) -> bytes:
    entry = await kv.get(KEY)
    if not entry.value:
        raise bus.NotFound
    return entry.value
