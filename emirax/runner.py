"""The runner SDK: which callables implement which declared functions, and the runner process that
leases their invocations from a server and reports the results (SPEC section 4, the protocol of
docs/queue.md; docs/runners.md is the user's guide).

    from emirax.runner import Permanent, current, function

    @function                 # serves the declared function `encode`
    def encode(uri, recipe):
        key = current().key   # the idempotency key, the same for every attempt
        ...

    @function("index")        # serves `index` under another Python name
    def index_file(uri): ...

    Runner(functions_of(module), "http://127.0.0.1:8080", token, concurrency=4).run()

`functions_of(module)` gives the callables of a module by declared name: decorated ones, and any
other public callable defined in the module itself (so plain functions named like the declared
ones work without the decorator, as `emirax run` promises).

`Runner` owns the protocol, with three kinds of threads:

- one leasing thread: it long-polls `POST /v1/runners/lease` only while it has free slots, for
  `min(free slots, batch or concurrency)` invocations;
- a pool of `concurrency` workers: each calls `fn(*args)` with `current()` set, maps the outcome
  to `complete` (a JSON result) or `fail` (an exception, `ResultError` for a result that is not
  JSON, `retry: false` for `Permanent`), and reports it, retrying through server restarts;
- one heartbeat thread renewing the lease of every invocation held; a 409 means the lease is lost,
  and the invocation's result is then never reported.

`stop()` (or SIGTERM/SIGINT under `emirax runner`) stops leasing, releases what has not started,
gives running invocations `grace` seconds, releases the rest, and `run()` returns 0 (1 when the
server refused the token). Every invocation's end is one INFO line on the `emirax.runner` logger.
httpx is imported only when a runner is made, so modules that import the decorator stay light.
"""

from __future__ import annotations

import contextvars
import json
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from queue import Empty, SimpleQueue
from dataclasses import dataclass, field
from datetime import datetime, timezone
from types import ModuleType
from typing import TYPE_CHECKING, Any, TypeVar, overload

if TYPE_CHECKING:
    import httpx

__all__ = ["Backoff", "Invocation", "Outcome", "Permanent", "Runner", "call", "current",
           "function", "functions_of"]

F = TypeVar("F", bound=Callable[..., Any])
_ATTR = "__emirax_function__"

log = logging.getLogger("emirax.runner")


@overload
def function(fn: F) -> F: ...


@overload
def function(name: str) -> Callable[[F], F]: ...


def function(arg: Any) -> Any:
    """Mark a callable as the implementation of a declared function (its own name, or `name`)."""
    if callable(arg):
        setattr(arg, _ATTR, arg.__name__)
        return arg

    def mark(fn: F) -> F:
        setattr(fn, _ATTR, str(arg))
        return fn

    return mark


def functions_of(module: ModuleType) -> dict[str, Callable[..., Any]]:
    found: dict[str, Callable[..., Any]] = {}
    for name, value in vars(module).items():
        if not callable(value):
            continue
        declared = getattr(value, _ATTR, None)
        if declared is not None:
            found[declared] = value
        elif not name.startswith("_") and getattr(value, "__module__", None) == module.__name__:
            found.setdefault(name, value)
    return found


# ── what a function sees ───────────────────────────────────────────────────────────────────────


class Permanent(Exception):
    """Raise it (or a subclass) from a function to fail the invocation for good: the attempts left
    are skipped and the rule's error section runs at once. The error's type is the class name."""


@dataclass(frozen=True)
class Invocation:
    """The invocation a function is running for (see `current()`)."""

    id: int
    key: str          # `<workflow id>:<call id>`, the same for every attempt: the idempotency key
    workflow: str
    function: str
    attempt: int      # from 1
    options: Mapping[str, Any] = field(default_factory=dict)


_current: contextvars.ContextVar[Invocation | None] = contextvars.ContextVar(
    "emirax_invocation", default=None)


def current() -> Invocation | None:
    """The invocation the calling function runs for, under a runner or `emirax run`; None
    anywhere else (threads a function starts itself do not inherit it: pass it along)."""
    return _current.get()


