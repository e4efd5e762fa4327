"""A project's GitHub and Slack integrations: set, listed without the credential, sealed in KV
(no plaintext), rotated with reseal, another project's invisible; the OAuth flows of GitHub
(web flow and App installation) and Slack against local fakes that follow the documented
shapes, and forged, expired and replayed states refused."""

from __future__ import annotations

import asyncio
import base64
import json
import re
import shlex
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import nats.js.errors
import pytest

from conveyor.receiver.integrations_api import _State, sign_state
from conveyor.shared.contracts import subjects
from conveyor.shared.domain.connections import connection_decoder, open_secret
from conveyor.shared.domain.sealing import Sealer, new_key_setting
from conveyor.shared.runtime.config import Secret
from conveyor.shared.testing.fake_oauth import FakeOAuth, new_rsa_key

ADMIN = {"Authorization": "Bearer admin-test-key"}
GITHUB_TOKEN = "ghp_projectShopToken0123456789abcdefABCD"
SLACK_TOKEN = "xoxb-1111-2222-projectShopSlackToken"
STATE_SECRET = "oauth-state-secret-for-tests-0123456789"
DOCS = Path(__file__).parents[3] / "docs" / "agents.md"


@pytest.fixture
async def fake() -> AsyncIterator[FakeOAuth]:
    f = await FakeOAuth().start()
    try:
        yield f
    finally:
        await f.stop()


def _oauth_settings(fake: FakeOAuth, **extra: Any) -> dict[str, Any]:
    return {
        "oauth_state_secret": Secret(STATE_SECRET),
        "github_url": fake.url,
        "github_api_url": fake.url,
        "github_client_id": fake.github_client_id,
        "github_client_secret": Secret(fake.github_client_secret),
        "slack_url": fake.url,
        "slack_api_url": f"{fake.url}/api",
        "slack_client_id": fake.slack_client_id,
        "slack_client_secret": Secret(fake.slack_client_secret),
        **extra,
    }


async def _raw(js, project: str, provider: str) -> bytes:
    kv = await js.key_value(subjects.KV_CONNECTIONS)
    return bytes((await kv.get(f"{project}.{provider}")).value or b"")


async def test_set_list_get_delete_and_never_shown(receiver, make_project, project_key, js) -> None:
    await make_project(receiver, "shop")
    key = await project_key(receiver, "shop")
    http = receiver.http

    resp = await http.put(
        "/api/integrations/github", json={"token": GITHUB_TOKEN, "account": "acme"}, headers=key
    )
    assert resp.status_code == 200, resp.text
    shown = resp.json()
    assert {k: shown[k] for k in ("project", "provider", "kind", "via", "account")} == {
        "project": "shop",
        "provider": "github",
        "kind": "token",
        "via": "api",
        "account": "acme",
    }
    assert shown["key_id"] == "k1" and shown["set_at"] and shown["set_by"]
    assert resp.headers["Cache-Control"] == "no-store"
    resp = await http.put(
        "/api/integrations/slack",
        json={"bot_token": SLACK_TOKEN, "team_id": "T1", "team_name": "Acme"},
        headers=key,
    )
    assert resp.status_code == 200, resp.text

    listed = await http.get("/api/integrations", headers=key)
    assert listed.status_code == 200
    assert [(i["provider"], i["kind"]) for i in listed.json()["integrations"]] == [
        ("github", "token"),
        ("slack", "bot"),
    ]
    one = await http.get("/api/integrations/slack", headers=key)
    assert (one.status_code, one.json()["team_name"]) == (200, "Acme")
    for answer in (shown, listed.text, one.text):
        for token in (GITHUB_TOKEN, SLACK_TOKEN):
            assert token not in json.dumps(answer) and token[4:12] not in json.dumps(answer)

    # At rest: sealed, the token's bytes nowhere in the stored value (not even a prefix hint).
    for provider, token in (("github", GITHUB_TOKEN), ("slack", SLACK_TOKEN)):
        raw = await _raw(js, "shop", provider)
        assert token.encode() not in raw and token[:6].encode() not in raw  # no hint either
        record = connection_decoder.decode(raw)
        assert record.secret.kid == "k1"
        assert open_secret(Sealer.parse(receiver.rt.settings.conveyor_secret_keys), record) == token

    assert (await http.delete("/api/integrations/github", headers=key)).status_code == 204
    gone = await http.get("/api/integrations/github", headers=key)
    assert (gone.status_code, gone.json()["error"]) == (404, "integration_not_found")
    again = await http.delete("/api/integrations/github", headers=key)
    assert again.status_code == 404
    listed = (await http.get("/api/integrations", headers=key)).json()["integrations"]
    assert [i["provider"] for i in listed] == ["slack"]
    kv = await js.key_value(subjects.KV_CONNECTIONS)
    assert "shop.github" not in await kv.keys()  # purged: no earlier revision holds it

    # Deleting the project takes its credentials with it: a project made again under the same
    # id starts unconnected.
    assert (await http.delete("/api/admin/projects/shop", headers=ADMIN)).status_code == 204
    await make_project(receiver, "shop")
    key = await project_key(receiver, "shop")
    assert (await http.get("/api/integrations", headers=key)).json()["integrations"] == []
    with pytest.raises(nats.js.errors.NoKeysError):  # the bucket is empty: the slack one went too
        await kv.keys()


