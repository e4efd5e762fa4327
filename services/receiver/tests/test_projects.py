"""Organisations, projects and scoped keys through the admin API: secrets sealed at rest, each
scope seeing exactly its own, another organisation's project answering 404."""

from __future__ import annotations

import pytest

from conveyor.shared.contracts import subjects
from conveyor.shared.domain.sealing import Sealer, SealingError, new_key_setting
from conveyor.shared.runtime.config import Secret

ADMIN = {"Authorization": "Bearer admin-test-key"}
HOOK_SECRET = "project-a-webhook-secret-0123456789"
OUTBOUND = "lovable-api-key-for-project-a-xyz"


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture
async def tenants(start_receiver):
    async with start_receiver(conveyor_secret_keys=Secret(new_key_setting())) as r:
        yield r


async def _org(r, org_id: str) -> None:
    resp = await r.http.post("/api/admin/orgs", json={"org_id": org_id, "name": org_id}, headers=ADMIN)
    assert resp.status_code == 201, resp.text


async def _project(r, project_id: str, org_id: str, headers=ADMIN, **fields) -> dict:
    body = {"project_id": project_id, "org_id": org_id, "name": project_id, **fields}
    resp = await r.http.post("/api/admin/projects", json=body, headers=headers)
    assert resp.status_code == 201, resp.text
    return resp.json()


async def _key(r, headers=ADMIN, **scope) -> str:
    resp = await r.http.post("/api/admin/keys", json={"name": "k", **scope}, headers=headers)
    assert resp.status_code == 201, resp.text
    return resp.json()["key"]


async def test_project_secrets_are_sealed_and_never_shown(tenants, js) -> None:
    await _org(tenants, "acme")
    created = await _project(
        tenants,
        "shop",
        "acme",
        external_ids=["lovable:lp_123"],
        webhook_secrets={"lovable": [HOOK_SECRET]},
        outbound_credential=OUTBOUND,
        callback_url="https://hooks.example.com/conveyor",
    )
    generated = created["callback_secret"]
    assert generated.startswith("whsec_")
    kinds = sorted((s["kind"], s.get("source")) for s in created["secrets"])
    assert kinds == [("callback", None), ("outbound", None), ("webhook", "lovable")]

    raw = (await (await js.key_value(subjects.KV_PROJECTS)).get("shop")).value
    for plaintext in (HOOK_SECRET, OUTBOUND, generated, generated.removeprefix("whsec_")):
        assert plaintext.encode() not in raw
    shown = (await tenants.http.get("/api/admin/projects/shop", headers=ADMIN)).text
    for plaintext in (HOOK_SECRET, OUTBOUND, generated):
        assert plaintext not in shown
    assert "callback_secret" not in shown


async def test_secrets_need_a_sealing_key(start_receiver) -> None:
    async with start_receiver(conveyor_secret_keys=None) as r:
        resp = await r.http.post(
            "/api/admin/projects", json={"org_id": "default", "name": "x"}, headers=ADMIN
        )
        assert (resp.status_code, resp.json()["error"]) == (409, "secrets_unavailable")


async def test_each_scope_sees_its_own(tenants) -> None:
    await _org(tenants, "acme")
    await _org(tenants, "globex")
    await _project(tenants, "shop", "acme")
    await _project(tenants, "blog", "acme")
    await _project(tenants, "rival", "globex")

    org_key = await _key(tenants, scope="org", org_id="acme")
    project_key = await _key(tenants, project_id="shop")

    def ids(resp) -> set[str]:
        assert resp.status_code == 200, resp.text
        return {p["project_id"] for p in resp.json()["projects"]}

    assert ids(await tenants.http.get("/api/admin/projects", headers=ADMIN)) == {
        "default",
        "shop",
        "blog",
        "rival",
    }
    assert ids(await tenants.http.get("/api/admin/projects", headers=bearer(org_key))) == {"shop", "blog"}
    resp = await tenants.http.get("/api/admin/projects/rival", headers=bearer(org_key))
    assert (resp.status_code, resp.json()["error"]) == (404, "project_not_found")
    resp = await tenants.http.get("/api/admin/projects", headers=bearer(project_key))
    assert (resp.status_code, resp.json()["error"]) == (403, "forbidden")

    # An org key makes projects and keys in its own organisation only.
    await _project(tenants, "docs", "acme", headers=bearer(org_key))
    resp = await tenants.http.post(
        "/api/admin/projects", json={"org_id": "globex", "name": "x"}, headers=bearer(org_key)
    )
    assert resp.status_code == 404
    await _key(tenants, headers=bearer(org_key), project_id="docs")
    resp = await tenants.http.post(
        "/api/admin/keys", json={"name": "k", "project_id": "rival"}, headers=bearer(org_key)
    )
    assert resp.status_code == 404
    resp = await tenants.http.post(
        "/api/admin/keys", json={"name": "k", "admin": True}, headers=bearer(org_key)
    )
    assert resp.status_code == 403
    listed = (await tenants.http.get("/api/admin/keys", headers=bearer(org_key))).json()["keys"]
    assert {(k["scope"], k["org_id"]) for k in listed} == {("org", "acme"), ("project", "acme")}


