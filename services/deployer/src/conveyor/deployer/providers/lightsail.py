"""Lightsail provider: a container service per site (power nano, scale 1 by default) running
the image the build produced.

  creating_service  get_container_services; create_container_service when missing; poll until
                    the service is READY (or RUNNING), with backoff.
  deploying         create_container_service_deployment with the artifact image on port 80
                    and a public endpoint; poll the deployment (ACTIVATING -> ACTIVE | FAILED)
                    and the service (DEPLOYING -> RUNNING); read the public endpoint URL.
Previews get their own service, ``<slug>-preview``, so the live one is never touched.
"""

from __future__ import annotations

from typing import Any

from conveyor.deployer.config import Settings
from conveyor.deployer.providers import aws
from conveyor.deployer.providers.base import Outputs, Provider, ProviderError, StepContext

CONTAINER = "site"
READY_STATES = {"READY", "RUNNING"}
BROKEN_STATES = {"DISABLED", "DELETING"}


class LightsailProvider(Provider):
    name = "lightsail"

    def __init__(self, api: Any, *, power: str = "nano", scale: int = 1, poll_s: float = 5.0) -> None:
        self.api = api
        self.power = power
        self.scale = scale
        self.poll_s = poll_s

    @classmethod
    def from_settings(cls, settings: Settings) -> LightsailProvider:
        return cls(
            aws.client("lightsail", settings, settings.lightsail_endpoint_url),
            power=settings.lightsail_power,
            scale=settings.lightsail_scale,
            poll_s=settings.poll_interval_s,
        )

    @staticmethod
    def service_name(ctx: StepContext) -> str:
        return f"{ctx.slug}-preview" if ctx.preview else ctx.slug

    async def _service(self, name: str) -> dict[str, Any] | None:
        found = await aws.call_or_none(
            self.api, "get_container_services", {"NotFoundException"}, serviceName=name
        )
        services = (found or {}).get("containerServices") or []
        return services[0] if services else None

    async def create_service(self, ctx: StepContext) -> Outputs:
        name = self.service_name(ctx)
        service = await self._service(name)
        if service is None:
            created = await aws.call(
                self.api,
                "create_container_service",
                serviceName=name,
                power=self.power,
                scale=self.scale,
                tags=[{"key": "conveyor-site", "value": ctx.slug}],
            )
            service = created["containerService"]
        backoff = aws.Backoff(self.poll_s)
        while service["state"] not in READY_STATES:
            if service["state"] in BROKEN_STATES:
                raise ProviderError(f"container service {name} is {service['state']}")
            await backoff.wait()
            service = await self._service(name)
            if service is None:
                raise ProviderError(f"container service {name} disappeared while it was being created")
        return {"service": name, "service_arn": str(service.get("arn", ""))}

    async def deploy(self, ctx: StepContext) -> Outputs:
        name = self.service_name(ctx)
        image = ctx.external.get("artifact") or ctx.external.get("image")
        if not image:
            raise ProviderError("nothing was built to deploy")
        version = ctx.external.get("service_version")
        if not version:
            resp = await aws.call(
                self.api,
                "create_container_service_deployment",
                serviceName=name,
                containers={CONTAINER: {"image": image, "ports": {"80": "HTTP"}}},
                publicEndpoint={
                    "containerName": CONTAINER,
                    "containerPort": 80,
                    "healthCheck": {"path": "/", "successCodes": "200-399"},
                },
            )
            service = resp["containerService"]
            version = str((service.get("nextDeployment") or {}).get("version", ""))
            if not version:
                raise ProviderError(f"Lightsail did not say which deployment version {name} got")
            await ctx.save(service_version=version)
        backoff = aws.Backoff(self.poll_s)
        while True:
            # Both must settle: the deployment (ACTIVATING -> ACTIVE) and the service (-> RUNNING).
            listed = await aws.call(self.api, "get_container_service_deployments", serviceName=name)
            ours = [d for d in listed.get("deployments", []) if str(d.get("version")) == version]
            state = ours[0]["state"] if ours else "UNKNOWN"
            if state == "FAILED":
                raise ProviderError(f"Lightsail deployment {version} of {name} FAILED")
            service = await self._service(name)
            if service is None:
                raise ProviderError(f"container service {name} disappeared during the deployment")
            if state == "ACTIVE" and service["state"] == "RUNNING" and service.get("url"):
                url = str(service["url"])
                return {"service_version": version, "endpoint": url, "url": url, "image": image}
            await backoff.wait()
