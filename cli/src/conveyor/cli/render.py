"""Terminal output for `conveyor dlq`: tables and a progress bar (rich), or JSON lines."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from conveyor.shared.contracts import subjects
from conveyor.shared.domain.deadletters import DeadLetter, Outcome


def console(stderr: bool = False) -> Console:
    stream = sys.stderr if stderr else sys.stdout
    # Piped output keeps whole lines rather than wrapping at 80 columns.
    return Console(file=stream, width=None if stream.isatty() else 200, highlight=False)


def as_dict(letter: DeadLetter, *, body: bool = False) -> dict[str, Any]:
    out: dict[str, Any] = {
        "seq": letter.seq,
        "subject": letter.subject,
        "stage": letter.stage,
        "original_subject": letter.original_subject,
        "attempts": letter.header(subjects.H_ATTEMPTS),
        "last_status": letter.header(subjects.H_LAST_STATUS),
        "failed_at": letter.header(subjects.H_FAILED_AT),
        "error": letter.header(subjects.H_ERROR),
        "stored_at": letter.time.isoformat() if letter.time else None,
    }
    if body:
        out["headers"] = letter.headers
        try:
            out["body"] = json.loads(letter.data)
        except ValueError:
            out["body_text"] = letter.data.decode(errors="replace")
    return out


def letters_table(letters: Iterable[DeadLetter]) -> int:
    table = Table(title="Dead letters (stream DLQ)")
    for name in ("seq", "stage", "original subject", "attempts", "status", "failed at (UTC)", "error"):
        table.add_column(name, overflow="fold")
    n = 0
    for letter in letters:
        n += 1
        table.add_row(
            str(letter.seq),
            letter.stage,
            letter.original_subject,
            letter.header(subjects.H_ATTEMPTS) or "",
            letter.header(subjects.H_LAST_STATUS) or "",
            (letter.header(subjects.H_FAILED_AT) or "")[:19].replace("T", " "),  # to the second, UTC
            (letter.header(subjects.H_ERROR) or "")[:160],
        )
    out = console()
    if n:
        out.print(table)
    else:
        out.print("No dead letters.")
    return n


def show(letter: DeadLetter) -> None:
    out = console()
    out.print(f"[bold]DLQ #{letter.seq}[/bold]  {letter.subject}")
    if letter.time:
        out.print(f"stored at {letter.time.isoformat()}")
    out.print()
    for key, value in sorted(letter.headers.items()):
        out.print(f"  {key}: {value}", markup=False)
    out.print()
    try:
        out.print_json(letter.data.decode())
    except (ValueError, UnicodeDecodeError):
        out.print(letter.data.decode(errors="replace"), markup=False)


def json_line(doc: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(doc, default=str) + "\n")


class ReplayProgress:
    """A progress bar on stderr while a bulk replay runs; failures are printed as they happen."""

    def __init__(self, total: int, *, enabled: bool) -> None:
        self.enabled = enabled
        self.err = console(stderr=True)
        self.bar = Progress(
            TextColumn("replaying"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
            console=self.err,
            disable=not enabled,
        )
        self.task = self.bar.add_task("replay", total=total)

    def __enter__(self) -> ReplayProgress:
        self.bar.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.bar.stop()

    def __call__(self, outcome: Outcome) -> None:
        self.bar.advance(self.task)
        if not outcome.ok:
            self.bar.console.print(f"#{outcome.seq}: {outcome.detail}", markup=False)
