"""The receive half of nats-py's per-message path, made cheap (wire.py is the send half).

Delivering: a subscription with a callback puts each message on an ``asyncio.Queue`` that a
task of its own drains, one task switch per message. :func:`deliver_directly` hands each
message to a plain function from the client's read loop instead (the function must not
block: it starts a task or resolves a future).

Reading headers: nats-py parses every received header block with a generator that calls
``str.isspace`` on each character of each header name (about 65 calls per message on the
job path), a fifth of the executor's reading cost. :func:`parse_header_lines` gives the
same answer for every input (the tests compare the two on generated blocks) with one C
call per name.

Parsing: nats-py's parser matches every control line against a regular expression, keeps its
arguments in a dict, and hands each message to ``Client._process_msg``, which handles every
kind of subscription (JetStream push consumers, ordered consumers, old-style requests,
slow-consumer limits) before building the ``Msg``: about 3.2 us per message on this
machine, two messages per accepted webhook and more per job in the executor and deliverer.

:class:`Parser` reads ``MSG`` and ``HMSG`` lines with ``bytes.find`` and ``split``. A message
for a subscription that :func:`deliver_directly` set up (no JetStream state, no message
limit, no old-style future) becomes a ``Msg`` and goes straight to its handler, as
``_process_msg`` would deliver it: same fields, same header parsing, same statistics. Every
other message goes through ``_process_msg``, and every other line (INFO, PING, PONG, +OK,
-ERR, anything unexpected or oddly spaced) through nats-py's own parser, so what they do is
unchanged. Measured with a buffer of 100 PubAcks: 3.2 us per message before, 1.2 here.

:func:`install` puts both on nats-py's client class (``fastpaths.install`` calls it when the
bus connects, for a nats-py version they were written for): every client made after that
reads with them, across reconnects; :func:`uninstall` puts nats-py's own back. They use
nats-py internals (``_subs``, ``_pending_queue``, ``_parse_header_lines``, the parser's
state), which is why nats-py is pinned to one minor version; the tests run every service
through them, and the first path without them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import nats.aio.client as _nats_client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.protocol import parser as nats_parser

log = logging.getLogger(__name__)

_CONTROL = nats_parser.AWAITING_CONTROL_LINE
_PAYLOAD = nats_parser.AWAITING_MSG_PAYLOAD
_MAX_LINE = nats_parser.MAX_CONTROL_LINE_SIZE
_VERSION = len(b"NATS/1.0")
_LINES = _VERSION + 2  # where header lines start
# The characters str.isspace() is true for that a name decoded as ASCII can hold.
_SPACES = frozenset(c for c in map(chr, range(128)) if c.isspace())


def parse_header_lines(raw: bytes) -> dict[str, str]:
    """nats-py's ``Client._parse_header_lines``: ``Name: Value`` lines to a dict; lines with no
    colon, a non-ASCII name or whitespace inside the name are skipped; values are stripped
    and decoded as UTF-8 with replacement."""
    out: dict[str, str] = {}
    for line in raw.split(b"\r\n"):
        name, sep, value = line.partition(b":")
        if not sep:
            continue
        try:
            key = name.strip().decode("ascii")
        except UnicodeDecodeError:
            continue
        if _SPACES.isdisjoint(key):
            out[key] = value.strip().decode("utf-8", "replace")
    return out


class Direct:
    """Stands in for a subscription's pending queue: each message goes straight to ``handle``."""

    def __init__(self, sub: Subscription, handle: Callable[[Msg], None]) -> None:
        self._sub = sub
        self._handle = handle

    def put_nowait(self, msg: Msg) -> None:
        self._sub._pending_size -= len(msg.data)  # nothing is left pending
        self.deliver(msg)

    def deliver(self, msg: Msg) -> None:
        """Hand ``msg`` over (:class:`Parser` calls this directly: nothing was counted pending)."""
        try:
            self._handle(msg)
        except Exception:  # never into the client's read loop
            log.exception("handling a message on %s failed", msg.subject)

    def qsize(self) -> int:
        return 0

    def empty(self) -> bool:
        return True

    def task_done(self) -> None:
        return None

    async def join(self) -> None:
        return None


async def deliver_directly(
    nc: _nats_client.Client, subject: str, handle: Callable[[Msg], None]
) -> Subscription:
    """Subscribe so that ``handle(msg)`` runs for each message in the client's read loop (with
    the fast paths off: from the subscription's own task, as nats-py delivers)."""
    if not installed():

        async def callback(msg: Msg) -> None:
            Direct(sub, handle).deliver(msg)

        sub = await nc.subscribe(subject, cb=callback)
        return sub
    sub = await nc.subscribe(subject)  # no callback: no task of its own
    sub._pending_queue = Direct(sub, handle)  # type: ignore[assignment]
    return sub


