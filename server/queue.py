"""The invocation queue's service: leasing with long polls, settling results and failures, and
the sweeper that retries expired leases (docs/queue.md).

    queue = Queue(store, spaces, stepper, lease_seconds=30)
    leased = await queue.lease(tenant_id, "host-1", ["encode"], 8, wait=20, gone=...)
    queue.complete(tenant_id, invocation_id, fence, result)
    queue.fail(tenant_id, invocation_id, fence, {"type": ..., "message": ...}, retry=True)

Waiting without polling: a lease that finds nothing registers with the `Waker` and sleeps until
a step queues work for one of its functions (in this process: a direct call after the commit;
in another server process on PostgreSQL: a NOTIFY sent in the step's transaction, delivered at
its commit, heard by this process's listener thread), until the earliest backing-off invocation
becomes available, or until its `wait` runs out. The sweeper sleeps until the earliest lease
deadline. Nothing on the server loops on a timer to look for work.
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from starlette.concurrency import run_in_threadpool

from emirax.engine.program import InputError, Workflow
from emirax.engine.step import Failure, Result
from emirax.local import backoff_seconds
from server.steps import Stepper, Work
from server.store import NotFound, StepHandle, Store
from server.store.models import utcnow
from server.store.queue import Leased, attempt_deadline, refusal

__all__ = ["CHANNEL", "Queue", "Sweeper", "Waker"]

log = logging.getLogger("emirax.server.queue")
CHANNEL = "emirax_queue"  # PostgreSQL NOTIFY channel: work queued, for every server process
RUNNER_SEEN_EVERY = 10.0  # seconds between writes of a runner's presence
AT_LIMIT_RECHECK = 1.0  # a tenant at its limit in another process frees room without a notice


# ── waking long polls ──────────────────────────────────────────────────────────────────────────


@dataclass(eq=False)
class _Waiter:
    tenant_id: int
    functions: frozenset[str]
    count: int
    event: asyncio.Event = field(default_factory=asyncio.Event)
    at_limit: bool = False


class Waker:
    """Long-polling leases of this process, woken by the steps that queue their work.

    `notify` and `freed` may be called from any thread; waiters live on the event loop."""

    def __init__(self) -> None:
        self.loop: asyncio.AbstractEventLoop | None = None
        self.waiters: dict[int, list[_Waiter]] = {}
        self.closing = False  # set on the loop: no long poll waits any more

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop

    def register(self, tenant_id: int, functions: Iterable[str], count: int) -> _Waiter:
        waiter = _Waiter(tenant_id, frozenset(functions), count)
        self.waiters.setdefault(tenant_id, []).append(waiter)
        return waiter

    def unregister(self, waiter: _Waiter) -> None:
        queue = self.waiters.get(waiter.tenant_id, [])
        if waiter in queue:
            queue.remove(waiter)
        if not queue:
            self.waiters.pop(waiter.tenant_id, None)

    def notify(self, tenant_id: int, queued: Counter[str] | dict[str, int],
               at: datetime | None = None) -> None:
        """Work was queued (available now, or at `at`): wake enough waiters to take it."""
        if self.loop is None or (not queued and at is None):
            return
        if at is not None:
            delay = max(0.0, (at - utcnow()).total_seconds())
            self.loop.call_soon_threadsafe(self.loop.call_later, delay, self._wake_all, tenant_id)
        else:
            self.loop.call_soon_threadsafe(self._wake, tenant_id, dict(queued))

    def freed(self, tenant_id: int) -> None:
        """An invocation of the tenant ended: a waiter held back by the limit may lease now."""
        if self.loop is not None and tenant_id in self.waiters:
            self.loop.call_soon_threadsafe(self._wake_limited, tenant_id)

    def _wake(self, tenant_id: int, queued: dict[str, int]) -> None:
        # First come, first served, and only as many waiters as the work can keep busy: one
        # queued call does not wake sixteen runners to find one.
        left = dict(queued)
        for waiter in self.waiters.get(tenant_id, []):
            wanted = [name for name in waiter.functions if left.get(name, 0) > 0]
            if not wanted or waiter.event.is_set():
                continue
            waiter.event.set()
            take = waiter.count
            for name in wanted:
                used = min(take, left[name])
                left[name] -= used
                take -= used
            if not any(v > 0 for v in left.values()):
                return

    def close(self) -> None:
        """The server is stopping: every long poll answers now, with nothing."""
        if self.loop is not None:
            self.loop.call_soon_threadsafe(self._wake_everyone)

    def _wake_everyone(self) -> None:
        self.closing = True
        for waiters in self.waiters.values():
            for waiter in waiters:
                waiter.event.set()

    def _wake_all(self, tenant_id: int) -> None:
        for waiter in self.waiters.get(tenant_id, []):
            waiter.event.set()

    def _wake_limited(self, tenant_id: int) -> None:
        for waiter in self.waiters.get(tenant_id, []):
            if waiter.at_limit:
                waiter.event.set()


class Listener:
    """PostgreSQL only: hears the NOTIFYs of every server process's steps and wakes this
    process's waiters (its own notices it has acted on already)."""

    def __init__(self, url: str, waker: Waker, me: str) -> None:
        self.url, self.waker, self.me = url, waker, me
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, name="emirax-listen", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.stopping.set()
        self.thread.join(timeout=5)

    def _run(self) -> None:
        import psycopg

        while not self.stopping.is_set():
            try:
                with psycopg.connect(self.url, autocommit=True) as conn:
                    conn.execute(f"LISTEN {CHANNEL}")
                    while not self.stopping.is_set():
                        for notice in conn.notifies(timeout=1.0):
                            self._heard(notice.payload)
            except Exception as exc:  # the database restarted: listen again
                if not self.stopping.is_set():
                    log.warning("queue listener lost its connection (%s); reconnecting", exc)
                    self.stopping.wait(1.0)

    def _heard(self, payload: str) -> None:
        try:
            doc = json.loads(payload)
        except ValueError:
            return
        if doc.get("s") == self.me:
            return
        at = datetime.fromisoformat(doc["at"]) if doc.get("at") else None
        self.waker.notify(int(doc["t"]), Counter(doc.get("q") or {}), at)


