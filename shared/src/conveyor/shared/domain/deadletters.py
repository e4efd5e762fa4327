"""Dead letters in the DLQ stream: read, replay, delete. No output here (see render.py).

A dead letter is ``dlq.<stage>.<original subject>`` with the original body byte for byte
and its story in ``Conveyor-*`` headers (conveyor.shared.bus.consumer.dead_letter). Replaying
republishes the body to ``Conveyor-Original-Subject`` and then deletes the dead letter. The
republished message carries ``Nats-Msg-Id: replay-DLQ-<seq>``: never the original id (the
original stream's duplicate window would drop the replay as a repeat), and the same id for
the same dead letter, so replaying again after an interruption cannot deliver it twice.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field

from conveyor.shared.bus import Bus, BusError, Delivery, NotFound
from conveyor.shared.contracts import subjects

# Headers that tell the dead letter's story; they are not part of the original message.
DLQ_HEADERS = frozenset(
    h.lower()
    for h in (
        subjects.H_ORIGINAL_SUBJECT,
        subjects.H_ORIGINAL_STREAM,
        subjects.H_ORIGINAL_SEQ,
        subjects.H_STAGE,
        subjects.H_ERROR,
        subjects.H_ATTEMPTS,
        subjects.H_FAILED_AT,
        subjects.H_LAST_STATUS,
        subjects.H_PROJECT,
        "Conveyor-Original-Msg-Id",
    )
)


@dataclass(frozen=True)
class DeadLetter:
    seq: int
    subject: str
    data: bytes
    headers: dict[str, str] = field(default_factory=dict)
    time: dt.datetime | None = None

    def header(self, name: str) -> str | None:
        lowered = name.lower()
        return next((v for k, v in self.headers.items() if k.lower() == lowered), None)

    @property
    def project(self) -> str | None:
        """The owning project (the ``Conveyor-Project`` header); None: an operator's alone."""
        return self.header(subjects.H_PROJECT)

    @property
    def stage(self) -> str:
        return self.header(subjects.H_STAGE) or self.subject.split(".")[1]

    @property
    def original_subject(self) -> str:
        """From the header; else from the subject itself (dlq.<stage>.<original>)."""
        return self.header(subjects.H_ORIGINAL_SUBJECT) or self.subject.split(".", 2)[2]

    def replay_headers(self) -> dict[str, str]:
        kept = {
            k: v
            for k, v in self.headers.items()
            if k.lower() not in DLQ_HEADERS and not k.lower().startswith("nats-")
        }
        kept[subjects.MSG_ID] = replay_msg_id(self.seq)
        return kept


def replay_msg_id(seq: int) -> str:
    return f"replay-{subjects.DLQ}-{seq}"


def is_replay(msg: Delivery) -> bool:
    """Whether ``msg`` is a dead letter put back by a replay (its Nats-Msg-Id says so)."""
    return (msg.headers or {}).get(subjects.MSG_ID, "").startswith(f"replay-{subjects.DLQ}-")


def subject_filter(stage: str | None = None, subject: str | None = None) -> str:
    """``--subject`` as given; ``--stage S`` -> ``dlq.S.>``; neither -> every dead letter."""
    if subject:
        return subject
    if stage:
        return f"dlq.{subjects.token(stage)}.>"
    return "dlq.>"


async def get(bus: Bus, seq: int) -> DeadLetter | None:
    try:
        raw = await bus.get_msg(subjects.DLQ, seq)
    except NotFound:
        return None
    return DeadLetter(
        seq=int(raw.seq or seq),
        subject=raw.subject or "",
        data=raw.data or b"",
        headers=dict(raw.headers or {}),
        time=raw.time,
    )


async def scan(
    bus: Bus, filter_subject: str = "dlq.>", *, limit: int = 0, start: int = 0
) -> AsyncIterator[DeadLetter]:
    """Dead letters matching ``filter_subject`` in sequence order from ``start``, up to the last
    one stored when the scan began (a letter dead-lettered again during a replay is not picked
    up twice)."""
    state = await bus.stream_state(subjects.DLQ)
    seq, last, found = max(state.first_seq or 1, start), state.last_seq, 0
    while seq <= last and (limit <= 0 or found < limit):
        try:
            raw = await bus.get_msg(subjects.DLQ, seq, subject=filter_subject, next=True)
        except NotFound:
            return
        got = int(raw.seq or 0)
        if got > last or got < seq:
            return
        found += 1
        headers = dict(raw.headers or {})
        yield DeadLetter(
            seq=got, subject=raw.subject or "", data=raw.data or b"", headers=headers, time=raw.time
        )
        seq = got + 1


@dataclass
class Outcome:
    seq: int
    ok: bool
    detail: str


async def replay_one(bus: Bus, letter: DeadLetter, *, keep: bool = False) -> Outcome:
    """Republish to the original subject (stored before anything else happens), then delete."""
    target = letter.original_subject
    try:
        # The letter's own headers (its traceparent included) go on as they are.
        ack = await bus.publish(target, letter.data, headers=letter.replay_headers(), trace=False)
    except BusError as exc:
        return Outcome(letter.seq, False, f"publish to {target} failed: {exc or type(exc).__name__}")
    detail = f"-> {target} ({ack.stream} #{ack.seq}{', already replayed' if ack.duplicate else ''})"
    if not keep:
        try:
            await bus.delete_msg(subjects.DLQ, letter.seq)
        except BusError as exc:
            return Outcome(letter.seq, False, f"{detail}; could not delete the dead letter: {exc}")
    return Outcome(letter.seq, True, detail)


async def replay(
    bus: Bus,
    letters: AsyncIterable[DeadLetter] | Iterable[DeadLetter],
    *,
    keep: bool = False,
    progress: Callable[[Outcome], None] | None = None,
) -> list[Outcome]:
    """Replay one at a time, in sequence order; a scan is consumed as it goes, so a bulk
    replay never holds more than one dead letter's body."""

    async def each() -> AsyncIterator[DeadLetter]:
        if isinstance(letters, AsyncIterable):
            async for letter in letters:
                yield letter
        else:
            for letter in letters:
                yield letter

    outcomes = []
    async for letter in each():
        outcome = await replay_one(bus, letter, keep=keep)
        outcomes.append(outcome)
        if progress is not None:
            progress(outcome)
    return outcomes


async def count(bus: Bus, filter_subject: str = "dlq.>") -> int:
    """How many dead letters match ``filter_subject`` (for a progress bar's total)."""
    return await bus.stream_messages(
        subjects.DLQ, subject=None if filter_subject == "dlq.>" else filter_subject
    )


async def delete(bus: Bus, seqs: list[int]) -> list[Outcome]:
    outcomes = []
    for seq in seqs:
        try:
            await bus.delete_msg(subjects.DLQ, seq)
            outcomes.append(Outcome(seq, True, "deleted"))
        except NotFound:
            outcomes.append(Outcome(seq, False, "no such dead letter"))
        except BusError as exc:
            outcomes.append(Outcome(seq, False, f"could not delete: {exc}"))
    return outcomes


async def purge(bus: Bus, filter_subject: str | None) -> int:
    """Remove every dead letter (matching the filter); returns how many went."""
    before = await bus.stream_messages(subjects.DLQ)
    await bus.purge(subjects.DLQ, subject=filter_subject)
    after = await bus.stream_messages(subjects.DLQ)
    return max(0, before - after)
