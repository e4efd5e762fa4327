"""The receive path: direct delivery, header parsing and the MSG/HMSG fast path, each
compared with what nats-py itself does, and against a real nats-server."""

from __future__ import annotations

import asyncio
import json
import random
from typing import Any

import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.protocol import parser as nats_parser

from conveyor.shared.bus import reader, wire

# --- direct delivery, against a real server ------------------------------------------------


async def test_a_published_message_arrives_with_its_headers_and_reply(nc: Client) -> None:
    got: asyncio.Queue[Msg] = asyncio.Queue()
    sub = await reader.deliver_directly(nc, "wire.>", got.put_nowait)
    headers = {"Nats-Msg-Id": "a:1", "Conveyor-Job-Id": "job_1", "traceparent": "00-ab-cd-01"}
    await wire.publish(nc, "wire.one", b'{"x":1}', "reply.here", wire.header_block(headers))
    await wire.publish(nc, "wire.two", b"plain")
    first = await asyncio.wait_for(got.get(), 5)
    second = await asyncio.wait_for(got.get(), 5)
    assert (first.subject, first.reply, first.data) == ("wire.one", "reply.here", b'{"x":1}')
    assert first.headers == headers
    assert (second.subject, second.data, second.headers) == ("wire.two", b"plain", None)
    assert sub.pending_msgs == 0 and sub._pending_size == 0
    assert nc.stats["in_msgs"] == 2 and sub._received == 2
    await sub.drain()


async def test_a_handler_that_raises_does_not_stop_the_connection(nc: Client) -> None:
    got: list[bytes] = []

    def handle(msg: Msg) -> None:
        if msg.data == b"bad":
            raise RuntimeError("boom")
        got.append(msg.data)

    await reader.deliver_directly(nc, "wire.raise", handle)
    await wire.publish(nc, "wire.raise", b"bad")
    await wire.publish(nc, "wire.raise", b"good")
    await nc.flush()
    for _ in range(100):
        if got:
            break
        await asyncio.sleep(0.01)
    assert got == [b"good"] and nc.is_connected


async def test_status_messages_still_reach_a_direct_subscription(nc: Client) -> None:
    """A request nobody answers comes back as an inline status (``NATS/1.0 503``): the
    handler sees it with its Status header, as a pull's end or a no-responders reply."""
    got: asyncio.Queue[Msg] = asyncio.Queue()
    inbox = nc.new_inbox()
    await reader.deliver_directly(nc, inbox, got.put_nowait)
    await wire.publish(nc, "nobody.listens.here", b"?", inbox)
    msg = await asyncio.wait_for(got.get(), 5)
    assert msg.data == b"" and msg.headers is not None and msg.headers["Status"] == "503"


async def test_large_and_many_messages_arrive_whole_on_both_kinds_of_subscription(nc: Client) -> None:
    """Messages larger than one socket read, and bursts that end reads mid-line, arrive
    byte for byte, on a direct subscription and on an ordinary callback one."""
    assert isinstance(nc._ps, reader.Parser)  # every client gets the parser
    rnd = random.Random(3)
    bodies = [rnd.randbytes(rnd.choice([0, 1, 50, 3000, 200_000])) for _ in range(300)]
    direct: list[Msg] = []
    queued: list[Msg] = []
    done = asyncio.Event()

    def take(msg: Msg) -> None:
        direct.append(msg)

    async def keep(msg: Msg) -> None:
        queued.append(msg)
        if len(queued) == len(bodies):
            done.set()

    await reader.deliver_directly(nc, "big.>", take)
    await nc.subscribe("big.>", cb=keep)
    await nc.flush()
    for i, body in enumerate(bodies):
        headers = wire.header_block({"N": str(i)}) if i % 2 else None
        await wire.publish(nc, f"big.{i}", body, f"r.{i}" if i % 3 else "", headers)
    await asyncio.wait_for(done.wait(), 20)
    for got in (direct, queued):
        assert [m.data for m in got] == bodies
        assert [m.subject for m in got] == [f"big.{i}" for i in range(len(bodies))]
        assert [m.reply for m in got] == [f"r.{i}" if i % 3 else "" for i in range(len(bodies))]
        assert [m.headers for m in got] == [{"N": str(i)} if i % 2 else None for i in range(len(bodies))]


