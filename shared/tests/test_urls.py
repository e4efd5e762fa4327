"""conveyor.shared.runtime.urls: the callback URL check shared by receiver and deliverer, and redaction."""

from __future__ import annotations

import pytest

from conveyor.shared.runtime.urls import callback_url_problem, check_callback_url, redact_url, redact_urls


@pytest.mark.parametrize(
    "url",
    [
        "https://hooks.example.com/in?x=1",
        "http://127.0.0.1:8080/cb",
        "http://[::1]:9/cb",
        "https://user:pa%3Ass@hooks.example.com/in",
        "https://bücher.example/in",  # IDNA-encoded to xn--bcher-kva
        "https://xn--bcher-kva.example/in",
        "http://compose_service:3000/cb",
        "https://hooks.example.com./in",  # fully qualified
        f"https://{'a' * 63}.example/in",
        "https://" + "a." * 123 + "example/",  # 253 characters
    ],
)
def test_dialable_urls_pass(url: str) -> None:
    assert callback_url_problem(url) is None


@pytest.mark.parametrize(
    ("url", "why"),
    [
        (f"https://{'a' * 64}.example/in", "longer than 63 characters"),
        ("https://" + "a." * 124 + "example/", "longer than 253 characters"),
        ("https://hooks..example/in", "empty label"),
        ("https://.hooks.example/in", "empty label"),
        ("https://hooks_%41.example/in", "a character other than"),
        ("https://-hooks.example/in", "starts or ends with '-'"),
        ("https://xn--zz.example/in", "not valid punycode"),
        ("https://" + "é" * 70 + ".example/in", "IDNA"),
        ("http://2130706433/", "ends in a number"),
        ("http://127.1/", "ends in a number"),
        ("http://0x7f000001/", "ends in a number"),
        ("http://hooks.example:0/", "port 0"),
        ("http://hooks.example:99999/", "absolute http(s) URL"),
        ("ftp://hooks.example/", "absolute http(s) URL"),
        ("/relative", "absolute http(s) URL"),
        ("http:///nohost", "absolute http(s) URL"),
        ("http://hooks example/", "absolute http(s) URL"),
        ("http://hooks.example/\r\nX: y", "absolute http(s) URL"),
    ],
)
def test_urls_that_cannot_be_dialled_are_named(url: str, why: str) -> None:
    problem = callback_url_problem(url)
    assert problem is not None and why in problem, problem


def test_a_problem_never_quotes_the_user_info() -> None:
    problem = callback_url_problem(f"https://user:hunter2@{'a' * 64}.example/")
    assert problem is not None and "hunter2" not in problem and "user" not in problem


def test_check_gives_the_parsed_url() -> None:
    parsed = check_callback_url("https://u:p@Hooks.Example.com:8443/in?q=1")
    got = (parsed.raw_host, parsed.port, parsed.user, parsed.password)
    assert got == ("hooks.example.com", 8443, "u", "p")


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("https://user:pass@host/x?a=b@c", "https://user:***@host/x?a=b@c"),
        ("https://token@host/x", "https://***@host/x"),  # a lone user name is a token
        ("https://user:@host/", "https://user:***@host/"),
        ("https://u:p@x@host/", "https://u:***@host/"),  # the last '@' ends the user info
        ("https://host/a@b", "https://host/a@b"),  # an '@' in the path is not user info
        ("nats://user:pass@nats:4222", "nats://user:***@nats:4222"),
        ("user:pass@nats:4222", "user:***@nats:4222"),  # NATS takes it without a scheme
        ("https://host/", "https://host/"),
    ],
)
def test_redact_url(url: str, shown: str) -> None:
    assert redact_url(url) == shown


def test_redact_urls_hides_every_server_of_a_list() -> None:
    servers = "nats://u:s3cret@n1:4222, nats://t0ken@n2:4222,n3:4222"
    assert redact_urls(servers) == "nats://u:***@n1:4222, nats://***@n2:4222,n3:4222"


def test_urls_inside_text_have_their_credentials_hidden() -> None:
    from conveyor.shared.runtime.urls import redact_text

    text = '{"a":"https://u:pw@h.example/x","b":"http://tok@h2:8080","c":"mail me@x.org"}'
    assert (
        redact_text(text) == '{"a":"https://u:***@h.example/x","b":"http://***@h2:8080","c":"mail me@x.org"}'
    )
    assert redact_text("no urls") == "no urls"
