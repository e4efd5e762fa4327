"""Schemathesis hooks for ``make fuzz`` (scripts/fuzz.py loads them with SCHEMATHESIS_HOOKS).

- A share of the webhook cases is signed for one of the configured sources (lovable, github, a
  Standard Webhooks source), some with a well-formed event around the generated data, so the
  fuzzer gets past the signature check to the parsing, routing and accepting behind it.
- Every URL the services would call (a job's or schedule's callback_url, a test send's url)
  stays on loopback: an http(s) URL naming another host is replaced by the local sink, so
  nothing is resolved or sent elsewhere. A share of the invalid ones is replaced too, so more
  cases are accepted.
- Every answer is counted by operation and status; every 202 naming a job is written to
  ``accepted.jsonl``, for the check that each accepted job can be read afterwards.

Choices are made from a hash of the generated case, so a case replayed makes the same ones.
"""

from __future__ import annotations

import atexit
import collections
import datetime as dt
import hashlib
import json
import os
import threading
import urllib.parse
import uuid
from pathlib import Path
from typing import Any

import schemathesis

from conveyor.shared.domain import signing

OUT = Path(os.environ["FUZZ_OUT"])
SINK = os.environ["FUZZ_SINK_URL"]
SECRETS = json.loads(os.environ["FUZZ_WEBHOOK_SECRETS"])  # source name -> (scheme, secret)
LOVABLE_TYPES = ("project.created", "project.updated", "code.review_requested", "agent.task_requested")
WEBHOOK = "/api/webhooks/{source}"
URL_FIELDS = ("callback_url", "url")

_lock = threading.Lock()
_calls: collections.Counter[str] = collections.Counter()
_accepted = (OUT / "accepted.jsonl").open("a")


def _pick(case: Any) -> int:
    """A number fixed by what was generated (not by time or order)."""
    seen = repr((case.operation.label, case.path_parameters, case.query, case.headers, case.body))
    return int.from_bytes(hashlib.blake2b(seen.encode(), digest_size=8).digest(), "big")


def _loopback(value: str) -> bool:
    try:
        host = urllib.parse.urlsplit(value).hostname or ""
    except ValueError:
        return True  # not a URL anyone could call
    return host in ("127.0.0.1", "localhost") or host.startswith("127.")


def _is_http(value: str) -> bool:
    return value.strip().lower().startswith(("http://", "https://"))


def _keep_local(case: Any, n: int) -> None:
    """A URL that names another host points here instead. In a case made invalid on purpose only
    its host changes (to a closed local port), so it stays as invalid as it was made."""
    if not isinstance(case.body, dict):
        return
    valid = not _invalid_parts(case)
    for name in URL_FIELDS:
        value = case.body.get(name)
        if not isinstance(value, str):
            continue
        elsewhere = _is_http(value) and not _loopback(value)
        if valid and (elsewhere or n % 3 == 0):
            case.body[name] = SINK
        elif elsewhere:
            try:
                case.body[name] = urllib.parse.urlsplit(value)._replace(netloc="127.0.0.1:9").geturl()
            except ValueError:
                case.body[name] = "http://127.0.0.1:9/"
    if valid and case.operation.path == "/api/schedules" and n % 3 == 0:
        # A timing the receiver takes (a random one rarely is), so schedules get made and the
        # stateful phase can follow them; the rest of the body stays as generated.
        case.body.pop("timezone", None)
        if (n >> 8) % 2:
            case.body.pop("cron", None)
            case.body["every"] = ("1h", "90m", "24h")[(n >> 16) % 3]
        else:
            case.body.pop("every", None)
            case.body["cron"] = ("@daily", "0 9 * * 1-5", "*/5 * * * *")[(n >> 16) % 3]


def _value(x: Any) -> str:
    return str(getattr(x, "value", x))