# ── outcomes: what a call gives, and the request that reports it ───────────────────────────────

_MAX_MESSAGE = 4000  # an error message is for people; megabytes of it would only fail the report


@dataclass(frozen=True)
class Outcome:
    """One attempt's outcome: a JSON result, or an error with whether to retry."""

    ok: bool
    result: Any = None
    error: dict[str, str] | None = None
    retry: bool = True

    @classmethod
    def failure(cls, kind: str, message: str, *, retry: bool = True) -> Outcome:
        return cls(False, error={"type": kind, "message": message[:_MAX_MESSAGE]}, retry=retry)

    def request(self, fence: int) -> tuple[str, dict[str, Any]]:
        """The route (`complete` or `fail`) and body that report this outcome."""
        if self.ok:
            return "complete", {"fence": fence, "result": self.result}
        return "fail", {"fence": fence, "error": self.error, "retry": self.retry}

    def describe(self, ms: float) -> str:
        if self.ok:
            return f"ok in {ms:.1f} ms"
        assert self.error is not None
        message = " ".join(self.error["message"].split())  # one log line, whatever it holds
        if len(message) > 300:
            message = message[:300] + "..."
        return f"failed: {self.error['type']}: {message}"


def call(fn: Callable[..., Any] | None, name: str, args: Iterable[Any]) -> Outcome:
    """Run one attempt of `fn(*args)` and say how it went (never raises)."""
    if fn is None:
        return Outcome.failure("NotFound", f"this runner has no function '{name}'")
    try:
        value = fn(*args)
    except Permanent as exc:
        return Outcome.failure(type(exc).__name__, str(exc) or type(exc).__name__, retry=False)
    except BaseException as exc:  # whatever the function raises (even SystemExit) is its failure
        return Outcome.failure(type(exc).__name__, str(exc) or type(exc).__name__)
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError, RecursionError) as exc:
        return Outcome.failure("ResultError", f"the result of {name} is not JSON data: {exc}")
    return Outcome(True, value)


# ── HTTP ───────────────────────────────────────────────────────────────────────────────────────


class Backoff:
    """Delays between tries while the server is away: 0.2 s, doubling, at most 5 s."""

    def __init__(self, first: float = 0.2, cap: float = 5.0) -> None:
        self.first, self.cap = first, cap
        self._next = first

    def next(self) -> float:
        delay = self._next
        self._next = min(self._next * 2, self.cap)
        return delay

    def reset(self) -> None:
        self._next = self.first


@dataclass(frozen=True)
class Answer:
    """A server's answer; status 0 when there was none (connection refused, timeout, ...)."""

    status: int
    body: dict[str, Any] | None = None
    error: str = ""
    sent: bool = True  # False when the request surely never reached the server (no connection)
    asked: float = 0.0  # when the request went out (time.monotonic())

    @property
    def retryable(self) -> bool:
        """No answer, a server error, or "come back later": the same request may succeed later."""
        return self.status == 0 or self.status >= 500 or self.status in (408, 429)

    @property
    def reason(self) -> str:
        """A 409's `reason`, or the problem's title and detail."""
        body = self.body or {}
        if self.status == 409 and body.get("reason"):
            return str(body["reason"])
        text = ": ".join(str(body[k]) for k in ("title", "detail") if body.get(k))
        return f"{self.status} {text}".strip() if self.status else self.error


class _Http:
    def __init__(self, server: str, token: str, timeout: float,
                 transport: httpx.BaseTransport | None) -> None:
        import httpx

        self._errors = (httpx.TransportError, httpx.StreamError)
        self._unsent = (httpx.ConnectError, httpx.ConnectTimeout, httpx.UnsupportedProtocol)
        self._client = httpx.Client(
            base_url=server, timeout=timeout, transport=transport,
            headers={"Authorization": f"Bearer {token}", "User-Agent": "emirax-runner"})

    def post(self, path: str, body: dict[str, Any]) -> Answer:
        data = json.dumps(body, allow_nan=False, ensure_ascii=False).encode()
        asked = time.monotonic()
        try:
            reply = self._client.post(path, content=data,
                                      headers={"Content-Type": "application/json"})
        except self._errors as exc:
            text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            return Answer(0, error=text, sent=not isinstance(exc, self._unsent), asked=asked)
        except RuntimeError as exc:  # the client was closed under a late thread: no answer
            return Answer(0, error=str(exc), sent=False, asked=asked)
        try:
            doc = reply.json()
        except ValueError:
            doc = None
        return Answer(reply.status_code, doc if isinstance(doc, dict) else None, asked=asked)

    def close(self) -> None:
        self._client.close()


