"""pr-review: what a GitHub ``pull_request`` webhook (opened, synchronize) runs by default.

With an LLM configured it is an LLM agent granted the github tool (its prompt says how to
use it). Offline it is this: fetch the pull request's diff through the same GitHub client,
run the builtin ``dev`` review on it, and post the review as a comment when the project has
a GitHub token (its integration, or GITHUB_TOKEN). Without one the job log says so and the
review is only the job's result.
"""

from __future__ import annotations

from typing import Any

import msgspec

from conveyor.executor.backends.base import AgentError, AgentJob
from conveyor.executor.builtin import dev
from conveyor.executor.builtin.payload import Payload
from conveyor.executor.tools.github import GitHubClient, check_pull
from conveyor.shared.contracts.events import NOT_JSON, ResultBody

REVIEWED_ACTIONS = ("opened", "synchronize")


def pull_of(payload: Any) -> tuple[str, int] | None:
    """(owner/name, number) from a pull_request webhook body; None when it is not one."""
    if not isinstance(payload, dict):
        return None
    repo = (payload.get("repository") or {}).get("full_name")
    number = payload.get("number") or (payload.get("pull_request") or {}).get("number")
    if repo is None or number is None:
        return None
    return check_pull(repo, number)


def comment_of(body: ResultBody, repo: str, number: int) -> str:
    lines = ["### Conveyor review", "", body.summary]
    if body.suggestions:
        lines += ["", *[f"- {s}" for s in body.suggestions]]
    return "\n".join(lines)


async def review_pull_request(job: AgentJob, github: GitHubClient) -> ResultBody:
    name = job.agent.name
    try:
        payload = msgspec.json.decode(bytes(job.request.input)) if job.request.input else {}
    except NOT_JSON as exc:
        raise AgentError(f"input is not JSON: {exc}") from exc
    action = payload.get("action") if isinstance(payload, dict) else None
    if action not in REVIEWED_ACTIONS:
        return ResultBody(summary=f"{name}: nothing to review for a pull request {action!r} event")
    target = pull_of(payload)
    if target is None:
        raise AgentError("the input is not a GitHub pull_request event (no repository.full_name and number)")
    repo, number = target
    token = await github.token(job)
    diff = await github.pull_diff(job, repo, number, token)
    job.log("info", f"read the diff of {repo}#{number}: {len(diff.encode())} bytes")
    body = dev.analyse(Payload.of({"diff": diff}), name)
    if not token:
        job.log(
            "info", f"no comment posted on {repo}#{number}: the project has no GitHub integration connected"
        )
        return body
    url = await github.comment(job, repo, number, comment_of(body, repo, number), token)
    job.log("info", f"review posted as a comment on {repo}#{number}" + (f": {url}" if url else ""))
    return body
