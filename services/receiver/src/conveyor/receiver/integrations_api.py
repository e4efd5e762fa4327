"""A project's integrations (GitHub, Slack): /api/integrations and the OAuth callbacks.

A credential is set directly (PUT, a token or a GitHub App installation) or through the
provider's OAuth flow: POST .../authorize answers the provider's authorize URL with a signed
``state`` naming the project; the provider sends the browser back to GET .../callback, which
checks the state (signature, expiry, not used before), exchanges the code and stores the
token. Either way the credential is sealed (conveyor.shared.domain.connections) and never shown or
logged again: the API shows the provider, kind, account and when it was set.

The routes act in the key's project (admin and organisation keys: ``?project=``); another
project's integration answers 404, as a missing one.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import json
import logging
import secrets
import time
from typing import Annotated, Any, Literal
from urllib.parse import urlencode

import aiohttp
import msgspec
from aiohttp import web
from msgspec import Meta

from conveyor.receiver.apikeys import Principal
from conveyor.receiver.handlers.webhooks import respond
from conveyor.receiver.openapi import Operation, Param
from conveyor.receiver.sources import decode_json
from conveyor.receiver.state import STATE, Receiver
from conveyor.shared import bus
from conveyor.shared.contracts import ids, subjects
from conveyor.shared.contracts.events import DEFAULT_PROJECT, encoder, utcnow
from conveyor.shared.domain.connections import (
    PROVIDERS,
    Connection,
    connection_decoder,
    context_of,
    key_of,
    resealed,
    rsa_key_problem,
)
from conveyor.shared.domain.sealing import SealingError
from conveyor.shared.runtime.http import HTTPError
from conveyor.shared.runtime.runner import Runtime

log = logging.getLogger(__name__)

E = None
Token = Annotated[str, Meta(min_length=8, max_length=1024, pattern=r"^[\x21-\x7e]+$")]
Name = Annotated[str, Meta(min_length=1, max_length=100, pattern=r"^[\x20-\x7e]+$")]


class GithubCredential(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """PUT /api/integrations/github: a token, or a GitHub App installation (all three of
    app_id, installation_id and private_key)."""

    token: Token | None = None
    app_id: Annotated[int, Meta(ge=1, le=2**53)] | None = None
    installation_id: Annotated[int, Meta(ge=1, le=2**53)] | None = None
    private_key: Annotated[str, Meta(min_length=1, max_length=16_384)] | None = None
    account: Name | None = None
    """The user or organisation the credential acts as (shown, not checked)."""


class SlackCredential(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """PUT /api/integrations/slack: a bot token (``xoxb-...``)."""

    bot_token: Token
    team_id: Name | None = None
    team_name: Name | None = None


class ConnectionView(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """A stored integration as the API shows it: never the credential."""

    project: str
    provider: str
    kind: str
    via: str
    set_at: Any
    set_by: str
    key_id: str
    """The CONVEYOR_SECRET_KEYS id the credential is sealed with."""
    account: str | None = None
    app_id: int | None = None
    installation_id: int | None = None
    team_id: str | None = None
    team_name: str | None = None
    bot_user_id: str | None = None
    scopes: list[str] = []


class ConnectionList(msgspec.Struct, frozen=True, kw_only=True):
    project: str
    integrations: list[ConnectionView]


class AuthorizeStarted(msgspec.Struct, frozen=True, kw_only=True):
    provider: str
    kind: Literal["oauth", "install"]
    authorize_url: str
    """Send the user's browser here; the provider sends it back to the callback."""
    redirect_uri: str
    expires_at: Any


_github_set = msgspec.json.Decoder(GithubCredential)
_slack_set = msgspec.json.Decoder(SlackCredential)


def _invalid(field: str, message: str) -> HTTPError:
    return HTTPError(422, "invalid_field", f"{field}: {message}", field=field)


