"""The HTTP API of SPEC section 5: FastAPI over the store (server/store) and the tenants' plugin
spaces (server/plugins.py).

    app = create_app(store, admin_token="...")     # uvicorn runs it (`emirax serve`)

Rules every route follows:
- The tenant always comes from the bearer token, never from the path or the body. Another
  tenant's workflow or bundle answers 404 exactly like a missing one.
- Errors are `application/problem+json` (RFC 9457): `type`, `title`, `status`, `detail`, and a
  4xx for anything the client sent; nothing is stored when a request is refused.
- Bodies have size limits (a bundle: the bundle module's own limit; JSON: 1 MiB), enforced while
  the body is read, not trusted from Content-Length.
- One evaluation step is one store transaction (`store.step`): the engine's delta is written
  whole or not at all, with the workflow row locked.
"""

import asyncio
import hashlib
import hmac
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Annotated, Any

import pluggy
from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from emirax.bundle import MAX_BUNDLE_BYTES, load_bundle
from emirax.engine.program import EngineError, InputError
from emirax.engine.state import WorkflowState
from emirax.engine.step import AddFacts, Limits, Reevaluate, Start, step
from emirax.errors import EmiraxError
from server.committer import Committer
from server.fastpath import FastPath, read_body, replay
from server.observe import AccessLog, Metrics
from server.plugins import Principal, Spaces, server_plugins
from server.problems import Problem, problem_response
from server.queue import Queue, Sweeper
from server.reevaluate import Reevaluator
from server.steps import Stepper, Work
from server.store import Conflict, NotFound, Refused, Store

__all__ = ["Problem", "create_app"]

MAX_JSON_BYTES = 1 << 20
STATUSES = ("running", "waiting", "completed", "failed")
ACTIVE_TTL = 1.0  # seconds a server trusts the active version it read


# ── request bodies ─────────────────────────────────────────────────────────────────────────────


class FactIn(BaseModel):
    type: str = Field(min_length=1, max_length=200)
    fields: dict[str, Any] = Field(default_factory=dict)


class StartIn(BaseModel):
    workflow: str = Field(min_length=1, max_length=400, description="package.Workflow")
    id: str | None = Field(default=None, min_length=1, max_length=200, pattern=r"^[A-Za-z0-9._:-]+$")
    facts: list[FactIn] = Field(default_factory=list, max_length=10_000)
    priority: int = Field(default=0, ge=-1000, le=1000)


class FactsIn(BaseModel):
    facts: list[FactIn] = Field(min_length=1, max_length=10_000)


class TenantIn(BaseModel):
    name: str = Field(min_length=1, max_length=100, pattern=r"^[a-z0-9][a-z0-9-]*$")
    max_in_flight: int | None = Field(default=None, ge=1, le=100_000,
                                      description="invocations leased at once (default: the server's)")


FunctionName = Annotated[str, Field(min_length=1, max_length=512)]


class LeaseIn(BaseModel):
    runner: str = Field(min_length=1, max_length=200)
    functions: list[FunctionName] = Field(min_length=1, max_length=200)
    max: int = Field(default=1, ge=1, le=100)
    wait: float = Field(default=20.0, ge=0, le=60)


class FenceIn(BaseModel):
    fence: int = Field(ge=0)


class CompleteIn(FenceIn):
    result: Any = None


class ResultIn(CompleteIn):
    id: int = Field(ge=1)


class ResultsIn(BaseModel):
    results: list[ResultIn] = Field(min_length=1, max_length=100)


class ErrorIn(BaseModel):
    type: str = Field(default="FunctionError", min_length=1, max_length=200)
    message: str = Field(default="", max_length=10_000)


class FailIn(FenceIn):
    error: ErrorIn = Field(default_factory=ErrorIn)
    retry: bool = True


# ── the application ────────────────────────────────────────────────────────────────────────────


