"""/openapi.json: generated from the handlers' msgspec types, and the live receiver checked
against it with schemathesis (bounded examples): no 5xx, every response as documented."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx

from conveyor.shared.testing.procs import ServiceProcess, service_env

ADMIN = "admin-test-key"
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
    assert set(job_create["responses"]) == {"202", "400", "401", "408", "413", "422", "429", "503"}
    # ?api_key= is documented (and taken) only where EventSource cannot send a header.
    with_query_key = {
        f"{m.upper()} {p}"
        for p, ops in doc["paths"].items()
        for m, op in ops.items()
        if any(q["name"] == "api_key" and q["in"] == "query" for q in op["parameters"])
        or any("apiKeyQuery" in s for s in op.get("security", []))
    }
    assert with_query_key == {"GET /api/jobs/{job_id}/stream", "GET /api/deployments/{deployment_id}/stream"}


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