# --- header lines ------------------------------------------------------------------------------


def test_header_parsing_answers_as_nats_py_does() -> None:
    """The replacement gives nats-py's own answer for every block, odd ones included."""
    original = reader._nats_parse_header_lines.__func__
    assert Client._parse_header_lines is reader.parse_header_lines  # installed by the fixtures
    blocks = [
        b"Nats-Msg-Id: a\r\nNats-Expected-Stream: EVENTS\r\n\r\n",
        b"Name:Value\r\nName2:\tv2 \r\n",
        b"Bad Name: x\r\nTab\tName: y\r\n Lead: z\r\nTrail : w\r\n",
        b"Sep\x1cName: x\r\nUnit\x1fSep: y\r\nVt\x0bName: z\r\n",
        b"no colon here\r\n\r\n: empty name\r\nK: caf\xc3\xa9\r\nK2: \xff\xfe\r\n",
        b"\xc3\xa9t\xc3\xa9: non-ascii name\r\nDup: 1\r\nDup: 2\r\n",
        b"",
        b"\r\n\r\n\r\n",
    ]
    rnd = random.Random(7)
    alphabet = b"ab:- \t\r\n\x1c\x0b\x0c\xc3\xa9\xff"
    blocks += [bytes(rnd.choice(alphabet) for _ in range(rnd.randrange(60))) for _ in range(3000)]
    for block in blocks:
        assert reader.parse_header_lines(block) == original(block), block


# --- the parser, against nats-py's own on generated streams ----------------------------------


class Recorder(Client):
    """A client that is never connected: it records what its parser makes it do."""

    def __init__(self, parser: type[nats_parser.Parser]) -> None:
        super().__init__()
        self._ps = parser(self)
        self.events: list[tuple[Any, ...]] = []
        self.subs: dict[int, Subscription] = {}
        for sid, subject in ((1, "in.*"), (2, "q.*"), (3, "limited.*")):
            sub = Subscription(self, sid, subject)
            self._subs[sid] = self.subs[sid] = sub
        for sid in (1, 3):
            self.subs[sid]._pending_queue = reader.Direct(self.subs[sid], self._direct)  # type: ignore[assignment]
        self.subs[3]._max_msgs = 2  # unsubscribes itself after two: left to nats-py's path

    def _direct(self, msg: Msg) -> None:
        self.events.append(("msg", msg._sid, msg.subject, msg.reply, msg.data, msg.headers))

    async def _process_ping(self) -> None:
        self.events.append(("ping",))

    async def _process_pong(self) -> None:
        self.events.append(("pong",))

    async def _process_info(self, info: dict[str, Any], initial_connection: bool = False) -> None:
        self.events.append(("info", info))

    async def _process_err(self, err_msg: str) -> None:
        self.events.append(("err", err_msg))

    def outcome(self) -> dict[str, Any]:
        queue = self.subs[2]._pending_queue
        queued = []
        while not queue.empty():
            m = queue.get_nowait()
            queued.append((m._sid, m.subject, m.reply, m.data, m.headers))
        return {
            "events": self.events,
            "queued": queued,
            "stats": dict(self.stats),
            "received": {sid: s._received for sid, s in self.subs.items()},
            "pending": {sid: s._pending_size for sid, s in self.subs.items()},
            "subs": sorted(self._subs),
            "left": (bytes(self._ps.buf), self._ps.state),
        }