async def test_another_project_sees_nothing(receiver, make_project, project_key) -> None:
    await make_project(receiver, "shop", org_id="acme")
    await make_project(receiver, "rival", org_id="globex")
    shop, rival = await project_key(receiver, "shop"), await project_key(receiver, "rival")
    assert (
        await receiver.http.put("/api/integrations/slack", json={"bot_token": SLACK_TOKEN}, headers=shop)
    ).is_success

    # The rival's key acts in its own project: nothing there; naming shop is not possible.
    assert (await receiver.http.get("/api/integrations", headers=rival)).json()["integrations"] == []
    assert (await receiver.http.get("/api/integrations/slack", headers=rival)).status_code == 404
    named = await receiver.http.get("/api/integrations?project=shop", headers=rival)
    assert (named.status_code, named.json()["error"]) == (404, "project_not_found")
    assert (
        await receiver.http.delete("/api/integrations/slack?project=shop", headers=rival)
    ).status_code == 404

    # An org key of another organisation: 404 as for a missing project; the admin sees it.
    resp = await receiver.http.post(
        "/api/admin/keys", json={"name": "g", "scope": "org", "org_id": "globex"}, headers=ADMIN
    )
    globex = {"Authorization": f"Bearer {resp.json()['key']}"}
    assert (await receiver.http.get("/api/integrations?project=shop", headers=globex)).status_code == 404
    seen = await receiver.http.get("/api/integrations?project=shop", headers=ADMIN)
    assert [i["provider"] for i in seen.json()["integrations"]] == ["slack"]

    # A read-only key of the project itself may look, not set.
    reader = await project_key(receiver, "shop", read_only=True)
    assert (await receiver.http.get("/api/integrations", headers=reader)).status_code == 200
    denied = await receiver.http.put(
        "/api/integrations/slack", json={"bot_token": SLACK_TOKEN}, headers=reader
    )
    assert (denied.status_code, denied.json()["error"]) == (403, "read_only_key")


async def test_validation_names_the_field(receiver, make_project, project_key) -> None:
    await make_project(receiver, "shop")
    key = await project_key(receiver, "shop")
    pem, _ = new_rsa_key()

    async def field_of(path: str, body: Any) -> str:
        resp = await receiver.http.put(path, json=body, headers=key)
        assert resp.status_code == 422, resp.text
        assert set(resp.json()) >= {"error", "message"}
        return str(resp.json().get("field") or resp.json()["message"])

    assert await field_of("/api/integrations/github", {}) == "token"
    assert await field_of("/api/integrations/github", {"token": GITHUB_TOKEN, "app_id": 1}) == "app_id"
    assert await field_of("/api/integrations/github", {"app_id": 1, "private_key": pem}) == "installation_id"
    bad_pem = {"app_id": 1, "installation_id": 2, "private_key": "-----BEGIN RSA PRIVATE KEY-----\nnope"}
    assert await field_of("/api/integrations/github", bad_pem) == "private_key"
    assert "token" in await field_of("/api/integrations/github", {"token": "has space in it"})
    assert (
        await field_of("/api/integrations/slack", {"bot_token": "xoxp-user-token-not-a-bot"}) == "bot_token"
    )
    assert "bot_token" in await field_of("/api/integrations/slack", {})
    assert await field_of("/api/integrations/slack", {"bot_token": SLACK_TOKEN, "extra": 1}) == "extra"
    unknown = await receiver.http.get("/api/integrations/jira", headers=key)
    assert (unknown.status_code, unknown.json()["error"]) == (404, "provider_not_found")
    empty = await receiver.http.put("/api/integrations/slack", content=b"", headers=key)
    assert empty.status_code == 400


