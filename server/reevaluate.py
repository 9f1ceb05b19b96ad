"""Always on: re-evaluating waiting and completed workflows under a newly active bundle version.

    worker = Reevaluator(store, spaces, stepper, queue, committed)
    worker.start()       # a background thread; runs once at start (a restart resumes the work)
    worker.kick()        # after an activation: wake it
    worker.drain()       # the work itself, synchronously (what the thread runs; tests call it)

Progress lives in the store, not here: a workflow is owed a re-evaluation exactly while its row
says it ran under another version than its package's active one (`Store.stale_workflows`), and
the re-evaluating step writes the new version in the same transaction as its delta. So work is
done in batches, never twice, and whatever a crash interrupted is found again at the next start.
The request that activates a version only kicks the thread: it never waits for the work.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from collections.abc import Callable

from emirax.engine.step import Reevaluate
from server.steps import Stepper, Work
from server.store import NotFound

__all__ = ["Reevaluator"]

log = logging.getLogger("emirax.server.reevaluate")
REEVALUATE = ("waiting", "completed")


class Reevaluator:
    def __init__(self, store: Any, spaces: Any, stepper: Stepper, queue: Any,
                 committed: Callable[[int, Work], None], *, batch: int = 100) -> None:
        self.store = store
        self.spaces = spaces
        self.stepper = stepper
        self.queue = queue  # publishes the work a re-evaluation queues
        self.committed = committed  # wakes runners for it after the commit
        self.batch = batch
        self.wake = threading.Event()
        self.stopping = threading.Event()
        self.thread: threading.Thread | None = None

    def start(self) -> None:
        self.thread = threading.Thread(target=self._loop, name="emirax-reevaluate", daemon=True)
        self.thread.start()
        self.kick()

    def kick(self) -> None:
        self.wake.set()

    def stop(self) -> None:
        self.stopping.set()
        self.wake.set()
        if self.thread is not None:
            self.thread.join(timeout=10)

    def _loop(self) -> None:
        while not self.stopping.is_set():
            self.wake.wait()
            self.wake.clear()
            if self.stopping.is_set():
                return
            try:
                self.drain()
            except Exception:  # keep serving: the work is in the store and is retried on the next kick
                log.exception("re-evaluation stopped early")

    def drain(self) -> int:
        """Re-evaluate every stale workflow, a batch at a time; returns how many were stepped."""
        done = 0
        while not self.stopping.is_set():
            batch = self.store.stale_workflows(self.batch)
            progressed = [self._one(*row) for row in batch]
            done += sum(progressed)
            if not any(progressed):  # nothing left, or only workflows no version can evaluate
                return done
        return done

    def _one(self, tenant_id: int, workflow_id: str, version: str) -> bool:
        work = Work()
        try:
            with self.store.step(tenant_id, workflow_id) as tx:
                if tx.version == version or tx.state.status not in REEVALUATE:
                    return True  # another process got there first: nothing owed any more
                wf = self.spaces.workflow(tenant_id, tx.state.workflow, version)
                if wf is None:
                    log.warning("workflow %s is not in version %s of its bundle", workflow_id, version)
                    return False
                delta = self.stepper.run(tx, wf, Reevaluate(), work)
                self.queue.publish(tx, work)
        except NotFound:
            return True
        self.committed(tenant_id, work)
        log.info("re-evaluated %s under %s: %d firing(s)", workflow_id, version, delta.firings)
        return True