def view(conn: Connection) -> ConnectionView:
    return ConnectionView(
        project=conn.project_id,
        provider=conn.provider,
        kind=conn.kind,
        via=conn.via,
        set_at=conn.set_at,
        set_by=conn.set_by,
        key_id=conn.secret.kid,
        account=conn.account,
        app_id=conn.app_id,
        installation_id=conn.installation_id,
        team_id=conn.team_id,
        team_name=conn.team_name,
        bot_user_id=conn.bot_user_id,
        scopes=conn.scopes,
    )


# --- access and storage ------------------------------------------------------------------------


async def _caller(request: web.Request, *, write: bool) -> tuple[Receiver, Principal, str]:
    """The receiver, the caller and the project it acts in (``?project=`` for admin and
    organisation keys). 404 for a project the key does not see, 403 for writes by a read-only key."""
    st = request.app[STATE]
    principal = await st.authenticate(request)
    await st.limit_key(request, principal)
    requested = request.query.get("project")
    if write:
        project = st.writable(principal, requested).project_id
    else:
        project_id = requested or principal.scope.project_id or DEFAULT_PROJECT
        found = st.directory.get(project_id) if subjects.is_token(project_id) else None
        if found is None or not st.sees(principal, found.project_id):
            raise HTTPError(404, "project_not_found", f"no project {project_id[:64]!r}", field="project")
        project = found.project_id
    st.require_nats()
    return st, principal, project


def _provider(request: web.Request) -> str:
    provider = request.match_info["provider"]
    if provider not in PROVIDERS:
        raise HTTPError(
            404,
            "provider_not_found",
            f"no integration provider {provider[:64]!r}; known: {', '.join(PROVIDERS)}",
        )
    return provider


def _not_connected(project: str, provider: str) -> HTTPError:
    return HTTPError(404, "integration_not_found", f"project {project} has no {provider} integration")


async def _get(st: Receiver, project: str, provider: str) -> tuple[Connection, int] | None:
    kv = st.bucket(subjects.KV_CONNECTIONS)
    with st.nats_errors():
        try:
            entry = await kv.get(key_of(project, provider))
        except bus.NotFound:
            return None
    return connection_decoder.decode(entry.value or b""), entry.revision or 0


async def _store(st: Receiver, conn: Connection) -> Connection:
    kv = st.bucket(subjects.KV_CONNECTIONS)
    with st.nats_errors():
        await kv.put(key_of(conn.project_id, conn.provider), encoder.encode(conn))
    log.info(
        "project %s: %s integration set (%s, via %s)", conn.project_id, conn.provider, conn.kind, conn.via
    )
    return conn


def _connection(st: Receiver, project: str, provider: str, secret: str, **fields: Any) -> Connection:
    try:
        sealed = st.sealer.seal(secret, context_of(project, provider))
    except SealingError as exc:
        raise HTTPError(409, "secrets_unavailable", str(exc)) from None
    # No hint: the start of a token is shown nowhere, not even in the stored record.
    sealed = msgspec.structs.replace(sealed, hint="", id=ids.new_id("sec")[:20])
    return Connection(project_id=project, provider=provider, secret=sealed, set_at=utcnow(), **fields)  # type: ignore[arg-type]


# --- CRUD --------------------------------------------------------------------------------------


async def list_integrations(request: web.Request) -> web.Response:
    st, _, project = await _caller(request, write=False)
    found = [await _get(st, project, p) for p in PROVIDERS]
    views = [view(c) for c, _ in filter(None, found)]
    return respond(200, ConnectionList(project=project, integrations=views))


async def get_integration(request: web.Request) -> web.Response:
    provider = _provider(request)
    st, _, project = await _caller(request, write=False)
    found = await _get(st, project, provider)
    if found is None:
        raise _not_connected(project, provider)
    return respond(200, view(found[0]))


