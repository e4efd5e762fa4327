"""DNS provider: Route53 UPSERT of {slug}.{domain} as a CNAME to the service's endpoint,
then wait until the change is INSYNC. Previews keep their provider URL and get no record."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlparse

from conveyor.deployer.config import Settings
from conveyor.deployer.providers import aws
from conveyor.deployer.providers.base import Outputs, Provider, ProviderError, StepContext
from conveyor.shared.contracts.errors import ConfigError


class Route53Provider(Provider):
    name = "dns"

    def __init__(self, api: Any, *, zone_id: str, domain: str, ttl: int = 300, poll_s: float = 5.0) -> None:
        self.api = api
        self.zone_id = zone_id
        self.domain = domain.rstrip(".")
        self.ttl = ttl
        self.poll_s = poll_s

    @classmethod
    def from_settings(cls, settings: Settings) -> Route53Provider:
        if not settings.route53_zone_id:
            raise ConfigError(
                "missing setting ROUTE53_ZONE_ID (needed by the dns provider)", setting="ROUTE53_ZONE_ID"
            )
        return cls(
            aws.client("route53", settings, settings.route53_endpoint_url),
            zone_id=settings.route53_zone_id,
            domain=settings.site_domain,
            ttl=settings.dns_ttl,
            poll_s=settings.poll_interval_s,
        )

    async def deploy(self, ctx: StepContext) -> Outputs:
        if ctx.preview:
            return {}
        target = urlparse(ctx.external.get("endpoint", "")).hostname
        if not target:
            raise ProviderError("no endpoint to point DNS at (the dns provider follows lightsail)")
        name = f"{ctx.slug}.{self.domain}"
        change_id = ctx.external.get("dns_change")
        if not change_id:
            resp = await aws.call(
                self.api,
                "change_resource_record_sets",
                HostedZoneId=self.zone_id,
                ChangeBatch={
                    "Comment": f"Conveyor deployment {ctx.deployment_id}",
                    "Changes": [
                        {
                            "Action": "UPSERT",
                            "ResourceRecordSet": {
                                "Name": name,
                                "Type": "CNAME",
                                "TTL": self.ttl,
                                "ResourceRecords": [{"Value": target}],
                            },
                        }
                    ],
                },
            )
            change_id = str(resp["ChangeInfo"]["Id"])
            await ctx.save(dns_change=change_id)
        backoff = aws.Backoff(self.poll_s)
        while True:
            info = (await aws.call(self.api, "get_change", Id=change_id))["ChangeInfo"]
            if info["Status"] == "INSYNC":
                return {"dns_change": change_id, "dns_name": name, "url": f"https://{name}/"}
            await backoff.wait()