_HEADERS = [
    b"NATS/1.0\r\nNats-Msg-Id: a:1\r\nConveyor-Job-Id: job_1\r\n\r\n",
    b"NATS/1.0\r\n\r\n",
    b"NATS/1.0 503\r\n\r\n",
    b"NATS/1.0 404 No Messages\r\n\r\n",
    b"NATS/1.0 100 Idle Heartbeat\r\nNats-Last-Consumer: 5\r\nNats-Last-Stream: 9\r\n\r\n",
    b"NATS/1.0\r\nK: caf\xc3\xa9\r\nBad Name: x\r\n\r\n",
]


def _frame(rnd: random.Random) -> bytes:
    kind = rnd.randrange(12)
    if kind == 0:
        return rnd.choice([b"PING\r\n", b"PONG\r\n", b"+OK\r\n", b"-ERR 'Stale Connection'\r\n"])
    if kind == 1:
        return b"INFO " + json.dumps({"server_id": "s", "max_payload": 1048576}).encode() + b"\r\n"
    sid = rnd.choice([1, 1, 1, 2, 3, 9])
    subject = rnd.choice([b"in.a", b"q.b", b"limited.c", b"x" * 5000])
    reply = rnd.choice([b"", b"", b"_INBOX.abc.7", b"$JS.ACK.S.C.1.2.3.4.0"])
    payload = rnd.choice([b"", b"{}", b"MSG in.a 1 3\r\nabc\r\n", rnd.randbytes(rnd.randrange(3000))])
    sep = b"  " if rnd.random() < 0.05 else b" "  # an oddly spaced line goes to nats-py's regex
    args = [subject, str(sid).encode(), *([reply] if reply else [])]
    if rnd.random() < 0.5:
        headers = rnd.choice(_HEADERS)
        sizes = [str(len(headers)).encode(), str(len(headers) + len(payload)).encode()]
        return sep.join([b"HMSG", *args, *sizes]) + b"\r\n" + headers + payload + b"\r\n"
    return sep.join([b"MSG", *args, str(len(payload)).encode()]) + b"\r\n" + payload + b"\r\n"


async def _run(parser: type[nats_parser.Parser], chunks: list[bytes]) -> dict[str, Any]:
    nc = Recorder(parser)
    for chunk in chunks:
        await nc._ps.parse(chunk)
    return nc.outcome()


@pytest.mark.parametrize("seed", range(40))
async def test_the_parser_does_what_nats_pys_does_on_any_split_of_a_stream(seed: int) -> None:
    rnd = random.Random(seed)
    stream = b"".join(_frame(rnd) for _ in range(rnd.randrange(1, 60)))
    cuts = sorted(rnd.sample(range(1, len(stream)), min(len(stream) - 1, rnd.randrange(0, 40))))
    chunks = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True)]
    ours = await _run(reader.Parser, chunks)
    theirs = await _run(nats_parser.Parser, chunks)
    assert ours == theirs
    assert ours["left"] == (b"", nats_parser.AWAITING_CONTROL_LINE)  # every frame was read


async def test_a_stream_cut_mid_message_waits_for_the_rest() -> None:
    frame = b"HMSG in.a 1 _INBOX.x 18 23\r\nNATS/1.0\r\nK: v\r\n\r\nhello\r\n"
    for cut in range(1, len(frame)):
        nc = Recorder(reader.Parser)
        await nc._ps.parse(frame[:cut])
        assert nc.events == []
        await nc._ps.parse(frame[cut:])
        assert nc.events == [("msg", 1, "in.a", "_INBOX.x", b"hello", {"K": "v"})], cut


async def test_an_unknown_operation_is_a_protocol_error_as_with_nats_py() -> None:
    for parser in (reader.Parser, nats_parser.Parser):
        nc = Recorder(parser)
        with pytest.raises(nats_parser.ProtocolError):
            await nc._ps.parse(b"MSG in.a 1 2\r\nhi\r\nWHAT is this\r\n")
        assert nc.events == [("msg", 1, "in.a", "", b"hi", None)]
