"""The one interface every provider implements, and what a step gets to work with.

A pipeline step calls the same method on each configured provider in order (local alone, or
github, lightsail, dns) and merges the external ids they return into the deployment
record. A provider leaves alone the steps that are not its own (the default does nothing).
Every method must be idempotent: after a crash the step runs again from the top, with the
ids already checkpointed in ``ctx.external``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from conveyor.shared.contracts.deploys import DeploymentRecord, SiteConfig

Outputs = dict[str, str]


class ProviderError(Exception):
    """A step failed. ``retryable`` says whether running the step again may succeed."""

    def __init__(self, message: str, *, retryable: bool = False) -> None:
        super().__init__(message)
        self.retryable = retryable


@dataclass
class StepContext:
    """One deployment as a step sees it."""

    record: DeploymentRecord
    # Every external id known so far (earlier steps and checkpoints of this one).
    external: dict[str, str]
    checkpoint: Callable[[Outputs], Awaitable[None]]
    # For a rollback: the deployment whose artifact is reused.
    artifact_of: DeploymentRecord | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def deployment_id(self) -> str:
        return self.record.deployment_id

    @property
    def slug(self) -> str:
        return self.record.site_id

    @property
    def config(self) -> SiteConfig:
        return self.record.config

    @property
    def preview(self) -> bool:
        return self.record.kind == "preview"

    @property
    def rollback(self) -> bool:
        return self.record.kind == "rollback"

    async def save(self, **ids: str) -> None:
        """Record external ids now, so a crash inside the step does not repeat the remote call."""
        self.external.update(ids)
        await self.checkpoint(ids)


class Provider:
    """Base provider: every step is a no-op returning no ids."""

    name = "base"

    async def start(self) -> None:
        """Open clients; called once when the deployer starts."""

    async def close(self) -> None:
        """Close clients; called once when the deployer stops."""

    async def create_repo(self, ctx: StepContext) -> Outputs:
        return {}

    async def commit_config(self, ctx: StepContext) -> Outputs:
        return {}

    async def create_service(self, ctx: StepContext) -> Outputs:
        return {}

    async def build(self, ctx: StepContext) -> Outputs:
        return {}

    async def deploy(self, ctx: StepContext) -> Outputs:
        return {}
