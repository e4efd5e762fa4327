"""boto3 clients for the AWS providers, called from threads so the event loop never blocks.

boto3 retries throttling and 5xx answers itself (standard mode); what still fails arrives
here as a botocore ClientError and becomes a :class:`ProviderError`, retryable when AWS
says the failure is transient.
"""

from __future__ import annotations

import asyncio
import functools
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from conveyor.deployer.config import Settings
from conveyor.deployer.providers.base import ProviderError

TRANSIENT = {
    "ThrottlingException",
    "Throttling",
    "TooManyRequestsException",
    "ServiceUnavailable",
    "ServiceUnavailableException",
    "InternalFailure",
    "PriorRequestNotComplete",
}


def client(service: str, settings: Settings, endpoint_url: str = "") -> Any:
    return boto3.client(
        service,  # type: ignore[call-overload]
        region_name=settings.aws_region,
        endpoint_url=endpoint_url or settings.aws_endpoint_url or None,
        config=Config(retries={"mode": "standard", "max_attempts": 6}, connect_timeout=5, read_timeout=30),
    )


def error_code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


async def call(api: Any, method: str, **kwargs: Any) -> Any:
    """``api.method(**kwargs)`` in a thread; AWS errors become ProviderError."""
    try:
        return await asyncio.to_thread(functools.partial(getattr(api, method), **kwargs))
    except ClientError as exc:
        code = error_code(exc)
        message = exc.response.get("Error", {}).get("Message", str(exc))
        raise ProviderError(f"{method}: {code}: {message}", retryable=code in TRANSIENT) from exc
    except BotoCoreError as exc:  # connection trouble, timeouts
        raise ProviderError(f"{method}: {exc}", retryable=True) from exc


async def call_or_none(api: Any, method: str, missing: set[str], **kwargs: Any) -> Any:
    """Like :func:`call`, but None when AWS answers one of the ``missing`` error codes."""
    try:
        return await asyncio.to_thread(functools.partial(getattr(api, method), **kwargs))
    except ClientError as exc:
        if error_code(exc) in missing:
            return None
        return await call(api, method, **kwargs)  # raise it the usual way
    except BotoCoreError as exc:
        raise ProviderError(f"{method}: {exc}", retryable=True) from exc


class Backoff:
    """Poll delays: ``first`` doubling up to ``cap``."""

    def __init__(self, first: float, cap: float = 30.0) -> None:
        self.delay = first
        self.cap = cap

    async def wait(self) -> None:
        await asyncio.sleep(self.delay)
        self.delay = min(self.cap, self.delay * 2)
