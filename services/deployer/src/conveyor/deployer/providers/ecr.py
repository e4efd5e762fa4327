"""ECR: the image a deploy workflow pushed, checked before Lightsail is told to run it."""

from __future__ import annotations

from typing import Any

from conveyor.deployer.config import Settings
from conveyor.deployer.providers import aws
from conveyor.deployer.providers.base import ProviderError


class EcrImages:
    def __init__(self, api: Any, repository: str) -> None:
        self.api = api
        self.repository = repository

    @classmethod
    def from_settings(cls, settings: Settings) -> EcrImages:
        return cls(aws.client("ecr", settings, settings.ecr_endpoint_url), settings.ecr_repository)

    async def image(self, tag: str) -> tuple[str, str]:
        """(image URI, digest) of ``repository:tag``; retryable while the push is not visible yet."""
        repos = await aws.call(self.api, "describe_repositories", repositoryNames=[self.repository])
        uri = repos["repositories"][0]["repositoryUri"]
        found = await aws.call_or_none(
            self.api,
            "describe_images",
            {"ImageNotFoundException"},
            repositoryName=self.repository,
            imageIds=[{"imageTag": tag}],
        )
        if not found or not found.get("imageDetails"):
            raise ProviderError(f"image {self.repository}:{tag} is not in ECR yet", retryable=True)
        return f"{uri}:{tag}", str(found["imageDetails"][0]["imageDigest"])