async def put_github(request: web.Request) -> web.Response:
    st, principal, project = await _caller(request, write=True)
    body: GithubCredential = decode_json(_github_set, await st.read_body(request))
    app_fields = {
        "app_id": body.app_id,
        "installation_id": body.installation_id,
        "private_key": body.private_key,
    }
    given = [k for k, v in app_fields.items() if v is not None]
    if body.token is not None:
        if given:
            raise _invalid(given[0], "give either token or a GitHub App installation, not both")
        conn = _connection(
            st, project, "github", body.token, kind="token", set_by=principal.key_id, account=body.account
        )
    else:
        if not given:
            raise _invalid("token", "required (or app_id, installation_id and private_key of a GitHub App)")
        missing = [k for k, v in app_fields.items() if v is None]
        if missing:
            raise _invalid(missing[0], "required for a GitHub App installation")
        assert body.private_key is not None
        if problem := rsa_key_problem(body.private_key):
            raise _invalid("private_key", problem)
        conn = _connection(
            st,
            project,
            "github",
            body.private_key.strip(),
            kind="app",
            set_by=principal.key_id,
            account=body.account,
            app_id=body.app_id,
            installation_id=body.installation_id,
        )
    return respond(200, view(await _store(st, conn)), {"Cache-Control": "no-store"})


async def put_slack(request: web.Request) -> web.Response:
    st, principal, project = await _caller(request, write=True)
    body: SlackCredential = decode_json(_slack_set, await st.read_body(request))
    if not body.bot_token.startswith("xoxb-"):
        raise _invalid("bot_token", "a Slack bot token starts with xoxb-")
    conn = _connection(
        st,
        project,
        "slack",
        body.bot_token,
        kind="bot",
        set_by=principal.key_id,
        team_id=body.team_id,
        team_name=body.team_name,
    )
    return respond(200, view(await _store(st, conn)), {"Cache-Control": "no-store"})


async def delete_integration(request: web.Request) -> web.Response:
    provider = _provider(request)
    st, _, project = await _caller(request, write=True)
    if await _get(st, project, provider) is None:
        raise _not_connected(project, provider)
    kv = st.bucket(subjects.KV_CONNECTIONS)
    with st.nats_errors():
        await kv.purge(key_of(project, provider))  # no earlier value stays in the bucket
    log.info("project %s: %s integration removed", project, provider)
    return web.Response(status=204)


async def forget_project(st: Receiver, project: str) -> None:
    """Purge every credential of ``project`` (the project is being deleted)."""
    kv = st.bucket(subjects.KV_CONNECTIONS)
    with st.nats_errors():
        for provider in PROVIDERS:
            if await _get(st, project, provider) is not None:
                await kv.purge(key_of(project, provider))


async def reseal_all(st: Receiver) -> list[str]:
    """Every stored credential under the active key; the projects whose credentials changed."""
    kv = st.bucket(subjects.KV_CONNECTIONS)
    changed: set[str] = set()
    with st.nats_errors():
        try:
            keys = await kv.keys()
        except bus.NotFound:
            keys = []
        for key in keys:
            for _ in range(5):
                try:
                    entry = await kv.get(key)
                except bus.NotFound:
                    break
                conn = connection_decoder.decode(entry.value or b"")
                try:
                    again = resealed(st.sealer, conn)
                except SealingError as exc:
                    raise HTTPError(
                        409, "secrets_unavailable", f"project {conn.project_id}, {conn.provider}: {exc}"
                    ) from None
                if again is conn:
                    break
                try:
                    await kv.update(key, encoder.encode(again), last=entry.revision)
                except bus.Conflict:
                    continue  # set again meanwhile: read it again
                changed.add(conn.project_id)
                break
    return sorted(changed)


# --- OAuth state -------------------------------------------------------------------------------


class _State(msgspec.Struct, frozen=True):
    p: str  # project
    v: str  # provider
    k: str  # kind: oauth, install
    n: str  # nonce: spent once
    e: int  # expires, unix seconds
    b: str  # the API key id that started the flow


_state_decoder = msgspec.json.Decoder(_State)


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _state_key(st: Receiver) -> bytes:
    secret = st.settings.oauth_state_secret
    if secret is None:
        raise HTTPError(409, "oauth_unavailable", "OAuth is not configured: set OAUTH_STATE_SECRET")
    return hashlib.sha256(b"conveyor-oauth-state\x00" + secret.reveal().encode()).digest()


