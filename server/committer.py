"""Group commit: the steps of concurrent requests share one transaction and one commit.

A route that steps a workflow (start, add facts) does not run its step in the thread pool: it
hands it to the Committer and awaits the answer on the event loop. The Committer's worker
threads each take every step waiting (up to `max_batch`), run them one after another inside ONE
transaction (`Store.group`), commit once, then run each step's post-commit work (metrics, waking
runners, the dispatch hook) and answer every request. The rows of the workflows a group steps are
locked with one statement before its first step (`Store.lock_ahead`), and on PostgreSQL the
steps' writes go out with the COMMIT (store/deferred.py): a group costs two round trips however
many steps it holds. Under load one commit, one connection checkout and one thread hop serve many
steps; a lone step runs as before, in a transaction of its own.

A step in a group sees the steps before it (one transaction), and each still locks its
workflow's row. The rows taken ahead are locked in workflow-id order, so groups stepping
existing workflows never wait on each other in a cycle; a deadlock that remains possible (a start
with a client id, a child's or a parent's row, locked later in another order) is broken by the
database, and is then a database error like any other. When a step of a group raises (bad input,
a missing workflow, a database error), the whole transaction is rolled back, that step runs again
alone (so its own error reaches its own request and nobody else's) and the rest run again as a
group: nothing of a failed step is written, and every other step is written exactly once.
docs/server.md has the measurements.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from server.store import Store

__all__ = ["Committer"]

log = logging.getLogger("emirax.server.committer")


@dataclass
class _Job:
    key: str  # the workflow id the step locks: a group runs its steps in key order
    run: Callable[[], Any]  # inside the transaction; returns the answer or raises
    after: Callable[[Any], None]  # after the commit, with the answer
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[Any]
    lock: tuple[int, str] | None  # (tenant, workflow id) of an existing workflow it steps


_STOP = object()


class Committer:
    """Runs steps handed over by the event loop in `threads` worker threads, grouping the steps
    that wait together into one transaction."""

    def __init__(self, store: Store, *, threads: int = 1, max_batch: int = 64,
                 on_group: Callable[[int], None] | None = None) -> None:
        self.store = store
        self.on_group = on_group  # told the size of every group committed (a metric)
        self.threads = threads
        self.max_batch = max_batch
        self._jobs: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._workers: list[threading.Thread] = []
        self._lock = threading.Lock()

    async def submit(self, key: str, run: Callable[[], Any], after: Callable[[Any], None],
                     lock: tuple[int, str] | None = None) -> Any:
        """`run()` in a transaction (perhaps shared), then `after(answer)` once it is committed;
        returns the answer, or raises what `run` raised (and then nothing of it is written).
        `lock`: the (tenant, workflow id) `run` steps, when it is an existing workflow: a group
        locks all of those rows with one statement before its steps run."""
        self._start()
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._jobs.put(_Job(key, run, after, loop, future, lock))
        return await future

    def _start(self) -> None:
        if self._workers:
            return
        with self._lock:
            if not self._workers:
                self._workers = [threading.Thread(target=self._work, name=f"emirax-step-{n}",
                                                  daemon=True) for n in range(self.threads)]
                for worker in self._workers:
                    worker.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Finish the steps handed over so far, then end the worker threads."""
        with self._lock:
            workers, self._workers = self._workers, []
        for _ in workers:
            self._jobs.put(_STOP)
        for worker in workers:
            worker.join(timeout)

    # ── the worker threads ─────────────────────────────────────────────────────────────────────

    def _work(self) -> None:
        while True:
            job = self._jobs.get()
            if job is _STOP:
                return
            jobs = [job]
            stop = False
            while len(jobs) < self.max_batch:
                try:
                    more = self._jobs.get_nowait()
                except queue.Empty:
                    break
                if more is _STOP:
                    stop = True
                    break
                jobs.append(more)
            answers: list[tuple[_Job, Any, BaseException | None]] = []
            try:
                self._run(sorted(jobs, key=lambda j: j.key), answers)
            except Exception as exc:  # noqa: BLE001 - a bug here must not hang the requests
                log.exception("the committer failed a batch")
                answered = {id(item[0]) for item in answers}
                answers += [(job, None, exc) for job in jobs if id(job) not in answered]
            self._answer(answers)
            if stop:
                return

    def _run(self, jobs: list[_Job], answers: list[tuple[_Job, Any, BaseException | None]]) -> None:
        """Run `jobs` as one group; when one raises, it runs alone and the others as a group."""
        while len(jobs) > 1:
            done: list[Any] = []
            try:
                with self.store.group():
                    self.store.lock_ahead([job.lock for job in jobs if job.lock is not None])
                    for job in jobs:
                        done.append(job.run())
            except Exception:  # noqa: BLE001 - rolled back; who failed is found below
                failed = len(done) if len(done) < len(jobs) else None
                if failed is None:  # the commit itself failed: each alone
                    break
                self._alone(jobs[failed], answers)
                jobs = jobs[:failed] + jobs[failed + 1:]
                continue
            self._committed(len(jobs))
            for job, answer in zip(jobs, done):
                self._after(job, answer, answers)
            return
        for job in jobs:
            self._alone(job, answers)

    def _committed(self, steps: int) -> None:
        if self.on_group is not None:
            self.on_group(steps)

    def _alone(self, job: _Job, answers: list[tuple[_Job, Any, BaseException | None]]) -> None:
        try:
            answer = job.run()
        except Exception as exc:  # noqa: BLE001 - the request's own error, raised there
            answers.append((job, None, exc))
            return
        self._committed(1)
        self._after(job, answer, answers)

    def _after(self, job: _Job, answer: Any, answers: list[tuple[_Job, Any, BaseException | None]]) -> None:
        try:
            job.after(answer)
        except Exception:  # committed already: the answer stands; the failure is logged
            log.exception("post-commit work of a step failed")
        answers.append((job, answer, None))

    @staticmethod
    def _answer(answers: list[tuple[_Job, Any, BaseException | None]]) -> None:
        """Hand the answers to their event loops: one wake-up per loop, not one per answer."""
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[_Job, Any, BaseException | None]]] = {}
        for item in answers:
            by_loop.setdefault(item[0].loop, []).append(item)
        for loop, items in by_loop.items():
            try:
                loop.call_soon_threadsafe(_settle, items)
            except RuntimeError:  # the loop is closed: nobody waits for these answers
                pass


def _settle(items: list[tuple[_Job, Any, BaseException | None]]) -> None:
    for job, answer, error in items:
        if job.future.done():  # the request was cancelled: the step stands regardless
            continue
        if error is not None:
            job.future.set_exception(error)
        else:
            job.future.set_result(answer)
