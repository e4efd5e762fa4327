"""A local GitHub REST API for tests: a pull request's files and diff, and issue comments.

Follows the documented endpoints and answers: GET /repos/{owner}/{repo}/pulls/{n}/files,
GET /repos/{owner}/{repo}/pulls/{n} (JSON, or the unified diff with ``Accept:
application/vnd.github.diff``), POST /repos/{owner}/{repo}/issues/{n}/comments (201). As
GitHub does, it refuses a request without a User-Agent (403), a wrong token (401 "Bad
credentials"), a comment without a token (401 "Requires authentication"), and answers 404 for
a private repository's pull request read without its token.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from conveyor.shared.testing.rawhttp import LocalServer


@dataclass
class PullRequest:
    diff: str
    files: list[dict[str, Any]] = field(default_factory=list)
    private: bool = False
    title: str = "A change"


@dataclass
class Comment:
    repo: str
    number: int
    body: str
    headers: dict[str, str]


def _error(status: int, message: str) -> web.Response:
    return web.json_response(
        {"message": message, "documentation_url": "https://docs.github.com/rest", "status": str(status)},
        status=status,
    )


class FakeGitHub(LocalServer):
    def __init__(self, token: str = "ghp_test_token") -> None:
        super().__init__()
        self.token = token
        self.pulls: dict[tuple[str, int], PullRequest] = {}
        self.comments: list[Comment] = []
        self.requests: list[tuple[str, str, dict[str, str]]] = []  # method, path, headers

    def routes(self, app: web.Application) -> None:
        app.router.add_get("/repos/{owner}/{repo}/pulls/{number}/files", self._files)
        app.router.add_get("/repos/{owner}/{repo}/pulls/{number}", self._pull)
        app.router.add_post("/repos/{owner}/{repo}/issues/{number}/comments", self._comment)

    def add_pull(self, repo: str, number: int, diff: str, *, private: bool = False) -> PullRequest:
        files = []
        for part in diff.split("diff --git ")[1:]:
            name = part.split("\n", 1)[0].split(" b/")[-1]
            lines = part.splitlines()
            files.append(
                {
                    "sha": "0" * 40,
                    "filename": name,
                    "status": "added" if "new file mode" in part else "modified",
                    "additions": sum(1 for x in lines if x.startswith("+") and not x.startswith("+++")),
                    "deletions": sum(1 for x in lines if x.startswith("-") and not x.startswith("---")),
                    "changes": 0,
                    "patch": part[part.find("@@") :] if "@@" in part else "",
                }
            )
        pr = PullRequest(diff=diff, files=files, private=private)
        self.pulls[(repo, number)] = pr
        return pr

    def _check(self, request: web.Request) -> tuple[bool, web.Response | None]:
        """(authenticated, refusal): GitHub's checks every request passes first."""
        self.requests.append((request.method, request.path, dict(request.headers)))
        if not request.headers.get("User-Agent"):
            return False, _error(
                403,
                "Request forbidden by administrative rules. Please make sure your "
                "request has a User-Agent header",
            )
        auth = request.headers.get("Authorization")
        if auth is None:
            return False, None
        if auth not in (f"Bearer {self.token}", f"token {self.token}"):
            return False, _error(401, "Bad credentials")
        return True, None

    def _find(self, request: web.Request, authed: bool) -> tuple[str, int, PullRequest | None]:
        repo = f"{request.match_info['owner']}/{request.match_info['repo']}"
        try:
            number = int(request.match_info["number"])
        except ValueError:
            return repo, 0, None
        pr = self.pulls.get((repo, number))
        if pr is not None and pr.private and not authed:
            return repo, number, None
        return repo, number, pr

    async def _files(self, request: web.Request) -> web.Response:
        authed, refusal = self._check(request)
        if refusal is not None:
            return refusal
        _, _, pr = self._find(request, authed)
        if pr is None:
            return _error(404, "Not Found")
        return web.json_response(pr.files)

    async def _pull(self, request: web.Request) -> web.Response:
        authed, refusal = self._check(request)
        if refusal is not None:
            return refusal
        repo, number, pr = self._find(request, authed)
        if pr is None:
            return _error(404, "Not Found")
        if request.headers.get("Accept") == "application/vnd.github.diff":
            return web.Response(text=pr.diff, content_type="text/x-diff")
        return web.json_response(
            {
                "number": number,
                "state": "open",
                "title": pr.title,
                "html_url": f"https://github.com/{repo}/pull/{number}",
            }
        )

    async def _comment(self, request: web.Request) -> web.Response:
        authed, refusal = self._check(request)
        if refusal is not None:
            return refusal
        if not authed:
            return _error(401, "Requires authentication")
        repo, number, pr = self._find(request, authed)
        if pr is None:
            return _error(404, "Not Found")
        try:
            body = await request.json()
        except ValueError:
            return _error(400, "Problems parsing JSON")
        if not isinstance(body, dict) or not isinstance(body.get("body"), str):
            return _error(422, 'Invalid request.\n\n"body" wasn\'t supplied.')
        self.comments.append(Comment(repo, number, body["body"], dict(request.headers)))
        n = len(self.comments)
        return web.json_response(
            {
                "id": n,
                "html_url": f"https://github.com/{repo}/pull/{number}#issuecomment-{n}",
                "body": body["body"],
                "user": {"login": "conveyor[bot]"},
            },
            status=201,
        )