async def test_github_app_installation_is_sealed(receiver, make_project, project_key, js) -> None:
    await make_project(receiver, "shop")
    key = await project_key(receiver, "shop")
    pem, _ = new_rsa_key()
    body = {"app_id": 4242, "installation_id": 99, "private_key": pem, "account": "acme-org"}
    resp = await receiver.http.put("/api/integrations/github", json=body, headers=key)
    assert resp.status_code == 200, resp.text
    assert {k: resp.json()[k] for k in ("kind", "app_id", "installation_id", "account")} == {
        "kind": "app",
        "app_id": 4242,
        "installation_id": 99,
        "account": "acme-org",
    }
    assert "PRIVATE KEY" not in resp.text
    raw = await _raw(js, "shop", "github")
    assert b"PRIVATE KEY" not in raw
    assert not any(line.encode() in raw for line in pem.splitlines()[1:-1])


async def test_rotation_reseals_integrations(start_receiver, make_project, project_key, js) -> None:
    old, new = new_key_setting("old"), new_key_setting("new")
    async with start_receiver(conveyor_secret_keys=Secret(old)) as r:
        await make_project(r, "shop")
        key = await project_key(r, "shop")
        assert (
            await r.http.put("/api/integrations/github", json={"token": GITHUB_TOKEN}, headers=key)
        ).is_success
        # The default project's integration is resealed too (it is not a stored project).
        assert (
            await r.http.put("/api/integrations/slack", json={"bot_token": SLACK_TOKEN}, headers=ADMIN)
        ).is_success
    assert connection_decoder.decode(await _raw(js, "shop", "github")).secret.kid == "old"
    async with start_receiver(conveyor_secret_keys=Secret(f"{new},{old}")) as r:
        resp = await r.http.post("/api/admin/reseal", headers=ADMIN)
        assert resp.status_code == 200 and resp.json() == {"key_id": "new", "projects": ["default", "shop"]}
        assert (await r.http.post("/api/admin/reseal", headers=ADMIN)).json()["projects"] == []
        shown = (await r.http.get("/api/integrations", headers=key)).json()["integrations"]
        assert [i["key_id"] for i in shown] == ["new"]
    only_new = Sealer.parse(new)
    for project, provider, token in (("shop", "github", GITHUB_TOKEN), ("default", "slack", SLACK_TOKEN)):
        record = connection_decoder.decode(await _raw(js, project, provider))
        assert record.secret.kid == "new"
        assert open_secret(only_new, record) == token  # the old key may now be dropped


async def _authorize(r, key: dict[str, str], provider: str, **query: str) -> dict[str, Any]:
    resp = await r.http.post(f"/api/integrations/{provider}/authorize", params=query, headers=key)
    assert resp.status_code == 200, resp.text
    return dict(resp.json())


async def _consent(url: str) -> str:
    """The user's browser at the provider: where the provider sends it back."""
    async with httpx.AsyncClient() as browser:
        resp = await browser.get(url)
    assert resp.status_code == 302, resp.text
    return resp.headers["Location"]


