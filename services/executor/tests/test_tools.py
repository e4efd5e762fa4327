"""Tools for LLM agents against local servers that follow the documented APIs: OpenAI's and
Anthropic's tool calling (plain and streamed), GitHub's pull request and comment endpoints,
Slack's chat.postMessage; http_fetch's allowlist and SSRF guard; the per-run limits; the
offline pr-review agent; the example in docs/agents.md."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import re
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
from aiohttp import web

from conveyor.executor.backends.base import AgentError, AgentJob, BudgetExceeded
from conveyor.executor.backends.builtin import BuiltinBackend
from conveyor.executor.backends.http_llm import AnthropicBackend, OpenAIBackend
from conveyor.executor.config import Settings
from conveyor.executor.registry import Agent, build_registry
from conveyor.executor.service import SPEC
from conveyor.executor.tools.box import Toolbox, ToolSettings
from conveyor.executor.tools.http_fetch import host_allowed
from conveyor.shared.contracts import subjects
from conveyor.shared.contracts.events import JobRecord, JobRequest, ResultBody, TokenUsage, WebhookEvent
from conveyor.shared.runtime.config import Secret, load_settings
from conveyor.shared.runtime.runner import serve
from conveyor.shared.testing.fake_github import FakeGitHub
from conveyor.shared.testing.fake_llm import FakeLLM, ToolCall, Turn, tool_results
from conveyor.shared.testing.fake_slack import FakeSlack
from conveyor.shared.testing.rawhttp import serve_app

GH_TOKEN = "ghp_project_token_123"
DIFF = """diff --git a/app/db.py b/app/db.py
--- a/app/db.py
+++ b/app/db.py
@@ -1,2 +1,3 @@
 import sqlite3
+cur.execute("SELECT * FROM users WHERE id = " + user_id)
 def f():