def create_app(store: Store, *, admin_token: str, plugins: pluggy.PluginManager | None = None,
               limits: Limits = Limits(), lease_seconds: float = 30.0,
               poll_cap: float | None = None, step_threads: int = 1) -> FastAPI:
    hooks = plugins if plugins is not None else server_plugins()
    spaces = Spaces(store)
    active: dict[tuple[int, str], tuple[float, str | None]] = {}

    def active_version(tenant_id: int, package: str) -> str | None:
        """The package's active version, read from the store at most once a second: another
        server's activation is seen within a second (and re-evaluation moves any workflow
        started meanwhile to it: always on)."""
        now = time.monotonic()
        cached = active.get((tenant_id, package))
        if cached is not None and now - cached[0] < ACTIVE_TTL:
            return cached[1]
        version = store.active_version(tenant_id, package)
        active[(tenant_id, package)] = (now, version)
        return version

    stepper = Stepper(spaces, active_version, limits=limits)
    queue = Queue(store, spaces, stepper, lease_seconds=lease_seconds, poll_cap=poll_cap)
    sweeper = Sweeper(queue, every=lease_seconds / 2)
    metrics = Metrics(store)
    committer = Committer(store, threads=step_threads, on_group=metrics.groups.observe)

    def committed(tenant_id: int, work: Work) -> None:
        """After a transaction of steps commits (any route, re-evaluation, a runner's result):
        metrics, wake the runners its work needs, tell the dispatch plugins what it queued, and
        re-evaluate a workflow that came to rest under a version activated while it ran."""
        metrics.steps_of(tenant_id, work.durations)
        queue.wake(tenant_id, work)
        if work.invocations:
            hooks.hook.emirax_dispatch(tenant_id=tenant_id,
                                       invocations=[i.to_json() for i in work.invocations])
        if work.stale:
            reevaluator.kick()

    reevaluator = Reevaluator(store, spaces, stepper, queue, committed)
    queue.on_commit = committed

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        hooks.hook.emirax_startup(settings={"limits": limits})
        queue.start(asyncio.get_running_loop())
        queue.on_exit_signals()
        sweeper.start()  # also retries leases that expired while no server ran
        reevaluator.start()  # also resumes re-evaluations a stopped server left owed
        yield
        reevaluator.stop()
        committer.stop()
        sweeper.stop()
        queue.stop()

    # FastAPI's own OpenTelemetry looks for a configured provider on every request; Emirax's
    # telemetry is /metrics and the JSON logs (docs/server.md), so it is off.
    app = FastAPI(title="Emirax", version="1", summary="Rules, bundles and durable workflows",
                  lifespan=lifespan, telemetry={"tracing": False, "metrics": False, "logs": False})
    app.state.reevaluator = reevaluator
    app.state.sweeper = sweeper
    app.state.queue = queue
    _errors(app)

    tokens: dict[str, Principal] = {}

    def bearer(authorization: str) -> str | None:
        scheme, _, token = authorization.partition(" ")
        return token if scheme.lower() == "bearer" and token else None

    def remembered(token: str) -> Principal | None:
        """The admin, or a tenant whose token was seen before (a token never changes owner)."""
        if hmac.compare_digest(token.encode(), admin_token.encode()):
            return Principal(None, "admin", admin=True)
        return tokens.get(token)

    def who(authorization: str) -> Principal | None:
        """The principal of an Authorization header: plugins first, then the admin token, then
        the tenants' tokens; None when it names nobody."""
        token = bearer(authorization)
        if token is None:
            return None
        found = hooks.hook.emirax_authenticate(token=token) or remembered(token)
        if found is None:
            tenant = store.tenant_by_token(token)
            if tenant is None:
                return None
            found = tokens[token] = Principal(tenant.id, tenant.name)
        return found

    async def identify(authorization: str) -> Principal | None:
        """`who`, without leaving the event loop when it can: a token seen before, or the
        admin's, is known without I/O; a new token, or a server with authentication plugins
        (which may do I/O), is looked up in the thread pool."""
        found = known(authorization)
        return found if found is not None else await run_in_threadpool(who, authorization)

    async def principal(request: Request) -> Principal:
        """The request's principal. Async, like the two below, so FastAPI runs them on the event
        loop instead of handing each to the thread pool (a thread hop costs more than the check)."""
        header = request.headers.get("authorization", "")
        if not header.partition(" ")[2]:
            raise Problem(401, "Unauthorized", "send Authorization: Bearer <token>")
        found = await identify(header)
        if found is None:
            raise Problem(401, "Unauthorized", "unknown token")
        return found

    def known(authorization: str) -> Principal | None:
        """`who` when it needs no I/O: no authentication plugin and a remembered token."""
        if hooks.hook.emirax_authenticate.get_hookimpls():
            return None
        token = bearer(authorization)
        return remembered(token) if token is not None else None

    async def admin(who: Annotated[Principal, Depends(principal)]) -> Principal:
        if not who.admin:
            raise Problem(403, "Forbidden", "this route is the admin's")
        return who

    async def tenant(who: Annotated[Principal, Depends(principal)]) -> int:
        if who.tenant_id is None:
            raise Problem(403, "Forbidden", "this route takes a tenant's token")
        return who.tenant_id

    Tenant = Annotated[int, Depends(tenant)]

    app.state.metrics = metrics
    fast_routes: dict[str, Any] = {}  # filled once the routes exist, below
    app.add_middleware(FastPath, tenant_of=lambda header: getattr(known(header), "tenant_id", None),
                       routes=fast_routes)
    app.add_middleware(_Idempotency, store=store, identify=identify)
    app.add_middleware(AccessLog, metrics=metrics)
    app.add_middleware(_BodyLimit)  # added last: the outermost, so big bodies never get buffered

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        store.ping()
        return {"status": "ok"}

    @app.get("/metrics", response_class=PlainTextResponse)
    def prometheus() -> PlainTextResponse:
        return PlainTextResponse(metrics.exposition(), media_type=CONTENT_TYPE_LATEST)

    @app.post("/v1/tenants", status_code=201)
    def create_tenant(body: TenantIn, _: Annotated[Principal, Depends(admin)]) -> dict[str, Any]:
        try:
            tenant_id, token = store.create_tenant(body.name, body.max_in_flight)
        except Conflict as exc:
            raise Problem(409, "Conflict", str(exc)) from None
        return {"id": tenant_id, "name": body.name, "token": token,
                "max_in_flight": body.max_in_flight or store.max_in_flight}

    @app.post("/v1/bundles", openapi_extra={"requestBody": {"content": {"application/octet-stream": {
        "schema": {"type": "string", "format": "binary"}}}, "required": True}})
    async def upload(request: Request, tenant_id: Tenant) -> JSONResponse:
        data = await request.body()
        try:
            bundle = load_bundle(data)
        except EmiraxError as exc:
            raise Problem(422, "Invalid bundle", str(exc)) from None
        m = bundle.manifest
        try:
            outcome = store.put_bundle(tenant_id, m["package"], m["version"], bundle.digest, data, m)
        except Conflict as exc:
            raise Problem(409, "Conflict", str(exc)) from None
        active = store.active_version(tenant_id, m["package"])
        body = {"package": m["package"], "version": m["version"], "digest": bundle.digest,
                "outcome": outcome, "active": active == m["version"]}
        return JSONResponse(body, status_code=201 if outcome == "created" else 200)

    @app.get("/v1/bundles")
    def packages(tenant_id: Tenant) -> list[dict[str, Any]]:
        return [p.to_json() for p in store.packages(tenant_id)]

    @app.get("/v1/bundles/{package}")
    def versions(package: str, tenant_id: Tenant) -> dict[str, Any]:
        found = store.versions(tenant_id, package)
        if not found:
            raise Problem(404, "Not Found", f"no bundle {package}")
        return {"package": package, "versions": [v.to_json() for v in found]}

    @app.post("/v1/bundles/{package}/versions/{version}/activate")
    def activate(package: str, version: str, tenant_id: Tenant) -> dict[str, Any]:
        try:
            store.activate(tenant_id, package, version)
        except NotFound:
            raise Problem(404, "Not Found", f"no bundle {package} {version}") from None
        active.pop((tenant_id, package), None)
        reevaluator.kick()  # always on: waiting and completed workflows, in the background
        return {"package": package, "active": version}

    @app.post("/v1/bundles/{package}/versions/{version}/preview")
    def preview(package: str, version: str, tenant_id: Tenant, limit: int = 1000) -> dict[str, Any]:
        """Which waiting and completed workflows activating `version` would change, and which
        rules would fire in each: a dry run on the stored facts that writes nothing."""
        if store.bundle(tenant_id, package, version) is None:
            raise Problem(404, "Not Found", f"no bundle {package} {version}")
        ids = store.workflows_of(tenant_id, package, limit=max(1, min(limit, 10_000)))
        changed = []
        for workflow_id in ids:
            stored = store.load(tenant_id, workflow_id)
            if stored is None:
                continue
            state = WorkflowState.from_json(stored.to_json())  # a copy: nothing is written
            wf = spaces.workflow(tenant_id, state.workflow, version)
            if wf is None:
                continue
            delta = step(wf, state, Reevaluate(), limits=limits)
            if delta.fired or delta.inserted or delta.modified or delta.retracted:
                changed.append({
                    "id": workflow_id, "fired": [k[0] for k in delta.fired],
                    "invocations": [i.name for i in delta.invocations],
                    "inserted": len(delta.inserted), "modified": len(delta.modified),
                    "retracted": len(delta.retracted), "status": delta.status,
                })
        return {"package": package, "version": version, "examined": len(ids), "changed": changed}

    async def stepped(tenant_id: int, key: str, run: Callable[[Work], Any],
                      existing: bool = False) -> Any:
        """`run(work)` through the committer (group commit), then `committed` after its commit;
        `existing`: `key` is the id of a workflow of the tenant's that `run` steps."""
        def attempt() -> tuple[Any, Work]:
            work = Work()  # a fresh one for each attempt: a rolled-back group runs it again
            return run(work), work

        answer, _ = await committer.submit(key, attempt, lambda done: committed(tenant_id, done[1]),
                                           lock=(tenant_id, key) if existing else None)
        return answer

    @app.post("/v1/workflows")
    async def start(body: StartIn, tenant_id: Tenant) -> JSONResponse:
        return await start_workflow(tenant_id, None, body)

    async def start_workflow(tenant_id: int, _: str | None, body: StartIn) -> JSONResponse:
        facts = [{"type": f.type, "fields": f.fields} for f in body.facts]
        view, created = await stepped(tenant_id, body.id or "",
                                      lambda work: _start(tenant_id, body, facts, work))
        return JSONResponse(view, status_code=201 if created else 200)

    def _start(tenant_id: int, body: StartIn, facts: list[dict[str, Any]],
               work: Work) -> tuple[dict[str, Any], bool]:
        package = body.workflow.rpartition(".")[0]
        version = active_version(tenant_id, package) if package else None
        wf = spaces.workflow(tenant_id, body.workflow, version) if version else None
        if wf is None:
            raise Problem(404, "Not Found", f"no workflow {body.workflow} in an active bundle")
        # The row and its first step are one transaction: facts the step refuses (InputError)
        # roll the new row back, so they are checked once, there.
        try:
            with store.start(tenant_id, wf.name, package, version, client_id=body.id,
                             priority=body.priority) as tx:
                if tx.created:
                    stepper.run(tx, wf, Start(facts), work)
                    queue.publish(tx, work)
                return tx.view(), tx.created
        except InputError as exc:
            raise Problem(422, "Invalid facts", str(exc)) from None
        except Conflict as exc:
            raise Problem(409, "Conflict", str(exc)) from None

    @app.get("/v1/workflows")
    def list_workflows(tenant_id: Tenant, workflow: str | None = None, status: str | None = None,
                       after: str | None = None, limit: int = 50) -> dict[str, Any]:
        if not 1 <= limit <= 500:
            raise Problem(422, "Invalid limit", "limit is 1 to 500")
        if status is not None and status not in STATUSES:
            raise Problem(422, "Invalid status", f"status is one of {', '.join(STATUSES)}")
        rows, cursor = store.list_workflows(tenant_id, name=workflow, status=status, after=after,
                                            limit=limit)
        listed = []
        for row in rows:
            doc = row.to_json()
            doc["workflow"] = doc.pop("name")
            listed.append(doc)
        return {"workflows": listed, "next": cursor}

    @app.get("/v1/workflows/{workflow_id}")
    def get(workflow_id: str, tenant_id: Tenant) -> dict[str, Any]:
        return _view(store, tenant_id, workflow_id)

    @app.post("/v1/workflows/{workflow_id}/facts")
    async def add_facts(workflow_id: str, body: FactsIn, tenant_id: Tenant) -> JSONResponse:
        return await add_to_workflow(tenant_id, workflow_id, body)

    async def add_to_workflow(tenant_id: int, workflow_id: str | None, body: FactsIn) -> JSONResponse:
        assert workflow_id is not None
        facts = [{"type": f.type, "fields": f.fields} for f in body.facts]
        view = await stepped(tenant_id, workflow_id, lambda work: _step(
            store, tenant_id, workflow_id, spaces, stepper, queue, AddFacts(facts), work),
            existing=True)
        return JSONResponse(view)

    @app.get("/v1/workflows/{workflow_id}/trace")
    def trace(workflow_id: str, tenant_id: Tenant, after: int = 0, limit: int = 500) -> dict[str, Any]:
        events = store.trace(tenant_id, workflow_id, after_seq=after, limit=limit)
        if events is None:
            raise Problem(404, "Not Found", f"no workflow {workflow_id}")
        return {"events": [e.to_json() for e in events]}

    # ── the runner protocol (docs/queue.md) ───────────────────────────────────────────────────

    @app.post("/v1/runners/lease")
    async def lease(body: LeaseIn, request: Request, tenant_id: Tenant) -> dict[str, Any]:
        """Lease up to `max` queued invocations of `functions`, long-polling up to `wait` s."""
        leased = await queue.lease(tenant_id, body.runner, list(dict.fromkeys(body.functions)),
                                   body.max, body.wait, gone=request.is_disconnected)
        metrics.invocation(tenant_id, "leased", len(leased))
        return {"invocations": [i.to_json() for i in leased],
                "heartbeat": round(lease_seconds / 3, 3)}

    def settle(outcome: str, tenant_id: int, invocation_id: int, act: Callable[[], Any]) -> Any:
        try:
            answer = act()
        except NotFound:
            raise Problem(404, "Not Found", f"no invocation {invocation_id}") from None
        except Refused as exc:
            metrics.invocation(tenant_id, f"refused_{exc.reason}")
            raise Problem(409, "Not applied", str(exc), reason=exc.reason) from None
        except LookupError as exc:
            raise Problem(409, "Conflict", str(exc)) from None
        metrics.invocation(tenant_id, outcome)
        return answer

    @app.post("/v1/invocations/{invocation_id}/complete")
    def complete(invocation_id: int, body: CompleteIn, tenant_id: Tenant) -> dict[str, Any]:
        """Report a result: applied once, by the holder of the current lease."""
        return settle("done", tenant_id, invocation_id, lambda: queue.complete(
            tenant_id, invocation_id, body.fence, body.result))

    @app.post("/v1/invocations/complete")
    def complete_many(body: ResultsIn, tenant_id: Tenant) -> dict[str, Any]:
        """Report several results at once (a runner's micro-batch): the results for one
        workflow are applied in one step; each gets its own answer, as `complete` would give
        it (`applied`, or `reason` for one that is not applied)."""
        ids = [r.id for r in body.results]
        if len(set(ids)) != len(ids):
            raise Problem(422, "Invalid request", "an invocation appears twice in the batch")
        answers = queue.complete_many(tenant_id, [(r.id, r.fence, r.result) for r in body.results])
        for answer in answers:
            outcome = "done" if answer["applied"] else f"refused_{answer.get('reason', 'result')}"
            metrics.invocation(tenant_id, outcome)
        return {"results": answers}

    @app.post("/v1/invocations/{invocation_id}/fail")
    def fail(invocation_id: int, body: FailIn, tenant_id: Tenant) -> dict[str, Any]:
        """Report a failed attempt: retried after the backoff while retries are left."""
        return settle("failed", tenant_id, invocation_id, lambda: queue.fail(
            tenant_id, invocation_id, body.fence, body.error.model_dump(), body.retry))

    @app.post("/v1/invocations/{invocation_id}/heartbeat")
    def heartbeat(invocation_id: int, body: FenceIn, tenant_id: Tenant) -> dict[str, Any]:
        """Renew a lease (never past the attempt's timeout)."""
        deadline = settle("renewed", tenant_id, invocation_id, lambda: queue.heartbeat(
            tenant_id, invocation_id, body.fence))
        return {"deadline": deadline.isoformat()}

    @app.post("/v1/invocations/{invocation_id}/release")
    def release(invocation_id: int, body: FenceIn, tenant_id: Tenant) -> dict[str, Any]:
        """Give a lease back: queued again at once, the attempt not counted."""
        settle("released", tenant_id, invocation_id, lambda: queue.release(
            tenant_id, invocation_id, body.fence))
        return {"released": True}

    fast_routes.update(start=(_route(app, "/v1/workflows"), StartIn, start_workflow),
                       facts=(_route(app, "/v1/workflows/{workflow_id}/facts"), FactsIn, add_to_workflow))
    return app


