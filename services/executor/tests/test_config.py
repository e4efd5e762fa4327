"""Settings, the agent registry and the routes: shipped defaults, TOML, environment, errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from conveyor.executor.config import PAYLOAD_AGENT, Settings
from conveyor.executor.registry import build_registry, build_routes, route_for
from conveyor.shared.contracts.errors import ConfigError
from conveyor.shared.runtime.config import load_settings


def load(env: dict[str, str]) -> Settings:
    return load_settings(Settings, env, section="executor")


def test_defaults_ship_five_agents_on_builtin_and_the_documented_routes() -> None:
    s = load({})
    assert s.aios_agent_timeout_ms == 900_000 and s.concurrency == 5
    agents = build_registry(s)
    assert {"dev", "qa", "architect", "pm", "ux-design-expert", "noop", "sleep"} <= set(agents)
    assert all(a.backend == "builtin" for a in agents.values())
    assert agents["qa"].timeout_s == 900 and agents["qa"].retries == 2 and agents["noop"].instant
    routes = build_routes(s, agents)
    assert route_for(routes, "lovable", "code.review_requested") == ("dev", "qa")
    assert route_for(routes, "lovable", "agent.task_requested") == (PAYLOAD_AGENT,)
    assert route_for(routes, "lovable", "project.created") == ("architect",)
    assert route_for(routes, "lovable", "project.updated") == ("dev",)
    assert route_for(routes, "github", "push") == ()
    # GitHub pull requests are reviewed by default (offline: the builtin pr-review).
    assert route_for(routes, "github", "pull_request") == ("pr-review",)
    assert agents["pr-review"].backend == "builtin" and agents["pr-review"].tools == ("github",)


def test_shipped_agents_use_the_llm_when_one_is_configured() -> None:
    agents = build_registry(load({"ANTHROPIC_API_KEY": "k", "AIOS_AGENT_TIMEOUT_MS": "60000"}))
    assert agents["dev"].backend == "anthropic" and agents["dev"].timeout_s == 60
    assert agents["noop"].backend == "builtin"  # benchmarks never call an LLM
    agents = build_registry(load({"OPENAI_BASE_URL": "http://127.0.0.1:11434/v1", "OPENAI_MODEL": "llama3"}))
    assert agents["pm"].backend == "openai" and agents["pm"].model == "llama3"
    assert agents["pm"].base_url == "http://127.0.0.1:11434/v1"


def test_toml_agents_and_routes_merge_over_the_defaults(tmp_path: Path) -> None:
    path = tmp_path / "conveyor.toml"
    path.write_text(
        """
[executor]
concurrency = 8

[[executor.agents]]
name = "qa"
timeout_ms = 120000
retries = 1

[[executor.agents]]
name = "coder"
backend = "command"
command = ["coder", "--headless"]
concurrency = 2

[executor.routes]
"project.created" = ["architect", "pm"]
"github:pull_request" = ["coder"]
"""
    )
    s = load({"CONVEYOR_CONFIG": str(path), "CONCURRENCY": "3"})
    assert s.concurrency == 3  # the environment wins over the file
    agents = build_registry(s)
    assert agents["qa"].timeout_s == 120 and agents["qa"].retries == 1 and agents["qa"].backend == "builtin"
    assert agents["coder"].command == ("coder", "--headless") and agents["coder"].concurrency == 2
    routes = build_routes(s, agents)
    assert route_for(routes, "lovable", "project.created") == ("architect", "pm")
    assert route_for(routes, "github", "pull_request") == ("coder",)
    assert route_for(routes, "lovable", "code.review_requested") == ("dev", "qa")


def test_a_list_of_names_is_accepted() -> None:
    assert set(build_registry(load({"AGENTS": '["dev", "qa"]'}))) >= {"dev", "qa"}


@pytest.mark.parametrize(
    ("env", "says"),
    [
        ({"AGENTS": '[{"name": "qa", "retries": 5}]'}, "retries must be 0..3"),
        ({"AGENTS": '[{"name": "x", "backend": "command"}]'}, "needs command"),
        ({"AGENTS": '[{"name": "mystery"}]'}, "no LLM is configured"),
        ({"AGENTS": '[{"name": "a.b", "backend": "builtin", "builtin": "qa"}]'}, "letters, digits"),
        ({"AGENTS": '[{"name": "qa", "colour": "red"}]'}, "colour"),
        ({"ROUTES": '{"project.created": ["nobody"]}'}, "unknown agent 'nobody'"),
        ({"CONCURRENCY": "0"}, "CONCURRENCY"),
        ({"AIOS_AGENT_TIMEOUT_MS": "soon"}, "AIOS_AGENT_TIMEOUT_MS"),
        ({"AGENTS": '[{"name": "dev", "tools": ["shell"]}]'}, "agent 'dev': unknown tool 'shell'"),
        ({"AGENTS": '[{"name": "dev", "tools": ["http_fetch"]}]'}, "tool 'http_fetch' needs allowed_hosts"),
        ({"AGENTS": '[{"name": "dev", "max_tool_calls": -1}]'}, "max_tool_calls must be 0 or more"),
        ({"AGENTS": '[{"name": "dev", "max_run_tokens": 0}]'}, "max_run_tokens must be at least 1"),
        ({"TOOL_ALLOWED_NETWORKS": "127.0.0.0/8,lan"}, "TOOL_ALLOWED_NETWORKS: 'lan' is not a CIDR"),
    ],
)
def test_bad_settings_stop_the_start_with_a_clear_line(env: dict[str, str], says: str) -> None:
    with pytest.raises(ConfigError) as exc:
        load(env)
    assert says in str(exc.value)