class _Link:
    """Says once that the server went away, and once that it came back (no log spam)."""

    def __init__(self, server: str) -> None:
        self.server = server
        self._down_since: float | None = None
        self._lock = threading.Lock()

    def down(self, error: str) -> None:
        with self._lock:
            if self._down_since is not None:
                return
            self._down_since = time.monotonic()
        log.warning("server unreachable, retrying (%s: %s)", self.server, error)

    def up(self, answer: Answer) -> None:
        """An answer proves the server is back only if it was asked after it went away (a long
        poll that a stopping server still finishes does not)."""
        if self._down_since is None:
            return
        with self._lock:
            back = self._down_since is not None and answer.asked >= self._down_since
            if back:
                self._down_since = None
        if back:
            log.info("server reachable again (%s)", self.server)


class _Batcher:
    """Results that finish together go to the server together: one `POST /v1/invocations/
    complete` for all the results ready when the previous report returns (the server applies a
    workflow's results in one step). Nothing waits to fill a batch: a lone result goes alone,
    at once. A batch the server did not answer is sent again one result at a time (each with
    its own retries), so batching never changes what is reported."""

    def __init__(self, http: _Http) -> None:
        self._http = http
        self._items: SimpleQueue[tuple[int, dict[str, Any], Future[Answer | None]] | None] = SimpleQueue()
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name="emirax-report", daemon=True)
        self._thread.start()

    def send(self, invocation_id: int, body: dict[str, Any]) -> Answer | None:
        """The answer for this result, or None: send it alone (`Runner._send`)."""
        if self._closed:
            return None
        done: Future[Answer | None] = Future()
        self._items.put((invocation_id, body, done))
        return done.result()

    def close(self) -> None:
        self._closed = True
        self._items.put(None)

    def _loop(self) -> None:
        while (first := self._items.get()) is not None:
            batch = [first]
            while len(batch) < MAX_BATCH:
                try:
                    item = self._items.get_nowait()
                except Empty:
                    break
                if item is None:
                    self._items.put(None)  # end after this batch
                    break
                batch.append(item)
            if len(batch) == 1:
                first[2].set_result(None)
                continue
            self._post(batch)

    def _post(self, batch: list[tuple[int, dict[str, Any], Future[Answer | None]]]) -> None:
        answer = self._http.post("/v1/invocations/complete", {
            "results": [{"id": i, **body} for i, body, _ in batch]})
        found = (answer.body or {}).get("results") if answer.status == 200 else None
        if not isinstance(found, list) or len(found) != len(batch):
            for _, _, done in batch:
                done.set_result(None)
            return
        for (_, _, done), doc in zip(batch, found, strict=True):
            doc = doc if isinstance(doc, dict) else {}
            refused = doc.get("applied") is False and doc.get("reason")
            done.set_result(Answer(409 if refused else 200, doc, asked=answer.asked))


# ── the runner ─────────────────────────────────────────────────────────────────────────────────

LEASED, RUNNING, REPORTING, RELEASING = "leased", "running", "reporting", "releasing"
MAX_BATCH = 100   # the protocol's bound on `max`
MAX_NAMES = 200   # the protocol's bound on `functions`


def _deadline(text: Any) -> float | None:
    """An ISO time from the server as a Unix time (UTC when it names no zone)."""
    try:
        moment = datetime.fromisoformat(str(text))
    except (TypeError, ValueError):
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.timestamp()


