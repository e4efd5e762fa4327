"""Deployer settings; every field maps to an UPPER_CASE environment variable (or [deployer] in TOML)."""

from __future__ import annotations

from typing import Annotated

from msgspec import Meta

from conveyor.shared.runtime.config import BaseSettings, Secret

_PROVIDER = "(?:local|github|lightsail|dns)"


class Settings(BaseSettings, frozen=True, kw_only=True):
    port: int = 3103
    """PORT: health, metrics, and the published sites (by Host header)."""

    providers: Annotated[str, Meta(pattern=f"^{_PROVIDER}(?:,{_PROVIDER})*\\Z")] = "local"
    """PROVIDERS: "local" (offline, the default) or a comma list of github, lightsail, dns."""
    data_dir: str = ".data/deployer"
    """DATA_DIR: local provider's git repositories and releases."""
    site_domain: str = "localhost"
    """SITE_DOMAIN: sites answer at {slug}.{domain} and previews at {deployment}--{slug}.{domain}."""
    site_base_url: str = ""
    """SITE_BASE_URL: URL pattern for links to sites, e.g. https://{host}/ (default http://{host}:{port}/)."""
    keep_releases: int = 5
    """KEEP_RELEASES: local releases kept per site besides the live one; older ones are removed."""

    concurrency: int = 4
    """CONCURRENCY: deployments run at once by this replica (always at most one per site)."""
    ack_wait_s: float = 30.0
    """ACK_WAIT_S: a deployment whose deployer stops heartbeating is redelivered after this."""
    max_deliver: int = 20
    """MAX_DELIVER: deliveries of one request before it is dead-lettered."""
    lease_s: float = 30.0
    """LEASE_S: a site's lease lapses this long after its holder's last renewal."""
    queue_deadline_s: float = 1800.0
    """QUEUE_DEADLINE_S: how long a deployment may wait for its site before it fails."""
    step_deadline_s: float = 900.0
    """STEP_DEADLINE_S: default deadline of each pipeline step."""
    step_deadlines: dict[str, float] = {}
    """STEP_DEADLINES: per-step deadlines as JSON, e.g. {"building": 1800}."""
    health_timeout_s: float = 10.0
    """HEALTH_TIMEOUT_S: how long a new release may take to answer its health check."""

    test_slow_step: str = ""
    """TEST_SLOW_STEP: tests only: a step name that waits TEST_SLOW_STEP_S before it runs."""
    test_slow_step_s: float = 0.0

    # github -----------------------------------------------------------------------------------
    github_api_url: str = "https://api.github.com"
    github_app_id: str = ""
    github_installation_id: str = ""
    github_private_key: Secret = Secret("")
    """GITHUB_PRIVATE_KEY: the App's PEM private key (or GITHUB_PRIVATE_KEY_FILE)."""
    github_private_key_file: str = ""
    github_owner: str = ""
    """GITHUB_OWNER: the organisation or user that owns the site repositories."""
    github_template: str = ""
    """GITHUB_TEMPLATE: owner/name of the template repository sites are created from."""
    github_branch: str = "main"
    github_workflow: str = "deploy.yml"
    github_repo_prefix: str = "site-"
    github_private_repos: bool = True
    poll_interval_s: float = 5.0
    """POLL_INTERVAL_S: first wait between polls of remote state (doubles up to 30 s)."""

    # aws --------------------------------------------------------------------------------------
    aws_region: str = "us-east-1"
    aws_endpoint_url: str = ""
    """AWS_ENDPOINT_URL: override every AWS endpoint (a local emulator)."""
    lightsail_endpoint_url: str = ""
    route53_endpoint_url: str = ""
    ecr_endpoint_url: str = ""
    ecr_repository: str = "conveyor-sites"
    """ECR_REPOSITORY: where the deploy workflow pushes site images (tag = commit sha)."""
    lightsail_power: str = "nano"
    lightsail_scale: int = 1
    route53_zone_id: str = ""
    """ROUTE53_ZONE_ID: hosted zone of SITE_DOMAIN for the {slug} CNAME."""
    dns_ttl: int = 300
