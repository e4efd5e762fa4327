"""The sites and deployments API against a real receiver and nats-server.

The deployer is not running here: where a test needs a finished deployment it moves the
record on itself, through the same store the deployer uses.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import httpx
import msgspec
import pytest
from nats.js import JetStreamContext

from conveyor.shared.contracts import subjects
from conveyor.shared.contracts.deploys import DeployRequest
from conveyor.shared.domain.deploy_store import DeployStore
from conveyor.shared.runtime.config import Secret
from conveyor.shared.testing.fixtures import eventually
from conveyor.shared.testing.nats_server import NatsServer

ADMIN = "sites-admin-key"
AUTH = {"Authorization": f"Bearer {ADMIN}"}


def config(slug: str = "acme", headline: str = "Fresh bread, every morning") -> dict[str, Any]:
    return {
        "name": "Acme Bakery",
        "slug": slug,
        "theme": {"preset": "light", "primary_color": "#b45309"},
        "sections": {
            "hero": {"headline": headline, "cta_text": "Visit", "cta_url": "#contact"},
            "features": {"items": [{"title": "Sourdough", "description": "48-hour doughs"}]},
            "about": {"body": "A family bakery."},
            "testimonials": {"items": [{"quote": "Best rye in town.", "author": "Mira"}]},
            "pricing": {"plans": [{"name": "Club", "price": "$19", "period": "month"}]},
            "contact": {"email": "hello@acme.example"},
            "footer": {"text": "Acme Bakery"},
        },
    }


@pytest.fixture
async def site_receiver(start_receiver: Any) -> AsyncIterator[Any]:
    async with start_receiver(admin_api_key=Secret(ADMIN)) as r:
        r.http.headers.update(AUTH)
        yield r


@pytest.fixture
def api(site_receiver: Any) -> httpx.AsyncClient:
    return site_receiver.http


@pytest.fixture
async def store(js: JetStreamContext) -> DeployStore:
    return DeployStore(js, await js.key_value(subjects.KV_SITES), await js.key_value(subjects.KV_DEPLOYMENTS))


async def requested(js: JetStreamContext, site: str) -> list[tuple[DeployRequest, str]]:
    """Every deploy request published for ``site``, with its Nats-Msg-Id."""
    out = []
    sub = await js.subscribe(subjects.deploy_requested(site), stream=subjects.DEPLOYS, ordered_consumer=True)
    with contextlib.suppress(Exception):
        while True:
            msg = await sub.next_msg(timeout=0.5)
            out.append((msgspec.json.decode(msg.data, type=DeployRequest), msg.headers[subjects.MSG_ID]))
    await sub.unsubscribe()
    return out


async def succeed(store: DeployStore, deployment_id: str, artifact: str | None = None) -> None:
    """Do what the deployer does at the end of a successful run."""
    await store.update_deployment(
        deployment_id,
        lambda r: msgspec.structs.replace(
            r,
            status="success",
            external={"artifact": artifact or deployment_id},
            url="http://acme.localhost/",
        ),
    )


async def test_create_read_and_update_a_site(api: httpx.AsyncClient) -> None:
    r = await api.post("/api/sites", json={"config": config(), "callback_url": "https://owner.example/hook"})
    assert r.status_code == 201, r.text
    assert r.headers["Location"] == "/api/sites/acme"
    site = r.json()["site"]
    assert (
        site["site_id"] == "acme"
        and site["draft"]["sections"]["hero"]["headline"] == "Fresh bread, every morning"
    )
    assert site["callback_url"] == "https://owner.example/hook"

    r = await api.post("/api/sites", json={"config": config(headline="New headline")})
    assert r.status_code == 200
    got = (await api.get("/api/sites/acme")).json()["site"]
    assert got["draft"]["sections"]["hero"]["headline"] == "New headline"
    assert got["callback_url"] == "https://owner.example/hook"  # kept when not given again
    assert (await api.get("/api/sites/nope")).status_code == 404


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (lambda c: c.update(slug="Not A Slug"), "config.slug"),
        (lambda c: c.update(slug="two--dashes"), "config.slug"),
        # Found by `make fuzz`: a NUL in the name failed the deployment's git commit after a 202.
        (lambda c: c.update(name="Acme\x00Bakery"), "config.name"),
        (lambda c: c.update(name="Acme\n"), "config.name"),
        (lambda c: c["sections"]["hero"].update(headline=""), "config.sections.hero.headline"),
        (
            lambda c: c["sections"]["hero"].update(cta_url="javascript:alert(1)"),
            "config.sections.hero.cta_url",
        ),
        (
            lambda c: c["sections"]["features"]["items"].append({"title": ""}),
            "config.sections.features.items[1].title",
        ),
        (lambda c: c["sections"]["pricing"].update(plans=[]), "config.sections.pricing.plans"),
        (lambda c: c["theme"].update(primary_color="red"), "config.theme.primary_color"),
        (lambda c: c["sections"]["hero"].update(headine="typo"), "config.sections.hero.headine"),
        (lambda c: c["sections"].pop("hero"), "config.sections.hero"),
        (lambda c: c["sections"].update(contact={}), "config.sections.contact"),
    ],
)
async def test_invalid_configs_name_the_field(api: httpx.AsyncClient, change: Any, field: str) -> None:
    body = config()
    change(body)
    r = await api.post("/api/sites", json={"config": body})
    assert r.status_code == 422, r.text
    assert r.json()["error"] == "invalid_config" and r.json()["field"] == field, r.json()


async def test_bad_requests(api: httpx.AsyncClient) -> None:
    r = await api.post("/api/sites", content=b"{not json")
    assert r.status_code == 400 and r.json()["error"] == "invalid_json"
    r = await api.post("/api/sites", json={"config": config(), "callback_url": "ftp://x"})
    assert r.status_code == 422 and r.json()["field"] == "callback_url"
    r = await api.post("/api/sites", content=b"")
    assert r.status_code == 400
    async with httpx.AsyncClient(base_url=str(api.base_url)) as anon:
        r = await anon.post("/api/sites", json={"config": config()})
        assert r.status_code == 401 and r.json()["error"] == "missing_api_key"


async def test_publish_records_and_publishes_once(api: httpx.AsyncClient, js: JetStreamContext) -> None:
    r = await api.post("/api/sites/acme/publish")
    assert r.status_code == 404 and r.json()["error"] == "not_found"

    await api.post("/api/sites", json={"config": config()})
    r = await api.post("/api/sites/acme/publish")
    assert r.status_code == 202, r.text
    body = r.json()
    dep = body["deployment_id"]
    assert body["status"] == "pending" and body["duplicate"] is False and body["kind"] == "publish"
    assert r.headers["Location"] == f"/api/deployments/{dep}"
    assert body["stream_url"].endswith(f"/api/deployments/{dep}/stream")

    again = await api.post("/api/sites/acme/publish")
    assert (
        again.status_code == 202
        and again.json()["deployment_id"] == dep
        and again.json()["duplicate"] is True
    )

    got = (await api.get(f"/api/deployments/{dep}")).json()
    assert got["status"] == "pending" and got["site_id"] == "acme" and got["config"]["slug"] == "acme"
    msgs = await requested(js, "acme")
    assert [(m.deployment_id, m.kind) for m, _ in msgs] == [(dep, "publish")]
    assert msgs[0][1] == f"deploy-{dep}"
    site = (await api.get("/api/sites/acme")).json()["site"]
    assert site["latest_request"] == dep and site["deployments"] == [dep]


async def test_simultaneous_publishes_answer_one_deployment(
    api: httpx.AsyncClient, js: JetStreamContext
) -> None:
    await api.post("/api/sites", json={"config": config()})
    answers = await asyncio.gather(*(api.post("/api/sites/acme/publish") for _ in range(6)))
    assert {a.status_code for a in answers} == {202}
    assert len({a.json()["deployment_id"] for a in answers}) == 1
    assert len(await requested(js, "acme")) == 1


async def test_preview_and_rollback(api: httpx.AsyncClient, store: DeployStore) -> None:
    await api.post("/api/sites", json={"config": config()})
    first = (await api.post("/api/sites/acme/publish")).json()["deployment_id"]

    r = await api.post("/api/sites/acme/rollback", json={"deployment_id": first})
    assert r.status_code == 409, r.text  # not successful (yet)
    await succeed(store, first)

    pv = await api.post("/api/sites/acme/preview", json={"config": config(headline="Try this")})
    assert pv.status_code == 202 and pv.json()["kind"] == "preview"
    rec = (await api.get(f"/api/deployments/{pv.json()['deployment_id']}")).json()
    assert rec["config"]["sections"]["hero"]["headline"] == "Try this"
    site = (await api.get("/api/sites/acme")).json()["site"]
    assert site["latest_request"] == first  # a preview never becomes the live request
    assert site["draft"]["sections"]["hero"]["headline"] == "Fresh bread, every morning"
    r = await api.post("/api/sites/acme/preview", json={"config": config(slug="other")})
    assert r.status_code == 422 and r.json()["field"] == "slug"

    await api.post("/api/sites", json={"config": config(headline="Second")})
    second = (await api.post("/api/sites/acme/publish")).json()["deployment_id"]
    await succeed(store, second)

    r = await api.post("/api/sites/acme/rollback", json={"deployment_id": first})
    assert r.status_code == 202, r.text
    rb = (await api.get(f"/api/deployments/{r.json()['deployment_id']}")).json()
    assert rb["kind"] == "rollback" and rb["rollback_of"] == first
    assert rb["config"]["sections"]["hero"]["headline"] == "Fresh bread, every morning"

    assert (await api.post("/api/sites/acme/rollback", json={})).json()["field"] == "deployment_id"
    r = await api.post("/api/sites/acme/rollback", json={"deployment_id": "d0000000000000000"})
    assert r.status_code == 404 and r.json()["field"] == "deployment_id"

    listed = (await api.get("/api/sites/acme/deployments")).json()["deployments"]
    assert [d["kind"] for d in listed] == ["rollback", "publish", "preview", "publish"]


async def test_deployment_reads_and_cancel(api: httpx.AsyncClient, store: DeployStore) -> None:
    assert (await api.get("/api/deployments/d0123456789abcdef")).status_code == 404
    assert (await api.get("/api/deployments/not-an-id")).status_code == 404
    await api.post("/api/sites", json={"config": config()})
    dep = (await api.post("/api/sites/acme/publish")).json()["deployment_id"]
    r = await api.post(f"/api/deployments/{dep}/cancel")
    assert r.status_code == 202 and r.json()["cancel_requested"] is True
    await succeed(store, dep)
    r = await api.post(f"/api/deployments/{dep}/cancel")
    assert r.status_code == 409 and r.json()["error"] == "conflict"


async def test_stream_follows_the_deployment_until_it_finishes(
    api: httpx.AsyncClient, store: DeployStore
) -> None:
    await api.post("/api/sites", json={"config": config()})
    dep = (await api.post("/api/sites/acme/publish")).json()["deployment_id"]
    events: list[tuple[int, str]] = []

    async def read() -> None:
        async with api.stream("GET", f"/api/deployments/{dep}/stream") as resp:
            assert resp.headers["content-type"].startswith("text/event-stream")
            event_id = 0
            async for line in resp.aiter_lines():
                if line.startswith("id: "):
                    event_id = int(line[4:])
                elif line.startswith("data: "):
                    events.append((event_id, msgspec.json.decode(line[6:])["status"]))

    reader = asyncio.create_task(read())
    await eventually(lambda: _has(events, "pending"))
    for status in ("creating_repo", "building", "success"):
        await store.update_deployment(dep, lambda r, s=status: msgspec.structs.replace(r, status=s))
        await eventually(lambda s=status: _has(events, s))
    await asyncio.wait_for(reader, 5)  # closed by the server after the final status
    assert [s for _, s in events] == ["pending", "creating_repo", "building", "success"]

    # Resume: only what came after Last-Event-ID.
    resumed = await api.get(f"/api/deployments/{dep}/stream", headers={"Last-Event-ID": str(events[-2][0])})
    assert [line for line in resumed.text.splitlines() if line.startswith("event:")] == ["event: status"]
    assert '"status":"success"' in resumed.text


async def _has(events: list[tuple[int, str]], status: str) -> None:
    assert status in [s for _, s in events]


async def test_sites_belong_to_their_project(
    api: httpx.AsyncClient, site_receiver: Any, make_project: Any, project_key: Any
) -> None:
    r = site_receiver
    for project in ("alpha", "beta"):
        await make_project(r, project)
    alice, bob = await project_key(r, "alpha"), await project_key(r, "beta")
    assert (await api.post("/api/sites", json={"config": config()}, headers=alice)).status_code == 201
    # Another project's site is a missing one, for every verb.
    assert (await api.get("/api/sites/acme", headers=bob)).status_code == 404
    assert (await api.post("/api/sites/acme/publish", headers=bob)).status_code == 404
    # Saving over it does not move it: the slug is taken.
    r2 = await api.post("/api/sites", json={"config": config(headline="mine now")}, headers=bob)
    assert (r2.status_code, r2.json()["error"]) == (409, "slug_taken")
    dep = (await api.post("/api/sites/acme/publish", headers=alice)).json()["deployment_id"]
    assert (await api.get(f"/api/deployments/{dep}", headers=bob)).status_code == 404
    assert (await api.post(f"/api/deployments/{dep}/cancel", headers=bob)).status_code == 404
    assert (await api.get(f"/api/deployments/{dep}")).status_code == 200  # the admin key sees every site
    # Lists show the scope's sites only.
    await api.post("/api/sites", json={"config": config(slug="beta-shop")}, headers=bob)
    assert [x["site_id"] for x in (await api.get("/api/sites", headers=alice)).json()["sites"]] == ["acme"]
    assert [x["site_id"] for x in (await api.get("/api/sites", headers=bob)).json()["sites"]] == ["beta-shop"]
    assert {x["site_id"] for x in (await api.get("/api/sites")).json()["sites"]} == {"acme", "beta-shop"}
    # A read-only key of the project reads it and may not change it.
    reader = await project_key(r, "alpha", read_only=True)
    assert (await api.get("/api/sites/acme", headers=reader)).status_code == 200
    assert (await api.post("/api/sites/acme/publish", headers=reader)).status_code == 403


async def test_a_key_cannot_take_over_an_admins_site(
    api: httpx.AsyncClient, site_receiver: Any, make_project: Any, project_key: Any
) -> None:
    """Once: an ordinary key saved a draft over a site an admin key made, published it, and from
    then on owned it (the admin's other keys got 403)."""
    await make_project(site_receiver, "other")
    intruder = await project_key(site_receiver, "other")
    assert (await api.post("/api/sites", json={"config": config()})).status_code == 201  # admin, default
    r = await api.post("/api/sites", json={"config": config(headline="taken over")}, headers=intruder)
    assert r.status_code == 409
    assert (await api.post("/api/sites/acme/publish", headers=intruder)).status_code == 404
    site = (await api.get("/api/sites/acme")).json()["site"]
    assert site["project"] == "default" and site["draft"]["sections"]["hero"]["headline"] != "taken over"
    default_key = {
        "Authorization": f"Bearer {(await api.post('/api/admin/keys', json={'name': 'd'})).json()['key']}"
    }
    assert (await api.get("/api/sites/acme", headers=default_key)).status_code == 200


async def test_publish_without_nats_is_503(start_receiver: Any, nats_server: NatsServer) -> None:
    async with start_receiver(admin_api_key=Secret(ADMIN)) as r:
        r.http.headers.update(AUTH)
        assert (await r.http.post("/api/sites", json={"config": config()})).status_code == 201
        await nats_server.stop()

        async def refused() -> None:
            resp = await r.http.post("/api/sites/acme/publish")
            assert resp.status_code == 503 and "Retry-After" in resp.headers, resp.text

        await eventually(refused)
