"""GitHub provider: a repository per site from a template, site-config.json committed through
the contents API, and the template's deploy.yml workflow run to build and push the image.

Auth is a GitHub App: an RS256 JWT (iss = app id, 10 minutes at most) buys an installation
token (POST /app/installations/{id}/access_tokens), cached until shortly before it expires.
Throttling (429, or 403 with x-ratelimit-remaining: 0) waits for Retry-After or the reset
time; 5xx is retried with backoff; a 401 refreshes the token once.

Steps (all idempotent):
  creating_repo      POST /repos/{template}/generate (422 "already exists" is fine), then wait
                     until the branch exists: GitHub copies the template asynchronously.
  committing_config  PUT /repos/{repo}/contents/site-config.json with the current blob sha
                     (409 on a stale sha: read it again and retry). Previews go to their own
                     preview/<deployment> branch.
  building           POST .../actions/workflows/deploy.yml/dispatches, find the run by its
                     name (the workflow's run-name carries the deployment id), poll it to
                     completion, then find the pushed image in ECR (tag = commit sha).
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import logging
import time
from typing import Any

import httpx
import jwt
import msgspec

from conveyor.deployer.config import Settings
from conveyor.deployer.providers.aws import Backoff
from conveyor.deployer.providers.base import Outputs, Provider, ProviderError, StepContext
from conveyor.deployer.providers.ecr import EcrImages
from conveyor.shared.contracts.errors import ConfigError

log = logging.getLogger(__name__)

API_VERSION = "2022-11-28"
CONFIG_PATH = "site-config.json"
MAX_TRIES = 6
MAX_WAIT_S = 60.0


class GitHubError(ProviderError):
    def __init__(self, status: int, message: str, *, retryable: bool = False) -> None:
        super().__init__(f"GitHub answered {status}: {message}", retryable=retryable)
        self.status = status


class GitHubApp:
    """Installation tokens for one GitHub App installation."""

    def __init__(self, http: httpx.AsyncClient, app_id: str, installation_id: str, private_key: str) -> None:
        self.http = http
        self.app_id = app_id
        self.installation_id = installation_id
        self.private_key = private_key
        self._token: tuple[str, float] | None = None
        self._lock = asyncio.Lock()

    def app_jwt(self, now: float | None = None) -> str:
        """RS256 JWT: issued a minute in the past (clock drift), valid nine minutes."""
        now = int(now if now is not None else time.time())
        claims = {"iat": now - 60, "exp": now + 540, "iss": self.app_id}
        return jwt.encode(claims, self.private_key, algorithm="RS256")

    async def token(self, *, refresh: bool = False) -> str:
        async with self._lock:
            if self._token and not refresh and self._token[1] > time.time() + 60:
                return self._token[0]
            r = await self.http.post(
                f"/app/installations/{self.installation_id}/access_tokens",
                headers={"Authorization": f"Bearer {self.app_jwt()}", **_HEADERS},
            )
            if r.status_code != 201:
                raise GitHubError(
                    r.status_code, f"installation token: {_message(r)}", retryable=r.status_code >= 500
                )
            body = r.json()
            expires = _parse_time(body.get("expires_at")) or time.time() + 3000
            self._token = (body["token"], expires)
            return self._token[0]


_HEADERS = {"Accept": "application/vnd.github+json", "X-GitHub-Api-Version": API_VERSION}


def _message(r: httpx.Response) -> str:
    try:
        body = r.json()
    except ValueError:
        return r.text[:300]
    msg = str(body.get("message", "")) if isinstance(body, dict) else ""
    errors = body.get("errors") if isinstance(body, dict) else None
    if errors:
        msg += " " + "; ".join(str(e.get("message", e)) if isinstance(e, dict) else str(e) for e in errors)
    return msg.strip() or r.text[:300]


def _parse_time(value: Any) -> float | None:
    if not isinstance(value, str):
        return None
    try:
        return dt.datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def _throttle_wait(r: httpx.Response) -> float | None:
    """Seconds to wait when GitHub says we are rate limited, else None."""
    if (
        r.status_code == 429
        or (r.status_code == 403 and r.headers.get("x-ratelimit-remaining") == "0")
        or (r.status_code == 403 and "rate limit" in r.text.lower())
    ):
        if (after := r.headers.get("retry-after", "")).isdigit():
            return min(MAX_WAIT_S, float(after))
        if (reset := r.headers.get("x-ratelimit-reset", "")).isdigit():
            return min(MAX_WAIT_S, max(1.0, int(reset) - time.time()))
        return 60.0 if r.status_code == 403 else 5.0
    return None


class GitHubApi:
    """Authenticated requests with throttling, 5xx and token-expiry handling."""

    def __init__(self, http: httpx.AsyncClient, app: GitHubApp) -> None:
        self.http = http
        self.app = app

    async def request(
        self, method: str, path: str, *, ok: tuple[int, ...] = (200,), **kw: Any
    ) -> httpx.Response:
        """The response when its status is in ``ok``; GitHubError otherwise (after retries)."""
        refreshed = False
        for attempt in range(1, MAX_TRIES + 1):
            token = await self.app.token(refresh=refreshed)
            try:
                r = await self.http.request(
                    method, path, headers={"Authorization": f"Bearer {token}", **_HEADERS}, **kw
                )
            except httpx.TransportError as exc:
                if attempt == MAX_TRIES:
                    raise ProviderError(f"GitHub unreachable: {exc}", retryable=True) from exc
                await asyncio.sleep(min(MAX_WAIT_S, 2.0 ** (attempt - 1)))
                continue
            if r.status_code in ok:
                return r
            if r.status_code == 401 and not refreshed:
                refreshed = True
                continue
            if (wait := _throttle_wait(r)) is not None and attempt < MAX_TRIES:
                log.warning("GitHub throttled %s %s; waiting %.0fs", method, path, wait)
                await asyncio.sleep(wait)
                continue
            if r.status_code >= 500 and attempt < MAX_TRIES:
                await asyncio.sleep(min(MAX_WAIT_S, 2.0 ** (attempt - 1)))
                continue
            raise GitHubError(
                r.status_code, f"{method} {path}: {_message(r)}", retryable=r.status_code >= 500
            )
        raise ProviderError(f"GitHub: {method} {path} kept failing", retryable=True)


class GitHubProvider(Provider):
    name = "github"

    def __init__(self, settings: Settings, private_key: str, ecr: EcrImages | None = None) -> None:
        self.settings = settings
        self.private_key = private_key
        self.ecr = ecr
        self.http: httpx.AsyncClient | None = None
        self.api: GitHubApi | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> GitHubProvider:
        key = settings.github_private_key.reveal()
        if not key and settings.github_private_key_file:
            try:
                with open(settings.github_private_key_file) as fh:
                    key = fh.read()
            except OSError as exc:
                raise ConfigError(
                    f"invalid setting GITHUB_PRIVATE_KEY_FILE: {exc.strerror}",
                    setting="GITHUB_PRIVATE_KEY_FILE",
                ) from exc
        for name, value in (
            ("GITHUB_APP_ID", settings.github_app_id),
            ("GITHUB_INSTALLATION_ID", settings.github_installation_id),
            ("GITHUB_OWNER", settings.github_owner),
            ("GITHUB_TEMPLATE", settings.github_template),
            ("GITHUB_PRIVATE_KEY", key),
        ):
            if not value:
                raise ConfigError(f"missing setting {name} (needed by the github provider)", setting=name)
        if settings.github_template.count("/") != 1:
            raise ConfigError("invalid setting GITHUB_TEMPLATE: use owner/name", setting="GITHUB_TEMPLATE")
        return cls(settings, key, EcrImages.from_settings(settings))

    async def start(self) -> None:
        self.http = httpx.AsyncClient(
            base_url=self.settings.github_api_url,
            timeout=httpx.Timeout(30.0, connect=10.0),
            limits=httpx.Limits(max_connections=20),
        )
        app = GitHubApp(
            self.http, self.settings.github_app_id, self.settings.github_installation_id, self.private_key
        )
        self.api = GitHubApi(self.http, app)

    async def close(self) -> None:
        if self.http is not None:
            await self.http.aclose()

    def _api(self) -> GitHubApi:
        assert self.api is not None, "provider not started"
        return self.api

    def repo(self, slug: str) -> str:
        return f"{self.settings.github_owner}/{self.settings.github_repo_prefix}{slug}"

    def _branch(self, ctx: StepContext) -> str:
        return f"preview/{ctx.deployment_id}" if ctx.preview else self.settings.github_branch

    # --- creating_repo -----------------------------------------------------------------------

    async def create_repo(self, ctx: StepContext) -> Outputs:
        api, repo = self._api(), self.repo(ctx.slug)
        owner, name = repo.split("/")
        r = await api.request(
            "POST",
            f"/repos/{self.settings.github_template}/generate",
            ok=(201, 422),
            json={
                "owner": owner,
                "name": name,
                "description": f"{ctx.config.name}: published by Conveyor",
                "private": self.settings.github_private_repos,
                "include_all_branches": False,
            },
        )
        if r.status_code == 422:
            # Already exists (an earlier run, or a rerun of this one): it must really be there.
            r = await api.request("GET", f"/repos/{repo}", ok=(200, 404))
            if r.status_code == 404:
                raise GitHubError(422, f"cannot create {repo}: {_message(r)}")
        html_url = str(r.json().get("html_url", ""))
        # Template generation finishes asynchronously: wait for the branch to exist.
        backoff = Backoff(min(1.0, self.settings.poll_interval_s), cap=15.0)
        while True:
            b = await api.request(
                "GET", f"/repos/{repo}/branches/{self.settings.github_branch}", ok=(200, 404)
            )
            if b.status_code == 200:
                break
            await backoff.wait()
        return {"repo": repo, "repo_url": html_url}

    # --- committing_config --------------------------------------------------------------------

    async def commit_config(self, ctx: StepContext) -> Outputs:
        api, repo, branch = self._api(), self.repo(ctx.slug), self._branch(ctx)
        if ctx.preview:
            await self._ensure_branch(repo, branch)
        content = _config_bytes(ctx)
        for _ in range(4):
            current = await api.request(
                "GET", f"/repos/{repo}/contents/{CONFIG_PATH}", ok=(200, 404), params={"ref": branch}
            )
            sha = current.json().get("sha") if current.status_code == 200 else None
            if sha and base64.b64decode(current.json().get("content", "")) == content:
                # Already committed (a rerun after a crash): the branch head is that commit.
                head = await api.request("GET", f"/repos/{repo}/commits/{branch}")
                return {"commit_sha": head.json()["sha"], "branch": branch, "config_blob": sha}
            body: dict[str, Any] = {
                "message": f"{ctx.record.kind.capitalize()} {ctx.config.name}\n\n"
                f"Conveyor-Deployment: {ctx.deployment_id}",
                "content": base64.b64encode(content).decode(),
                "branch": branch,
            }
            if sha:
                body["sha"] = sha
            r = await api.request(
                "PUT", f"/repos/{repo}/contents/{CONFIG_PATH}", ok=(200, 201, 409, 422), json=body
            )
            if r.status_code in (200, 201):
                out = r.json()
                return {
                    "commit_sha": out["commit"]["sha"],
                    "branch": branch,
                    "config_blob": out["content"]["sha"],
                }
            log.info("%s on %s: %s; reading it again", r.status_code, CONFIG_PATH, _message(r))
        raise ProviderError(f"could not commit {CONFIG_PATH} to {repo}: it kept changing", retryable=True)

    async def _ensure_branch(self, repo: str, branch: str) -> None:
        api = self._api()
        exists = await api.request("GET", f"/repos/{repo}/branches/{branch}", ok=(200, 404))
        if exists.status_code == 200:
            return
        base = await api.request("GET", f"/repos/{repo}/git/ref/heads/{self.settings.github_branch}")
        await api.request(
            "POST",
            f"/repos/{repo}/git/refs",
            ok=(201, 422),  # 422: "Reference already exists"
            json={"ref": f"refs/heads/{branch}", "sha": base.json()["object"]["sha"]},
        )

    # --- building -------------------------------------------------------------------------------

    async def build(self, ctx: StepContext) -> Outputs:
        api, repo, branch = self._api(), self.repo(ctx.slug), self._branch(ctx)
        commit = ctx.external.get("commit_sha", "")
        workflow = self.settings.github_workflow
        run_id = ctx.external.get("run_id")
        if not run_id:
            await api.request(
                "POST",
                f"/repos/{repo}/actions/workflows/{workflow}/dispatches",
                ok=(204, 200),
                json={"ref": branch, "inputs": {"deployment_id": ctx.deployment_id, "commit_sha": commit}},
            )
            run_id = await self._find_run(repo, workflow, branch, ctx.deployment_id, commit)
            await ctx.save(run_id=run_id)
        backoff = Backoff(self.settings.poll_interval_s)
        while True:
            run = (await api.request("GET", f"/repos/{repo}/actions/runs/{run_id}")).json()
            if run.get("status") == "completed":
                break
            await backoff.wait()
        if run.get("conclusion") != "success":
            raise ProviderError(
                f"workflow run {run_id} concluded {run.get('conclusion')}: {run.get('html_url', '')}"
            )
        out = {"run_id": str(run_id), "run_url": str(run.get("html_url", ""))}
        if self.ecr is not None:
            image, digest = await self.ecr.image(commit)
            out.update(image=image, image_digest=digest, artifact=image)
        return out

    async def _find_run(self, repo: str, workflow: str, branch: str, deployment_id: str, commit: str) -> str:
        """The dispatched run: its run-name carries the deployment id (the API returns no id)."""
        backoff = Backoff(min(1.0, self.settings.poll_interval_s), cap=10.0)
        while True:
            r = await self._api().request(
                "GET",
                f"/repos/{repo}/actions/workflows/{workflow}/runs",
                params={"event": "workflow_dispatch", "branch": branch, "per_page": 30},
            )
            for run in r.json().get("workflow_runs", []):
                if deployment_id in str(run.get("display_title", "")) or (
                    commit and run.get("head_sha") == commit
                ):
                    return str(run["id"])
            await backoff.wait()


def _config_bytes(ctx: StepContext) -> bytes:
    return msgspec.json.format(msgspec.json.encode(ctx.config), indent=2) + b"\n"