@dataclass
class _Job:
    """An invocation this runner holds a lease on."""

    info: Invocation
    fence: int
    args: list[Any]
    deadline: float | None
    state: str = LEASED
    abandoned: bool = False   # the lease is lost or given back: the result is never reported
    renewed: float = field(default_factory=time.monotonic)  # leased, or last heartbeat

    @classmethod
    def from_wire(cls, doc: dict[str, Any]) -> _Job:
        info = Invocation(id=int(doc["id"]), key=str(doc.get("key", "")),
                          workflow=str(doc.get("workflow", "")), function=str(doc["function"]),
                          attempt=int(doc.get("attempt", 1)), options=dict(doc.get("options") or {}))
        args = doc.get("args") or []
        return cls(info, int(doc["fence"]), list(args) if isinstance(args, list) else [args],
                   _deadline(doc.get("deadline")))

    @property
    def label(self) -> str:
        i = self.info
        return f"invocation {i.id} {i.function} (workflow {i.workflow}, attempt {i.attempt})"


class Runner:
    """Leases invocations of `functions` from `server`, runs them, reports their outcomes."""

    def __init__(self, functions: Mapping[str, Callable[..., Any]], server: str, token: str, *,
                 concurrency: int = 4, batch: int | None = None, name: str | None = None,
                 wait: float = 20.0, grace: float = 30.0,
                 transport: httpx.BaseTransport | None = None) -> None:
        self.functions = dict(functions)
        self.server = server.rstrip("/")
        self.concurrency = concurrency
        self.batch = batch
        self.name = name if name is not None else f"{socket.gethostname()}:{os.getpid()}"[:200]
        self.wait = wait
        self.grace = grace
        self._check(token)
        self._token = token
        self._transport = transport
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)  # a job left, or the runner is stopping
        self._jobs: dict[int, _Job] = {}
        self._stopping = threading.Event()
        self._hurry = threading.Event()   # a second stop: no more waiting
        self._done = threading.Event()    # shut down: the heartbeat thread ends
        self._heartbeat = 10.0
        self._exit = 0
        self._running = 0                 # functions executing right now (even abandoned ones)
        self._started = False
        self._link = _Link(self.server)

    def _check(self, token: str) -> None:
        if not self.functions:
            raise ValueError("no functions to serve")
        if len(self.functions) > MAX_NAMES:
            raise ValueError(f"{len(self.functions)} functions: a runner serves at most {MAX_NAMES}")
        if not self.server.startswith(("http://", "https://")):
            raise ValueError(f"server {self.server!r} is not an http:// or https:// URL")
        if not token:
            raise ValueError("no token")
        if self.concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        if self.batch is not None and not 1 <= self.batch <= MAX_BATCH:
            raise ValueError(f"batch must be between 1 and {MAX_BATCH}")
        if not 0 <= self.wait <= 60:
            raise ValueError("wait must be between 0 and 60 seconds")
        if self.grace < 0:
            raise ValueError("grace must not be negative")
        if not 1 <= len(self.name) <= 200:
            raise ValueError("the runner's name must have 1 to 200 characters")

    # ── the life of the runner ─────────────────────────────────────────────────────────────────

    @property
    def running(self) -> int:
        """How many function calls are executing now; after `run()` returned, the ones that
        outlived the grace period (their invocations were released)."""
        with self._lock:
            return self._running

    def run(self) -> int:
        """Serve until `stop()`; 0 after a graceful stop, 1 when the server refused the token."""
        if self._started:
            raise RuntimeError("a Runner runs once")
        self._started = True
        # The long poll must end on the server's side first: the client waits 10 s longer.
        self._http = _Http(self.server, self._token, self.wait + 10.0, self._transport)
        self._batcher = _Batcher(self._http)
        self._users = 2  # the shutdown and the leasing thread (see _last_out)
        self._pool = ThreadPoolExecutor(self.concurrency, thread_name_prefix="emirax-fn")
        self._leaser = threading.Thread(target=self._lease_loop, name="emirax-lease", daemon=True)
        beater = threading.Thread(target=self._heartbeat_loop, name="emirax-heartbeat", daemon=True)
        self._leaser.start()
        beater.start()
        try:
            while not self._stopping.wait(0.5):  # a timeout, so the main thread sees signals
                pass
        except KeyboardInterrupt:  # no handler installed (library use): Ctrl-C stops gracefully
            self.stop()
        self._shutdown()
        return self._exit

    def stop(self, *, now: bool = False) -> None:
        """Stop gracefully (thread-safe; any thread but a signal handler's, which may interrupt a
        lock holder: start a thread that calls it). `now=True` also cuts the grace period."""
        if now and not self._hurry.is_set():
            self._hurry.set()
            log.info("stopping now: running invocations are released without waiting")
        self._stopping.set()
        with self._changed:
            self._changed.notify_all()

    def _shutdown(self) -> None:
        with self._lock:
            waiting = [j for j in self._jobs.values() if j.state == LEASED]
            for job in waiting:
                job.state = RELEASING
            busy = sum(1 for j in self._jobs.values() if j.state in (RUNNING, REPORTING))
        log.info("stopping: %d running invocation(s) get up to %g s to finish", busy, self.grace)
        for job in waiting:  # leased, never started: back to the queue at once
            self._release(job, "not started")
        rest = self._wait_for_running(time.monotonic() + self.grace)
        for job in rest:
            self._release(job, f"still running after {self.grace:g} s")
        # A long poll still out is not waited for: the server leases nothing to a runner that
        # hung up (the process exits), and while the process lives, the leasing thread releases
        # whatever the poll brings.
        self._done.set()
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._last_out()
        log.info("stopped")

    def _last_out(self) -> None:
        """The HTTP client closes when both the shutdown and the leasing thread are done with it."""
        with self._lock:
            self._users -= 1
            last = self._users == 0
        if last:
            self._batcher.close()
            self._http.close()

    def _wait_for_running(self, end: float) -> list[_Job]:
        """Wait until no invocation runs or `end`; the ones left, now abandoned, to release."""
        with self._changed:
            while self._jobs and not self._hurry.is_set():
                left = end - time.monotonic()
                if left <= 0:
                    break
                self._changed.wait(min(left, 0.5))
            rest = [j for j in self._jobs.values()
                    if j.state in (RUNNING, REPORTING) and not j.abandoned]
            for job in rest:
                job.abandoned = True
        return rest

    # ── leasing ────────────────────────────────────────────────────────────────────────────────

    def _lease_loop(self) -> None:
        try:
            self._lease_until_stopped()
        finally:
            self._last_out()

    def _lease_until_stopped(self) -> None:
        backoff = Backoff()
        names = sorted(self.functions)
        while not self._stopping.is_set():
            n = self._free_slots()
            if n == 0:
                continue
            answer = self._http.post("/v1/runners/lease", {
                "runner": self.name, "functions": names, "max": n, "wait": self.wait})
            if answer.status == 200 and answer.body is not None:
                self._link.up(answer)
                backoff.reset()
                try:
                    self._take(answer.body)
                except Exception:  # a bug of ours: say it, and go on leasing
                    log.exception("internal error of the runner taking leased invocations")
            elif answer.retryable:
                self._link.down(answer.reason)
                self._stopping.wait(backoff.next())
            else:
                self._refused(answer)
                return

    def _refused(self, answer: Answer) -> None:
        """A lease refused for good (bad token, a server without the route): stop, exit 1."""
        if answer.status in (401, 403):
            log.error("the server refused the token (%s): check --token or $EMIRAX_TOKEN; stopping",
                      answer.reason)
        elif answer.status < 300 or answer.status in (404, 405):
            log.error("%s does not answer the runner protocol (%s to POST /v1/runners/lease): is "
                      "it an Emirax server? stopping", self.server, answer.reason or answer.status)
        else:
            log.error("the server refused to lease (%s); stopping", answer.reason)
        self._exit = 1
        self.stop()

    def _free_slots(self) -> int:
        """How many invocations to ask for: blocks while every slot is taken; 0 when stopping."""
        with self._changed:
            while not self._stopping.is_set():
                free = self.concurrency - len(self._jobs)
                if free > 0:
                    return min(free, self.batch or self.concurrency, MAX_BATCH)
                self._changed.wait(1.0)
        return 0

    def _take(self, body: dict[str, Any]) -> None:
        try:
            self._heartbeat = max(0.05, float(body.get("heartbeat") or 10.0))
        except (TypeError, ValueError):
            pass
        jobs = []
        for doc in body.get("invocations") or []:
            try:
                jobs.append(_Job.from_wire(doc))
            except (KeyError, TypeError, ValueError):
                log.error("ignoring a malformed invocation from the server: %.200r", doc)
        with self._lock:
            late = self._stopping.is_set()
            if not late:
                self._jobs.update((j.info.id, j) for j in jobs)
        for job in jobs:
            if late:  # leased after stop: give it back at once
                self._release(job, "leased while stopping")
                continue
            try:
                self._pool.submit(self._execute, job)
            except RuntimeError:  # the pool shut down: the shutdown released the job already
                pass

    # ── running and reporting ──────────────────────────────────────────────────────────────────

    def _execute(self, job: _Job) -> None:
        try:
            with self._lock:
                if job.state != LEASED or self._stopping.is_set():
                    return  # the shutdown releases it
                if job.abandoned:
                    self._jobs.pop(job.info.id, None)
                    self._changed.notify_all()
                    log.info("%s: not started, its lease was lost", job.label)
                    return
                job.state = RUNNING
                self._running += 1
            self._run(job)
        except Exception:  # a bug of ours: say so, and never leak the slot
            log.exception("%s: internal error of the runner", job.label)
            self._forget(job)

    def _run(self, job: _Job) -> None:
        fn = self.functions.get(job.info.function)
        token = _current.set(job.info)
        started = time.perf_counter()
        try:
            outcome = call(fn, job.info.function, job.args)
        finally:
            _current.reset(token)
            with self._lock:
                self._running -= 1
        self._report(job, outcome, (time.perf_counter() - started) * 1000)
        self._forget(job)

    def _report(self, job: _Job, outcome: Outcome, ms: float) -> None:
        with self._lock:
            if job.abandoned:
                log.info("%s: %s, not reported: its lease was lost or given back", job.label,
                         outcome.describe(ms))
                return
            job.state = REPORTING
        route, body = outcome.request(job.fence)
        sent = self._send(job, route, body)
        if sent is not None and sent[0].status == 413 and outcome.ok:
            # A result over the server's body limit can never be reported: fail the invocation
            # for good with a clear error instead of letting its lease run out, attempt after attempt.
            outcome = Outcome.failure("ResultTooLarge", f"the result of {job.info.function} is "
                                      f"over the server's size limit ({sent[0].reason})", retry=False)
            route, body = outcome.request(job.fence)
            sent = self._send(job, route, body)
        if sent is None:
            log.warning("%s: %s, not reported: the server stayed unreachable until the lease "
                        "deadline (it will be retried)", job.label, outcome.describe(ms))
            return
        answer, tried = sent
        if answer.status == 409 and tried and answer.reason == ("done" if outcome.ok else "failed"):
            answer = Answer(200, {})  # an earlier try was applied but its answer was lost
        refusal = (answer.body or {}).get("error") if answer.status < 300 else None
        if outcome.ok and (answer.body or {}).get("applied") is False and isinstance(refusal, dict):
            # The engine refused the result (not data it accepts): a failed attempt, server-side.
            failed = Outcome.failure(str(refusal.get("type")), str(refusal.get("message")))
            log.info("%s: returned in %.1f ms, but the result was refused: %s: %s%s", job.label,
                     ms, refusal.get("type"), refusal.get("message"), _after(failed, answer))
        elif answer.status < 300:
            log.info("%s: %s%s", job.label, outcome.describe(ms), _after(outcome, answer))
        elif answer.status == 409:
            what = "result" if outcome.ok else "failure"
            log.info("%s: %s; %s not applied: %s", job.label, outcome.describe(ms), what,
                     answer.reason)
        else:
            log.warning("%s: %s; refused: %s", job.label, outcome.describe(ms), answer.reason)

    def _send(self, job: _Job, route: str, body: dict[str, Any]) -> tuple[Answer, bool] | None:
        """POST until an answer that is not a server error: (the answer, whether an earlier try
        may have reached the server), or None when giving up (see `_give_up`)."""
        if route == "complete":
            batched = self._batcher.send(job.info.id, body)
            if batched is not None:
                self._link.up(batched)
                return batched, False
        backoff = Backoff()
        tried = False
        while True:
            answer = self._http.post(f"/v1/invocations/{job.info.id}/{route}", body)
            if not answer.retryable:
                self._link.up(answer)
                return answer, tried
            tried = tried or answer.sent
            self._link.down(answer.reason)
            if self._give_up(job, route):
                return None
            self._hurry.wait(backoff.next())

    def _give_up(self, job: _Job, route: str) -> bool:
        """Retry through a server restart, except: a result nobody may report any more, a second
        stop, or a lease whose deadline passed while stopping (the server retries it anyway)."""
        if route != "release" and job.abandoned:
            return True
        if self._hurry.is_set():
            return True
        return self._stopping.is_set() and (job.deadline is None or time.time() >= job.deadline)

    def _release(self, job: _Job, why: str) -> None:
        sent = self._send(job, "release", {"fence": job.fence})
        if sent is None:
            log.warning("%s: not released, the server is unreachable (it is retried when its lease "
                        "expires)", job.label)
        elif sent[0].status < 300:
            log.info("%s: released (%s)", job.label, why)
        elif sent[0].status == 409:
            log.info("%s: release not applied: %s", job.label, sent[0].reason)
        else:
            log.warning("%s: release refused: %s", job.label, sent[0].reason)
        self._forget(job)

    def _forget(self, job: _Job) -> None:
        with self._changed:
            if self._jobs.get(job.info.id) is job:
                del self._jobs[job.info.id]
            self._changed.notify_all()

    # ── heartbeats ─────────────────────────────────────────────────────────────────────────────

    def _heartbeat_loop(self) -> None:
        while not self._done.wait(min(self._heartbeat / 4, 1.0)):
            try:
                self._beat(time.monotonic())
            except Exception:  # a bug of ours must not end the heartbeats of everything held
                log.exception("internal error of the runner's heartbeats")

    def _beat(self, now: float) -> None:
        """Renew the leases due: each `heartbeat` seconds after it was leased or last renewed."""
        with self._lock:
            due = [j for j in self._jobs.values()
                   if j.state in (LEASED, RUNNING, REPORTING) and not j.abandoned
                   and now - j.renewed >= self._heartbeat]
        for job in due:
            answer = self._http.post(f"/v1/invocations/{job.info.id}/heartbeat",
                                     {"fence": job.fence})
            if answer.status == 200:
                self._link.up(answer)
                job.renewed = now
                job.deadline = _deadline((answer.body or {}).get("deadline")) or job.deadline
            elif answer.status == 409:
                self._lost(job, answer.reason)
            elif answer.retryable:  # the server is away: the next round tries again
                self._link.down(answer.reason)
                return
            else:
                log.warning("%s: heartbeat refused: %s", job.label, answer.reason)
                job.renewed = now

    def _lost(self, job: _Job, reason: str) -> None:
        with self._lock:
            # While reporting, the report's own answer says what happened.
            if job.abandoned or job.state in (REPORTING, RELEASING):
                return
            job.abandoned = True
        log.warning("%s: lease lost (%s); its result will not be reported", job.label, reason)


def _after(outcome: Outcome, answer: Answer) -> str:
    """What the server will do after a failure: " (will retry)", " (no retry)", ..."""
    if outcome.ok:
        return ""
    if not outcome.retry:
        return " (permanent, no retry)"
    return " (will retry)" if (answer.body or {}).get("retry_at") else " (no retry left)"
