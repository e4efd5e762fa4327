"""The receiver's per-process state and the steps every handler shares: NATS guard, body
limit, API-key authentication, rate limits, and accepting work into JetStream."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import ipaddress
import logging
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from conveyor.receiver.apikeys import ApiKeys, KeyRevoked, KeysUnavailable, Principal
from conveyor.receiver.config import Settings
from conveyor.receiver.metrics import Metrics
from conveyor.receiver.sources import Network, Source, peer_host
from conveyor.shared import bus
from conveyor.shared.bus import KvMirror
from conveyor.shared.contracts import subjects
from conveyor.shared.contracts.events import JobIndexEntry, JobRecord, encoder, job_record_decoder, utcnow
from conveyor.shared.domain.agentdefs import BUILTIN_PIPELINES, AgentDefinition, definition_key, split_key
from conveyor.shared.domain.integration import IntegrationRecorder
from conveyor.shared.domain.ratelimit import DAY, MINUTE, Decision, LimiterUnavailable, RateLimiter, hit_key
from conveyor.shared.domain.sealing import Sealer, SealingError
from conveyor.shared.domain.tenancy import DEFAULT_PROJECT, Directory, Project, ProjectSecrets
from conveyor.shared.domain.usage import PERIODS, Period, has_budget, over_budget, read_period
from conveyor.shared.runtime.http import HTTPError
from conveyor.shared.runtime.runner import Runtime

log = logging.getLogger(__name__)

CORRELATION_ID: web.RequestKey[str] = web.RequestKey("correlation_id", str)
RATE_LIMIT: web.RequestKey[Decision] = web.RequestKey("rate_limit", Decision)
PRINCIPAL: web.RequestKey[Principal] = web.RequestKey("principal", Principal)

# What a browser page on an allowed origin may send and read (CORS).
_CORS_METHODS = "GET, POST, PUT, PATCH, DELETE"
_CORS_HEADERS = "Authorization, Content-Type, Idempotency-Key, Last-Event-ID, X-Correlation-ID"
_CORS_EXPOSED = (
    "Location, Retry-After, X-Correlation-ID, X-RateLimit-Limit, X-RateLimit-Remaining, X-RateLimit-Reset"
)
BODY_HELD: web.RequestKey[int] = web.RequestKey("body_held", int)


# Anything that means "JetStream did not answer": the request may be retried later.
NATS_DOWN = (
    bus.Timeout,
    bus.Unavailable,
    asyncio.TimeoutError,
    ConnectionError,
    LimiterUnavailable,
)


class BodyBudget:
    """MAX_BODY_BYTES_IN_FLIGHT: body bytes held across all connections. Both HTTP paths take a
    body's length before reading it and give it back with the answer (the lean path changes
    ``free`` inline: two integer operations per request)."""

    __slots__ = ("free", "limit")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.free = limit


class StreamSlots:
    """Server-Sent Event streams open in this process: at most ``total``, and ``per_client``
    for one API key or client address."""

    def __init__(self, total: int, per_client: int) -> None:
        self.total = total
        self.per_client = per_client
        self.open = 0
        self.by_client: dict[str, int] = {}

    def take(self, client: str | None) -> str | None:
        """None when a slot is taken (give it back with :meth:`give`), else what is full."""
        if self.open >= self.total:
            return f"this receiver serves {self.total} streams already"
        if client is not None:
            held = self.by_client.get(client, 0)
            if held >= self.per_client:
                return f"{self.per_client} streams are open for this client already"
            self.by_client[client] = held + 1
        self.open += 1
        return None

    def give(self, client: str | None) -> None:
        self.open -= 1
        if client is not None:
            held = self.by_client.pop(client, 1) - 1
            if held > 0:
                self.by_client[client] = held


@dataclass
class Receiver:
    rt: Runtime[Settings]
    settings: Settings
    sources: dict[str, Source]
    trusted: tuple[Network, ...]
    keys: ApiKeys
    metrics: Metrics
    js: bus.Bus | None = None  # the bus, once the components are set up
    kv: dict[str, bus.Kv] = field(default_factory=dict)
    limiter: RateLimiter | None = None
    started: float = field(default_factory=time.time)
    tracing: bool = True  # False when spans would go nowhere: then none are made per request
    last_webhook: dict[str, float] = field(default_factory=dict)  # source -> unix time, this replica
    agents: tuple[str, ...] = ()  # settings.known_agents, computed once
    event_subjects: dict[tuple[str, str], str] = field(default_factory=dict)  # (source, type) -> subject
    job_id_key: bytes = b""  # the key job ids are derived with (job_ids.py); set before js
    directory: Directory = field(default_factory=lambda: Directory(Project.default()))
    sealer: Sealer = field(default_factory=lambda: Sealer([]))
    secrets: ProjectSecrets = field(init=False)  # opened with ``sealer``
    projects: KvMirror[Project] | None = None
    definitions: KvMirror[AgentDefinition] | None = None  # KV agents: every project's definitions
    # The same, by project: a project's own list costs no scan of everyone's.
    definitions_of: dict[str, dict[str, AgentDefinition]] = field(default_factory=dict)
    integration: IntegrationRecorder | None = None  # last webhook per project (status endpoint)
    # project -> (monotonic time read, spend per period): budgets are checked against KV
    # ``usage`` read at most once a second per project, not on every request.
    spend_cache: dict[str, tuple[float, dict[Period, float]]] = field(default_factory=dict)

    def projects_mirror_put(self, project_id: str, project: Project | None) -> None:
        """A project this replica just wrote, seen here at once (others see it through the watch)."""
        if self.projects is not None:
            self.projects.put_local(project_id, project)
        else:
            self.directory.update(project_id, project)

    body_budget: BodyBudget = field(init=False)  # from the settings
    streams: StreamSlots = field(init=False)  # likewise
    # Routes that take ?api_key= (Server-Sent Events: EventSource cannot send a header).
    query_key_routes: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        self.secrets = ProjectSecrets(self.sealer)
        self.body_budget = BodyBudget(self.settings.max_body_bytes_in_flight)
        self.streams = StreamSlots(self.settings.sse_max_streams, self.settings.sse_max_streams_per_client)

    # --- agents ---------------------------------------------------------------------------

    def definition(self, project: str, name: str) -> AgentDefinition | None:
        """A built-in pipeline, or ``project``'s own definition named ``name`` (never another
        project's)."""
        if name in self.agents:
            return None
        if name in BUILTIN_PIPELINES:
            return BUILTIN_PIPELINES[name]
        if self.definitions is None:
            return None
        return self.definitions.values.get(definition_key(project, name))

    def definition_changed(self, key: str, value: AgentDefinition | None) -> None:
        """The mirror's on_change: keep ``definitions_of`` in step."""
        owner = split_key(key)
        if owner is None:
            return
        project, agent_id = owner
        if value is None:
            self.definitions_of.get(project, {}).pop(agent_id, None)
        else:
            self.definitions_of.setdefault(project, {})[agent_id] = value

    def own_definitions(self, project: str) -> list[AgentDefinition]:
        return sorted(self.definitions_of.get(project, {}).values(), key=lambda d: d.id)

    def may_run(self, project: Project, name: str) -> tuple[bool, AgentDefinition | None]:
        """Whether ``project`` may run ``name`` and, when it is not a configured agent, its
        definition: :meth:`runnable` for one name, without building the whole list."""
        if name in self.agents:
            return project.may_run(name), None
        found = self.definition(project.project_id, name)
        if found is None:
            return False, None
        if found.read_only:
            agents = [a for stage in found.stages for a in stage.agents]
            return project.may_run(name) and all(
                a in self.agents and project.may_run(a) for a in agents
            ), found
        return True, found

    def require_runnable(self, project: Project, name: str) -> AgentDefinition | None:
        """:meth:`may_run`, or 422 ``unknown_agent`` naming the field and what the project may run."""
        allowed, found = self.may_run(project, name)
        if not allowed:
            known = ", ".join(self.runnable(project))
            raise HTTPError(
                422, "unknown_agent", f"agent: unknown agent {name[:64]!r}; known: {known}", field="agent"
            )
        return found

    def runnable(self, project: Project) -> dict[str, AgentDefinition | None]:
        """What ``project`` may run: the deployment's agents it lists (None: every one), the
        built-in pipelines whose agents it may all run, and its own definitions."""
        out: dict[str, AgentDefinition | None] = {a: None for a in self.agents if project.may_run(a)}
        for name, d in BUILTIN_PIPELINES.items():
            if project.may_run(name) and all(a in out for s in d.stages for a in s.agents):
                out[name] = d
        for d in self.own_definitions(project.project_id):
            out.setdefault(d.id, d)
        return out

    # --- availability -----------------------------------------------------------------------

    @property
    def available(self) -> bool:
        return self.js is not None and self.rt.connected and not self.rt.stopping.is_set()

    def unavailable(self, what: str = "NATS JetStream is unreachable") -> HTTPError:
        return HTTPError(
            503,
            "unavailable",
            f"{what}; nothing was accepted, retry later",
            headers={"Retry-After": str(self.settings.retry_after_s)},
        )

    def require_nats(self) -> bus.Bus:
        """Fail fast with 503 when the connection is down, rather than queue in the client."""
        if self.rt.stopping.is_set():
            raise self.unavailable("this receiver is shutting down")
        if not self.available or self.js is None:
            raise self.unavailable()
        return self.js

    @contextlib.contextmanager
    def nats_errors(self) -> Iterator[None]:
        """Map "JetStream did not answer" to 503 + Retry-After."""
        try:
            yield
        except NATS_DOWN as exc:
            raise self.unavailable(f"NATS JetStream did not answer ({type(exc).__name__})") from None

    def bucket(self, name: str) -> bus.Kv:
        self.require_nats()
        return self.kv[name]

    # --- request helpers --------------------------------------------------------------------

    def client_address(self, request: web.Request) -> str | None:
        return self.address_of(peer_host(request.transport), request.headers)

    def address_of(self, peer: str | None, headers: Mapping[str, str]) -> str | None:
        """The client's address from the connection's peer and the request's headers (both
        HTTP paths). Every X-Forwarded-For field counts, in order: a proxy that appends its
        own field puts it after the client's."""
        if not self.trusted:
            return peer
        getall = getattr(headers, "getall", None)  # aiohttp's headers; the lean path's have one
        if getall is not None:
            fields: Sequence[str] = getall("X-Forwarded-For", ())
        else:
            one = headers.get("X-Forwarded-For")
            fields = () if one is None else (one,)
        return client_address(peer, fields, self.trusted)

    def event_subject(self, source: str, event_type: str) -> str:
        """``events.<source>.<type>``, checked once per pair (a bounded number are kept)."""
        subject = self.event_subjects.get((source, event_type))
        if subject is None:
            subject = subjects.event(source, event_type)
            if len(self.event_subjects) < 1024:
                self.event_subjects[(source, event_type)] = subject
        return subject

    def urls(self, job_id: str) -> tuple[str, str]:
        base = f"{self.settings.public_url.rstrip('/')}/api/jobs/{job_id}"
        return base, f"{base}/stream"

    async def read_body(self, request: web.Request) -> bytes:
        """The raw body, refusing more than MAX_BODY_BYTES without reading past the limit, 503
        when MAX_BODY_BYTES_IN_FLIGHT has no room for it, 408 when it takes longer than
        BODY_TIMEOUT_S. The bytes it holds are given back when the request ends (the edge
        middleware)."""
        limit = self.settings.max_body_bytes
        length = request.content_length
        if length is not None and length > limit:
            raise too_large(limit)
        held = 0
        if length:
            self._hold(request, length)
            held = length
        chunks: list[bytes] = []
        size = 0
        try:
            async with asyncio.timeout(self.settings.body_timeout_s):
                while True:
                    chunk = await request.content.readany()
                    if not chunk:
                        break
                    size += len(chunk)
                    if size > limit:
                        raise too_large(limit)
                    if size > held:  # a chunked body: held as it comes
                        self._hold(request, size - held)
                        held = size
                    chunks.append(chunk)
        except TimeoutError:
            raise body_timeout(self.settings.body_timeout_s) from None
        return nonempty(b"".join(chunks))

    def _hold(self, request: web.Request, size: int) -> None:
        budget = self.body_budget
        if size > budget.free:
            raise self.overloaded()
        budget.free -= size
        request[BODY_HELD] = request.get(BODY_HELD, 0) + size

    def release_body(self, request: web.Request) -> None:
        """Give back what :meth:`read_body` held for ``request`` (once its answer is made)."""
        held = request.get(BODY_HELD)
        if held:
            self.body_budget.free += held
            request[BODY_HELD] = 0

    def overloaded(self) -> HTTPError:
        return HTTPError(
            503,
            "overloaded",
            "this receiver holds as many request bodies as it may (MAX_BODY_BYTES_IN_FLIGHT); "
            "nothing was accepted, retry later",
            headers={"Retry-After": str(self.settings.retry_after_s)},
            close=True,
        )

    # --- API keys and limits ----------------------------------------------------------------

    async def authenticate(self, request: web.Request, *, admin: bool = False) -> Principal:
        """Bearer token or ?api_key= (which only Server-Sent Event routes get this far with: the
        edge middleware answers 400 elsewhere); 401 without a valid key, 403 for a non-admin on
        admin routes."""
        auth = request.headers.get("Authorization", "")
        token = auth[7:].strip() if auth[:7].lower() == "bearer " else request.query.get("api_key", "")
        challenge = {"WWW-Authenticate": 'Bearer realm="conveyor"'}
        if not token:
            raise HTTPError(401, "missing_api_key", "an API key is required", headers=challenge)
        try:
            principal = await self.keys.authenticate(token)
        except KeyRevoked:
            raise HTTPError(401, "revoked_api_key", "this API key was revoked", headers=challenge) from None
        except (KeysUnavailable, *NATS_DOWN):
            raise self.unavailable("API keys cannot be checked while NATS is unreachable") from None
        if principal is None:
            raise HTTPError(401, "invalid_api_key", "unknown API key", headers=challenge)
        if admin and not principal.admin:
            raise HTTPError(403, "forbidden", "this key is not an admin key")
        request[PRINCIPAL] = principal
        return principal

    # --- CORS -------------------------------------------------------------------------------

    def cors_headers(self, request: web.Request) -> dict[str, str]:
        """For an answer to a page on another origin: that origin, when a project the caller's
        key sees allows it (never a wildcard: the API is called with credentials)."""
        origin = request.headers.get("Origin")
        principal = request.get(PRINCIPAL)
        if not origin or principal is None:
            return {}
        if not any(origin in p.cors_origins for p in self.directory.visible(principal.scope)):
            return {"Vary": "Origin"}
        return {
            "Access-Control-Allow-Origin": origin,
            "Vary": "Origin",
            "Access-Control-Expose-Headers": _CORS_EXPOSED,
        }

    async def preflight(self, request: web.Request) -> web.Response:
        """OPTIONS before a cross-origin call carries no key: answered for an origin some project
        allows; the call itself is then checked against the key's own projects."""
        origin = request.headers.get("Origin", "")
        if not origin or not any(origin in p.cors_origins for p in self.directory.projects()):
            raise HTTPError(403, "origin_not_allowed", f"no project allows the origin {origin[:200]!r}")
        return web.Response(
            status=204,
            headers={
                "Access-Control-Allow-Origin": origin,
                "Access-Control-Allow-Methods": _CORS_METHODS,
                "Access-Control-Allow-Headers": _CORS_HEADERS,
                "Access-Control-Max-Age": "600",
                "Vary": "Origin",
            },
        )

    def stream_headers(self, request: web.Request) -> dict[str, str]:
        """The headers of a Server-Sent Events answer: its type, no caching or proxy buffering,
        the caller's rate limit and CORS."""
        headers = {
            "Content-Type": "text/event-stream",
            "Cache-Control": "no-cache",
            "X-Accel-Buffering": "no",
        }
        if (decision := request.get(RATE_LIMIT)) is not None:
            headers.update(decision.headers())
        headers.update(self.cors_headers(request))
        return headers

    # --- projects ---------------------------------------------------------------------------

    def webhook_project(self, source: Source, body: bytes) -> tuple[Project, tuple[str, ...]]:
        """The project a webhook is for and the secrets that must verify it: the project its
        signed body names (its own secrets for this source, else the source's), or the default
        project with the source's secrets (see UNKNOWN_PROJECTS). 422 when neither applies."""
        external = source.external_ids(body)
        for x in external:
            project = self.directory.resolve(x)
            if project is not None:
                return project, self._webhook_secrets(project, source) or source.secrets
        policy = self.settings.unknown_projects
        if policy == "default" or (policy == "auto" and source.secrets) or not external:
            return self.directory.default, source.secrets
        raise HTTPError(
            422,
            "unknown_project",
            f"no project is set up for {external[0][:120]!r}; ask the operator to add it",
            field="project_id",
        )

    def _webhook_secrets(self, project: Project, source: Source) -> tuple[str, ...]:
        """A project's secrets for ``source``, in clear."""
        try:
            return self.secrets.open(
                project, f"webhook/{source.name}", project.webhook_secrets.get(source.name, [])
            )
        except SealingError as exc:
            # An operator's mistake (a key dropped too early), not the sender's: retry later.
            log.error("project %s: webhook secrets do not open: %s", project.project_id, exc)
            raise self.unavailable("this project's webhook secrets cannot be read") from None

    def sees(self, principal: Principal | None, project: str) -> bool:
        """Whether the caller may see an object of ``project``. Anonymous readers (only when
        READS_REQUIRE_API_KEY=false) see the default project's objects alone."""
        if principal is None:
            return project == DEFAULT_PROJECT
        return self.directory.sees(principal.scope, project)

    def writable(self, principal: Principal, requested: str | None = None) -> Project:
        """The project a write acts in: the one named (admin and org keys), else the key's own.
        404 for a project the key does not see; 403 for a read-only key."""
        scope = principal.scope
        if scope.read_only:
            raise HTTPError(403, "read_only_key", f"this key is read-only ({scope.describe()})")
        project_id = requested or scope.project_id or DEFAULT_PROJECT
        project = self.directory.get(project_id)
        if project is None or not scope.sees(project.project_id, project.org_id):
            raise HTTPError(404, "project_not_found", f"no project {project_id[:64]!r}", field="project")
        return project

    async def reader(self, request: web.Request) -> Principal | None:
        """Reads by job id: a key when one is given (its limits apply), else, unless
        READS_REQUIRE_API_KEY, anonymous and limited per client address."""
        given = "Authorization" in request.headers or "api_key" in request.query
        if given or self.settings.reads_require_api_key:
            principal = await self.authenticate(request)
            await self.limit_key(request, principal)
            return principal
        if self.settings.read_rate_limit_max > 0:
            limiter = self._limiter()
            scope = hashlib.blake2b(f"{self.client_address(request)}".encode(), digest_size=12).hexdigest()
            window_s = self.settings.rate_limit_window_ms / 1000
            with self.nats_errors():
                decision = await limiter.hit(f"r.{scope}", self.settings.read_rate_limit_max, window_s)
            self._apply(request, decision, "read")
        return None

    async def limit_key(self, request: web.Request, principal: Principal) -> None:
        """Per-key limits: per minute and per day, both counted in KV."""
        if principal.per_minute <= 0 and principal.per_day <= 0:
            return
        limiter = self._limiter()
        with self.nats_errors():
            decision = await hit_key(limiter, principal.key_id, principal.per_minute, principal.per_day)
        if decision is not None:
            self._apply(request, decision, "api_key")

    async def limit_webhook(
        self, source: str, project_id: str | None, address: Callable[[], str | None]
    ) -> Decision | None:
        """Webhook limits: RATE_LIMIT_MAX per window per project id (signed) or client address.
        The decision, for the answer's headers; 429 (HTTPError) when it refuses."""
        if self.settings.rate_limit_max <= 0:
            return None
        scope = f"p:{project_id}" if project_id else f"a:{address()}"
        digest = hashlib.blake2b(scope.encode(), digest_size=12).hexdigest()
        limiter = self._limiter()
        key = f"w.{source}.{digest}"
        limit, window_s = self.settings.rate_limit_max, self.settings.rate_limit_window_ms / 1000
        # Most hits are answered from slots this process claimed ahead: no coroutine for those.
        decision = limiter.local(key, limit, window_s)
        if decision is None:
            with self.nats_errors():
                decision = await limiter.hit(key, limit, window_s)
        return decision

    async def limit_work(self, project: Project) -> None:
        """Work a project makes (a job, a webhook, a schedule): its spending budgets (402), its
        own per-minute and per-day limits and the deployment's ceiling
        (GLOBAL_RATE_LIMIT_PER_MINUTE), counted in KV so they hold across replicas; 429 naming
        which when one refuses."""
        await self.check_budget(project)
        checks = [
            # The project's first: work its own limit refuses spends none of the ceiling.
            ("project", f"p.{project.project_id}.m", project.per_minute, MINUTE, "minute"),
            ("project", f"p.{project.project_id}.d", project.per_day, DAY, "day"),
            ("global", "g.m", self.settings.global_rate_limit_per_minute, MINUTE, "minute"),
        ]
        for scope, key, limit, window_s, per in checks:
            if limit <= 0:
                continue
            limiter = self._limiter()
            # Mostly answered from slots this process claimed ahead: no round trip.
            decision = limiter.local(key, limit, window_s)
            if decision is None:
                with self.nats_errors():
                    decision = await limiter.hit(key, limit, window_s)
            if not decision.allowed:
                self.metrics.rate_limited.labels(scope).inc()
                what = "this deployment" if scope == "global" else f"project {project.project_id}"
                raise HTTPError(
                    429,
                    "rate_limited",
                    f"the rate limit of {what} ({decision.limit} per {per}) is reached; retry later",
                    headers=decision.headers(),
                )

    async def check_budget(self, project: Project) -> None:
        """402 ``budget_exceeded`` when the project has spent its day's or month's budget (the
        totals the executors merge into KV ``usage``, so as fresh as their last merge: about a
        second, plus this replica's cache of a second)."""
        if not has_budget(project):
            return
        spent = await self.spent(project.project_id)
        stop = over_budget(project, spent)
        if stop is None:
            return
        self.metrics.budget_refused.labels(stop.budget).inc()
        wait = max(1, int((stop.resets_at - utcnow()).total_seconds()))
        raise HTTPError(
            402,
            "budget_exceeded",
            f"{stop.message()}; nothing was accepted",
            headers={"Retry-After": str(wait)},
            **stop.fields(),
        )

    async def spent(self, project_id: str, *, max_age_s: float = 1.0) -> dict[Period, float]:
        now = time.monotonic()
        hit = self.spend_cache.get(project_id)
        if hit is not None and now - hit[0] < max_age_s:
            return hit[1]
        kv = self.bucket(subjects.KV_USAGE)
        at = utcnow()
        with self.nats_errors():
            spent = {p: (await read_period(kv, project_id, p, at)).cost_usd for p in PERIODS}
        if len(self.spend_cache) > 10_000:
            self.spend_cache.clear()
        self.spend_cache[project_id] = (now, spent)
        return spent

    def _limiter(self) -> RateLimiter:
        self.require_nats()
        assert self.limiter is not None
        return self.limiter

    def _apply(self, request: web.Request, decision: Decision, scope: str) -> None:
        request[RATE_LIMIT] = decision
        self.refuse_over(decision, scope)

    def refuse_over(self, decision: Decision, scope: str) -> None:
        """429 when ``decision`` says the caller is over its limit."""
        if not decision.allowed:
            self.metrics.rate_limited.labels(scope).inc()
            raise HTTPError(429, "rate_limited", f"rate limit of {decision.limit} reached; retry later")

    # --- accepting work ---------------------------------------------------------------------

    async def accept(
        self,
        *,
        subject: str,
        stream: str,
        data: bytes,
        msg_id: str,
        record: JobRecord,
        correlation_id: str,
    ) -> bool:
        """Publish and create the "queued" record; True for a repeat: JetStream saw the message
        inside its duplicate window, or (after it) the job's record is from an earlier one.

        Both must succeed before the caller may answer 202. They go out together: a failed
        publish after a successful create removes the record again, so no job is left queued
        forever; a failed create after a successful publish answers 503 and the sender's retry
        is deduplicated by Nats-Msg-Id (and finds the record or creates it).
        """
        conn = self.require_nats()
        records = self.kv[subjects.KV_JOBS]
        timeout_s = self.settings.publish_timeout_s
        headers = {subjects.H_JOB_ID: record.job_id, subjects.H_CORRELATION_ID: correlation_id}
        started = time.perf_counter()
        try:
            sent = await conn.send(
                subject, data, msg_id=msg_id, stream=stream, headers=headers, timeout_s=timeout_s
            )
        except Exception as exc:
            raise self._publish_error(exc) from None
        pending = [sent]
        try:
            made = await records.send_create(record.job_id, encoder.encode(record), timeout_s=timeout_s)
            # The list entry goes out in the same flush, unacknowledged: it is not the job (the
            # event and the record are, and they are acknowledged), only how lists find it.
            # Cheaper by an acknowledgement per job; a lost one leaves the job readable by id,
            # missing from GET /api/jobs. The list skips entries whose job never came to be,
            # and repeats (its record keeps the first acceptance's time).
            await conn.publish_unacked(
                subjects.job_index(record.project), encoder.encode(JobIndexEntry.of(record))
            )
        except Exception as exc:
            for fut in pending:
                _drop(fut)
            raise self._publish_error(exc) from None
        kv = records
        try:
            ack = await sent
        except Exception as exc:
            with contextlib.suppress(Exception):
                if created := (await _created(kv, made, record))[0]:
                    await kv.delete(record.job_id, last=created)
            raise self._publish_error(exc) from None
        try:
            created, found = await _created(kv, made, record)
        except Exception as exc:
            raise self._publish_error(exc) from None
        # A repeat after EVENTS' duplicate window is stored again; the record, from the first
        # acceptance, tells. One the executor made from this very event carries its time.
        earlier = created is None and found is not None and found.created_at != record.created_at
        self.metrics.publish_time(stream).observe(time.perf_counter() - started)
        return ack.duplicate or earlier

    def _publish_error(self, exc: Exception) -> HTTPError:
        if isinstance(exc, bus.TooLarge):
            # Not a retry-later: the same body will never fit.
            limit = self.rt.bus.max_payload
            return HTTPError(
                413,
                "payload_too_large",
                f"the event with its envelope is over the NATS server's max_payload ({limit} bytes); "
                "nothing was accepted",
                limit=limit,
            )
        return self.unavailable(publish_failure(exc))


