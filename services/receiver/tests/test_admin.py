"""/api/admin/keys: guarded by ADMIN_API_KEY; keys are shown once and stored only as hashes."""

from __future__ import annotations

import hashlib

from conveyor.shared.contracts import subjects

ADMIN = {"Authorization": "Bearer admin-test-key"}


async def test_admin_api_needs_an_admin_key(receiver, new_key) -> None:
    resp = await receiver.http.get("/api/admin/keys")
    assert (resp.status_code, resp.json()["error"]) == (401, "missing_api_key")
    resp = await receiver.http.get("/api/admin/keys", headers={"Authorization": "Bearer wrong"})
    assert (resp.status_code, resp.json()["error"]) == (401, "invalid_api_key")
    key = await new_key(receiver)
    for method, path in (
        ("GET", "/api/admin/keys"),
        ("POST", "/api/admin/keys"),
        ("DELETE", "/api/admin/keys/x"),
    ):
        resp = await receiver.http.request(
            method, path, headers={"Authorization": f"Bearer {key}"}, json={"name": "n"}
        )
        assert (resp.status_code, resp.json()["error"]) == (403, "forbidden"), path


async def test_create_list_revoke(receiver, js) -> None:
    resp = await receiver.http.post(
        "/api/admin/keys", json={"name": "ci", "per_minute": 5, "per_day": 50}, headers=ADMIN
    )
    assert resp.status_code == 201
    created = resp.json()
    key = created["key"]
    assert key.startswith("cvk_") and created["prefix"] == key[:8]
    assert (created["per_minute"], created["per_day"], created["admin"]) == (5, 50, False)

    # Stored under its sha256, and the key itself appears nowhere in the bucket.
    kv = await js.key_value(subjects.KV_APIKEYS)
    digest = hashlib.sha256(key.encode()).hexdigest()
    assert await kv.keys() == [digest]
    assert key.encode() not in (await kv.get(digest)).value

    listed = (await receiver.http.get("/api/admin/keys", headers=ADMIN)).json()["keys"]
    assert [k["key_id"] for k in listed] == [created["key_id"]]
    assert "key" not in listed[0]

    job = {"agent": "dev", "prompt": "x"}
    assert (
        await receiver.http.post("/api/jobs", json=job, headers={"Authorization": f"Bearer {key}"})
    ).status_code == 202
    resp = await receiver.http.delete(f"/api/admin/keys/{created['key_id']}", headers=ADMIN)
    assert resp.status_code == 200 and resp.json()["revoked"] is True
    resp = await receiver.http.post("/api/jobs", json=job, headers={"Authorization": f"Bearer {key}"})
    assert (resp.status_code, resp.json()["error"]) == (401, "revoked_api_key")
    assert (await receiver.http.delete("/api/admin/keys/nope", headers=ADMIN)).status_code == 404


async def test_create_validates(receiver) -> None:
    resp = await receiver.http.post("/api/admin/keys", json={"name": ""}, headers=ADMIN)
    assert (resp.status_code, resp.json()["field"]) == (422, "name")
    resp = await receiver.http.post("/api/admin/keys", json={"name": "x", "per_minute": -1}, headers=ADMIN)
    assert (resp.status_code, resp.json()["field"]) == (422, "per_minute")


async def test_admin_created_admin_key_works(receiver) -> None:
    resp = await receiver.http.post("/api/admin/keys", json={"name": "ops", "admin": True}, headers=ADMIN)
    ops = {"Authorization": f"Bearer {resp.json()['key']}"}
    assert (await receiver.http.get("/api/admin/keys", headers=ops)).status_code == 200