def _route(app: FastAPI, path: str) -> Any:
    """The POST route of `path`."""
    return next(r for r in app.routes if getattr(r, "path", None) == path
                and "POST" in getattr(r, "methods", ()))


def _step(store: Store, tenant_id: int, workflow_id: str, spaces: Spaces, stepper: Stepper,
          queue: Queue, event: Any, work: Work) -> dict[str, Any]:
    """One evaluation step (and what follows it) in one transaction, the workflow row locked;
    returns the workflow's view after it (read in the same transaction)."""
    try:
        with store.step(tenant_id, workflow_id) as tx:
            wf = spaces.workflow(tenant_id, tx.state.workflow, tx.version)
            if wf is None:
                raise Problem(409, "Conflict", f"the bundle of {workflow_id} is not available")
            stepper.run(tx, wf, event, work)
            queue.publish(tx, work)
            view = tx.view()
    except NotFound:
        raise Problem(404, "Not Found", f"no workflow {workflow_id}") from None
    except InputError as exc:
        raise Problem(422, "Invalid facts", str(exc)) from None
    except EngineError as exc:
        raise Problem(409, "Conflict", str(exc)) from None
    return view


def _view(store: Store, tenant_id: int, workflow_id: str) -> dict[str, Any]:
    found = store.describe(tenant_id, workflow_id)
    if found is None:
        raise Problem(404, "Not Found", f"no workflow {workflow_id}")
    return found