def _drop(fut: asyncio.Future[Any]) -> None:
    """Stop waiting for ``fut``; an answer it already has is read, so none goes unretrieved."""
    if not fut.cancel() and not fut.cancelled():
        fut.exception()


def publish_failure(exc: Exception) -> str:
    """What the 503 for a failed publish or record write says; anything not from NATS is raised
    again (a bug: a logged 500)."""
    if isinstance(exc, NATS_DOWN):
        return f"NATS JetStream did not acknowledge ({type(exc).__name__})"
    if isinstance(exc, bus.NotFound | bus.Conflict | bus.BadRequest) or (
        isinstance(exc, bus.BusError) and exc.code
    ):
        # JetStream answered with an error (KV errors have no description of their own).
        return f"NATS JetStream refused the message ({exc.description or exc})"
    if isinstance(exc, bus.BusError):
        # An answer that was not a PubAck, and the like: whether it was stored is unknown,
        # and the sender's retry is deduplicated by Nats-Msg-Id either way.
        return f"NATS JetStream gave no usable answer ({type(exc).__name__})"
    raise exc


async def _created(
    kv: bus.Kv, made: asyncio.Future[bus.PubAck], record: JobRecord
) -> tuple[int | None, JobRecord | None]:
    """Once ``made`` (a KV create) is answered: (revision, None) when it stored the record,
    else (None, the record the key holds)."""
    try:
        return (await made).seq, None
    except bus.Conflict:
        pass
    entry = await kv.lookup(record.job_id)
    if entry is None:
        # Only a delete marker (a record removed after a failed publish): create writes over it.
        try:
            return await kv.create(record.job_id, encoder.encode(record)), None
        except bus.Conflict:
            entry = await kv.get(record.job_id)  # written meanwhile (the executor got there first)
    return None, job_record_decoder.decode(entry.value) if entry.value else None


