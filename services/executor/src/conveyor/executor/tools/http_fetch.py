"""http_fetch: GET a URL on one of the agent's allowed hosts, through the deliverer's SSRF guard.

Two checks, both before anything is dialled: the URL's host must be in the agent's
``allowed_hosts`` (exact, or ``*.example.com`` for its subdomains), and every address the
host resolves to must pass the SSRF policy (public unicast, or in TOOL_ALLOWED_NETWORKS). The
request then goes to the checked address itself (Host header and TLS server name stay the
URL's), so a DNS answer that changes between check and connect cannot slip through.
Redirects are followed (at most 3), each hop checked the same way. The body is read up to
HTTP_FETCH_MAX_BYTES and the whole call is bounded by TOOL_TIMEOUT_S and the run's deadline.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from typing import Any

import httpx

from conveyor.executor.backends.base import AgentJob
from conveyor.executor.tools.errors import ToolError
from conveyor.shared.runtime.ssrf import AddressPolicy, BlockedAddressError

MAX_REDIRECTS = 3


def host_allowed(host: str, allowed: tuple[str, ...]) -> bool:
    host = host.lower().rstrip(".")
    for entry in allowed:
        entry = entry.lower().rstrip(".")
        if entry.startswith("*."):
            if host.endswith(entry[1:]) and host != entry[2:]:
                return True
        elif host == entry:
            return True
    return False


async def _addresses(host: str, port: int) -> list[str]:
    try:
        ipaddress.ip_address(host)
        return [host]
    except ValueError:
        pass
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise ToolError(f"cannot resolve {host}: {exc}") from None
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


async def http_fetch(
    job: AgentJob, url: str, *, policy: AddressPolicy, max_bytes: int, timeout_s: float
) -> dict[str, Any]:
    try:
        async with asyncio.timeout(min(timeout_s, job.remaining_s)):
            return await _fetch(job, url, policy, max_bytes)
    except TimeoutError:
        raise ToolError(f"no answer within {min(timeout_s, job.remaining_s):.0f} s") from None


async def _fetch(job: AgentJob, url: str, policy: AddressPolicy, max_bytes: int) -> dict[str, Any]:
    # trust_env=False: a proxy from the environment would dial for us, past the guard. A client
    # per call: a pooled TLS connection to an address must not serve another host name.
    async with httpx.AsyncClient(trust_env=False, follow_redirects=False) as client:
        for _ in range(MAX_REDIRECTS + 1):
            try:
                u = httpx.URL(url)
            except (httpx.InvalidURL, TypeError) as exc:
                raise ToolError(f"not a URL: {exc}") from None
            if u.scheme not in ("http", "https") or not u.raw_host:
                raise ToolError("only http and https URLs with a host can be fetched")
            if u.userinfo:
                raise ToolError("URLs carrying credentials are not fetched")
            host = u.raw_host.decode("ascii").lower()
            if not host_allowed(host, job.agent.allowed_hosts):
                raise ToolError(f"host {host!r} is not in this agent's allowed_hosts")
            port = u.port or (443 if u.scheme == "https" else 80)
            addresses = await _addresses(host, port)
            try:
                for address in addresses:  # one refused answer refuses the name
                    policy.check(host, address)
            except BlockedAddressError as exc:
                raise ToolError(str(exc)) from None
            if not addresses:
                raise ToolError(f"{host} has no address")
            extensions = {"sni_hostname": host} if u.scheme == "https" else {}
            headers = {
                "host": u.netloc.decode("ascii"),
                "user-agent": "conveyor-executor",
                "accept": "*/*",
                "accept-encoding": "identity",  # the size bound holds for what we keep
            }
            request = client.build_request(
                "GET", u.copy_with(host=addresses[0]), headers=headers, extensions=extensions
            )
            try:
                resp = await client.send(request, stream=True)
            except httpx.HTTPError as exc:
                raise ToolError(f"GET {host} failed: {type(exc).__name__}: {exc}") from None
            try:
                if resp.is_redirect and "location" in resp.headers:
                    url = str(u.join(resp.headers["location"]))
                    continue
                body = bytearray()
                truncated = False
                async for chunk in resp.aiter_raw():
                    body += chunk
                    if len(body) > max_bytes:
                        del body[max_bytes:]
                        truncated = True
                        break
            except httpx.HTTPError as exc:
                raise ToolError(f"GET {host} failed while reading: {type(exc).__name__}") from None
            finally:
                await resp.aclose()
            return {
                "url": str(u),
                "status": resp.status_code,
                "content_type": resp.headers.get("content-type", ""),
                "body": body.decode("utf-8", errors="replace"),
                "truncated": truncated,
            }
        raise ToolError(f"more than {MAX_REDIRECTS} redirects")