# ── the queue ──────────────────────────────────────────────────────────────────────────────────


class Queue:
    def __init__(self, store: Store, spaces: Any, stepper: Stepper, *,
                 lease_seconds: float = 30.0, poll_cap: float | None = None) -> None:
        """`poll_cap`: the longest a long poll sleeps before looking again. None (no cap) when
        every step that queues work can wake it: one process, or PostgreSQL's NOTIFY. Several
        server processes on one SQLite file have no channel between them, so they need one."""
        self.poll_cap = poll_cap
        self.store = store
        self.spaces = spaces
        self.stepper = stepper
        self.lease_seconds = lease_seconds
        self.waker = Waker()
        self.me = uuid.uuid4().hex[:12]
        self._seen: dict[tuple[int, str], float] = {}
        self.listener: Listener | None = None
        # What runs after a settling transaction commits (set by the app); `wake` without it.
        self.on_commit: Callable[[int, Work], None] | None = None

    # lifecycle

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self.waker.bind(loop)
        if self.store.dialect == "postgresql":
            url = self.store.engine.url.set(drivername="postgresql")
            self.listener = Listener(url.render_as_string(hide_password=False), self.waker, self.me)
            self.listener.start()

    def stop(self) -> None:
        if self.listener is not None:
            self.listener.stop()

    def on_exit_signals(self) -> None:
        """Answer the long polls at once when SIGTERM or SIGINT arrives, so a stopping server
        does not wait out every runner's poll (uvicorn waits for open requests before the
        application's shutdown runs). Chained in front of the handlers installed already
        (uvicorn's); only the main thread can, so an app run elsewhere (tests) skips it."""
        if threading.current_thread() is not threading.main_thread():
            return
        for sig in (signal.SIGTERM, signal.SIGINT):
            previous = signal.getsignal(sig)

            def handler(signum: int, frame: Any, previous: Any = previous) -> None:
                self.waker.close()
                if callable(previous):
                    previous(signum, frame)

            signal.signal(sig, handler)

    # after a step

    def publish(self, tx: StepHandle, work: Work, at: datetime | None = None) -> None:
        """Inside the step's transaction: tell the other server processes (PostgreSQL NOTIFY,
        delivered only if the transaction commits)."""
        queued = work.queued
        if self.store.dialect != "postgresql" or (not queued and at is None):
            return
        payload = json.dumps({"s": self.me, "t": tx.tenant_id, "q": dict(queued),
                              "at": at.isoformat() if at else None})
        tx.notify(CHANNEL, payload)

    def wake(self, tenant_id: int, work: Work) -> None:
        """After the commit: wake this process's runners waiting for that work."""
        queued = work.queued
        if queued:
            self.waker.notify(tenant_id, queued)

    # leasing

    async def lease(self, tenant_id: int, runner: str, functions: Sequence[str], count: int,
                    wait: float, gone: Callable[[], Any] | None = None) -> list[Leased]:
        """Lease up to `count` invocations, long-polling up to `wait` seconds for the first."""
        await self._saw(tenant_id, runner, functions)
        deadline = time.monotonic() + wait
        while not self.waker.closing:
            waiter = self.waker.register(tenant_id, functions, count)
            try:
                leased, at_limit, later = await run_in_threadpool(
                    self.store.lease, tenant_id, runner, functions, count,
                    lease_seconds=self.lease_seconds)
                left = deadline - time.monotonic()
                if leased or left <= 0:
                    return leased
                waiter.at_limit = at_limit
                timeout = min(left, AT_LIMIT_RECHECK) if at_limit else left
                if self.poll_cap is not None:
                    timeout = min(timeout, self.poll_cap)
                if later is not None:
                    timeout = min(timeout, max(0.0, (later - utcnow()).total_seconds()) + 0.001)
                try:
                    await asyncio.wait_for(waiter.event.wait(), timeout)
                except TimeoutError:
                    pass
            finally:
                self.waker.unregister(waiter)
            if gone is not None and await gone():
                return []  # the runner hung up: lease nothing it would never receive
        return []  # the server is stopping: the runner asks again, of whichever server is up

    async def _saw(self, tenant_id: int, runner: str, functions: Sequence[str]) -> None:
        now = time.monotonic()
        if now - self._seen.get((tenant_id, runner), -1e9) >= RUNNER_SEEN_EVERY:
            if len(self._seen) > 10_000:  # names hold pids: bounded, at the cost of a write each
                self._seen.clear()
            self._seen[(tenant_id, runner)] = now
            await run_in_threadpool(self.store.seen_runner, tenant_id, runner, functions)

    def heartbeat(self, tenant_id: int, invocation_id: int, fence: int) -> datetime:
        return self.store.heartbeat(tenant_id, invocation_id, fence,
                                    lease_seconds=self.lease_seconds)

    def release(self, tenant_id: int, invocation_id: int, fence: int) -> None:
        name = self.store.release(tenant_id, invocation_id, fence)
        self.waker.notify(tenant_id, Counter({name: 1}))
        self.waker.freed(tenant_id)

    # settling

    def complete(self, tenant_id: int, invocation_id: int, fence: int, result: Any) -> dict[str, Any]:
        """Apply a result: the reaction runs in this step. A result the engine refuses (not
        data) is a failed attempt instead. NotFound or Refused when it cannot be applied."""
        [answer] = self._complete_group(tenant_id, [(invocation_id, fence, result)], strict=True)
        answer.pop("id")
        return answer

    def complete_many(self, tenant_id: int,
                      items: list[tuple[int, int, Any]]) -> list[dict[str, Any]]:
        """Apply several results (invocation id, fence, result), an answer each, in order:
        the results of one workflow in ONE step (and one transaction), as a batch of events;
        different workflows one after another. The first result's workflow is locked, and
        takes every result of the batch that is its own; the rest go round again."""
        answers: dict[int, dict[str, Any]] = {}
        left = list(items)
        while left:
            try:
                done = self._complete_group(tenant_id, left)
            except (NotFound, LookupError) as exc:
                done = [{"id": left[0][0], "applied": False, "reason": "not_found",
                         "detail": str(exc)}]
            answers.update((answer["id"], answer) for answer in done)
            left = [item for item in left if item[0] not in answers]
        return [answers[i] for i, _, _ in items]

    def _complete_group(self, tenant_id: int, items: list[tuple[int, int, Any]], *,
                        strict: bool = False) -> list[dict[str, Any]]:
        """The results among `items` for the workflow of the first one, in one transaction
        (answers for those only). `strict` (one result): raise NotFound/Refused instead of
        answering them."""
        work = Work()
        retry_ats: list[datetime] = []
        answers: list[dict[str, Any]] = []
        with self.store.step_invocation(tenant_id, items[0][0]) as tx:
            rows = tx.invocations([i for i, _, _ in items])  # this workflow's
            good = []
            for inv_id, fence, result in items:
                row = rows.get(inv_id)
                if row is None:
                    continue  # another workflow's (or nobody's): a later round
                refused = refusal(row, fence)
                if refused is not None:
                    if strict:
                        raise refused
                    answers.append({"id": inv_id, "applied": False, "reason": refused.reason,
                                    "detail": str(refused)})
                else:
                    good.append((row, result))
            if good:
                wf = self._workflow(tx)
                try:
                    tx.record_results({row.call_id: result for row, result in good})
                    self.stepper.run(tx, wf, [Result(r.call_id, v) for r, v in good], work)
                    answers += [{"id": row.id, "applied": True} for row, _ in good]
                except InputError:  # one result is not data: apply them one at a time
                    answers += self._one_by_one(tx, wf, good, work, retry_ats)
            later = min(retry_ats) if retry_ats else None
            self.publish(tx, work, later)
            for answer in answers:
                answer.update(workflow=tx.workflow.id, status=tx.state.status)
        self._after(tenant_id, work, later)
        return answers

    def _one_by_one(self, tx: StepHandle, wf: Workflow, good: list[tuple[Any, Any]], work: Work,
                    retry_ats: list[datetime]) -> list[dict[str, Any]]:
        answers: list[dict[str, Any]] = []
        for row, result in good:
            try:
                tx.record_results({row.call_id: result}, replace=True)
                self.stepper.run(tx, wf, Result(row.call_id, result), work)
                answers.append({"id": row.id, "applied": True})
            except InputError as exc:
                tx.record_results({}, replace=True)
                error = {"type": "ResultError", "message": str(exc)}
                at = self._attempt_failed(tx, wf, row, error, True, work)
                if at is not None:
                    retry_ats.append(at)
                answers.append({"id": row.id, "applied": False, "error": error,
                                "retry_at": _iso(at)})
        return answers

    def fail(self, tenant_id: int, invocation_id: int, fence: int, error: dict[str, Any],
             retry: bool = True) -> dict[str, Any]:
        """A failed attempt: queued again after the backoff while retries are left, else the
        rule's error section runs."""
        work = Work()
        with self.store.step_invocation(tenant_id, invocation_id) as tx:
            row = tx.invocation(invocation_id, fence)
            retry_at = self._attempt_failed(tx, self._workflow(tx), row, error, retry, work)
            self.publish(tx, work, retry_at)
            answer = {"applied": True, "retry_at": _iso(retry_at), "workflow": tx.workflow.id,
                      "status": tx.state.status}
        self._after(tenant_id, work, retry_at)
        return answer

    def expire(self, tenant_id: int, invocation_id: int, fence: int) -> bool:
        """Settle a lease past its deadline (the runner died, or the attempt timed out): a failed
        attempt. False when it changed meanwhile (renewed, settled, or another sweeper)."""
        work = Work()
        now = utcnow()
        try:
            with self.store.step_invocation(tenant_id, invocation_id) as tx:
                row = tx.invocation(invocation_id)
                if row.status != "leased" or row.fence != fence or row.lease_expires > now:
                    return False
                timeout = attempt_deadline(row.leased_at, row.options)
                if timeout is not None and now >= timeout:
                    error = {"type": "Timeout", "message": f"timed out after "
                             f"{float(row.options['timeout']):g} s on runner {row.runner}"}
                else:
                    error = {"type": "LeaseExpired",
                             "message": f"runner {row.runner} stopped renewing its lease"}
                retry_at = self._attempt_failed(tx, self._workflow(tx), row, error, True, work)
                self.publish(tx, work, retry_at)
        except NotFound:
            return False
        self._after(tenant_id, work, retry_at)
        log.info("invocation %s (%s): %s", invocation_id, row.name, error["message"])
        return True

    def _attempt_failed(self, tx: StepHandle, wf: Workflow, row: Any, error: dict[str, Any],
                        retry: bool, work: Work) -> datetime | None:
        """Queue the next attempt (returns when it is available), or run the error section."""
        retries = int((row.options or {}).get("retries") or 0)
        open_ = tx.state.status != "failed" and row.call_id in tx.state.calls
        if retry and open_ and row.attempt <= retries:
            at = utcnow() + timedelta(seconds=backoff_seconds(row.options.get("backoff"), row.attempt))
            tx.retry(row.id, row.attempt + 1, at, error)
            tx.note([{"event": "raised", "call": row.call_id, "function": row.name,
                      "attempt": row.attempt, "runner": row.runner, **error,
                      "retry_at": at.isoformat()}])
            return at
        tx.failed(row, error)
        self.stepper.run(tx, wf, Failure(row.call_id, str(error.get("message", "")),
                                         str(error.get("type", "FunctionError")), row.attempt), work)
        return None

    def _after(self, tenant_id: int, work: Work, retry_at: datetime | None) -> None:
        if self.on_commit is not None:
            self.on_commit(tenant_id, work)  # the server's: metrics, waking, re-evaluation
        else:
            self.wake(tenant_id, work)
        if retry_at is not None:
            self.waker.notify(tenant_id, {}, retry_at)
        self.waker.freed(tenant_id)

    def _workflow(self, tx: StepHandle) -> Workflow:
        wf = self.spaces.workflow(tx.tenant_id, tx.state.workflow, tx.version)
        if wf is None:
            raise LookupError(f"the bundle of {tx.workflow.id} is not available")
        return wf


