"""Retry schedule, Retry-After, circuit breaker, endpoint secrets and settings, in isolation."""

from __future__ import annotations

import base64
import email.utils
import random

import pytest

from conveyor.deliverer.breaker import Breakers
from conveyor.deliverer.config import Settings, endpoint_secrets, signing_secrets
from conveyor.deliverer.retry import RetryPolicy
from conveyor.deliverer.sender import endpoint_of, parse_retry_after
from conveyor.deliverer.signing_keys import SigningKeys
from conveyor.shared.contracts.errors import ConfigError
from conveyor.shared.runtime.config import Secret, load_settings

SECRET = "whsec_" + base64.b64encode(b"deliverer-signing-key").decode()
A, B, C, D = ("whsec_" + base64.b64encode(f"endpoint-secret-{c}".encode()).decode() for c in "abcd")


def test_schedule_then_doubling_within_the_cap() -> None:
    p = RetryPolicy(schedule_s=[1, 2, 4], max_attempts=8, jitter=0, max_delay_s=10)
    assert [p.delay(n) for n in range(1, 7)] == [1, 2, 4, 8, 10, 10]
    assert not p.exhausted(7) and p.exhausted(8)


def test_jitter_stays_within_bounds() -> None:
    p = RetryPolicy(schedule_s=[2.0], jitter=0.25, rand=random.Random(7))
    delays = [p.delay(1) for _ in range(200)]
    assert all(1.5 <= d <= 2.5 for d in delays) and len(set(delays)) > 100


def test_retry_after_is_honoured_up_to_its_cap() -> None:
    p = RetryPolicy(schedule_s=[1.0], jitter=0, retry_after_max_s=30)
    assert p.delay(1, retry_after_s=12) == 12
    assert p.delay(1, retry_after_s=3600) == 30
    assert p.delay(1, retry_after_s=0) == 1  # our backoff when the endpoint asks for less


def test_parse_retry_after() -> None:
    assert parse_retry_after("120") == 120
    assert parse_retry_after(None) is None and parse_retry_after("soon") is None
    when = email.utils.formatdate(1_000_090, usegmt=True)
    assert parse_retry_after(when, now=1_000_000) == pytest.approx(90)
    assert parse_retry_after(email.utils.formatdate(999_000, usegmt=True), now=1_000_000) == 0


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_breaker_opens_pauses_probes_once_and_closes() -> None:
    clock = Clock()
    b = Breakers(threshold=3, cooldown_s=10, clock=clock)
    e = endpoint_of("https://hooks.example.com/a")
    assert e == endpoint_of("https://hooks.example.com:443/b") == "https://hooks.example.com:443"
    for _ in range(2):
        b.failure(e)
    assert b.wait_s(e) is None  # two failures: still closed
    b.failure(e)
    wait = b.wait_s(e)
    assert wait is not None and 10 <= wait <= 11 and b.open_count() == 1
    assert b.wait_s("https://other.example:443") is None  # per endpoint

    clock.now += 10.5
    assert b.wait_s(e) is None  # cool-down over: this call is the probe
    assert b.wait_s(e) is not None  # only one probe at a time
    b.failure(e)  # probe failed: open again for a full cool-down
    wait = b.wait_s(e)
    assert wait is not None and wait >= 10

    clock.now += 11
    assert b.wait_s(e) is None
    b.success(e)
    assert b.wait_s(e) is None and b.wait_s(e) is None and b.open_count() == 0


def test_breaker_success_resets_the_count_and_zero_disables() -> None:
    b = Breakers(threshold=2, cooldown_s=5)
    b.failure("x")
    b.success("x")
    b.failure("x")
    assert b.wait_s("x") is None
    off = Breakers(threshold=0, cooldown_s=5)
    for _ in range(10):
        off.failure("x")
    assert off.wait_s("x") is None


def test_endpoint_secrets_by_url_origin_then_host() -> None:
    s = Settings(
        callback_signing_secrets=Secret(SECRET),
        callback_endpoint_secrets=Secret(
            f'{{"https://a.example/hook": "{A}", "https://b.example": "{B},{C}", "c.example": "{D}"}}'
        ),
    )
    keys = SigningKeys(signing_secrets(s), endpoint_secrets(s))
    assert keys.for_url("https://a.example/hook") == [A]
    assert keys.for_url("https://a.example/other") == [SECRET]
    assert keys.for_url("https://b.example/x?y=1") == [B, C]
    assert keys.for_url("http://c.example:8080/x") == [D]
    assert keys.for_url("https://d.example/") == [SECRET]


def test_settings_fail_at_start_naming_the_setting() -> None:
    base = {"CALLBACK_SIGNING_SECRETS": SECRET}
    ok = load_settings(Settings, {**base, "CALLBACK_ALLOWED_NETWORKS": "127.0.0.0/8, ::1/128"})
    assert ok.callback_timeout_s == 10 and ok.callback_max_attempts == 3 and ok.port == 3102
    cases = {
        "CALLBACK_ALLOWED_NETWORKS": "127.0.0.0/33",
        "CALLBACK_RETRY_SCHEDULE_S": "1,soon",
        "CALLBACK_SIGNING_SECRETS": "whsec_***",
        "CALLBACK_ENDPOINT_SECRETS": "not json",
        "CALLBACK_TIMEOUT_S": "0",
    }
    for name, value in cases.items():
        with pytest.raises(ConfigError, match=name):
            load_settings(Settings, {**base, name: value})
    with pytest.raises(ConfigError, match="CALLBACK_SIGNING_SECRETS"):
        load_settings(Settings, {})
    # The inbound Lovable secret signs callbacks when no callback secret is configured.
    fallback = load_settings(Settings, {"LOVABLE_WEBHOOK_SECRET": "shared-lovable-secret"})
    assert signing_secrets(fallback) == ["shared-lovable-secret"]


def test_weak_callback_signing_secrets_are_refused_at_start() -> None:
    # Each would sign callbacks with a key anyone can find: empty ("whsec_", undecodable
    # base64) or a few bytes long.
    weak = ["whsec_", "whsec_!!!!", "whsec_YWJj", "whsec_" + base64.b64encode(b"k" * 15).decode()]
    for secret in weak:
        for name, value in (
            ("CALLBACK_SIGNING_SECRETS", f"{SECRET},{secret}"),
            ("CALLBACK_ENDPOINT_SECRETS", f'{{"a.example": "{secret}"}}'),
        ):
            with pytest.raises(ConfigError, match=name) as err:
                load_settings(Settings, {"CALLBACK_SIGNING_SECRETS": SECRET, name: value})
            assert secret not in str(err.value)
    # The inbound secret as the fallback signer is held to the same rule.
    with pytest.raises(ConfigError, match="LOVABLE_WEBHOOK_SECRET"):
        load_settings(Settings, {"LOVABLE_WEBHOOK_SECRET": "shared"})
    strong = "whsec_" + base64.b64encode(b"k" * 16).decode()
    assert signing_secrets(load_settings(Settings, {"CALLBACK_SIGNING_SECRETS": strong})) == [strong]
