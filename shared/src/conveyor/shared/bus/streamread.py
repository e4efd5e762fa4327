"""Reading a stream in order with direct gets: the next message on a subject filter from a
sequence or a point in time. Lists (jobs, dead letters) page through streams this way; a
direct get is served by any replica and needs no consumer."""

from __future__ import annotations

import datetime as dt
from typing import NamedTuple

import msgspec

from conveyor.shared.bus.jsrequests import JsRequests


class Stored(NamedTuple):
    seq: int
    subject: str
    data: bytes


class _NextBySubject(msgspec.Struct, omit_defaults=True):
    next_by_subj: str
    seq: int | None = None
    start_time: str | None = None


_encoder = msgspec.json.Encoder()


async def next_message(
    requests: JsRequests,
    stream: str,
    subject_filter: str,
    *,
    seq: int | None = None,
    since: dt.datetime | None = None,
) -> Stored | None:
    """The first message matching ``subject_filter`` at or after ``seq`` (or stored at or after
    ``since``); None when there is none. The stream must allow direct gets."""
    start = None if since is None else since.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")
    body = _NextBySubject(next_by_subj=subject_filter, seq=seq if start is None else None, start_time=start)
    msg = await requests.request(f"$JS.API.DIRECT.GET.{stream}", _encoder.encode(body))
    headers = msg.headers or {}
    if headers.get("Status") or "Nats-Sequence" not in headers:
        return None  # 404: nothing further (408 and the like: nothing readable either)
    return Stored(int(headers["Nats-Sequence"]), headers.get("Nats-Subject", ""), msg.data)
