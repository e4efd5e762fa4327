"""Providers behind one interface (see :mod:`.base`): local, github, lightsail, dns."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from conveyor.deployer.config import Settings
from conveyor.deployer.providers.base import Provider, ProviderError, StepContext
from conveyor.deployer.providers.local import LocalProvider
from conveyor.shared.contracts.errors import ConfigError

__all__ = ["Provider", "ProviderError", "StepContext", "build_providers"]

KNOWN = ("local", "github", "lightsail", "dns")


def build_providers(
    settings: Settings,
    *,
    url_for: Callable[[str, str | None], str],
    host_for: Callable[[str, str | None], str],
    health_url: Callable[[], str],
) -> list[Provider]:
    """The configured providers, in the order each step calls them."""
    names = [n.strip() for n in settings.providers.split(",") if n.strip()]
    unknown = [n for n in names if n not in KNOWN]
    if not names or unknown:
        raise ConfigError(
            f"invalid setting PROVIDERS: {settings.providers!r} (use local or github,lightsail,dns)",
            setting="PROVIDERS",
        )
    providers: list[Provider] = []
    for name in names:
        if name == "local":
            providers.append(
                LocalProvider(
                    Path(settings.data_dir).resolve(),
                    url_for=url_for,
                    host_for=host_for,
                    health_url=health_url,
                    keep_releases=settings.keep_releases,
                    health_timeout_s=settings.health_timeout_s,
                )
            )
        elif name == "github":
            from conveyor.deployer.providers.github import GitHubProvider

            providers.append(GitHubProvider.from_settings(settings))
        elif name == "lightsail":
            from conveyor.deployer.providers.lightsail import LightsailProvider

            providers.append(LightsailProvider.from_settings(settings))
        elif name == "dns":
            from conveyor.deployer.providers.dns import Route53Provider

            providers.append(Route53Provider.from_settings(settings))
    return providers
