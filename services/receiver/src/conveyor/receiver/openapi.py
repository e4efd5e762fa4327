"""The OpenAPI 3.1 document, generated from the route table and the msgspec types the
handlers decode and encode (``msgspec.json.schema_components``)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Literal

import msgspec
from aiohttp.typedefs import Handler

from conveyor.receiver.schemas import ErrorBody

Auth = Literal["none", "api_key", "read", "admin", "webhook"]  # read: a key is optional
SSE = "text/event-stream"
TEXT = "text/plain"
ANY_JSON = "any-json"

_REASONS = {
    200: "OK",
    201: "Created",
    202: "Accepted",
    400: "Bad request: empty body, invalid JSON or a malformed header",
    401: "Missing, invalid or revoked credentials (API key or webhook signature)",
    403: "Forbidden: not an admin key, or an address outside the source's allowlist",
    404: "Not found",
    409: "Conflict: the job has already finished",
    413: "Body larger than MAX_BODY_BYTES (not read)",
    422: "Well-formed but invalid: names the field",
    429: "Rate limited; see Retry-After and X-RateLimit-*",
    503: "NATS JetStream unreachable; see Retry-After. Nothing was accepted",
}
_RATE_HEADERS = ("X-RateLimit-Limit", "X-RateLimit-Remaining", "X-RateLimit-Reset")
# Before OpenAPI 3.2 the schema of an event stream describes each event, not the stream.
_SSE_EVENT = {
    "type": "object",
    "description": "One Server-Sent Event: `event` names it, `data` is the record as JSON text, "
    "`id` is what Last-Event-ID resumes after.",
    "properties": {
        "event": {"type": "string"},
        "data": {"type": "string"},
        "id": {"type": "string"},
        "retry": {"type": "integer"},
    },
    "required": ["event", "data"],
}


@dataclass(frozen=True)
class Param:
    name: str
    where: Literal["header", "query"]
    description: str


@dataclass(frozen=True)
class Operation:
    method: str
    path: str
    handler: Handler | None  # None: served by the runner, documented here
    summary: str
    tag: str
    responses: dict[int, Any]  # status -> Struct type, a tuple of them, SSE, TEXT, ANY_JSON, None (error)
    body: Any = None
    body_required: bool = True
    auth: Auth = "none"
    params: tuple[Param, ...] = ()
    description: str = ""
    deprecated: bool = False
    extra: dict[str, Any] = field(default_factory=dict)
    # status -> OpenAPI links: where an id in the answer can be used next (clients, and the
    # stateful sequences `make fuzz` runs)
    links: dict[int, dict[str, Any]] = field(default_factory=dict)

    @property
    def operation_id(self) -> str:
        words = re.sub(r"[{}]", "", self.path).strip("/").replace("-", "_").split("/")
        return "_".join([self.method.lower(), *words])


def link(operation_id: str, **parameters: str) -> dict[str, Any]:
    """An OpenAPI link: ``parameters`` maps the target's parameter to a field of the answer."""
    return {
        "operationId": operation_id,
        "parameters": {name: f"$response.body#/{fld}" for name, fld in parameters.items()},
    }


def job_links(source: str = "job_id") -> dict[str, Any]:
    """Links from an answer naming a job to the job's own routes."""
    return {
        "GetJob": link("get_api_jobs_job_id", job_id=source),
        "GetJobResult": link("get_api_jobs_job_id_result", job_id=source),
        "GetJobLogs": link("get_api_jobs_job_id_logs", job_id=source),
        "GetJobDeliveries": link("get_api_jobs_job_id_deliveries", job_id=source),
        "CancelJob": link("post_api_jobs_job_id_cancel", job_id=source),
    }


def document(operations: list[Operation], *, title: str, version: str) -> dict[str, Any]:
    types: list[Any] = [ErrorBody]
    for op in operations:
        if op.body is not None:
            types.append(op.body)
        for kind in op.responses.values():
            if isinstance(kind, tuple):  # several bodies for one status: anyOf
                types.extend(kind)
            elif kind not in (None, SSE, TEXT, ANY_JSON):
                types.append(kind)
    unique = list(dict.fromkeys(types))
    schemas, components = msgspec.json.schema_components(unique, ref_template="#/components/schemas/{name}")
    schema_of = dict(zip(unique, schemas, strict=True))

    paths: dict[str, dict[str, Any]] = {}
    for op in operations:
        paths.setdefault(op.path, {})[op.method.lower()] = _operation(op, schema_of)
    return {
        "openapi": "3.1.0",
        "info": {"title": title, "version": version},
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "An API key as a bearer token.",
                },
                "apiKeyQuery": {"type": "apiKey", "in": "query", "name": "api_key"},
            },
        },
    }


def _operation(op: Operation, schema_of: dict[Any, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"operationId": op.operation_id, "summary": op.summary, "tags": [op.tag]}
    if op.description:
        out["description"] = op.description
    if op.deprecated:
        out["deprecated"] = True
    params: list[dict[str, Any]] = [
        {"name": name, "in": "path", "required": True, "schema": {"type": "string", "minLength": 1}}
        for name in re.findall(r"{(\w+)}", op.path)
    ]
    params.append(
        {
            "name": "X-Correlation-ID",
            "in": "header",
            "required": False,
            "description": "Echoed back; carried in logs and NATS headers.",
            "schema": {"type": "string"},
        }
    )
    params.extend(
        {
            "name": p.name,
            "in": p.where,
            "required": False,
            "description": p.description,
            "schema": {"type": "string"},
        }
        for p in op.params
    )
    out["parameters"] = params
    if op.body is not None:
        out["requestBody"] = {
            "required": op.body_required,
            "content": {"application/json": {"schema": schema_of[op.body]}},
        }
    if op.auth in ("api_key", "admin"):
        out["security"] = [{"bearer": []}, {"apiKeyQuery": []}]
    elif op.auth == "read":
        out["security"] = [{}, {"bearer": []}, {"apiKeyQuery": []}]
    responses: dict[str, Any] = {}
    for status, kind in sorted(op.responses.items()):
        responses[str(status)] = _response(status, kind, op, schema_of)
    out["responses"] = responses
    out.update(op.extra)
    return out


def _response(status: int, kind: Any, op: Operation, schema_of: dict[Any, Any]) -> dict[str, Any]:
    resp: dict[str, Any] = {"description": _REASONS.get(status, "Response")}
    if kind == SSE:
        resp["content"] = {SSE: {"schema": _SSE_EVENT}}
    elif kind == TEXT:
        resp["content"] = {TEXT: {"schema": {"type": "string"}}}
    elif isinstance(kind, tuple):
        resp["content"] = {"application/json": {"schema": {"anyOf": [schema_of[k] for k in kind]}}}
    elif kind == ANY_JSON:
        resp["content"] = {"application/json": {"schema": {"type": "object"}}}
    else:
        schema = schema_of[kind if kind is not None else ErrorBody]
        resp["content"] = {"application/json": {"schema": schema}}
    headers: dict[str, Any] = {"X-Correlation-ID": {"schema": {"type": "string"}}}
    if status in (429, 503):
        headers["Retry-After"] = {"schema": {"type": "string"}, "description": "Seconds to wait."}
    if op.auth in ("api_key", "read", "webhook") and status not in (404,):
        for name in _RATE_HEADERS:
            headers[name] = {"schema": {"type": "string"}}
    resp["headers"] = headers
    if status in op.links:
        resp["links"] = op.links[status]
    return resp
