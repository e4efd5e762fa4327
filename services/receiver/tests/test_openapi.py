"""/openapi.json: generated from the handlers' msgspec types, and the live receiver checked
against it with schemathesis (bounded examples): no 5xx, every response as documented."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx

from conveyor.shared.testing.procs import ServiceProcess, service_env

ADMIN = "admin-test-key"  # the receiver fixture's ADMIN_API_KEY too
EXAMPLES_PER_OPERATION = 12


async def test_document_describes_every_route(receiver) -> None:
    doc = (await receiver.http.get("/openapi.json")).json()
    assert doc["openapi"] == "3.1.0"
    schemas = doc["components"]["schemas"]
    assert {"JobCreate", "Accepted", "JobRecord", "AgentResult", "ErrorBody", "KeyCreate"} <= set(schemas)
    assert set(schemas["JobCreate"]["required"]) == {"agent", "prompt"}
    assert schemas["JobCreate"]["properties"]["prompt"]["maxLength"] == 5000
    # The callback contract keeps its camelCase names in the document too.
    assert {"jobId", "agentId", "executionTime"} <= set(schemas["AgentResult"]["properties"])
    documented = {(m.upper(), p) for p, ops in doc["paths"].items() for m in ops}
    served = {
        (route.method, route.resource.canonical)
        for route in receiver.rt.app.router.routes()
        if route.resource is not None and route.method != "HEAD"
    }
    assert served <= documented, served - documented
    job_create = doc["paths"]["/api/jobs"]["post"]
    assert job_create["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/JobCreate"
    }
    assert set(job_create["responses"]) == {
        "202",
        "400",
        "401",
        "402",  # budget_exceeded
        "403",
        "404",
        "408",
        "413",
        "422",
        "429",
        "503",
    }
    # ?api_key= is documented (and taken) only where EventSource cannot send a header.
    with_query_key = {
        f"{m.upper()} {p}"
        for p, ops in doc["paths"].items()
        for m, op in ops.items()
        if any(q["name"] == "api_key" and q["in"] == "query" for q in op["parameters"])
        or any("apiKeyQuery" in s for s in op.get("security", []))
    }
    assert with_query_key == {"GET /api/jobs/{job_id}/stream", "GET /api/deployments/{deployment_id}/stream"}


async def test_links_lead_from_an_answer_to_the_routes_of_what_it_names(receiver) -> None:
    """Each link names an operation that exists, one of its path parameters, and a field of the
    answer it starts from (what stateful fuzzing and clients follow)."""
    doc = (await receiver.http.get("/openapi.json")).json()
    schemas = doc["components"]["schemas"]
    ops = {op["operationId"]: (path, op) for path, item in doc["paths"].items() for op in item.values()}

    def fields(schema: dict[str, Any]) -> set[str]:
        if "$ref" in schema:
            return fields(schemas[schema["$ref"].rsplit("/", 1)[1]])
        if "anyOf" in schema:  # a field any of the bodies has
            return set().union(*(fields(s) for s in schema["anyOf"]))
        return set(schema.get("properties", {}))

    followed = set()
    for path, item in doc["paths"].items():
        for method, op in item.items():
            for status, resp in op["responses"].items():
                for name, target in resp.get("links", {}).items():
                    assert target["operationId"] in ops, (path, method, name)
                    target_path, target_op = ops[target["operationId"]]
                    path_params = {p["name"] for p in target_op["parameters"] if p["in"] == "path"}
                    body = fields(resp["content"]["application/json"]["schema"])
                    for param, expression in target["parameters"].items():
                        assert param in path_params, (name, param)
                        assert expression.removeprefix("$response.body#/") in body, (name, expression)
                    followed.add((method.upper(), path, status, target_path))
    assert {
        ("POST", "/api/jobs", "202", "/api/jobs/{job_id}"),
        ("POST", "/api/webhooks/{source}", "202", "/api/jobs/{job_id}"),
        ("POST", "/api/schedules", "201", "/api/schedules/{schedule_id}"),
        ("POST", "/api/admin/keys", "201", "/api/admin/keys/{key_id}"),
        ("POST", "/api/webhooks/test", "202", "/api/webhooks/test/{test_id}"),
    } <= followed


async def test_event_streams_match_their_schema_and_optional_bodies_are_optional(start_receiver) -> None:
    """What the fuzzer found: each event of GET /api/jobs/{id}/stream is an object (event, data,
    id), which a schema of type string refused; and POST /api/sites/{id}/preview, documented as
    needing a body, takes none (the stored draft)."""
    import schemathesis
    from schemathesis.specs.openapi.checks import response_schema_conformance

    async with start_receiver(sse_max_s=0.5) as r:
        auth = {"Authorization": f"Bearer {ADMIN}"}
        doc = (await r.http.get("/openapi.json")).json()
        preview = doc["paths"]["/api/sites/{site_id}/preview"]["post"]
        assert preview["requestBody"]["required"] is False
        assert doc["paths"]["/api/jobs"]["post"]["requestBody"]["required"] is True

        job = await r.http.post("/api/jobs", json={"agent": "dev", "prompt": "x"}, headers=auth)
        assert job.status_code == 202, job.text
        stream = await r.http.get(f"/api/jobs/{job.json()['job_id']}/stream", headers=auth)
        assert stream.status_code == 200 and "event: status" in stream.text
        operation = schemathesis.openapi.from_dict(doc)["/api/jobs/{job_id}/stream"]["GET"]
        case = operation.Case(path_parameters={"job_id": job.json()["job_id"]})
        case.validate_response(stream, checks=[response_schema_conformance])


def run_schemathesis(base_url: str) -> list[str]:
    """Every operation, EXAMPLES_PER_OPERATION generated cases each, deterministic."""
    import schemathesis
    from hypothesis import HealthCheck, given, settings
    from schemathesis.checks import not_a_server_error
    from schemathesis.specs.openapi.checks import (
        content_type_conformance,
        response_headers_conformance,
        response_schema_conformance,
        status_code_conformance,
    )

    checks = [
        not_a_server_error,
        status_code_conformance,
        content_type_conformance,
        response_headers_conformance,
        response_schema_conformance,
    ]
    schema = schemathesis.openapi.from_url(f"{base_url}/openapi.json")
    tested: list[str] = []
    for result in schema.get_all_operations():
        operation = result.ok()
        strategy = operation.as_strategy(headers={"Authorization": f"Bearer {ADMIN}"})

        @given(case=strategy)
        @settings(
            max_examples=EXAMPLES_PER_OPERATION,
            deadline=None,
            database=None,
            derandomize=True,
            suppress_health_check=list(HealthCheck),
        )
        def check(case: Any) -> None:
            case.call_and_validate(base_url=base_url, checks=checks, timeout=10)

        check()
        tested.append(operation.label)
    return tested


async def test_live_receiver_matches_its_document(nats_url: str, tmp_path: Path) -> None:
    env = service_env(
        nats_url,
        LOVABLE_WEBHOOK_SECRET="lovable-test-secret",
        ADMIN_API_KEY=ADMIN,
        TEST_SEND_WAIT_S="0.2",
        LOG_LEVEL="WARNING",
    )
    proc = ServiceProcess("receiver", env, tmp_path / "receiver.log")
    await proc.start()
    try:
        # A real job, so reads by id have something to find when the generator picks its id.
        async with httpx.AsyncClient(base_url=proc.url) as http:
            resp = await http.post(
                "/api/jobs",
                json={"agent": "dev", "prompt": "x"},
                headers={"Authorization": f"Bearer {ADMIN}"},
            )
            assert resp.status_code == 202
        tested = await asyncio.to_thread(run_schemathesis, proc.url)
        assert "POST /api/webhooks/{source}" in tested and "POST /api/jobs" in tested
        assert len(tested) >= 20
        assert "Traceback" not in proc.tail(400)
    finally:
        await proc.stop()
