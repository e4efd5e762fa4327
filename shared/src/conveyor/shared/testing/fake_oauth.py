"""Local stand-ins for GitHub's and Slack's OAuth endpoints (and GitHub's App token API),
following the documented request and answer shapes, for tests.

One server plays every host: give it as GITHUB_URL and GITHUB_API_URL (github.com and
api.github.com), SLACK_URL, and SLACK_API_URL with ``/api`` (slack.com/api). The "user" is
the test: it opens the authorize URL, and the fake answers with the redirect a consenting
user's browser would follow.

- GitHub OAuth web flow: GET /login/oauth/authorize -> 302 to redirect_uri?code&state;
  POST /login/oauth/access_token (client_id, client_secret, code, redirect_uri; JSON answer
  with ``Accept: application/json``, form-encoded otherwise; an error is a 200 with
  ``error``, as GitHub answers); GET /user and GET /user/installations with the user's token.
- GitHub App installation: GET /apps/{slug}/installations/new?state -> 302 to the App's
  setup URL with installation_id, setup_action=install, state and code; POST
  /app/installations/{id}/access_tokens checks the RS256 JWT against the App's public key
  and answers 201 {token, expires_at}.
- Slack OAuth v2: GET /oauth/v2/authorize -> 302 to redirect_uri?code&state; POST
  /api/oauth.v2.access (client credentials by HTTP Basic or in the form) -> {"ok": ...}.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import json
import secrets
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

from aiohttp import web
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from conveyor.shared.testing.rawhttp import serve_app


def new_rsa_key() -> tuple[str, rsa.RSAPublicKey]:
    """A GitHub App's private key as GitHub hands it out (PEM), and its public half."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    ).decode()
    return pem, key.public_key()


def _b64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass
class GithubApp:
    app_id: int
    slug: str
    public_key: rsa.RSAPublicKey
    setup_url: str = ""  # where an installation redirects (the receiver's callback)
    installations: dict[int, str] = field(default_factory=dict)  # id -> account login