def sign_state(key: bytes, state: _State) -> str:
    body = _b64(encoder.encode(state))
    return f"{body}.{_b64(hmac.new(key, body.encode(), hashlib.sha256).digest())}"


def _bad_state(message: str, error: str = "invalid_state") -> HTTPError:
    return HTTPError(400, error, message, field="state")


def verify_state(key: bytes, text: str, provider: str) -> _State:
    """The state's fields when Conveyor signed it, for ``provider``, and it has not expired."""
    body, dot, sig = text.partition(".")
    try:
        given = _unb64(sig)
    except ValueError:
        given = b""
    expected = hmac.new(key, body.encode(), hashlib.sha256).digest()
    if not dot or not hmac.compare_digest(given, expected):
        raise _bad_state("state was not made by this deployment (or was changed)")
    state = _state_decoder.decode(_unb64(body))
    if state.v != provider:
        raise _bad_state(f"state was made for {state.v}, not {provider}")
    if state.e < time.time():
        raise _bad_state("state has expired: start the connection again", "state_expired")
    return state


async def _spend(st: Receiver, state: _State) -> None:
    """Mark the state used (once, across replicas): a replayed callback is refused."""
    kv = st.bucket(subjects.KV_OAUTH_STATES)
    with st.nats_errors():
        try:
            await kv.create(f"used.{state.n}", str(int(time.time())).encode())
        except bus.Conflict:
            raise _bad_state("state was used already: start the connection again", "state_used") from None


def _redirect_uri(st: Receiver, request: web.Request, provider: str) -> str:
    base = st.settings.public_url.rstrip("/") or f"{request.scheme}://{request.host}"
    return f"{base}/api/integrations/{provider}/callback"


def _required(value: Any, setting: str) -> None:
    if not value:
        raise HTTPError(409, "oauth_unavailable", f"this provider's OAuth is not configured: set {setting}")


async def authorize(request: web.Request) -> web.Response:
    provider = _provider(request)
    st, principal, project = await _caller(request, write=True)
    s = st.settings
    key = _state_key(st)
    kind = request.query.get("kind", "oauth")
    if kind not in ("oauth", "install") or (kind == "install" and provider != "github"):
        raise HTTPError(422, "invalid_field", "kind: oauth, or install (GitHub App) for github", field="kind")
    expires = int(time.time()) + s.oauth_state_ttl_s
    state = sign_state(key, _State(project, provider, kind, secrets.token_hex(16), expires, principal.key_id))
    redirect = _redirect_uri(st, request, provider)
    if provider == "slack":
        _required(s.slack_client_id and s.slack_client_secret, "SLACK_CLIENT_ID and SLACK_CLIENT_SECRET")
        query = {
            "client_id": s.slack_client_id,
            "scope": s.slack_scopes,
            "state": state,
            "redirect_uri": redirect,
        }
        url = f"{s.slack_url.rstrip('/')}/oauth/v2/authorize?{urlencode(query)}"
    elif kind == "install":
        _required(
            s.github_app_slug and s.github_app_id and s.github_app_private_key,
            "GITHUB_APP_SLUG, GITHUB_APP_ID and GITHUB_APP_PRIVATE_KEY",
        )
        _required(s.github_client_id and s.github_client_secret, "GITHUB_CLIENT_ID and GITHUB_CLIENT_SECRET")
        # The App's setup URL is the callback; GitHub passes state through.
        install = f"{s.github_url.rstrip('/')}/apps/{s.github_app_slug}/installations/new"
        url = f"{install}?{urlencode({'state': state})}"
    else:
        _required(s.github_client_id and s.github_client_secret, "GITHUB_CLIENT_ID and GITHUB_CLIENT_SECRET")
        query = {
            "client_id": s.github_client_id,
            "redirect_uri": redirect,
            "state": state,
            "scope": s.github_scopes,
        }
        url = f"{s.github_url.rstrip('/')}/login/oauth/authorize?{urlencode(query)}"
    started = AuthorizeStarted(
        provider=provider,
        kind=kind,  # type: ignore[arg-type]
        authorize_url=url,
        redirect_uri=redirect,
        expires_at=dt.datetime.fromtimestamp(expires, dt.UTC),
    )
    return respond(200, started, {"Cache-Control": "no-store"})