"""
ANSWER = json.dumps({"summary": "SQL built by string concatenation", "suggestions": ["use parameters"]})


@dataclass
class Seen:
    """What a run told the job: its log, output deltas, usage, credential and delegate calls."""

    log: list[tuple[str, str]] = field(default_factory=list)
    output: list[str] = field(default_factory=list)
    usage: list[TokenUsage] = field(default_factory=list)
    delegated: list[tuple[str, str]] = field(default_factory=list)
    tokens: dict[str, str] = field(default_factory=dict)

    def text(self) -> str:
        return "\n".join(m for _, m in self.log)


def make_job(agent: Agent, seen: Seen, payload: Any = None, timeout_s: float = 30.0) -> AgentJob:
    async def credentials(provider: str) -> str | None:
        return seen.tokens.get(provider)

    async def delegate(name: str, task: str) -> ResultBody:
        seen.delegated.append((name, task))
        return ResultBody(summary=f"{name} did: {task}", suggestions=["ship it"])

    request = JobRequest(
        job_id="job_tools_1",
        agent=agent.name,
        created_at=dt.datetime.now(dt.UTC),
        source="api",
        prompt="Review pull request acme/app#7",
        input=json.dumps(payload or {}).encode(),
    )
    return AgentJob(
        agent=agent,
        request=request,
        attempt=1,
        deadline=time.monotonic() + timeout_s,
        log=lambda level, message: seen.log.append((level, message)),
        progress=lambda value: None,
        output=seen.output.append,
        usage=seen.usage.append,
        credentials=credentials,
        delegate=delegate,
    )


@pytest.fixture
async def llm() -> AsyncIterator[FakeLLM]:
    fake = await FakeLLM().start()
    yield fake
    await fake.stop()


@pytest.fixture
async def github() -> AsyncIterator[FakeGitHub]:
    fake = await FakeGitHub(token=GH_TOKEN).start()
    fake.add_pull("acme/app", 7, DIFF)
    yield fake
    await fake.stop()


@pytest.fixture
async def slack() -> AsyncIterator[FakeSlack]:
    fake = await FakeSlack().start()
    yield fake
    await fake.stop()


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient() as client:
        yield client


def toolbox(http: httpx.AsyncClient, github: FakeGitHub | None = None, **kw: Any) -> Toolbox:
    settings = ToolSettings(github_api_url=github.url if github else "http://127.0.0.1:9", **kw)
    return Toolbox(http, settings)


def llm_agent(llm: FakeLLM, api: str, **kw: Any) -> Agent:
    base = llm.url + "/v1" if api == "openai" else llm.url
    return Agent(
        name="reviewer",
        backend=api,
        timeout_s=30,
        retries=0,
        system_prompt="Review.",
        model="model-x",
        base_url=base,
        api_key=Secret("sk-test"),
        **kw,
    )


def backend(api: str, http: httpx.AsyncClient, tools: Toolbox) -> OpenAIBackend | AnthropicBackend:
    cls = OpenAIBackend if api == "openai" else AnthropicBackend
    return cls(http, connect_timeout_s=5, retry_after_cap_s=5, tools=tools)


# --- an LLM agent reads a pull request and comments on it ----------------------------------------


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "streamed"])
@pytest.mark.parametrize("api", ["openai", "anthropic"])
async def test_llm_agent_reads_a_pr_diff_and_posts_a_review_comment(
    api: str, stream: bool, llm: FakeLLM, github: FakeGitHub, http: httpx.AsyncClient
) -> None:
    def review(body: dict[str, Any]) -> Turn:
        [diff] = tool_results(body)  # what the github tool answered, as the model reads it
        assert "SELECT * FROM users" in diff
        return Turn(
            tool_calls=[
                ToolCall(
                    "github_post_comment",
                    {"repo": "acme/app", "number": 7, "body": "Line 2 builds SQL by concatenation."},
                )
            ]
        )

    llm.script = [
        Turn(
            text="Reading the diff.",
            tool_calls=[ToolCall("github_pull_request_diff", {"repo": "acme/app", "number": 7})],
        ),
        review,
        Turn(text=ANSWER),
    ]
    seen = Seen(tokens={"github": GH_TOKEN})
    agent = llm_agent(llm, api, tools=("github",), stream=stream)
    result = await backend(api, http, toolbox(http, github)).run(make_job(agent, seen))

    assert result.summary == "SQL built by string concatenation" and result.suggestions == ["use parameters"]
    [comment] = github.comments
    assert (comment.repo, comment.number) == ("acme/app", 7)
    assert comment.body == "Line 2 builds SQL by concatenation."
    assert comment.headers["Authorization"] == f"Bearer {GH_TOKEN}"
    diff_read = [h for m, p, h in github.requests if p == "/repos/acme/app/pulls/7"]
    assert diff_read and diff_read[0]["Accept"] == "application/vnd.github.diff"
    # The tools went out in the API's own format, and every response's usage was reported.
    first = llm.requests[0].body
    names = (
        [t["function"]["name"] for t in first["tools"]]
        if api == "openai"
        else [t["name"] for t in first["tools"]]
    )
    assert names == ["github_pull_request_files", "github_pull_request_diff", "github_post_comment"]
    assert len(llm.requests) == 3 and all(r.body.get("stream", False) is stream for r in llm.requests)
    assert seen.usage == [TokenUsage(model="model-x", input_tokens=100, output_tokens=20)] * 3
    # Every tool call is in the log, with its arguments and outcome size; the token is not.
    log = seen.text()
    assert 'tool github_pull_request_diff({"repo":"acme/app","number":7}) -> ' in log
    assert "tool github_post_comment(" in log and "review posted as a comment on acme/app#7" in log
    assert GH_TOKEN not in log
    if stream:
        assert "".join(seen.output) == "Reading the diff." + ANSWER


@pytest.mark.parametrize("api", ["openai", "anthropic"])
async def test_a_comment_without_a_github_integration_is_not_posted_and_the_log_says_so(
    api: str, llm: FakeLLM, github: FakeGitHub, http: httpx.AsyncClient
) -> None:
    llm.script = [
        Turn(tool_calls=[ToolCall("github_post_comment", {"repo": "acme/app", "number": 7, "body": "LGTM"})]),
        lambda body: Turn(text=json.dumps({"summary": tool_results(body)[0]})),
    ]
    seen = Seen()  # no credentials
    result = await backend(api, http, toolbox(http, github)).run(
        make_job(llm_agent(llm, api, tools=("github",)), seen)
    )
    assert github.comments == []
    assert result.summary == "error: not posted: this project has no GitHub integration connected"
    assert "no comment posted on acme/app#7: the project has no GitHub integration connected" in seen.text()
    if api == "anthropic":
        [res] = llm.requests[1].body["messages"][-1]["content"]
        assert res["type"] == "tool_result" and res["is_error"] is True


async def test_the_github_token_setting_is_the_fallback_when_the_project_has_none(
    llm: FakeLLM, github: FakeGitHub, http: httpx.AsyncClient
) -> None:
    llm.script = [
        Turn(tool_calls=[ToolCall("github_post_comment", {"repo": "acme/app", "number": 7, "body": "LGTM"})]),
        Turn(text=ANSWER),
    ]
    tools = toolbox(http, github, github_token=Secret(GH_TOKEN))
    await backend("openai", http, tools).run(make_job(llm_agent(llm, "openai", tools=("github",)), Seen()))
    [comment] = github.comments
    assert comment.headers["Authorization"] == f"Bearer {GH_TOKEN}"


async def test_an_agent_gets_only_the_tools_it_is_granted(
    llm: FakeLLM, github: FakeGitHub, http: httpx.AsyncClient
) -> None:
    llm.script = [
        Turn(tool_calls=[ToolCall("github_post_comment", {"repo": "acme/app", "number": 7, "body": "x"})]),
        lambda body: Turn(text=json.dumps({"summary": tool_results(body)[0]})),
    ]
    seen = Seen(tokens={"github": GH_TOKEN})
    agent = llm_agent(llm, "openai", tools=("slack",))
    result = await backend("openai", http, toolbox(http, github)).run(make_job(agent, seen))
    assert [t["function"]["name"] for t in llm.requests[0].body["tools"]] == ["slack_post_message"]
    assert result.summary == "error: no tool named 'github_post_comment' is available to this agent"
    assert github.comments == [] and github.requests == []


async def test_an_agent_without_tools_sends_none(llm: FakeLLM, http: httpx.AsyncClient) -> None:
    llm.script = [Turn(text=ANSWER)]
    await backend("anthropic", http, toolbox(http)).run(make_job(llm_agent(llm, "anthropic"), Seen()))
    assert "tools" not in llm.requests[0].body


# --- limits ------------------------------------------------------------------------------------


@pytest.mark.parametrize("api", ["openai", "anthropic"])
async def test_max_tool_calls_ends_the_run_with_a_clear_error(
    api: str, llm: FakeLLM, github: FakeGitHub, http: httpx.AsyncClient
) -> None:
    ask = Turn(tool_calls=[ToolCall("github_pull_request_files", {"repo": "acme/app", "number": 7})])
    llm.script = [ask, ask, ask, Turn(text=ANSWER)]
    seen = Seen()
    agent = llm_agent(llm, api, tools=("github",), max_tool_calls=2)
    with pytest.raises(AgentError, match=r"asked for 3 tool calls, over its max_tool_calls \(2\)") as err:
        await backend(api, http, toolbox(http, github)).run(make_job(agent, seen))
    assert not err.value.transient  # another attempt would do the same
    assert len([r for r in github.requests if r[1].endswith("/files")]) == 2
    assert len(llm.requests) == 3


async def test_max_run_tokens_ends_the_run_counted_from_the_responses_usage(
    llm: FakeLLM, github: FakeGitHub, http: httpx.AsyncClient
) -> None:
    ask = Turn(
        tool_calls=[ToolCall("github_pull_request_files", {"repo": "acme/app", "number": 7})],
        input_tokens=150,
        output_tokens=30,
    )
    llm.script = [ask, ask, Turn(text=ANSWER)]
    seen = Seen()
    agent = llm_agent(llm, "openai", tools=("github",), max_run_tokens=300)
    with pytest.raises(AgentError, match=r"used 360 tokens, over its max_run_tokens \(300\)"):
        await backend("openai", http, toolbox(http, github)).run(make_job(agent, seen))
    assert len(llm.requests) == 2 and len(seen.usage) == 2


@pytest.mark.parametrize("api", ["openai", "anthropic"])
async def test_a_run_that_posted_a_comment_is_not_retried_when_its_answer_is_malformed(
    api: str, llm: FakeLLM, github: FakeGitHub, http: httpx.AsyncClient
) -> None:
    post = ToolCall("github_post_comment", {"repo": "acme/app", "number": 7, "body": "LGTM"})
    llm.script = [Turn(tool_calls=[post]), Turn(text="no JSON here")]
    seen = Seen(tokens={"github": GH_TOKEN})
    run = backend(api, http, toolbox(http, github)).run
    with pytest.raises(
        AgentError, match="not retried: this attempt already called github_post_comment"
    ) as err:
        await run(make_job(llm_agent(llm, api, tools=("github",)), seen))
    assert not err.value.transient and len(github.comments) == 1
    # Without a call that changed something, the same answer is worth another attempt.
    llm.script = [
        Turn(tool_calls=[ToolCall("github_pull_request_diff", {"repo": "acme/app", "number": 7})]),
        Turn(text="no JSON here"),
    ]
    with pytest.raises(AgentError, match="no JSON object found") as err:
        await run(make_job(llm_agent(llm, api, tools=("github",)), seen))
    assert err.value.transient


async def test_budget_exceeded_from_the_usage_callback_ends_the_run(
    llm: FakeLLM, github: FakeGitHub, http: httpx.AsyncClient
) -> None:
    llm.script = [Turn(tool_calls=[ToolCall("github_pull_request_files", {"repo": "acme/app", "number": 7})])]
    seen = Seen()
    job = make_job(llm_agent(llm, "anthropic", tools=("github",)), seen)

    def spent(usage: TokenUsage) -> None:
        raise BudgetExceeded("project budget spent")

    job.usage = spent
    with pytest.raises(BudgetExceeded):
        await backend("anthropic", http, toolbox(http, github)).run(job)
    assert github.requests == []  # stopped before the tool ran


async def test_the_run_deadline_bounds_a_tool_call(http: httpx.AsyncClient) -> None:
    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(30)
        return web.Response(text="late")

    app = web.Application()
    app.router.add_get("/slow", slow)
    runner, port = await serve_app(app, shutdown_timeout=0.1)
    try:
        agent = Agent(
            name="f",
            backend="openai",
            timeout_s=1,
            retries=0,
            tools=("http_fetch",),
            allowed_hosts=("127.0.0.1",),
        )
        seen = Seen()
        tools = toolbox(http, allowed_networks="127.0.0.0/8")
        started = time.monotonic()
        text, failed = await tools.call(
            make_job(agent, seen, timeout_s=1.0), "http_fetch", {"url": f"http://127.0.0.1:{port}/slow"}
        )
        assert failed and text.startswith("error: no answer within")
        assert time.monotonic() - started < 10
    finally:
        await runner.cleanup()


# --- streaming ---------------------------------------------------------------------------------


@pytest.mark.parametrize("api", ["openai", "anthropic"])
async def test_streamed_text_deltas_reach_output_in_order_before_the_run_ends(
    api: str, llm: FakeLLM, http: httpx.AsyncClient
) -> None:
    llm.hold = asyncio.Event()
    llm.script = [Turn(text=ANSWER)]
    seen = Seen()
    agent = llm_agent(llm, api, stream=True)
    job = make_job(agent, seen)
    first = asyncio.Event()

    def output(text: str) -> None:
        seen.output.append(text)
        first.set()

    job.output = output
    run = asyncio.create_task(backend(api, http, toolbox(http)).run(job))
    await asyncio.wait_for(first.wait(), 10)
    # The first delta is here while the model is still answering.
    assert seen.output == [ANSWER[:7]] and not run.done()
    llm.hold.set()
    result = await run
    assert result.summary == "SQL built by string concatenation"
    assert seen.output == [ANSWER[i : i + 7] for i in range(0, len(ANSWER), 7)]
    body = llm.requests[0].body
    assert body["stream"] is True
    if api == "openai":
        assert body["stream_options"] == {"include_usage": True}
    assert seen.usage == [TokenUsage(model="model-x", input_tokens=100, output_tokens=20)]


@pytest.mark.parametrize("api", ["openai", "anthropic"])
async def test_a_refused_streamed_request_is_the_same_error_as_a_plain_one(
    api: str, llm: FakeLLM, http: httpx.AsyncClient
) -> None:
    llm.api_key = "another-key"
    seen = Seen()
    with pytest.raises(AgentError, match=f"{api} API answered 401"):
        await backend(api, http, toolbox(http)).run(make_job(llm_agent(llm, api, stream=True), seen))


# --- http_fetch --------------------------------------------------------------------------------


@pytest.fixture
async def site() -> AsyncIterator[int]:
    async def page(request: web.Request) -> web.Response:
        return web.Response(text="hello " * 10, content_type="text/plain")

    app = web.Application()
    app.router.add_get("/page", page)
    runner, port = await serve_app(app, shutdown_timeout=0.1)
    yield port
    await runner.cleanup()


def fetcher(*hosts: str) -> Agent:
    return Agent(
        name="f", backend="openai", timeout_s=30, retries=0, tools=("http_fetch",), allowed_hosts=hosts
    )


async def test_http_fetch_reads_an_allowed_host(site: int, http: httpx.AsyncClient) -> None:
    seen = Seen()
    tools = toolbox(http, allowed_networks="127.0.0.0/8", http_fetch_max_bytes=20)
    text, failed = await tools.call(
        make_job(fetcher("127.0.0.1"), seen), "http_fetch", {"url": f"http://127.0.0.1:{site}/page"}
    )
    assert not failed
    answer = json.loads(text)
    assert answer["status"] == 200 and answer["body"] == ("hello " * 10)[:20] and answer["truncated"] is True
    assert f'tool http_fetch({{"url":"http://127.0.0.1:{site}/page"}}) -> {len(text)} bytes' in seen.text()


async def test_http_fetch_refuses_a_host_off_the_allowlist_without_dialling(http: httpx.AsyncClient) -> None:
    hits: list[str] = []

    async def any_page(request: web.Request) -> web.Response:
        hits.append(request.path)
        if request.path == "/hop":
            raise web.HTTPFound(request.query["to"])
        return web.Response(text="should not be read")

    app = web.Application()
    app.router.add_get("/{tail:.*}", any_page)
    runner, port = await serve_app(app, shutdown_timeout=0.1)
    try:
        tools = toolbox(http, allowed_networks="127.0.0.0/8")
        job = make_job(fetcher("docs.example.com"), Seen())
        text, failed = await tools.call(job, "http_fetch", {"url": f"http://127.0.0.1:{port}/x"})
        assert failed and text == "error: host '127.0.0.1' is not in this agent's allowed_hosts"
        # A redirect to a host off the list is refused too.
        job = make_job(fetcher("127.0.0.1"), Seen())
        text, failed = await tools.call(
            job, "http_fetch", {"url": f"http://127.0.0.1:{port}/hop?to=http://localhost:{port}/x"}
        )
        assert failed and "host 'localhost' is not in this agent's allowed_hosts" in text
        assert hits == ["/hop"]
    finally:
        await runner.cleanup()


@pytest.mark.parametrize(
    ("host", "kind"),
    [
        ("127.0.0.1", "loopback"),
        ("localhost", "loopback"),
        ("10.1.2.3", "private"),
        ("169.254.169.254", "cloud metadata"),
        ("[::1]", "loopback"),
    ],
)
async def test_http_fetch_refuses_loopback_and_private_addresses_on_the_allowlist(
    host: str, kind: str, site: int, http: httpx.AsyncClient
) -> None:
    tools = toolbox(http)  # no TOOL_ALLOWED_NETWORKS: the deliverer's policy as it is
    job = make_job(fetcher(host.strip("[]")), Seen())
    text, failed = await tools.call(job, "http_fetch", {"url": f"http://{host}:{site}/page"})
    assert failed and f"is a {kind} address (TOOL_ALLOWED_NETWORKS can allow it)" in text
    assert text.startswith("error: http_fetch refused:")


async def test_http_fetch_log_hides_credentials_in_the_url(site: int, http: httpx.AsyncClient) -> None:
    seen = Seen()
    tools = toolbox(http, allowed_networks="127.0.0.0/8")
    url = f"http://127.0.0.1:{site}/page?access_token=s3cr3t-value&page=2"
    text, failed = await tools.call(make_job(fetcher("127.0.0.1"), seen), "http_fetch", {"url": url})
    assert not failed and json.loads(text)["status"] == 200
    assert "s3cr3t-value" not in seen.text() and "access_token=[hidden]&page=2" in seen.text()


# --- github, slack and delegate as tools ----------------------------------------------------------


async def test_github_files_listing_and_a_private_repo_needs_the_token(
    github: FakeGitHub, http: httpx.AsyncClient
) -> None:
    github.add_pull("acme/secret", 1, DIFF, private=True)
    agent = Agent(name="g", backend="openai", timeout_s=30, retries=0, tools=("github",))
    tools = toolbox(http, github)
    text, failed = await tools.call(
        make_job(agent, Seen()), "github_pull_request_files", {"repo": "acme/app", "number": 7}
    )
    assert not failed
    [f] = json.loads(text)
    assert f["filename"] == "app/db.py" and f["additions"] == 1 and "SELECT" in f["patch"]
    text, failed = await tools.call(
        make_job(agent, Seen()), "github_pull_request_diff", {"repo": "acme/secret", "number": 1}
    )
    assert failed and "GitHub API answered 404" in text
    seen = Seen(tokens={"github": GH_TOKEN})
    text, failed = await tools.call(
        make_job(agent, seen), "github_pull_request_diff", {"repo": "acme/secret", "number": 1}
    )
    assert not failed and text == DIFF
    text, failed = await tools.call(
        make_job(agent, seen), "github_pull_request_diff", {"repo": "../x", "number": 1}
    )
    assert failed and "repo must be owner/name" in text


async def test_slack_posts_with_the_bot_token_and_reports_ok_false(
    slack: FakeSlack, http: httpx.AsyncClient
) -> None:
    agent = Agent(name="s", backend="openai", timeout_s=30, retries=0, tools=("slack",))
    tools = toolbox(http, slack_api_url=slack.url)
    seen = Seen(tokens={"slack": slack.token})
    text, failed = await tools.call(
        make_job(agent, seen), "slack_post_message", {"channel": "C0123456789", "text": "Deployed"}
    )
    assert not failed and json.loads(text)["ok"] is True
    [msg] = slack.messages
    assert msg.text == "Deployed" and msg.headers["Authorization"] == f"Bearer {slack.token}"
    text, failed = await tools.call(
        make_job(agent, seen), "slack_post_message", {"channel": "C-nope", "text": "x"}
    )
    assert failed and text == "error: Slack refused the message: channel_not_found"
    seen = Seen(tokens={"slack": "xoxb-revoked"})
    text, failed = await tools.call(
        make_job(agent, seen), "slack_post_message", {"channel": "C0123456789", "text": "x"}
    )
    assert failed and text.endswith("invalid_auth") and "xoxb-revoked" not in seen.text()
    seen = Seen()
    text, failed = await tools.call(
        make_job(agent, seen), "slack_post_message", {"channel": "C0123456789", "text": "x"}
    )
    assert failed and "no Slack integration connected" in text and len(slack.messages) == 1


@pytest.mark.parametrize("api", ["openai", "anthropic"])
async def test_delegate_runs_another_agent_through_the_job(
    api: str, llm: FakeLLM, http: httpx.AsyncClient
) -> None:
    llm.script = [
        Turn(tool_calls=[ToolCall("delegate", {"agent": "qa", "task": "list the test cases"})]),
        lambda body: Turn(text=json.dumps({"summary": json.loads(tool_results(body)[0])["summary"]})),
    ]
    seen = Seen()
    result = await backend(api, http, toolbox(http)).run(
        make_job(llm_agent(llm, api, tools=("delegate",)), seen)
    )
    assert seen.delegated == [("qa", "list the test cases")]
    assert result.summary == "qa did: list the test cases"


# --- the offline pr-review agent ----------------------------------------------------------------


def pr_event(action: str = "opened", repo: str = "acme/app", number: int = 7) -> dict[str, Any]:
    return {
        "action": action,
        "number": number,
        "pull_request": {"number": number, "title": "Add lookup", "head": {"sha": "abc"}},
        "repository": {"full_name": repo, "private": False},
    }


REVIEWER = Agent(
    name="pr-review", backend="builtin", builtin="pr-review", timeout_s=30, retries=0, tools=("github",)
)


async def test_offline_pr_review_fetches_the_diff_runs_dev_and_posts_the_comment(
    github: FakeGitHub, http: httpx.AsyncClient
) -> None:
    seen = Seen(tokens={"github": GH_TOKEN})
    result = await BuiltinBackend(toolbox(http, github)).run(make_job(REVIEWER, seen, pr_event()))
    assert "SQL built by string formatting" in " ".join(result.suggestions)
    [comment] = github.comments
    assert comment.body.startswith("### Conveyor review") and result.summary in comment.body
    assert "SQL built by string formatting" in comment.body
    assert "review posted as a comment on acme/app#7" in seen.text()


async def test_offline_pr_review_without_an_integration_reads_but_does_not_comment(
    github: FakeGitHub, http: httpx.AsyncClient
) -> None:
    seen = Seen()
    result = await BuiltinBackend(toolbox(http, github)).run(
        make_job(REVIEWER, seen, pr_event("synchronize"))
    )
    assert "SQL built by string formatting" in " ".join(result.suggestions)
    assert github.comments == []
    assert [p for _, p, _ in github.requests] == ["/repos/acme/app/pulls/7"]  # the public diff, no token
    assert "no comment posted on acme/app#7: the project has no GitHub integration connected" in seen.text()


async def test_offline_pr_review_skips_other_actions(github: FakeGitHub, http: httpx.AsyncClient) -> None:
    seen = Seen(tokens={"github": GH_TOKEN})
    result = await BuiltinBackend(toolbox(http, github)).run(make_job(REVIEWER, seen, pr_event("closed")))
    assert result.summary == "pr-review: nothing to review for a pull request 'closed' event"
    assert github.requests == [] and github.comments == []


async def test_offline_pr_review_of_an_unknown_pull_request_fails_clearly(
    github: FakeGitHub, http: httpx.AsyncClient
) -> None:
    with pytest.raises(AgentError, match="GitHub API answered 404 to GET /repos/acme/app/pulls/99"):
        await BuiltinBackend(toolbox(http, github)).run(make_job(REVIEWER, Seen(), pr_event(number=99)))
    with pytest.raises(AgentError, match="not a GitHub pull_request event"):
        await BuiltinBackend(toolbox(http, github)).run(make_job(REVIEWER, Seen(), {"action": "opened"}))


# --- docs/agents.md, "Tools and their allowlists": its example runs as the page says ---------


DOC = Path(__file__).resolve().parents[3] / "docs" / "agents.md"


def section_toml() -> str:
    text = DOC.read_text()
    section = text.split("## Tools and their allowlists", 1)[1].split("\n## ", 1)[0]
    [block] = re.findall(r"```toml\n(.*?)```", section, re.S)
    return block


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    path = tmp_path / "conveyor.toml"
    path.write_text(section_toml())
    return load_settings(Settings, {"CONVEYOR_CONFIG": str(path)}, section="executor")


def test_the_example_builds_an_agent_with_its_tools_and_limits(settings: Settings) -> None:
    agent = build_registry(settings)["release-notes"]
    assert agent.backend == "openai" and agent.tools == ("github", "http_fetch", "slack", "delegate")
    assert agent.allowed_hosts == ("docs.example.com", "*.readthedocs.io")
    assert (agent.max_tool_calls, agent.max_run_tokens, agent.stream) == (10, 50000, True)
    assert host_allowed("docs.example.com", agent.allowed_hosts)
    assert host_allowed("conveyor.readthedocs.io", agent.allowed_hosts)
    assert not host_allowed("readthedocs.io", agent.allowed_hosts)
    assert not host_allowed("example.com", agent.allowed_hosts)


async def test_the_example_agent_runs_with_its_tools_allowlist_and_limit(
    settings: Settings, llm: FakeLLM
) -> None:
    agent = replace(
        build_registry(settings)["release-notes"], base_url=llm.url + "/v1", api_key=Secret("sk-test")
    )
    async with httpx.AsyncClient() as http:
        backend = OpenAIBackend(
            http, connect_timeout_s=5, retry_after_cap_s=5, tools=Toolbox(http, ToolSettings())
        )
        llm.script = [
            Turn(tool_calls=[ToolCall("http_fetch", {"url": "https://intranet.example.net/notes"})]),
            lambda body: Turn(text=json.dumps({"summary": tool_results(body)[0]})),
        ]
        seen = Seen()
        result = await backend.run(make_job(agent, seen))
        assert result.summary == "error: host 'intranet.example.net' is not in this agent's allowed_hosts"
        tools = [t["function"]["name"] for t in llm.requests[0].body["tools"]]
        assert tools == [
            "http_fetch",
            "github_pull_request_files",
            "github_pull_request_diff",
            "github_post_comment",
            "slack_post_message",
            "delegate",
        ]
        assert "".join(seen.output) == json.dumps({"summary": result.summary})  # stream = true

        # The limit's error, word for word as the page quotes it.
        many = [ToolCall("delegate", {"agent": "pm", "task": f"part {i}"}) for i in range(11)]
        llm.script = [Turn(tool_calls=many), Turn(text=ANSWER)]
        with pytest.raises(AgentError) as err:
            await backend.run(make_job(agent, Seen()))
        quoted = re.search(r"\(`(stopped: [^`]*)`\)", DOC.read_text().replace("\n  ", " "))
        assert quoted is not None and str(err.value) == quoted.group(1)


# --- pr-review with an LLM, through a real executor --------------------------------------------


async def test_with_an_llm_a_pull_request_event_runs_pr_review_as_an_llm_agent_with_the_github_tool(
    bus: Any, make_settings: Any, llm: FakeLLM, github: FakeGitHub
) -> None:
    def review(body: dict[str, Any]) -> Turn:
        [diff] = tool_results(body)
        assert "SELECT * FROM users" in diff
        return Turn(
            tool_calls=[
                ToolCall("github_post_comment", {"repo": "acme/app", "number": 7, "body": "Use parameters."})
            ]
        )

    llm.script = [
        Turn(tool_calls=[ToolCall("github_pull_request_diff", {"repo": "acme/app", "number": 7})]),
        review,
        Turn(text=ANSWER),
    ]
    settings = make_settings(
        anthropic_base_url=llm.url,
        anthropic_api_key=Secret("sk-test"),
        github_api_url=github.url,
        github_token=Secret(GH_TOKEN),
    )
    async with serve(SPEC, settings):
        job_id = "job_pr_review_llm_1"
        now = dt.datetime.now(dt.UTC)
        payload = json.dumps(pr_event()).encode()
        rec = JobRecord(
            job_id=job_id,
            status="queued",
            created_at=now,
            updated_at=now,
            source="github",
            event_type="pull_request",
            project="default",
        )
        await bus.jobs.create(job_id, msgspec.json.encode(rec))
        ev = WebhookEvent(
            event_id="d-1",
            job_id=job_id,
            source="github",
            type="pull_request",
            received_at=now,
            payload=msgspec.Raw(payload),
            project="default",
        )
        await bus.js.publish(subjects.event("github", "pull_request"), msgspec.json.encode(ev))
        done = await bus.until(job_id, "completed")
        assert done.agent == "pr-review" and done.backend == "anthropic"
        [comment] = github.comments
        assert comment.body == "Use parameters." and comment.headers["Authorization"] == f"Bearer {GH_TOKEN}"
        first = llm.requests[0].body
        assert [t["name"] for t in first["tools"]] == [
            "github_pull_request_files",
            "github_pull_request_diff",
            "github_post_comment",
        ]
        assert (
            "pull_request webhook" in first["system"]
            and '"full_name": "acme/app"' in first["messages"][0]["content"]
        )
        lines = " ".join(await bus.log_lines(job_id))
        assert (
            "tool github_pull_request_diff(" in lines and "review posted as a comment on acme/app#7" in lines
        )