def _iso(at: datetime | None) -> str | None:
    return at.isoformat() if at is not None else None


# ── the sweeper ────────────────────────────────────────────────────────────────────────────────


class Sweeper:
    """A thread that settles expired leases, sleeping until the earliest lease deadline (at
    most `every` seconds, so leases given by other server processes are seen too)."""

    def __init__(self, queue: Queue, every: float) -> None:
        self.queue = queue
        self.every = every
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, name="emirax-sweeper", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.stopping.set()
        self.thread.join(timeout=10)

    def sweep(self) -> int:
        """Settle every lease past its deadline now; returns how many."""
        done = 0
        while not self.stopping.is_set():
            expired = self.queue.store.expired_leases(100)
            settled = sum(self.queue.expire(t, i, f) for t, i, f in expired)
            done += settled
            if len(expired) < 100 or not settled:
                return done
        return done

    def _run(self) -> None:
        while not self.stopping.is_set():
            try:
                self.sweep()
                self.queue.store.forget_runners()
                nxt = self.queue.store.next_lease_deadline()
            except Exception:  # the database is away: try again later, keep serving
                log.exception("sweeping expired leases failed")
                nxt = None
            pause = self.every
            if nxt is not None:
                pause = min(pause, max(0.0, (nxt - utcnow()).total_seconds()) + 0.01)
            self.stopping.wait(pause)