# --- OAuth callbacks ---------------------------------------------------------------------------


class _Provider:
    """Calls to the provider during a callback: 502 when it cannot be reached or answers
    nonsense, 400 when it refuses the code (the user's to retry)."""

    def __init__(self, session: aiohttp.ClientSession, name: str) -> None:
        self.session = session
        self.name = name

    async def call(self, method: str, url: str, **kwargs: Any) -> tuple[int, dict[str, Any]]:
        try:
            async with self.session.request(method, url, allow_redirects=False, **kwargs) as resp:
                raw = await resp.read()
                status = resp.status
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise HTTPError(
                502, "provider_unavailable", f"{self.name} did not answer ({type(exc).__name__})"
            ) from None
        try:
            body = json.loads(raw)
        except ValueError:
            body = None
        if status >= 500 or not isinstance(body, dict):
            raise HTTPError(
                502, "provider_unavailable", f"{self.name} answered {status} without a JSON object"
            )
        return status, body


class _Http:
    """The providers' HTTP client: made on first use, closed when the receiver stops."""

    session: aiohttp.ClientSession | None = None

    def get(self) -> aiohttp.ClientSession:
        if self.session is None:
            self.session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=15))
        return self.session


def _session(request: web.Request) -> aiohttp.ClientSession:
    return request.app[_SESSION].get()


def _query(request: web.Request, name: str) -> str:
    value = request.query.get(name, "")
    if not value or len(value) > 2048:
        raise HTTPError(400, "invalid_field", f"{name}: required in the query", field=name)
    return value


async def callback(request: web.Request) -> web.StreamResponse:
    provider = _provider(request)
    st = request.app[STATE]
    state = verify_state(_state_key(st), _query(request, "state"), provider)
    if denied := request.query.get("error"):
        # The user said no (or the provider refused): the flow ends here, the state with it.
        await _spend(st, state)
        raise HTTPError(400, "oauth_denied", f"{provider} answered {denied[:64]!r}", field="error")
    code = _query(request, "code")
    if state.k == "install":
        installation = _query(request, "installation_id")
        action = request.query.get("setup_action", "")
        if action not in ("install", "update"):
            raise HTTPError(
                400,
                "invalid_field",
                "setup_action: the App is not installed yet (install, update)",
                field="setup_action",
            )
        if not (installation.isascii() and installation.isdigit() and len(installation) < 16):
            raise HTTPError(400, "invalid_field", "installation_id: a number", field="installation_id")
    if st.directory.get(state.p) is None:
        raise HTTPError(404, "project_not_found", f"no project {state.p!r}", field="project")
    await _spend(st, state)
    http = _Provider(_session(request), "GitHub" if provider == "github" else "Slack")
    if provider == "slack":
        conn = await _slack_exchange(st, request, http, state, code)
    elif state.k == "install":
        conn = await _github_install(st, request, http, state, code, int(request.query["installation_id"]))
    else:
        conn = await _github_exchange(st, request, http, state, code)
    conn = await _store(st, conn)
    if st.settings.oauth_return_url:
        back = {"provider": provider, "project": state.p, "status": "connected"}
        sep = "&" if "?" in st.settings.oauth_return_url else "?"
        raise web.HTTPSeeOther(f"{st.settings.oauth_return_url}{sep}{urlencode(back)}")
    return respond(200, view(conn), {"Cache-Control": "no-store"})


