"""GitHub's REST API, as much as a review needs: a pull request's files and diff, and a comment.

Documented endpoints: GET /repos/{owner}/{repo}/pulls/{n}/files, GET /repos/{owner}/{repo}/pulls/{n}
with ``Accept: application/vnd.github.diff``, POST /repos/{owner}/{repo}/issues/{n}/comments.
Public repositories can be read without a token; a comment needs one.
"""

from __future__ import annotations

import re
from typing import Any

import httpx
import msgspec

from conveyor.executor.backends.base import AgentError, AgentJob, TransientError
from conveyor.shared.runtime.config import Secret

API_VERSION = "2022-11-28"
_REPO = re.compile(r"^[A-Za-z0-9_.-]{1,100}/[A-Za-z0-9_.-]{1,100}\Z")
MAX_DIFF_BYTES = 1024 * 1024  # a bigger diff is cut off: a review of the first megabyte
MAX_PATCH_CHARS = 20_000  # per file in the files listing


def check_pull(repo: Any, number: Any) -> tuple[str, int]:
    """``repo`` is owner/name and ``number`` a positive integer, or AgentError naming the field."""
    if not isinstance(repo, str) or not _REPO.match(repo) or ".." in repo:
        raise AgentError(f"repo must be owner/name, got {str(repo)[:100]!r}")
    if isinstance(number, str) and number.isdigit():
        number = int(number)
    if not isinstance(number, int) or isinstance(number, bool) or not 0 < number < 2**31:
        raise AgentError(f"number must be a positive pull request number, got {str(number)[:20]!r}")
    return repo, number


class GitHubClient:
    def __init__(
        self, client: httpx.AsyncClient, base_url: str, timeout_s: float, fallback_token: Secret | None
    ) -> None:
        self.client = client
        self.base_url = base_url.rstrip("/")
        self.timeout_s = timeout_s
        self.fallback_token = fallback_token

    async def token(self, job: AgentJob) -> str | None:
        """The project's GitHub token; else GITHUB_TOKEN; else None (reads go unauthenticated)."""
        token = await job.credentials("github")
        if token:
            return token
        return self.fallback_token.reveal() if self.fallback_token else None

    async def _request(
        self,
        job: AgentJob,
        method: str,
        path: str,
        token: str | None,
        *,
        accept: str = "application/vnd.github+json",
        body: dict[str, Any] | None = None,
        params: dict[str, Any] | None = None,
    ) -> httpx.Response:
        headers = {
            "accept": accept,
            "x-github-api-version": API_VERSION,
            "user-agent": "conveyor-executor",  # GitHub refuses requests without one
        }
        if token:
            headers["authorization"] = f"Bearer {token}"
        content = None
        if body is not None:
            headers["content-type"] = "application/json"
            content = msgspec.json.encode(body)
        timeout = min(self.timeout_s, job.remaining_s)
        try:
            resp = await self.client.request(
                method,
                self.base_url + path,
                headers=headers,
                content=content,
                params=params,
                timeout=httpx.Timeout(timeout),
            )
        except httpx.TimeoutException as exc:
            raise TransientError(f"GitHub API timed out ({type(exc).__name__})") from exc
        except httpx.TransportError as exc:
            raise TransientError(f"GitHub API unreachable: {type(exc).__name__}") from exc
        if resp.status_code < 300:
            return resp
        try:
            message = str(resp.json().get("message", ""))[:200]
        except (ValueError, AttributeError):
            message = resp.text[:200]
        text = f"GitHub API answered {resp.status_code} to {method} {path}: {message}"
        if resp.status_code == 429 or resp.status_code >= 500:
            raise TransientError(text, status_code=resp.status_code)
        if resp.status_code == 403 and resp.headers.get("x-ratelimit-remaining") == "0":
            raise TransientError(text + " (rate limited)", status_code=403)
        raise AgentError(text)

    async def pull_files(
        self, job: AgentJob, repo: str, number: int, token: str | None
    ) -> list[dict[str, Any]]:
        resp = await self._request(
            job, "GET", f"/repos/{repo}/pulls/{number}/files", token, params={"per_page": 100}
        )
        try:
            items = resp.json()
        except ValueError as exc:
            raise AgentError("GitHub API answered the files listing with a body that is not JSON") from exc
        if not isinstance(items, list):
            raise AgentError("GitHub API answered the files listing with something other than a list")
        out = []
        for item in items:
            if not isinstance(item, dict):
                continue
            patch = item.get("patch")
            if isinstance(patch, str) and len(patch) > MAX_PATCH_CHARS:
                patch = patch[:MAX_PATCH_CHARS] + "\n... (cut off)"
            out.append(
                {
                    "filename": item.get("filename"),
                    "status": item.get("status"),
                    "additions": item.get("additions"),
                    "deletions": item.get("deletions"),
                    "patch": patch,
                }
            )
        return out

    async def pull_diff(self, job: AgentJob, repo: str, number: int, token: str | None) -> str:
        resp = await self._request(
            job, "GET", f"/repos/{repo}/pulls/{number}", token, accept="application/vnd.github.diff"
        )
        raw = resp.content
        if len(raw) > MAX_DIFF_BYTES:
            job.log(
                "warning",
                f"the diff of {repo}#{number} is {len(raw)} bytes: reviewing the first {MAX_DIFF_BYTES}",
            )
            raw = raw[:MAX_DIFF_BYTES]
        return raw.decode("utf-8", errors="replace")

    async def comment(self, job: AgentJob, repo: str, number: int, body: str, token: str) -> str:
        """Post ``body`` as a comment on the pull request; returns the comment's URL."""
        resp = await self._request(
            job, "POST", f"/repos/{repo}/issues/{number}/comments", token, body={"body": body[:65_000]}
        )
        try:
            url = resp.json().get("html_url")
        except (ValueError, AttributeError):
            url = None
        return str(url or "")
