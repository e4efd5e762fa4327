from __future__ import annotations

from pathlib import Path

import msgspec
import pytest

from conveyor.shared.contracts.errors import ConfigError
from conveyor.shared.runtime.config import BaseSettings, Secret, load_settings


class Agent(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    timeout_ms: int = 1000


class Settings(BaseSettings, frozen=True, kw_only=True):
    port: int = 3100
    lovable_webhook_secret: Secret | None = None
    aios_agent_timeout_ms: int = 900_000
    rate_limit_max: int = 100
    agents: list[Agent] = []


def test_defaults_and_env_override() -> None:
    s = load_settings(Settings, {"PORT": "4000", "LOVABLE_WEBHOOK_SECRET": "s3cret", "UNRELATED": "x"})
    assert s.port == 4000 and s.aios_agent_timeout_ms == 900_000 and s.rate_limit_max == 100
    assert s.lovable_webhook_secret is not None and s.lovable_webhook_secret.reveal() == "s3cret"
    assert "s3cret" not in repr(s)


def test_malformed_value_names_the_setting() -> None:
    with pytest.raises(ConfigError) as exc:
        load_settings(Settings, {"RATE_LIMIT_MAX": "lots"})
    assert exc.value.setting == "RATE_LIMIT_MAX"
    assert "RATE_LIMIT_MAX" in str(exc.value)


def test_missing_required_setting_is_named() -> None:
    class Needs(BaseSettings, frozen=True, kw_only=True):
        lovable_api_key: Secret

    with pytest.raises(ConfigError) as exc:
        load_settings(Needs, {})
    assert exc.value.setting == "LOVABLE_API_KEY"


def test_toml_then_section_then_env(tmp_path: Path) -> None:
    path = tmp_path / "conveyor.toml"
    path.write_text(
        'log_level = "DEBUG"\nport = 1\n[receiver]\nport = 2\n[[receiver.agents]]\nname = "dev"\n'
        "[executor]\nport = 3\n"
    )
    s = load_settings(Settings, {"CONVEYOR_CONFIG": str(path)}, section="receiver")
    assert s.log_level == "DEBUG" and s.port == 2 and s.agents == [Agent(name="dev")]
    s = load_settings(Settings, {"CONVEYOR_CONFIG": str(path), "PORT": "9"}, section="receiver")
    assert s.port == 9


def test_structured_setting_from_env_json() -> None:
    s = load_settings(Settings, {"AGENTS": '[{"name": "qa", "timeout_ms": 5}]'})
    assert s.agents == [Agent(name="qa", timeout_ms=5)]
    with pytest.raises(ConfigError) as exc:
        load_settings(Settings, {"AGENTS": "[not json"})
    assert exc.value.setting == "AGENTS"


def test_bad_toml_file_is_named(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text("port = = 3")
    with pytest.raises(ConfigError) as exc:
        load_settings(Settings, {"CONVEYOR_CONFIG": str(path)})
    assert exc.value.setting == "CONVEYOR_CONFIG"