async def _github_token(st: Receiver, request: web.Request, http: _Provider, code: str) -> str:
    """The user's token for ``code`` (GitHub's web flow, step 2)."""
    s = st.settings
    _required(s.github_client_id and s.github_client_secret, "GITHUB_CLIENT_ID and GITHUB_CLIENT_SECRET")
    assert s.github_client_secret is not None
    form = {
        "client_id": s.github_client_id,
        "client_secret": s.github_client_secret.reveal(),
        "code": code,
        "redirect_uri": _redirect_uri(st, request, "github"),
    }
    _, body = await http.call(
        "POST",
        f"{s.github_url.rstrip('/')}/login/oauth/access_token",
        data=form,
        headers={"Accept": "application/json"},
    )
    token = body.get("access_token")
    if not isinstance(token, str) or not token:
        raise HTTPError(
            400, "oauth_refused", f"GitHub refused the code: {str(body.get('error', 'no token'))[:64]}"
        )
    return token


def _text(value: Any) -> str | None:
    """A name from the provider's answer, shown by the API: a short string, or nothing."""
    return value[:100] if isinstance(value, str) and value else None


def _api_headers(token: str) -> dict[str, str]:
    return {
        "Authorization": f"Bearer {token}",
        "Accept": "application/vnd.github+json",
        "X-GitHub-Api-Version": "2022-11-28",
    }


async def _github_exchange(
    st: Receiver, request: web.Request, http: _Provider, state: _State, code: str
) -> Connection:
    token = await _github_token(st, request, http, code)
    status, user = await http.call(
        "GET", f"{st.settings.github_api_url.rstrip('/')}/user", headers=_api_headers(token)
    )
    if status != 200:
        raise HTTPError(502, "provider_unavailable", f"GitHub did not say whose the new token is ({status})")
    return _connection(
        st,
        state.p,
        "github",
        token,
        kind="token",
        via="oauth",
        set_by=state.b,
        account=_text(user.get("login")),
    )


async def _github_install(
    st: Receiver, request: web.Request, http: _Provider, state: _State, code: str, installation_id: int
) -> Connection:
    """An App installation: the redirect's installation_id is only believed when the user who
    installed it can see it (GitHub's advice: the id in the URL can be made up)."""
    s = st.settings
    _required(s.github_app_id and s.github_app_private_key, "GITHUB_APP_ID and GITHUB_APP_PRIVATE_KEY")
    assert s.github_app_private_key is not None
    token = await _github_token(st, request, http, code)
    status, found = await http.call(
        "GET", f"{s.github_api_url.rstrip('/')}/user/installations", headers=_api_headers(token)
    )
    if status != 200:
        raise HTTPError(
            502, "provider_unavailable", f"GitHub did not list the user's installations ({status})"
        )
    mine = [
        i for i in found.get("installations", []) if isinstance(i, dict) and i.get("id") == installation_id
    ]
    if not mine:
        raise HTTPError(
            403,
            "installation_not_yours",
            f"installation {installation_id} is not one the signed-in GitHub user can see",
            field="installation_id",
        )
    account = mine[0].get("account")
    return _connection(
        st,
        state.p,
        "github",
        s.github_app_private_key.reveal().strip(),
        kind="app",
        via="install",
        set_by=state.b,
        app_id=s.github_app_id,
        installation_id=installation_id,
        account=_text(account.get("login")) if isinstance(account, dict) else None,
    )


async def _slack_exchange(
    st: Receiver, request: web.Request, http: _Provider, state: _State, code: str
) -> Connection:
    s = st.settings
    _required(s.slack_client_id and s.slack_client_secret, "SLACK_CLIENT_ID and SLACK_CLIENT_SECRET")
    assert s.slack_client_secret is not None
    client_secret = s.slack_client_secret.reveal()
    _, body = await http.call(
        "POST",
        f"{s.slack_api_url.rstrip('/')}/oauth.v2.access",
        data={"code": code, "redirect_uri": _redirect_uri(st, request, "slack")},
        # The client credentials by HTTP Basic, as Slack prefers to having them in the form.
        headers={
            "Authorization": "Basic "
            + base64.b64encode(f"{s.slack_client_id}:{client_secret}".encode()).decode()
        },
    )
    token = body.get("access_token")
    if body.get("ok") is not True or not isinstance(token, str) or not token.startswith("xoxb-"):
        raise HTTPError(
            400, "oauth_refused", f"Slack refused the code: {str(body.get('error', 'no bot token'))[:64]}"
        )
    team = body.get("team") if isinstance(body.get("team"), dict) else {}
    return _connection(
        st,
        state.p,
        "slack",
        token,
        kind="bot",
        via="oauth",
        set_by=state.b,
        team_id=_text(team.get("id")),
        team_name=_text(team.get("name")),
        bot_user_id=_text(body.get("bot_user_id")),
        scopes=[x for x in str(body.get("scope", "")).split(",") if x],
    )


