from __future__ import annotations

import time

import pytest

from conveyor.shared import signing
from conveyor.shared.signing import SignatureError

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