@dataclass
class FakeOAuth:
    github_client_id: str = "Iv1.fakeclient"
    github_client_secret: str = "github-client-secret-0123456789"
    slack_client_id: str = "1111.2222"
    slack_client_secret: str = "slack-client-secret-0123456789"
    github_login: str = "octocat"
    slack_team: tuple[str, str] = ("T0001", "Acme")
    apps: dict[int, GithubApp] = field(default_factory=dict)
    requests: list[tuple[str, str, dict[str, str], bytes]] = field(default_factory=list)
    codes: dict[str, dict[str, Any]] = field(default_factory=dict)  # code -> what it grants
    user_tokens: dict[str, list[int]] = field(default_factory=dict)  # token -> its installations
    issued: list[str] = field(default_factory=list)  # every token handed out
    runner: web.AppRunner | None = None
    port: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def add_app(self, app_id: int, slug: str, public_key: rsa.RSAPublicKey, setup_url: str = "") -> GithubApp:
        app = GithubApp(app_id, slug, public_key, setup_url)
        self.apps[app_id] = app
        return app

    async def start(self) -> FakeOAuth:
        app = web.Application(middlewares=[self._record])
        app.router.add_get("/login/oauth/authorize", self._github_authorize)
        app.router.add_post("/login/oauth/access_token", self._github_token)
        app.router.add_get("/user", self._github_user)
        app.router.add_get("/user/installations", self._github_user_installations)
        app.router.add_get("/apps/{slug}/installations/new", self._github_install)
        app.router.add_post("/app/installations/{id}/access_tokens", self._github_installation_token)
        app.router.add_get("/oauth/v2/authorize", self._slack_authorize)
        app.router.add_post("/api/oauth.v2.access", self._slack_access)
        self.runner, self.port = await serve_app(app)
        return self

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()

    @web.middleware
    async def _record(self, request: web.Request, handler: Any) -> web.StreamResponse:
        self.requests.append((request.method, request.path_qs, dict(request.headers), await request.read()))
        return await handler(request)

    def _code(self, **grant: Any) -> str:
        code = secrets.token_hex(10)
        self.codes[code] = grant
        return code

    def _redirect(self, to: str, **params: str) -> web.Response:
        sep = "&" if "?" in to else "?"
        return web.Response(status=302, headers={"Location": f"{to}{sep}{urlencode(params)}"})

    # --- GitHub: OAuth web flow ------------------------------------------------------------

    async def _github_authorize(self, request: web.Request) -> web.Response:
        q = request.query
        if q.get("client_id") != self.github_client_id:
            return web.Response(status=404, text="unknown client_id")
        redirect = q.get("redirect_uri", "")
        code = self._code(provider="github", client_id=q["client_id"], redirect_uri=redirect)
        return self._redirect(redirect, code=code, state=q.get("state", ""))

    async def _github_token(self, request: web.Request) -> web.Response:
        form = (
            dict(await request.post()) if request.content_type != "application/json" else await request.json()
        )
        grant = self.codes.pop(str(form.get("code", "")), None)
        if (
            form.get("client_id") != self.github_client_id
            or form.get("client_secret") != self.github_client_secret
        ):
            answer = {
                "error": "incorrect_client_credentials",
                "error_description": "The client_id and/or client_secret passed are incorrect.",
            }
        elif (
            grant is None
            or grant["provider"] != "github"
            or grant["redirect_uri"] != form.get("redirect_uri")
        ):
            answer = {
                "error": "bad_verification_code",
                "error_description": "The code passed is incorrect or expired.",
            }
        else:
            token = "gho_" + secrets.token_hex(18)
            self.issued.append(token)
            self.user_tokens[token] = grant.get("installations", [])
            answer = {"access_token": token, "token_type": "bearer", "scope": "repo"}
        # GitHub answers 200 either way; JSON only when asked for.
        if "application/json" in request.headers.get("Accept", ""):
            return web.json_response(answer)
        return web.Response(text=urlencode(answer), content_type="application/x-www-form-urlencoded")

    def _user_token(self, request: web.Request) -> str | None:
        auth = request.headers.get("Authorization", "")
        token = auth.partition(" ")[2]
        return token if token in self.user_tokens else None

    async def _github_user(self, request: web.Request) -> web.Response:
        if self._user_token(request) is None:
            return web.json_response({"message": "Bad credentials"}, status=401)
        return web.json_response({"login": self.github_login, "id": 583231, "type": "User"})

    async def _github_user_installations(self, request: web.Request) -> web.Response:
        token = self._user_token(request)
        if token is None:
            return web.json_response({"message": "Bad credentials"}, status=401)
        found = [
            {"id": iid, "app_id": app.app_id, "account": {"login": login, "type": "Organization"}}
            for app in self.apps.values()
            for iid, login in app.installations.items()
            if iid in self.user_tokens[token]
        ]
        return web.json_response({"total_count": len(found), "installations": found})

    # --- GitHub: App installation ----------------------------------------------------------

    async def _github_install(self, request: web.Request) -> web.Response:
        """The user installs the App on an account: GitHub sends them to the setup URL (with a
        code when the App asks for user authorization during installation)."""
        slug = request.match_info["slug"]
        app = next((a for a in self.apps.values() if a.slug == slug), None)
        if app is None:
            return web.Response(status=404)
        iid = int(request.query.get("installation_id", "0")) or max(app.installations, default=41000) + 1
        app.installations.setdefault(iid, request.query.get("account", "acme-org"))
        code = self._code(
            provider="github",
            client_id=self.github_client_id,
            redirect_uri=app.setup_url,
            installations=[iid],
        )
        return self._redirect(
            app.setup_url,
            installation_id=str(iid),
            setup_action="install",
            state=request.query["state"],
            code=code,
        )

    def _verified_app(self, jwt: str) -> GithubApp | str:
        """The App a JWT is from, checked as GitHub does: RS256 by the App's key, iss its id,
        exp in the future and at most 10 minutes after iat. A str says what is wrong."""
        try:
            head_b64, body_b64, sig_b64 = jwt.split(".")
            head = json.loads(_b64url(head_b64))
            claims = json.loads(_b64url(body_b64))
            signature = _b64url(sig_b64)
        except (ValueError, binascii.Error):
            return "A JSON web token could not be decoded"
        if head.get("alg") != "RS256":
            return "'alg' must be RS256"
        app = self.apps.get(int(claims.get("iss", 0)))
        if app is None:
            return "Integration not found"
        try:
            app.public_key.verify(
                signature, f"{head_b64}.{body_b64}".encode(), padding.PKCS1v15(), hashes.SHA256()
            )
        except InvalidSignature:
            return "A JSON web token could not be decoded"
        now = time.time()
        if not (claims.get("exp", 0) > now and claims["exp"] - claims.get("iat", 0) <= 660):
            return "'Expiration time' claim ('exp') is too far in the future or in the past"
        return app

    async def _github_installation_token(self, request: web.Request) -> web.Response:
        auth = request.headers.get("Authorization", "")
        if not auth.startswith("Bearer "):
            return web.json_response({"message": "A JSON web token could not be decoded"}, status=401)
        app = self._verified_app(auth[7:])
        if isinstance(app, str):
            return web.json_response({"message": app}, status=401)
        iid = int(request.match_info["id"])
        if iid not in app.installations:
            return web.json_response({"message": "Not Found"}, status=404)
        token = "ghs_" + secrets.token_hex(18)
        self.issued.append(token)
        expires = dt.datetime.now(dt.UTC).replace(microsecond=0) + dt.timedelta(hours=1)
        return web.json_response(
            {
                "token": token,
                "expires_at": expires.isoformat().replace("+00:00", "Z"),
                "permissions": {"pull_requests": "write", "contents": "read"},
                "repository_selection": "all",
            },
            status=201,
        )

    # --- Slack: OAuth v2 -------------------------------------------------------------------

    async def _slack_authorize(self, request: web.Request) -> web.Response:
        q = request.query
        if q.get("client_id") != self.slack_client_id:
            return web.Response(status=400, text="invalid_client_id")
        redirect = q.get("redirect_uri", "")
        code = self._code(provider="slack", redirect_uri=redirect, scope=q.get("scope", ""))
        return self._redirect(redirect, code=code, state=q.get("state", ""))

    async def _slack_access(self, request: web.Request) -> web.Response:
        form = dict(await request.post())
        client_id, client_secret = form.get("client_id"), form.get("client_secret")
        auth = request.headers.get("Authorization", "")
        if auth.startswith("Basic "):
            client_id, _, client_secret = base64.b64decode(auth[6:]).decode().partition(":")
        if client_id != self.slack_client_id or client_secret != self.slack_client_secret:
            return web.json_response({"ok": False, "error": "invalid_client"})
        grant = self.codes.pop(str(form.get("code", "")), None)
        if grant is None or grant["provider"] != "slack":
            return web.json_response({"ok": False, "error": "invalid_code"})
        if form.get("redirect_uri") and form["redirect_uri"] != grant["redirect_uri"]:
            return web.json_response({"ok": False, "error": "bad_redirect_uri"})
        token = "xoxb-" + "-".join(secrets.token_hex(6) for _ in range(3))
        self.issued.append(token)
        team_id, team_name = self.slack_team
        return web.json_response(
            {
                "ok": True,
                "access_token": token,
                "token_type": "bot",
                "scope": grant["scope"],
                "bot_user_id": "U0BOT",
                "app_id": "A0APP",
                "team": {"id": team_id, "name": team_name},
                "enterprise": None,
                "authed_user": {"id": "U0USER"},
            }
        )
