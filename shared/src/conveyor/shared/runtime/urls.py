"""Callback URLs: the one validation the receiver (at submission) and the deliverer (before
dialling) share, and the redaction of credentials in any URL that is stored readable or logged.

Validation: an absolute http(s) URL whose host is an IP literal or a host name the resolver can
take: labels of 1-63 letters, digits, ``-`` (not first or last) or ``_``, at most 253
characters in all (IDNA-encoded), not ending in a number (``http://2130706433/`` and
``http://127.1/`` are IPv4 addresses in disguise), non-ASCII names IDNA-encodable and ``xn--``
labels valid punycode; a port from 1 to 65535. Whether the address is one callbacks may reach
is the SSRF guard's question, asked by the deliverer on every connection.

Redaction: user info is shown as ``user:***@`` when it has a password and ``***@`` when it
has none (``nats://token@host``, ``https://apikey@host``: the user part is the secret).
"""

from __future__ import annotations

import ipaddress
import re

from yarl import URL

MAX_LABEL = 63
MAX_NAME = 253
# Letters, digits and '-' (RFC 1123), plus '_', which real names carry (compose services,
# some cloud-generated names) and resolvers accept.
_LABEL = re.compile(r"[a-z0-9_-]+")
_NUMBER = re.compile(r"[0-9]+|0x[0-9a-f]*")  # a last label browsers and inet_aton read as a number
_SHOWN = 24  # characters of a bad label quoted in a message


class InvalidCallbackURL(ValueError):
    """The URL cannot be a callback URL; the message says why (quoting at most a bad label of
    the host, never the user info)."""


def _quoted(label: str) -> str:
    return repr(label if len(label) <= _SHOWN else label[:_SHOWN] + "...")


def _host_problem(host: str) -> str | None:
    """Why ``host`` (as yarl gives it: IDNA-encoded, lower case, IPv6 without brackets) cannot
    be dialled, or None."""
    try:
        ipaddress.ip_address(host)
        return None  # an IP literal: the SSRF guard judges it
    except ValueError:
        pass
    name = host[:-1] if host.endswith(".") else host  # one trailing dot: a fully qualified name
    if len(name) > MAX_NAME:
        return f"host name is longer than {MAX_NAME} characters"
    labels = name.split(".")
    for label in labels:
        if not label:
            return "host name has an empty label"
        if len(label) > MAX_LABEL:
            return f"host label {_quoted(label)} is longer than {MAX_LABEL} characters"
        if not _LABEL.fullmatch(label):
            return f"host label {_quoted(label)} has a character other than letters, digits, '-' and '_'"
        if label[0] == "-" or label[-1] == "-":
            return f"host label {_quoted(label)} starts or ends with '-'"
        if label.startswith("xn--"):
            try:
                label[4:].encode("ascii").decode("punycode")
            except UnicodeError:
                return f"host label {_quoted(label)} is not valid punycode"
    if _NUMBER.fullmatch(labels[-1]):
        return "host name ends in a number but is not an IPv4 address"
    return None


def check_callback_url(url: str) -> URL:
    """``url`` parsed, or InvalidCallbackURL saying why it cannot be a callback URL."""
    if any(c.isspace() or c < " " or c == "\x7f" for c in url):
        raise InvalidCallbackURL("must be an absolute http(s) URL (without spaces or control characters)")
    try:
        parsed = URL(url)
        scheme, host, port = parsed.scheme, parsed.raw_host, parsed.port
    except UnicodeError:
        raise InvalidCallbackURL("host name cannot be IDNA-encoded") from None
    except (ValueError, TypeError) as exc:
        raise InvalidCallbackURL(f"must be an absolute http(s) URL ({str(exc)[:100]})") from None
    if scheme not in ("http", "https"):
        raise InvalidCallbackURL("must be an absolute http(s) URL")
    if not host:
        raise InvalidCallbackURL("must be an absolute http(s) URL (no host)")
    if problem := _host_problem(host):
        raise InvalidCallbackURL(problem)
    if not port:
        raise InvalidCallbackURL("port 0 cannot be dialled")
    return parsed


def callback_url_problem(url: str) -> str | None:
    """Why ``url`` cannot be a callback URL, or None."""
    try:
        check_callback_url(url)
    except InvalidCallbackURL as exc:
        return str(exc)
    return None


# scheme://authority; the authority ends at the path, query, fragment or whitespace.
_AUTHORITY = re.compile(r"([A-Za-z][A-Za-z0-9+.\-]*://)([^/?#\s]*)")


def _hidden(authority: str) -> str:
    userinfo, at, hostport = authority.rpartition("@")  # the last '@' ends the user info
    if not at:
        return authority
    user, colon, _ = userinfo.partition(":")
    return f"{user}:***@{hostport}" if colon else f"***@{hostport}"


def redact_url(url: str) -> str:
    """``url`` with the password (or a lone user name: a token) of its user info hidden.
    Works on any string; one without a scheme is taken as ``[userinfo@]host...`` (NATS's
    ``user:pass@host:4222`` form)."""
    if "@" not in url:
        return url  # most URLs: no user info, nothing to hide
    if "://" in url:
        return _AUTHORITY.sub(lambda m: m.group(1) + _hidden(m.group(2)), url, count=1)
    authority, slash, rest = url.partition("/")
    return _hidden(authority) + slash + rest


# A URL inside other text (JSON, a log line): its authority also ends at a quote.
_AUTHORITY_IN_TEXT = re.compile(r"([A-Za-z][A-Za-z0-9+.\-]*://)([^/?#\s\"'<>]*@[^/?#\s\"'<>]*)")


def redact_text(text: str) -> str:
    """``text`` with the user info of every URL in it hidden (as redact_url hides one)."""
    if "@" not in text:
        return text
    return _AUTHORITY_IN_TEXT.sub(lambda m: m.group(1) + _hidden(m.group(2)), text)


def redact_urls(servers: str) -> str:
    """A comma-separated server list (``NATS_URL``) with every entry's credentials hidden;
    split as the runner splits it to connect."""
    return ",".join(redact_url(part) for part in servers.split(","))