async def test_github_oauth_web_flow(start_receiver, make_project, project_key, fake, js) -> None:
    async with start_receiver(**_oauth_settings(fake)) as r:
        await make_project(r, "shop")
        key = await project_key(r, "shop")
        started = await _authorize(r, key, "github")
        url = urlsplit(started["authorize_url"])
        query = {k: v[0] for k, v in parse_qs(url.query).items()}
        assert f"{url.scheme}://{url.netloc}{url.path}" == f"{fake.url}/login/oauth/authorize"
        assert query["client_id"] == fake.github_client_id
        assert query["redirect_uri"] == f"{r.url}/api/integrations/github/callback" == started["redirect_uri"]
        assert query["state"] and query["scope"] == "repo"

        back = await _consent(started["authorize_url"])
        assert back.startswith(started["redirect_uri"] + "?")
        resp = await r.http.get(back.removeprefix(r.url))
        assert resp.status_code == 200, resp.text
        done = resp.json()
        assert {k: done[k] for k in ("project", "provider", "kind", "via", "account")} == {
            "project": "shop",
            "provider": "github",
            "kind": "token",
            "via": "oauth",
            "account": fake.github_login,
        }
        # The code was exchanged as GitHub documents: POST, client credentials, JSON asked for.
        exchange = [q for q in fake.requests if q[1] == "/login/oauth/access_token"]
        assert len(exchange) == 1 and exchange[0][0] == "POST"
        assert exchange[0][2]["Accept"] == "application/json"
        sent = parse_qs(exchange[0][3].decode())
        assert sent["client_secret"] == [fake.github_client_secret] and sent["redirect_uri"] == [
            started["redirect_uri"]
        ]
        token = fake.issued[-1]
        assert token not in resp.text
        raw = await _raw(js, "shop", "github")
        assert token.encode() not in raw
        sealer = Sealer.parse(r.rt.settings.conveyor_secret_keys)
        assert open_secret(sealer, connection_decoder.decode(raw)) == token

        # The same callback again (a replay of the URL): refused, nothing changed.
        replay = await r.http.get(back.removeprefix(r.url))
        assert (replay.status_code, replay.json()["error"]) == (400, "state_used")


async def test_forged_expired_and_foreign_states_are_refused(
    start_receiver, make_project, project_key, fake
) -> None:
    async with start_receiver(**_oauth_settings(fake)) as r:
        await make_project(r, "shop")
        key = await project_key(r, "shop")
        started = await _authorize(r, key, "github")
        state = parse_qs(urlsplit(started["authorize_url"]).query)["state"][0]
        body, _, sig = state.partition(".")

        async def refused(state: str, provider: str = "github", code: str = "anything") -> tuple[int, str]:
            resp = await r.http.get(
                f"/api/integrations/{provider}/callback", params={"code": code, "state": state}
            )
            return resp.status_code, resp.json()["error"]

        # Another project named in a state signed with a key that is not the deployment's.
        forged = sign_state(b"x" * 32, _State("rival", "github", "oauth", "n1", int(time.time()) + 600, "k"))
        assert await refused(forged) == (400, "invalid_state")
        # The deployment's own state with the project changed: the signature no longer matches.
        decoded = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
        decoded["p"] = "rival"
        tampered = base64.urlsafe_b64encode(json.dumps(decoded).encode()).rstrip(b"=").decode()
        assert await refused(f"{tampered}.{sig}") == (400, "invalid_state")
        assert await refused("not-a-state") == (400, "invalid_state")
        assert await refused(state, provider="slack") == (400, "invalid_state")  # made for github
        missing = await r.http.get("/api/integrations/github/callback", params={"state": state})
        assert (missing.status_code, missing.json()["field"]) == (400, "code")
        # A code GitHub does not know: refused by GitHub, said so; the state is spent.
        assert await refused(state, code="bogus") == (400, "oauth_refused")
        assert await refused(state, code="bogus") == (400, "state_used")

    async with start_receiver(**_oauth_settings(fake, oauth_state_ttl_s=1)) as r:
        key = await project_key(r, "shop")
        started = await _authorize(r, key, "slack")
        back = await _consent(started["authorize_url"])
        await asyncio.sleep(2.1)  # past the state's one second
        resp = await r.http.get(back.removeprefix(r.url))
        assert (resp.status_code, resp.json()["error"]) == (400, "state_expired")

    # Without OAUTH_STATE_SECRET the flow is not offered at all.
    async with start_receiver() as r:
        key = await project_key(r, "shop")
        resp = await r.http.post("/api/integrations/github/authorize", headers=key)
        assert (resp.status_code, resp.json()["error"]) == (409, "oauth_unavailable")