def _errors(app: FastAPI) -> None:
    @app.exception_handler(Problem)
    async def problem(_: Request, exc: Problem) -> JSONResponse:
        return exc.response()

    @app.exception_handler(StarletteHTTPException)
    async def http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return problem_response(exc.status_code, str(exc.detail), "")

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
        detail = f"{where}: {first.get('msg', 'invalid')}" if where else first.get("msg", "invalid")
        return problem_response(422, "Invalid request", detail)


class _BodyLimit:
    """Refuse a body past its limit while it is read (413), whatever Content-Length says: the
    receive channel raises Problem(413), which the exception handler turns into the response."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        cap = MAX_BUNDLE_BYTES if scope["path"] == "/v1/bundles" else MAX_JSON_BYTES
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > cap:
            await problem_response(413, "Payload Too Large", f"the body is over {cap} bytes")(scope, receive, send)
            return
        seen = 0

        async def limited() -> dict[str, Any]:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > cap:
                    raise Problem(413, "Payload Too Large", f"the body is over {cap} bytes")
            return message

        await self.app(scope, limited, send)


class _Idempotency:
    """`Idempotency-Key` on every POST, as Stripe's API does: the key is claimed in the store
    before the request runs (per tenant; the admin's under 0). The first 2xx answer is kept and
    a replay gets it again, with `Idempotent-Replayed: true`; the same key with another request
    (path or body) is refused with 422; while the request holding the key still runs, another
    with the same key gets 409 and `Retry-After`. An error answer frees the key, so a retry
    runs again. A claim whose server died mid-request is taken over after a minute."""

    def __init__(self, app: Any, store: Store,
                 identify: Callable[[str], Awaitable[Principal | None]]) -> None:
        self.app, self.store, self.identify = app, store, identify

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        headers = dict(scope.get("headers") or ())
        key = headers.get(b"idempotency-key")
        if scope["type"] != "http" or scope["method"] != "POST" or not key:
            await self.app(scope, receive, send)
            return
        principal = await self.identify(headers.get(b"authorization", b"").decode("latin-1"))
        if principal is None:  # the route answers 401
            await self.app(scope, receive, send)
            return
        owner = principal.tenant_id or 0
        try:
            body = await read_body(receive)
        except Problem as exc:
            await exc.response()(scope, receive, send)
            return
        # The store is synchronous: its calls run in the thread pool, off the event loop.
        digest = hashlib.sha256(scope["path"].encode() + b"\0" + body).hexdigest()
        name = key.decode("latin-1")[:255]
        kept = await run_in_threadpool(self.store.reserve, owner, name, digest)
        if kept is None:
            await self._run(scope, body, send, owner, name)
            return
        if kept[0] != digest:
            response = problem_response(422, "Idempotency key reused",
                                        "this Idempotency-Key was used for another request")
        elif kept[1] == 0:
            response = problem_response(409, "Request in progress",
                                        "a request with this Idempotency-Key is still running; retry")
            response.headers["Retry-After"] = "1"
        else:
            response = JSONResponse(kept[2], status_code=kept[1],
                                    headers={"Idempotent-Replayed": "true"})
        await response(scope, receive, send)

    async def _run(self, scope: dict[str, Any], body: bytes, send: Any, owner: int,
                   name: str) -> None:
        status, chunks = 0, []
        held: list[dict[str, Any]] = []  # the answer, sent once it is kept

        async def capture(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            elif message["type"] == "http.response.body":
                chunks.append(message.get("body", b""))
            held.append(message)

        try:
            await self.app(scope, replay(body), capture)
        finally:
            doc = None
            if 200 <= status < 300:
                try:
                    doc = json.loads(b"".join(chunks))
                except ValueError:
                    doc = None
            # Kept before the client sees the answer, so a retry that follows it is a replay.
            if doc is not None:
                await run_in_threadpool(self.store.remember, owner, name, status, doc)
            else:
                await run_in_threadpool(self.store.release_key, owner, name)
        for message in held:
            await send(message)