class Parser(nats_parser.Parser):
    """nats-py's parser with a fast path for MSG and HMSG; see the module docstring."""

    async def parse(self, data: bytes = b"") -> None:
        if self.buf:  # the rest of an earlier read: join it (reads mostly end on a message)
            self.buf.extend(data)
            data = bytes(self.buf)
            self.buf.clear()
        pos, size = 0, len(data)
        while pos < size:
            if self.state == _PAYLOAD:
                stop = pos + self.needed
                if size < stop + 2:
                    break
                hsize = self.header_needed
                if hsize > 0:
                    headers: bytes | None = data[pos : pos + hsize]
                    payload = data[pos + hsize : stop]
                    self.header_needed = 0
                else:
                    headers = None
                    payload = data[pos:stop]
                pos = stop + 2
                self.state = _CONTROL
                args = self.msg_arg
                sid = args["sid"]
                if not self._deliver(sid, args["subject"], args["reply"], payload, headers):
                    await self.nc._process_msg(sid, args["subject"], args["reply"], payload, headers)
                continue
            end = data.find(b"\r\n", pos, pos + _MAX_LINE)
            if end < 0 or not self._read_msg_line(data[pos:end]):
                # Not a MSG or HMSG line as the server writes them (another operation, a line
                # not all here yet, odd spacing): nats-py's own parser reads from here on.
                self.buf.extend(data[pos:])
                await super().parse()
                return
            pos = end + 2
            self.state = _PAYLOAD
        if pos < size:
            self.buf.extend(data[pos:])

    def _read_msg_line(self, line: bytes) -> bool:
        """Take ``MSG <subject> <sid> [reply] <size>`` or ``HMSG ... <header size> <size>``."""
        parts = line.split()
        n = len(parts)
        if n != line.count(b" ") + 1:
            return False  # other whitespace, or more than one space: the regex's to read
        op = parts[0]
        if op == b"MSG" and (n == 4 or n == 5) and parts[-1].isdigit():
            self.needed = int(parts[-1])
        elif op == b"HMSG" and (n == 5 or n == 6) and parts[-1].isdigit() and parts[-2].isdigit():
            self.needed = int(parts[-1])
            self.header_needed = int(parts[-2])
            n -= 1
        else:
            return False
        if not parts[1] or not parts[2].isdigit():
            return False
        self.msg_arg = {"subject": parts[1], "sid": int(parts[2]), "reply": parts[3] if n == 5 else b""}
        return True

    def _deliver(self, sid: int, subject: bytes, reply: bytes, data: bytes, headers: bytes | None) -> bool:
        """Hand a message for a direct subscription to its handler, as ``_process_msg`` would;
        False for every other message (and for headers with an inline status, which nats-py
        reads its own way), which then goes through ``_process_msg``."""
        nc = self.nc
        sub = nc._subs.get(sid)
        if sub is None:
            return False
        queue: Any = sub._pending_queue
        if type(queue) is not Direct or sub._jsi is not None or sub._future is not None or sub._max_msgs:
            return False
        hdr: dict[str, str] | None = None
        if headers is not None:
            # As Client._process_headers reads "NATS/1.0\r\n<lines>" (an inline status such as
            # "NATS/1.0 503" is left to it, and so is any other header parser it was given).
            if headers[_VERSION:_LINES] != b"\r\n" or _nats_client.parse_email is not None:
                return False
            hdr = parse_header_lines(headers[_LINES:]) or None
        stats = nc.stats
        stats["in_msgs"] += 1
        stats["in_bytes"] += len(data)
        sub._received += 1
        queue.deliver(
            nc.msg_class(
                subject=subject.decode(), reply=reply.decode(), data=data, headers=hdr, _client=nc, _sid=sid
            )
        )
        return True


_nats_parse_header_lines = _nats_client.Client.__dict__["_parse_header_lines"]
_nats_parser = _nats_client.Parser


def install() -> None:
    """Read with :class:`Parser` and :func:`parse_header_lines` in every client made from now."""
    _nats_client.Client._parse_header_lines = staticmethod(parse_header_lines)  # type: ignore[method-assign,assignment]
    _nats_client.Parser = Parser  # type: ignore[misc]


def uninstall() -> None:
    """nats-py's own parser and header reader again, for clients made from now."""
    _nats_client.Client._parse_header_lines = _nats_parse_header_lines  # type: ignore[method-assign]
    _nats_client.Parser = _nats_parser  # type: ignore[misc]


def installed() -> bool:
    return _nats_client.Parser is Parser