async def test_slack_oauth_flow(start_receiver, make_project, project_key, fake, js) -> None:
    async with start_receiver(**_oauth_settings(fake, slack_scopes="chat:write,channels:read")) as r:
        await make_project(r, "shop")
        key = await project_key(r, "shop")
        started = await _authorize(r, key, "slack")
        url = urlsplit(started["authorize_url"])
        query = {k: v[0] for k, v in parse_qs(url.query).items()}
        assert f"{url.scheme}://{url.netloc}{url.path}" == f"{fake.url}/oauth/v2/authorize"
        assert query["client_id"] == fake.slack_client_id and query["scope"] == "chat:write,channels:read"
        assert query["redirect_uri"] == f"{r.url}/api/integrations/slack/callback" and query["state"]

        back = await _consent(started["authorize_url"])
        resp = await r.http.get(back.removeprefix(r.url))
        assert resp.status_code == 200, resp.text
        done = resp.json()
        assert (done["kind"], done["via"], done["team_id"], done["team_name"]) == (
            "bot",
            "oauth",
            "T0001",
            "Acme",
        )
        assert done["scopes"] == ["chat:write", "channels:read"] and done["bot_user_id"] == "U0BOT"
        # oauth.v2.access with the client credentials (HTTP Basic), as Slack prefers.
        exchange = [q for q in fake.requests if q[1] == "/api/oauth.v2.access"]
        assert len(exchange) == 1 and exchange[0][2]["Authorization"].startswith("Basic ")
        token = fake.issued[-1]
        assert token.startswith("xoxb-") and token not in resp.text
        raw = await _raw(js, "shop", "slack")
        assert token.encode() not in raw
        assert (
            open_secret(Sealer.parse(r.rt.settings.conveyor_secret_keys), connection_decoder.decode(raw))
            == token
        )

        # The user declines: Slack comes back with error=access_denied.
        started = await _authorize(r, key, "slack")
        state = parse_qs(urlsplit(started["authorize_url"]).query)["state"][0]
        resp = await r.http.get(
            "/api/integrations/slack/callback", params={"error": "access_denied", "state": state}
        )
        assert (resp.status_code, resp.json()["error"]) == (400, "oauth_denied")

    # A Slack answer with ok=false (here: the deployment's client secret is wrong).
    async with start_receiver(
        **_oauth_settings(fake, slack_client_secret=Secret("wrong-secret-0123456789"))
    ) as r:
        key = await project_key(r, "shop")
        back = await _consent((await _authorize(r, key, "slack"))["authorize_url"])
        resp = await r.http.get(back.removeprefix(r.url))
        assert (resp.status_code, resp.json()["error"]) == (400, "oauth_refused")
        assert "invalid_client" in resp.json()["message"]


async def test_a_provider_that_does_not_answer_is_a_502(
    start_receiver, make_project, project_key, fake
) -> None:
    async with start_receiver(**_oauth_settings(fake)) as r:
        await make_project(r, "shop")
        key = await project_key(r, "shop")
        back = await _consent((await _authorize(r, key, "slack"))["authorize_url"])
        await fake.stop()  # Slack is gone by the time the browser comes back
        resp = await r.http.get(back.removeprefix(r.url))
        assert (resp.status_code, resp.json()["error"]) == (502, "provider_unavailable")
        assert (await r.http.get("/api/integrations/slack", headers=key)).status_code == 404


async def test_github_app_installation_flow(start_receiver, make_project, project_key, fake, js) -> None:
    pem, public = new_rsa_key()
    settings = _oauth_settings(
        fake,
        github_app_slug="conveyor-test",
        github_app_id=777,
        github_app_private_key=Secret(pem),
        oauth_return_url="https://app.example.com/settings/integrations",
    )
    async with start_receiver(**settings) as r:
        app = fake.add_app(
            777, "conveyor-test", public, setup_url=f"{r.url}/api/integrations/github/callback"
        )
        await make_project(r, "shop")
        key = await project_key(r, "shop")
        started = await _authorize(r, key, "github", kind="install")
        url = urlsplit(started["authorize_url"])
        assert f"{url.scheme}://{url.netloc}{url.path}" == f"{fake.url}/apps/conveyor-test/installations/new"

        back = await _consent(started["authorize_url"] + "&installation_id=5150&account=acme-org")
        query = parse_qs(urlsplit(back).query)
        assert query["installation_id"] == ["5150"] and query["setup_action"] == ["install"]
        resp = await r.http.get(back.removeprefix(r.url))
        assert resp.status_code == 303, resp.text
        assert resp.headers["Location"] == (
            "https://app.example.com/settings/integrations?provider=github&project=shop&status=connected"
        )
        shown = (await r.http.get("/api/integrations/github", headers=key)).json()
        assert {k: shown[k] for k in ("kind", "via", "app_id", "installation_id", "account")} == {
            "kind": "app",
            "via": "install",
            "app_id": 777,
            "installation_id": 5150,
            "account": "acme-org",
        }
        raw = await _raw(js, "shop", "github")
        assert b"PRIVATE KEY" not in raw

        started = await _authorize(r, key, "github", kind="install")
        state = parse_qs(urlsplit(started["authorize_url"]).query)["state"][0]
        for bad in ("²", "12a", "9" * 30):
            params = {"state": state, "code": "c", "installation_id": bad, "setup_action": "install"}
            resp = await r.http.get("/api/integrations/github/callback", params=params)
            assert (resp.status_code, resp.json()["field"]) == (400, "installation_id"), bad

        # An installation id the signed-in user cannot see (made up in the URL): refused.
        app.installations[6000] = "someone-else"
        started = await _authorize(r, key, "github", kind="install")
        back = await _consent(started["authorize_url"] + "&installation_id=5150")
        forged = back.replace("installation_id=5150", "installation_id=6000")
        resp = await r.http.get(forged.removeprefix(r.url))
        assert (resp.status_code, resp.json()["error"]) == (403, "installation_not_yours")
        assert connection_decoder.decode(await _raw(js, "shop", "github")).installation_id == 5150