def nonempty(body: bytes) -> bytes:
    if not body or body.isspace():
        raise HTTPError(400, "empty_body", "request body is empty")
    return body


def too_large(limit: int) -> HTTPError:
    return HTTPError(413, "payload_too_large", f"body is larger than {limit} bytes", limit=limit)


def body_timeout(limit_s: float) -> HTTPError:
    return HTTPError(
        408, "body_timeout", f"the body did not arrive within {limit_s:g} s (BODY_TIMEOUT_S)", limit_s=limit_s
    )


_MAX_HOPS = 16  # X-Forwarded-For entries walked at most


def client_address(
    peer: str | None, forwarded_for: Sequence[str], trusted: tuple[Network, ...]
) -> str | None:
    """The client's address: walking from the peer leftwards through X-Forwarded-For (its
    fields in order, each comma-separated), each address that is a trusted proxy's is followed
    to the entry before it, which that proxy wrote; the first that is not a trusted proxy is the
    client. Nothing a client writes there is believed unless a trusted proxy vouches for the
    entry to its right. An entry that is not an IP address (or a chain longer than _MAX_HOPS)
    ends the walk at the trusted proxy that passed it on, so a made-up value can neither choose
    an address nor make new rate-limit keys."""
    if not trusted or not forwarded_for or not _trusted(_ip(peer), trusted):
        return peer
    client = peer
    hops = 0
    for value in reversed(forwarded_for):
        for entry in reversed(value.split(",")):
            ip = _ip(entry.strip())
            if ip is None or hops == _MAX_HOPS:
                return client
            hops += 1
            client = str(ip)
            if not _trusted(ip, trusted):
                return client
    return client  # every hop a trusted proxy: the left-most one sent it


def _ip(text: str | None) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    if not text or "%" in text:  # nothing, or an IPv6 zone: no address a proxy would forward
        return None
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped  # ::ffff:10.0.0.1 (a dual-stack socket) is 10.0.0.1
    return ip


def _trusted(ip: ipaddress.IPv4Address | ipaddress.IPv6Address | None, nets: tuple[Network, ...]) -> bool:
    return ip is not None and any(ip in net for net in nets)


STATE: web.AppKey[Receiver] = web.AppKey("receiver", Receiver)