_SESSION: web.AppKey[_Http] = web.AppKey("integrations_http", _Http)


def add_cleanup(rt: Runtime[Any]) -> None:
    """The providers' HTTP client, closed when the receiver stops."""
    rt.app[_SESSION] = _Http()

    async def close(app: web.Application) -> None:
        session = app[_SESSION].session
        if session is not None:
            await session.close()

    rt.app.on_cleanup.append(close)


def operations() -> list[Operation]:
    keyed = {401: E, 403: E, 429: E, 503: E}
    project = (Param("project", "query", "Admin and organisation keys: which project."),)
    one = "/api/integrations/{provider}"
    secret_note = "The credential is sealed at rest (CONVEYOR_SECRET_KEYS) and never shown again."
    return [
        Operation(
            "GET",
            "/api/integrations",
            list_integrations,
            "The project's integrations (never their credentials)",
            "integrations",
            {200: ConnectionList, 404: E, **keyed},
            auth="api_key",
            params=project,
        ),
        Operation(
            "PUT",
            "/api/integrations/github",
            put_github,
            "Set the project's GitHub credential: a token or an App installation",
            "integrations",
            {200: ConnectionView, 400: E, 404: E, 409: E, 413: E, 422: E, **keyed},
            body=GithubCredential,
            auth="api_key",
            params=project,
            description=secret_note,
        ),
        Operation(
            "PUT",
            "/api/integrations/slack",
            put_slack,
            "Set the project's Slack bot token",
            "integrations",
            {200: ConnectionView, 400: E, 404: E, 409: E, 413: E, 422: E, **keyed},
            body=SlackCredential,
            auth="api_key",
            params=project,
            description=secret_note,
        ),
        Operation(
            "POST",
            f"{one}/authorize",
            authorize,
            "Start the provider's OAuth flow: the URL to send the user to",
            "integrations",
            {200: AuthorizeStarted, 404: E, 409: E, 422: E, **keyed},
            auth="api_key",
            params=(
                *project,
                Param("kind", "query", "oauth (default), or install: install the GitHub App (github only)."),
            ),
            description="The URL carries a signed state naming the project; it expires after "
            "OAUTH_STATE_TTL_S and serves one callback.",
        ),
        Operation(
            "GET",
            f"{one}/callback",
            callback,
            "Where the provider sends the user back: exchanges the code, stores the credential",
            "integrations",
            {200: ConnectionView, 400: E, 403: E, 404: E, 409: E, 502: E, 503: E},
            params=tuple(
                Param(n, "query", d)
                for n, d in (
                    ("state", "The signed state of the authorize URL."),
                    ("code", "The provider's authorization code."),
                    ("installation_id", "GitHub App installs: the installation."),
                    ("setup_action", "GitHub App installs: install or update."),
                    ("error", "The provider's refusal (the user declined)."),
                )
            ),
            description="No API key: the state is the proof. 400 invalid_state, state_expired or "
            "state_used for a forged, expired or replayed state; 303 to OAUTH_RETURN_URL when set.",
        ),
        Operation(
            "GET",
            one,
            get_integration,
            "One integration of the project",
            "integrations",
            {200: ConnectionView, 404: E, **keyed},
            auth="api_key",
            params=project,
        ),
        Operation(
            "DELETE",
            one,
            delete_integration,
            "Remove an integration (its credential is purged)",
            "integrations",
            {204: None, 404: E, **keyed},
            auth="api_key",
            params=project,
        ),
    ]
