"""``conveyor orgs|projects|keys``: organisations, projects and API keys through a receiver's
admin API (so secrets are sealed by the receiver, with its keys, and checked as the API checks
them). The receiver is --url, else CONVEYOR_URL, else http://127.0.0.1:3100; the key is
--key-env's variable, else CONVEYOR_ADMIN_KEY, else ADMIN_API_KEY. Secrets are never taken on
the command line (they would show in the process list): they are read from the environment
variables named, and the answers print them only when the receiver generated them.

Exit status: 0 done, 1 the receiver refused (its error is printed), 2 bad usage or unreachable.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.error
import urllib.request
from typing import Any

DEFAULT_URL = "http://127.0.0.1:3100"


def add_parsers(top: Any, conn: argparse.ArgumentParser) -> None:
    http = argparse.ArgumentParser(add_help=False, parents=[conn])
    http.add_argument("--url", default=os.environ.get("CONVEYOR_URL") or DEFAULT_URL, help="the receiver")
    http.add_argument("--key-env", default="", help="environment variable holding the admin or org key")
    http.add_argument("--json", action="store_true", help="print the receiver's JSON answer")

    orgs = top.add_parser("orgs", help="organisations: list, create", parents=[http]).add_subparsers(
        dest="command", required=True
    )
    orgs.add_parser("list", parents=[http])
    c = orgs.add_parser("create", parents=[http])
    c.add_argument("name")
    c.add_argument("--id", dest="org_id")

    projects = top.add_parser(
        "projects", help="projects: list, show, create, update, delete, secrets", parents=[http]
    ).add_subparsers(dest="command", required=True)
    projects.add_parser("list", parents=[http])
    projects.add_parser("show", parents=[http]).add_argument("project_id")
    c = projects.add_parser("create", parents=[http])
    c.add_argument("name")
    c.add_argument("--org", dest="org_id", required=True)
    c.add_argument("--id", dest="project_id")
    _fields(c)
    c.add_argument(
        "--webhook-secret-from",
        action="append",
        default=[],
        metavar="SOURCE=VAR",
        help="a webhook secret for SOURCE, read from the environment variable VAR (repeatable)",
    )
    c.add_argument("--callback-secret-from", metavar="VAR", help="else one is generated and printed once")
    c.add_argument("--outbound-credential-from", metavar="VAR", help="sent as Authorization: Bearer")
    u = projects.add_parser("update", parents=[http])
    u.add_argument("project_id")
    u.add_argument("--name")
    u.add_argument("--enable", dest="enabled", action="store_const", const=True)
    u.add_argument("--disable", dest="enabled", action="store_const", const=False)
    _fields(u)
    projects.add_parser("delete", parents=[http]).add_argument("project_id")
    s = projects.add_parser("add-secret", help="add a webhook or callback secret (rotation)", parents=[http])
    s.add_argument("project_id")
    s.add_argument("kind", choices=["webhook", "callback", "outbound"])
    s.add_argument("--source", help="the webhook source (kind webhook)")
    s.add_argument("--from", dest="value_from", metavar="VAR", help="read the secret from VAR")
    projects.add_parser("reseal", help="seal every project's secrets with the newest key", parents=[http])
    r = projects.add_parser("remove-secret", parents=[http])
    r.add_argument("project_id")
    r.add_argument("secret_id")

    keys = top.add_parser("keys", help="API keys: list, create, revoke", parents=[http]).add_subparsers(
        dest="command", required=True
    )
    keys.add_parser("list", parents=[http])
    k = keys.add_parser("create", parents=[http])
    k.add_argument("name")
    scope = k.add_mutually_exclusive_group()
    scope.add_argument("--project", dest="project_id")
    scope.add_argument("--org", dest="org_id")
    scope.add_argument("--admin", action="store_true")
    k.add_argument("--read-only", action="store_true")
    k.add_argument("--per-minute", type=int)
    k.add_argument("--per-day", type=int)
    keys.add_parser("revoke", parents=[http]).add_argument("key_id")


def _fields(p: argparse.ArgumentParser) -> None:
    p.add_argument("--external-id", action="append", dest="external_ids", metavar="KIND:ID")
    p.add_argument("--callback-url")
    p.add_argument("--cors-origin", action="append", dest="cors_origins", metavar="ORIGIN")
    p.add_argument("--agent", action="append", dest="agents")
    p.add_argument("--per-minute", type=int)
    p.add_argument("--per-day", type=int)
    p.add_argument("--max-running", type=int)
    p.add_argument("--budget-day-usd", type=float, help="LLM spend per UTC day (0: no budget)")
    p.add_argument("--budget-month-usd", type=float, help="LLM spend per UTC month (0: no budget)")
    p.add_argument("--progress-callbacks", choices=("on", "off"), help="progress to the callback URL")


class Refused(Exception):
    def __init__(self, status: int, body: dict[str, Any]) -> None:
        super().__init__(f"HTTP {status}: {body.get('error', '')}: {body.get('message', '')}")
        self.status = status


def _secret(var: str) -> str:
    value = os.environ.get(var)
    if not value:
        raise SystemExit(f"conveyor: the environment variable {var} is not set")
    return value


def _call(args: argparse.Namespace, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
    key = os.environ.get(args.key_env) if args.key_env else None
    key = key or os.environ.get("CONVEYOR_ADMIN_KEY") or os.environ.get("ADMIN_API_KEY")
    if not key:
        raise SystemExit("conveyor: no key: set CONVEYOR_ADMIN_KEY (or name a variable with --key-env)")
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(
        args.url.rstrip("/") + path,
        data=data,
        method=method,
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(req, timeout=args.timeout) as resp:
            raw = resp.read()
    except urllib.error.HTTPError as exc:
        try:
            answer = json.loads(exc.read() or b"{}")
        except ValueError:
            answer = {}
        raise Refused(exc.code, answer) from None
    return json.loads(raw) if raw else None


def _given(args: argparse.Namespace, *names: str) -> dict[str, Any]:
    return {n: getattr(args, n) for n in names if getattr(args, n, None) is not None}


_FIELDS = (
    "external_ids",
    "callback_url",
    "cors_origins",
    "agents",
    "per_minute",
    "per_day",
    "max_running",
    "budget_day_usd",
    "budget_month_usd",
)


def _project_body(args: argparse.Namespace) -> dict[str, Any]:
    body = _given(args, "name", "org_id", "project_id", "enabled", *_FIELDS)
    if getattr(args, "progress_callbacks", None) is not None:
        body["progress_callbacks"] = args.progress_callbacks == "on"
    hooks: dict[str, list[str]] = {}
    for pair in getattr(args, "webhook_secret_from", []) or []:
        source, sep, var = pair.partition("=")
        if not sep:
            raise SystemExit("conveyor: --webhook-secret-from takes SOURCE=VAR")
        hooks.setdefault(source, []).append(_secret(var))
    if hooks:
        body["webhook_secrets"] = hooks
    if getattr(args, "callback_secret_from", None):
        body["callback_secret"] = _secret(args.callback_secret_from)
    if getattr(args, "outbound_credential_from", None):
        body["outbound_credential"] = _secret(args.outbound_credential_from)
    return body


def _request(args: argparse.Namespace) -> tuple[str, str, dict[str, Any] | None]:
    group, command = args.group, args.command
    if group == "orgs":
        return (
            ("GET", "/api/admin/orgs", None)
            if command == "list"
            else (
                "POST",
                "/api/admin/orgs",
                _given(args, "name", "org_id"),
            )
        )
    if group == "keys":
        if command == "list":
            return "GET", "/api/admin/keys", None
        if command == "revoke":
            return "DELETE", f"/api/admin/keys/{args.key_id}", None
        body = _given(args, "name", "project_id", "org_id", "per_minute", "per_day")
        body["read_only"] = args.read_only
        body["scope"] = "admin" if args.admin else "org" if args.org_id else "project"
        return "POST", "/api/admin/keys", body
    base = "/api/admin/projects"
    if command == "list":
        return "GET", base, None
    if command == "reseal":
        return "POST", "/api/admin/reseal", None
    if command == "show":
        return "GET", f"{base}/{args.project_id}", None
    if command == "create":
        return "POST", base, _project_body(args)
    if command == "update":
        body = _project_body(args)
        body.pop("project_id", None)
        return "PATCH", f"{base}/{args.project_id}", body
    if command == "delete":
        return "DELETE", f"{base}/{args.project_id}", None
    if command == "add-secret":
        body = {"kind": args.kind, **_given(args, "source")}
        if args.value_from:
            body["value"] = _secret(args.value_from)
        return "POST", f"{base}/{args.project_id}/secrets", body
    return "DELETE", f"{base}/{args.project_id}/secrets/{args.secret_id}", None


def _print(args: argparse.Namespace, answer: Any) -> None:
    if args.json or answer is None:
        if answer is not None:
            print(json.dumps(answer, indent=2, default=str))
        return
    rows = answer.get("projects") or answer.get("keys") or answer.get("orgs")
    if isinstance(rows, list):
        for row in rows:
            print("  ".join(f"{k}={row[k]}" for k in _SUMMARY if k in row))
        return
    for name, value in answer.items():
        if name == "secrets":
            for s in value:
                print(f"secret {s['id']}: {s['kind']} {s.get('source') or ''} {s['hint']}".rstrip())
        elif value not in (None, [], {}):
            print(f"{name}: {value}")


_SUMMARY = ("project_id", "org_id", "key_id", "name", "scope", "enabled", "read_only", "revoked", "prefix")


def run(args: argparse.Namespace) -> int:
    method, path, body = _request(args)
    try:
        answer = _call(args, method, path, body)
    except Refused as exc:
        print(f"conveyor: {exc}", file=sys.stderr)
        return 1
    except (urllib.error.URLError, OSError) as exc:
        print(f"conveyor: cannot reach the receiver at {args.url}: {exc}", file=sys.stderr)
        return 2
    _print(args, answer)
    return 0