async def test_project_changes_and_rotation(tenants) -> None:
    await _org(tenants, "acme")
    await _project(tenants, "shop", "acme", webhook_secrets={"lovable": [HOOK_SECRET]})
    resp = await tenants.http.patch(
        "/api/admin/projects/shop", json={"enabled": False, "max_running": 4}, headers=ADMIN
    )
    assert resp.status_code == 200 and (resp.json()["enabled"], resp.json()["max_running"]) == (False, 4)
    added = await tenants.http.post(
        "/api/admin/projects/shop/secrets",
        json={"kind": "webhook", "source": "lovable", "value": "the-next-webhook-secret-0123"},
        headers=ADMIN,
    )
    assert added.status_code == 201 and added.json()["value"] is None
    secrets = (await tenants.http.get("/api/admin/projects/shop", headers=ADMIN)).json()["secrets"]
    old = next(s for s in secrets if s["kind"] == "webhook" and s["id"] != added.json()["id"])
    assert (
        await tenants.http.delete(f"/api/admin/projects/shop/secrets/{old['id']}", headers=ADMIN)
    ).status_code == 204
    webhook = [
        s
        for s in (await tenants.http.get("/api/admin/projects/shop", headers=ADMIN)).json()["secrets"]
        if s["kind"] == "webhook"
    ]
    assert [s["id"] for s in webhook] == [added.json()["id"]]
    weak = await tenants.http.post(
        "/api/admin/projects/shop/secrets",
        json={"kind": "webhook", "source": "lovable", "value": "short"},
        headers=ADMIN,
    )
    assert weak.status_code == 422 and weak.json()["field"] == "webhook_secrets.lovable"
    taken = await tenants.http.post(
        "/api/admin/projects",
        json={"org_id": "acme", "name": "x", "external_ids": ["lovable:a"]},
        headers=ADMIN,
    )
    assert taken.status_code == 201
    again = await tenants.http.patch(
        "/api/admin/projects/shop", json={"external_ids": ["lovable:a"]}, headers=ADMIN
    )
    assert (again.status_code, again.json()["field"]) == (422, "external_ids")
    # Credentials go in the sealed outbound credential, never in a URL the record keeps in clear.
    creds = await tenants.http.patch(
        "/api/admin/projects/shop",
        json={"callback_urls": {"lovable": "https://u:p@hooks.example.com/x"}},
        headers=ADMIN,
    )
    assert (creds.status_code, creds.json()["field"]) == (422, "callback_urls.lovable")
    nobody = await tenants.http.post(
        "/api/admin/keys", json={"name": "k", "scope": "org", "org_id": "nope"}, headers=ADMIN
    )
    assert (nobody.status_code, nobody.json()["error"]) == (404, "org_not_found")
    default = await tenants.http.patch("/api/admin/projects/default", json={"enabled": False}, headers=ADMIN)
    assert (default.status_code, default.json()["error"]) == (409, "defined_by_settings")


def test_sealed_values_are_bound_to_their_place_and_key() -> None:
    old_setting, new_setting = new_key_setting("old"), new_key_setting("new")
    old = Sealer.parse(old_setting)
    value = old.seal("s3cret-value", "project/a/callback")
    assert old.open(value, "project/a/callback") == "s3cret-value"
    with pytest.raises(SealingError):
        old.open(value, "project/b/callback")  # copied into another project's record
    # Rotation: the new key first seals, the old one still opens; reseal moves a value over.
    both = Sealer.parse(f"{new_setting},{old_setting}")
    moved = both.reseal(value, "project/a/callback")
    assert moved.kid == "new" and both.open(moved, "project/a/callback") == "s3cret-value"
    with pytest.raises(SealingError):
        Sealer.parse(new_setting).open(value, "project/a/callback")  # the old key is gone


async def test_a_sealing_key_is_rotated_with_reseal(start_receiver, js, lovable) -> None:
    old, new = new_key_setting("old"), new_key_setting("new")
    async with start_receiver(conveyor_secret_keys=Secret(old)) as r:
        await _project(
            r,
            "shop",
            "default",
            external_ids=["lovable:lp-shop"],
            webhook_secrets={"lovable": [HOOK_SECRET]},
            outbound_credential=OUTBOUND,
        )
    kv = await js.key_value(subjects.KV_PROJECTS)

    def kids(raw: bytes) -> set[str]:
        import json

        p = json.loads(raw)
        found = [s["kid"] for items in p["webhook_secrets"].values() for s in items]
        return {*found, *(s["kid"] for s in p["callback_secrets"]), p["outbound_credential"]["kid"]}

    assert kids((await kv.get("shop")).value) == {"old"}
    async with start_receiver(conveyor_secret_keys=Secret(f"{new},{old}")) as r:
        resp = await r.http.post("/api/admin/reseal", headers=ADMIN)
        assert resp.status_code == 200 and resp.json() == {"key_id": "new", "projects": ["shop"]}
        again = await r.http.post("/api/admin/reseal", headers=ADMIN)
        assert again.json()["projects"] == []  # nothing left under the old key
    assert kids((await kv.get("shop")).value) == {"new"}
    # With the old key gone, the project's secrets still open: the webhook verifies.
    async with start_receiver(conveyor_secret_keys=Secret(new)) as r:
        body = lovable.body(project_id="lp-shop")
        resp = await r.http.post(
            "/api/webhooks/lovable", content=body, headers=lovable.headers(body, secret=HOOK_SECRET)
        )
        assert resp.status_code == 202, resp.text
