"""Pre-signed Lovable webhooks, serialised as whole HTTP/1.1 requests.

Signing and encoding happen before the clock starts, so the load driver only writes bytes.
Every request has its own delivery id, so the receiver sees no replays; the job id each one
will get is known in advance (``ids.job_id_for_delivery`` with JOB_ID_SECRET, which the
benchmark gives the receiver), which is how the callback sink's arrivals are matched to send
times.

File format (read by ``bench.driver`` and by ``wrk/replay.lua``): for each request, its
length as 8 ASCII digits, then the request bytes.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

from conveyor.shared.contracts.ids import job_id_for_delivery
from conveyor.shared.domain.signing import lovable_sign

WEBHOOK_PATH = "/api/webhooks/lovable"
PROJECTS = 64  # distinct project ids, round robin: per-project rate-limit keys are spread out
# The receiver's JOB_ID_SECRET in the benchmark: job ids are keyed, so the driver must know it.
JOB_ID_SECRET = "bench-job-id-secret-0001"

# A representative review request (~0.7 KB of JSON): a small diff and one file.
_DIFF = (
    "diff --git a/app/auth.py b/app/auth.py\n--- a/app/auth.py\n+++ b/app/auth.py\n"
    "@@ -1,3 +1,5 @@\n import os\n+def login(user, password):\n+    return check(user, password)\n"
)
_FILES = {"app/auth.py": "import os\n\n\ndef login(user, password):\n    return check(user, password)\n"}


@dataclass(frozen=True)
class Batch:
    """Pre-built requests and what the system will call them."""

    requests: list[bytes]
    delivery_ids: list[str]
    job_ids: list[str]
    body_bytes: int  # size of one body, for the report


def webhook_body(delivery_id: str, seq: int, event_type: str, data: dict[str, object]) -> bytes:
    body = {
        "id": delivery_id,
        "type": event_type,
        "project_id": f"bench-project-{seq % PROJECTS}",
        "data": {**data, "bench_seq": seq, "sent_at": time.time()},
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    return json.dumps(body, separators=(",", ":")).encode()


def default_data(agent: str | None) -> dict[str, object]:
    data: dict[str, object] = {"prompt": "Review this change", "diff": _DIFF, "files": _FILES}
    if agent is not None:
        data["agent"] = agent
    return data


def signed_request(
    host: str, port: int, path: str, secret: str, delivery_id: str, body: bytes, project: str
) -> bytes:
    ts = int(time.time())
    head = (
        f"POST {path} HTTP/1.1\r\n"
        f"Host: {host}:{port}\r\n"
        "Content-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n"
        f"X-Lovable-Timestamp: {ts}\r\n"
        f"X-Lovable-Signature: {lovable_sign(secret, ts, body)}\r\n"
        f"X-Lovable-Delivery: {delivery_id}\r\n"
        f"X-Lovable-Project-Id: {project}\r\n"
        "\r\n"
    )
    return head.encode() + body


def build(
    n: int,
    *,
    prefix: str,
    secret: str,
    port: int,
    event_type: str,
    agent: str | None = None,
    extra: dict[str, object] | None = None,
    host: str = "127.0.0.1",
    path: str = WEBHOOK_PATH,
) -> Batch:
    """``n`` unique signed webhooks; ``prefix`` keeps delivery ids unique across phases."""
    data = {**default_data(agent), **(extra or {})}
    requests, deliveries, jobs = [], [], []
    size = 0
    for seq in range(n):
        delivery = f"{prefix}-{seq}"
        body = webhook_body(delivery, seq, event_type, data)
        size = len(body)
        requests.append(
            signed_request(host, port, path, secret, delivery, body, f"bench-project-{seq % PROJECTS}")
        )
        deliveries.append(delivery)
        jobs.append(job_id_for_delivery(JOB_ID_SECRET.encode(), "lovable", delivery))
    return Batch(requests, deliveries, jobs, size)


def write(path: Path, requests: list[bytes]) -> Path:
    with path.open("wb") as fh:
        for raw in requests:
            fh.write(b"%08d" % len(raw))
            fh.write(raw)
    return path


def read(path: Path) -> list[bytes]:
    data = path.read_bytes()
    out, pos = [], 0
    while pos < len(data):
        length = int(data[pos : pos + 8])
        pos += 8
        out.append(data[pos : pos + length])
        pos += length
    return out
