from __future__ import annotations

import base64
import hmac
import time

import pytest

from conveyor.shared.domain import signing
from conveyor.shared.domain.signing import SignatureError

NOW = 1_700_000_000


def test_github_published_example() -> None:
    # GitHub's documented example: secret, payload and the signature it publishes.
    secret = "It's a Secret to Everybody"
    body = b"Hello, World!"
    expected = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"
    assert signing.github_sign(secret, body) == expected
    signing.github_verify(["old", secret], body, expected)
    with pytest.raises(SignatureError, match="does not match"):
        signing.github_verify(["wrong"], body, expected)


def test_lovable_round_trip_rotation_and_window() -> None:
    body = b'{"id":"e1"}'
    sig = signing.lovable_sign("new", NOW, body)
    signing.lovable_verify(["old", "new"], body, str(NOW), sig, now=NOW + 299)
    with pytest.raises(SignatureError, match="too old"):
        signing.lovable_verify(["new"], body, str(NOW), sig, now=NOW + 301)
    with pytest.raises(SignatureError, match="future"):
        signing.lovable_verify(["new"], body, str(NOW), sig, now=NOW - 301)
    with pytest.raises(SignatureError, match="does not match"):
        signing.lovable_verify(["new"], body + b" ", str(NOW), sig, now=NOW)
    with pytest.raises(SignatureError, match="malformed"):
        signing.lovable_verify(["new"], body, str(NOW), "md5=abc", now=NOW)
    with pytest.raises(SignatureError, match="missing"):
        signing.lovable_verify(["new"], body, None, sig, now=NOW)


def test_standard_webhooks_several_signatures() -> None:
    body = b'{"ok":true}'
    headers = signing.standard_headers(
        ["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "whsec_c2Vjb25k"], "msg_1", body
    )
    assert len(headers["webhook-signature"].split()) == 2
    # A receiver that knows only the second secret still verifies.
    assert signing.standard_verify(["whsec_c2Vjb25k"], body, headers) == "msg_1"
    stale = {**headers, "webhook-timestamp": str(int(time.time()) - 600)}
    with pytest.raises(SignatureError, match="too old"):
        signing.standard_verify(["whsec_c2Vjb25k"], body, stale)


def test_undecodable_standard_secret_is_not_the_empty_key() -> None:
    # A lenient base64 decode drops what it cannot read: "whsec_!!!!" was the empty HMAC key,
    # and anyone could sign with it.
    body = b'{"type":"x"}'
    ts = int(time.time())
    digest = hmac.digest(b"", f"msg_1.{ts}.".encode() + body, "sha256")
    forged = {
        "webhook-id": "msg_1",
        "webhook-timestamp": str(ts),
        "webhook-signature": "v1," + base64.b64encode(digest).decode(),
    }
    with pytest.raises(ValueError):
        signing.standard_key("whsec_!!!!")
    with pytest.raises(signing.SignatureError):
        signing.standard_verify(["whsec_!!!!"], body, forged)


@pytest.mark.parametrize(
    ("secret", "standard", "problem"),
    [
        ("", True, "is empty"),
        ("  ", False, "is empty"),
        ("whsec_", True, "has 0 bytes"),
        ("whsec_!!!!", True, "does not decode"),
        ("whsec_!!!!", False, "has 10 bytes"),
        ("whsec_" + base64.b64encode(b"k" * 15).decode(), True, "has 15 bytes"),
        ("whsec_" + base64.b64encode(b"k" * 16).decode(), True, None),
        ("sixteen-bytes-ok", False, None),
    ],
)
def test_secret_problem(secret: str, standard: bool, problem: str | None) -> None:
    found = signing.secret_problem(secret, standard=standard)
    assert found is None if problem is None else (found is not None and problem in found)
