"""Dead letters through the API: each project sees and replays its own, another project's
answers 404 as a missing one, one without a project is an operator's (admin keys) alone."""

from __future__ import annotations

import json
from typing import Any

from nats.js import JetStreamContext

from conveyor.shared.bus import Bus, Delivery, dead_letter
from conveyor.shared.bus.streams import ensure_streams
from conveyor.shared.contracts import subjects

ADMIN = {"Authorization": "Bearer admin-test-key"}


async def _dead(js: JetStreamContext, conn: Bus, body: bytes, subject: str) -> None:
    """A message that failed at the deliver stage, dead-lettered by the shared code."""
    await js.publish(subject, body, stream=subjects.RESULTS)
    sub = await js.pull_subscribe(subject, durable=f"t-{abs(hash(subject))}", stream=subjects.RESULTS)
    (msg,) = await sub.fetch(1, timeout=5)
    await dead_letter(conn, Delivery(msg), stage="deliver", error="HTTP 500", attempts=5)
    await msg.ack()


async def test_dead_letters_belong_to_their_project(
    receiver: Any, js: JetStreamContext, nats_bus: Bus, make_project: Any, project_key: Any
) -> None:
    await ensure_streams(js, [subjects.RESULTS, subjects.DLQ])
    await make_project(receiver, "alpha")
    await make_project(receiver, "beta")
    alpha, beta = await project_key(receiver, "alpha"), await project_key(receiver, "beta")
    body_a = {"job_id": "job_a", "project": "alpha", "callback_url": "https://cb:s3cret@hooks.example.com/in"}
    await _dead(js, nats_bus, json.dumps(body_a).encode(), "results.job_a")
    await _dead(js, nats_bus, json.dumps({"job_id": "job_b", "project": "beta"}).encode(), "results.job_b")
    await _dead(js, nats_bus, b"not json at all", "results.job_x")

    async def listed(headers: dict[str, str]) -> dict[str, int]:
        resp = await receiver.http.get("/api/dead-letters", headers=headers)
        assert resp.status_code == 200, resp.text
        return {d["original_subject"]: d["seq"] for d in resp.json()["dead_letters"]}

    mine = await listed(alpha)
    assert list(mine) == ["results.job_a"]
    assert set(await listed(ADMIN)) == {"results.job_a", "results.job_b", "results.job_x"}
    theirs = (await listed(beta))["results.job_b"]
    operators = (await listed(ADMIN))["results.job_x"]

    for seq in (theirs, operators, 999_999):
        for method, path in (
            ("GET", f"/api/dead-letters/{seq}"),
            ("POST", f"/api/dead-letters/{seq}/replay"),
        ):
            resp = await receiver.http.request(method, path, headers=alpha)
            assert (resp.status_code, resp.json()["error"]) == (404, "dead_letter_not_found"), (seq, path)
    got = (await receiver.http.get(f"/api/dead-letters/{mine['results.job_a']}", headers=alpha)).json()
    assert (got["project"], got["stage"], got["error"]) == ("alpha", "deliver", "HTTP 500")
    assert json.loads(got["body"])["job_id"] == "job_a"
    assert json.loads(got["body"])["callback_url"] == "https://cb:***@hooks.example.com/in"  # not its secret

    # Replaying one's own: back on its subject, gone from the DLQ; a read-only key may not.
    reader = await project_key(receiver, "alpha", read_only=True)
    refused = await receiver.http.post(f"/api/dead-letters/{mine['results.job_a']}/replay", headers=reader)
    assert refused.status_code == 403
    before = (await js.stream_info(subjects.RESULTS, subjects_filter="results.job_a")).state.messages
    resp = await receiver.http.post(f"/api/dead-letters/{mine['results.job_a']}/replay", headers=alpha)
    assert resp.status_code == 202 and resp.json()["replayed"] is True
    after = (await js.stream_info(subjects.RESULTS, subjects_filter="results.job_a")).state.messages
    assert after == before + 1
    assert await listed(alpha) == {}