def _doc_section(title: str) -> str:
    text = DOCS.read_text()
    start = text.index(f"## {title}")
    end = text.find("\n## ", start + 1)
    return text[start : end if end != -1 else None]


async def test_docs_examples_run(receiver, make_project, project_key) -> None:
    """Every curl command of docs/agents.md's integrations section, sent as written."""
    await make_project(receiver, "shop")
    key = (await project_key(receiver, "shop"))["Authorization"].removeprefix("Bearer ")
    commands = re.findall(r"```sh\n(.*?)```", _doc_section("Integrations (GitHub, Slack)"), re.S)
    assert len(commands) >= 4
    pem, _ = new_rsa_key()
    env = {"CONVEYOR": receiver.url, "CONVEYOR_KEY": key, "PEM_JSON": json.dumps(pem)}
    seen: list[tuple[str, str, int]] = []
    for block in commands:
        for command in block.replace("\\\n", " ").strip().splitlines():
            words = shlex.split(command)
            assert words[0] == "curl", command
            method, url, headers, data = "GET", "", {}, None
            it = iter(words[1:])
            for word in it:
                if word == "-X":
                    method = next(it)
                elif word == "-H":
                    name, _, value = next(it).partition(": ")
                    headers[name] = value
                elif word in ("-d", "--data"):
                    data = next(it)
                elif word.startswith("http") or word.startswith("$"):
                    url = word
            for name, value in sorted(env.items(), key=lambda kv: -len(kv[0])):  # $CONVEYOR_KEY first
                url = url.replace(f"${name}", value)
                headers = {k: v.replace(f"${name}", value) for k, v in headers.items()}
                data = data.replace(f'"${name}"', value).replace(f"${name}", value) if data else data
            resp = await receiver.http.request(method, url, headers=headers, content=data)
            assert resp.status_code < 300, (command, resp.text)
            seen.append((method, urlsplit(url).path, resp.status_code))
    methods = {(m, p) for m, p, _ in seen}
    assert ("PUT", "/api/integrations/github") in methods and ("PUT", "/api/integrations/slack") in methods
    assert ("GET", "/api/integrations") in methods and ("DELETE", "/api/integrations/slack") in methods


async def test_openapi_lists_the_routes(receiver) -> None:
    spec = (await receiver.http.get("/openapi.json")).json()
    paths = spec["paths"]
    assert set(paths["/api/integrations"]) == {"get"}
    assert {"put"} <= set(paths["/api/integrations/github"]) and {"put"} <= set(
        paths["/api/integrations/slack"]
    )
    assert set(paths["/api/integrations/{provider}"]) == {"get", "delete"}
    assert "security" not in paths["/api/integrations/{provider}/callback"]["get"]
    github = spec["components"]["schemas"]["GithubCredential"]["properties"]
    assert {"token", "app_id", "installation_id", "private_key"} <= set(github)
    assert "token" not in spec["components"]["schemas"]["ConnectionView"]["properties"]