def _invalid_parts(case: Any) -> set[str]:
    """The parts of the case (header, body, ...) the generator made invalid on purpose."""
    meta = case.meta
    if meta is None or _value(meta.generation.mode) != "negative":
        return set()
    parts = {_value(where) for where, info in meta.components.items() if _value(info.mode) == "negative"}
    where = getattr(meta.phase.data, "parameter_location", None)  # the coverage phase says here
    if where is not None:
        parts.add(_value(where))
    return parts or {"unknown"}


def _sign(case: Any, n: int) -> None:
    """One case in four is left as generated; the others are signed for a configured source.
    Cases whose headers were made invalid on purpose stay unsigned (signing would make them
    valid, and the check that invalid requests are refused would rightly complain); a body made
    invalid is signed as it is, so it reaches the parser."""
    names = sorted(SECRETS)
    choice = n % (len(names) + 1)
    invalid = _invalid_parts(case)
    if choice == len(names) or not invalid <= {"body"}:
        return
    name = names[choice]
    scheme, secret = SECRETS[name]
    body = case.body
    wrap = not invalid and (n >> 8) % 2 == 0
    if scheme == "lovable" and wrap:
        body = {
            "id": f"evt_{uuid.uuid4().hex}",
            "type": LOVABLE_TYPES[(n >> 16) % len(LOVABLE_TYPES)],
            "project_id": f"fuzz-{(n >> 24) % 8}",
            "data": body if isinstance(body, dict) else {"value": body},
            "created_at": dt.datetime.now(dt.UTC).isoformat(),
        }
    elif scheme == "standard" and wrap:
        body = {"type": "fuzz.event", "timestamp": dt.datetime.now(dt.UTC).isoformat(), "data": body}
    # The bytes the request will carry: schemathesis hands a JSON body to requests, which
    # encodes it with json.dumps(allow_nan=False); the body itself stays what was generated,
    # so the checks judge the case as it was made.
    try:
        if isinstance(body, bytes):
            raw = body
        elif body is None:
            raw = b"null"
        else:
            raw = json.dumps(body, allow_nan=False).encode()
    except (TypeError, ValueError):  # no body at all, or one JSON cannot carry: as generated
        return
    now = int(dt.datetime.now(dt.UTC).timestamp())
    headers = dict(case.headers or {})
    if scheme == "lovable":
        headers["X-Lovable-Timestamp"] = str(now)
        headers["X-Lovable-Signature"] = signing.lovable_sign(secret, now, raw)
        headers.pop("X-Lovable-Delivery", None)  # the body's id names the delivery
    elif scheme == "github":
        headers["X-Hub-Signature-256"] = signing.github_sign(secret, raw)
        headers["X-GitHub-Event"] = ("pull_request", "push", "issues")[(n >> 16) % 3]
        headers["X-GitHub-Delivery"] = str(uuid.uuid4())
    else:
        headers.update(signing.standard_headers([secret], f"msg_{uuid.uuid4().hex}", raw, now))
    headers["Content-Type"] = "application/json"
    case.path_parameters = {**(case.path_parameters or {}), "source": name}
    case.headers = headers
    case.body = body


@schemathesis.hook
def before_call(context: Any, case: Any, kwargs: dict[str, Any]) -> None:
    n = _pick(case)
    if case.operation.path == WEBHOOK and case.operation.method.upper() == "POST":
        _sign(case, n)
    else:
        _keep_local(case, n)


@schemathesis.hook
def after_call(context: Any, case: Any, response: Any) -> None:
    label = f"{case.operation.method.upper()} {case.operation.path}"
    job_id = None
    if response.status_code == 202:
        try:
            answer = json.loads(response.content)
        except ValueError:
            answer = None
        if isinstance(answer, dict) and isinstance(answer.get("job_id"), str):
            job_id = answer["job_id"]
    with _lock:
        _calls[f"{label} {response.status_code}"] += 1
        if job_id is not None:
            _accepted.write(json.dumps({"job_id": job_id, "operation": label}) + "\n")
            _accepted.flush()


@atexit.register
def _write_counts() -> None:
    with _lock:
        (OUT / "calls.json").write_text(json.dumps(dict(sorted(_calls.items())), indent=1))
        _accepted.close()
