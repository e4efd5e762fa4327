"""``conveyor``: operator commands.

    conveyor dlq list    [--stage S | --subject F] [--limit N] [--json]
    conveyor dlq show    SEQ [--json]
    conveyor dlq replay  (SEQ... | --all [--stage S | --subject F]) [--keep] [--no-progress]
    conveyor dlq purge   (SEQ... | --all [--stage S | --subject F]) [--yes]
    conveyor orgs        list | create NAME
    conveyor projects    list | show | create | update | delete | add-secret | remove-secret
    conveyor keys        list | create NAME [--project P | --org O | --admin] [--read-only] | revoke ID
    conveyor mcp         --url URL [--key KEY]   an MCP server on stdio for a running receiver

dlq talks to NATS; orgs, projects and keys to a receiver's admin API (see admin.py).

The server is --server, else NATS_URL, else nats://127.0.0.1:4222. Exit status: 0 done,
1 something failed (each failure is named), 2 bad usage or NATS unreachable.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import AsyncIterator, Awaitable, Callable

from conveyor.cli import admin, render
from conveyor.shared import bus
from conveyor.shared.domain import deadletters as dlq

DEFAULT_SERVER = "nats://127.0.0.1:4222"


def _parser() -> argparse.ArgumentParser:
    # --server and --timeout are accepted before or after the command.
    conn = argparse.ArgumentParser(add_help=False)
    conn.add_argument("--server", "-s", default=argparse.SUPPRESS, help="NATS URL(s) (default: $NATS_URL)")
    conn.add_argument("--timeout", type=float, default=argparse.SUPPRESS, help="seconds to wait for NATS")
    p = argparse.ArgumentParser(prog="conveyor", description="Conveyor operator commands.", parents=[conn])
    p.set_defaults(server=os.environ.get("NATS_URL") or DEFAULT_SERVER, timeout=5.0)
    top = p.add_subparsers(dest="group", required=True)

    g = top.add_parser("dlq", help="dead letters: list, show, replay, purge", parents=[conn])
    cmds = g.add_subparsers(dest="command", required=True)

    def filters(c: argparse.ArgumentParser) -> None:
        c.add_argument("--stage", help="only this stage (dlq.<stage>.>), e.g. deliver")
        c.add_argument("--subject", help="only dead letters matching this filter, e.g. 'dlq.deliver.>'")

    ls = cmds.add_parser("list", help="list dead letters", parents=[conn])
    filters(ls)
    ls.add_argument("--limit", type=int, default=0, help="at most this many (default: all)")
    ls.add_argument("--json", action="store_true", help="one JSON object per line")

    sh = cmds.add_parser("show", help="show one dead letter: headers and body", parents=[conn])
    sh.add_argument("seq", type=int)
    sh.add_argument("--json", action="store_true")

    rp = cmds.add_parser(
        "replay", help="republish dead letters to their original subject, then delete them", parents=[conn]
    )
    rp.add_argument("seqs", type=int, nargs="*", metavar="SEQ")
    rp.add_argument("--all", action="store_true", help="every dead letter (matching --stage/--subject)")
    filters(rp)
    rp.add_argument("--keep", action="store_true", help="republish but keep the dead letters")
    rp.add_argument("--no-progress", action="store_true", help="no progress bar")

    pg = cmds.add_parser("purge", help="delete dead letters without replaying them", parents=[conn])
    pg.add_argument("seqs", type=int, nargs="*", metavar="SEQ")
    pg.add_argument("--all", action="store_true", help="every dead letter (matching --stage/--subject)")
    filters(pg)
    pg.add_argument("--yes", "-y", action="store_true", help="do not ask for confirmation")
    admin.add_parsers(top, conn)

    m = top.add_parser("mcp", help="serve Conveyor's MCP tools on stdio (docs/mcp.md)")
    m.add_argument("--url", default=os.environ.get("CONVEYOR_URL"), help="the receiver ($CONVEYOR_URL)")
    m.add_argument("--key", default=os.environ.get("CONVEYOR_API_KEY"), help="API key ($CONVEYOR_API_KEY)")
    return p


async def _with_js(args: argparse.Namespace, work: Callable[[bus.Bus], Awaitable[int]]) -> int:
    servers = [s.strip() for s in args.server.split(",") if s.strip()]

    async def quiet(exc: Exception) -> None:  # the failure is reported once, below
        pass

    try:
        conn = await asyncio.wait_for(
            bus.Bus.connect(
                servers,
                reconnect=False,
                timeout_s=args.timeout,
                connect_timeout_s=args.timeout,
                on_error=quiet,
            ),
            args.timeout + 1,
        )
    except Exception as exc:
        reason = str(exc) or type(exc).__name__
        print(f"conveyor: cannot connect to NATS at {args.server}: {reason}", file=sys.stderr)
        return 2
    try:
        return await work(conn)
    finally:
        await conn.close(drain_s=args.timeout)


async def _list(args: argparse.Namespace, js: bus.Bus) -> int:
    letters = [x async for x in dlq.scan(js, dlq.subject_filter(args.stage, args.subject), limit=args.limit)]
    if args.json:
        for letter in letters:
            render.json_line(render.as_dict(letter))
    else:
        render.letters_table(letters)
    return 0


async def _show(args: argparse.Namespace, js: bus.Bus) -> int:
    letter = await dlq.get(js, args.seq)
    if letter is None:
        print(f"conveyor: no dead letter #{args.seq}", file=sys.stderr)
        return 1
    if args.json:
        render.json_line(render.as_dict(letter, body=True))
    else:
        render.show(letter)
    return 0


async def _named(args: argparse.Namespace, js: bus.Bus) -> tuple[list[dlq.DeadLetter], list[int]]:
    """The dead letters named by SEQ...; and the SEQs that do not exist."""
    found, missing = [], []
    for seq in args.seqs:
        letter = await dlq.get(js, seq)
        if letter is None:
            missing.append(seq)
        else:
            found.append(letter)
    return found, missing


async def _replay(args: argparse.Namespace, js: bus.Bus) -> int:
    missing: list[int] = []
    letters: AsyncIterator[dlq.DeadLetter] | list[dlq.DeadLetter]
    if args.all:
        filt = dlq.subject_filter(args.stage, args.subject)
        total = await dlq.count(js, filt)
        letters = dlq.scan(js, filt)
    else:
        letters, missing = await _named(args, js)
        total = len(letters)
        for seq in missing:
            print(f"#{seq}: no such dead letter", file=sys.stderr)
    bulk = args.all or total > 1
    with render.ReplayProgress(total, enabled=bulk and not args.no_progress) as progress:
        outcomes = await dlq.replay(js, letters, keep=args.keep, progress=progress)
    if not bulk:
        for o in outcomes:
            print(
                f"#{o.seq} {o.detail}" if o.ok else f"#{o.seq}: {o.detail}",
                file=sys.stdout if o.ok else sys.stderr,
            )
    done = sum(o.ok for o in outcomes)
    tail = f"; {len(missing)} not found" if missing else ""
    print(f"replayed {done} of {len(outcomes)} dead letter(s){tail}")
    return 0 if done == len(outcomes) and not missing else 1


def _confirm_purge(args: argparse.Namespace) -> bool:
    what = (
        f"every dead letter matching {dlq.subject_filter(args.stage, args.subject)}"
        if args.all
        else f"dead letter(s) {', '.join(f'#{s}' for s in args.seqs)}"
    )
    if args.yes:
        return True
    if not sys.stdin.isatty():
        print(f"conveyor: refusing to delete {what} without --yes", file=sys.stderr)
        return False
    return input(f"Delete {what}? [y/N] ").strip().lower() in ("y", "yes")


async def _purge(args: argparse.Namespace, js: bus.Bus) -> int:
    if args.all:
        filt = args.subject or (dlq.subject_filter(args.stage) if args.stage else None)
        print(f"purged {await dlq.purge(js, filt)} dead letter(s)")
        return 0
    outcomes = await dlq.delete(js, args.seqs)
    for o in outcomes:
        print(f"#{o.seq}: {o.detail}", file=sys.stdout if o.ok else sys.stderr)
    return 0 if all(o.ok for o in outcomes) else 1


def _mcp(url: str, key: str) -> int:
    import anyio

    from conveyor.mcp.server import build

    try:
        anyio.run(build(url, key=key).run_stdio_async)
    except KeyboardInterrupt:
        return 130
    return 0


def main(argv: list[str] | None = None) -> None:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.group == "mcp":
        if not args.url or not args.key:
            parser.error("mcp: give --url and --key (or CONVEYOR_URL and CONVEYOR_API_KEY)")
        raise SystemExit(_mcp(args.url, args.key))
    if args.group != "dlq":
        raise SystemExit(admin.run(args))
    if args.command in ("replay", "purge") and bool(args.all) == bool(args.seqs):
        parser.error(f"dlq {args.command}: give SEQ... or --all (not both)")
    if args.command in ("replay", "purge") and (args.stage or args.subject) and not args.all:
        parser.error(f"dlq {args.command}: --stage/--subject go with --all")
    if args.command == "purge" and not _confirm_purge(args):
        raise SystemExit(2)
    command = {"list": _list, "show": _show, "replay": _replay, "purge": _purge}[args.command]
    try:
        code = asyncio.run(_with_js(args, lambda js: command(args, js)))
    except KeyboardInterrupt:
        code = 130
    except Exception as exc:  # a NATS error mid-command: one line, not a traceback
        print(f"conveyor: {type(exc).__name__}: {exc}", file=sys.stderr)
        code = 1
    raise SystemExit(code)


if __name__ == "__main__":
    main()
