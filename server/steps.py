"""One evaluation step on the server, and what follows from it in the same transaction.

    stepper = Stepper(spaces, active_version, limits=limits)
    with store.step(tenant_id, workflow_id) as tx:
        work = Work()
        delta = stepper.run(tx, wf, AddFacts(facts), work)
    committed(tenant_id, work)                      # after the commit: wake runners, ...

A step's delta is written whole (`StepHandle.apply`); then, still in the transaction:
- a `start` invocation starts its child workflow (a new row, stepped with its Start facts);
- a call whose function and arguments equal one that already succeeded in this workflow gets
  the recorded result at once instead of being queued (execution avoidance; `cache: false`
  turns it off, `cache: '1h'` bounds the age);
- a child that ends (completed or failed) settles its parent's `start` call: the parent is
  stepped with the child's output (a Result) or error (a Failure).
Each of these is a further engine step, so a chain of them commits or rolls back together.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from emirax.engine.program import EngineError, InputError, Workflow
from emirax.engine.step import Delta, Event, Failure, Invocation, Limits, Result, Start, step
from server.store import StepHandle

__all__ = ["MAX_DEPTH", "Stepper", "Work", "cache_key"]

MAX_DEPTH = 16  # children of children: deeper than this fails the `start` call


@dataclass
class Work:
    """What a transaction's steps did, for what follows its commit: the invocations they
    queued (calls for runners, and children started), the engine time, and staleness."""

    invocations: list[Invocation] = field(default_factory=list)
    durations: list[float] = field(default_factory=list)  # seconds of each engine step
    # A workflow came to rest (waiting or completed) under a version that is no longer its
    # package's active one: re-evaluation owes it a step (always on).
    stale: bool = False

    @property
    def queued(self) -> Counter[str]:
        """The queued calls by function: what runners must be woken for."""
        return Counter(inv.name for inv in self.invocations if inv.kind == "call")


def cache_key(wf: Workflow, name: str, args: list[Any]) -> str | None:
    """The execution-avoidance key of a call: sha256 of the function's name, its declared
    signature (a changed declaration is another function) and its arguments; None when the
    function's `cache` option is false."""
    fn = wf.functions.get(name)
    if fn is None or fn.options.get("cache", True) is False:
        return None
    text = json.dumps([name, fn.returns, [list(p) for p in fn.params], args],
                      separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class Stepper:
    def __init__(self, spaces: Any, active_version: Callable[[int, str], str | None], *,
                 limits: Limits = Limits()) -> None:
        self.spaces = spaces
        self.active_version = active_version
        self.limits = limits

    def run(self, tx: StepHandle, wf: Workflow, event: Event | list[Event], work: Work,
            depth: int = 0) -> Delta:
        """Step `tx`'s workflow with `event`, write the delta, and follow it (see the module
        docstring). Returns the first delta. Raises what `step` raises for a bad event
        (InputError, EngineError) before anything is written."""
        began = time.perf_counter()
        delta = step(wf, tx.state, event, limits=self.limits)
        keys = {inv.id: key for inv in delta.invocations if inv.kind == "call"
                and inv.id in tx.state.calls and (key := cache_key(wf, inv.name, inv.args))}
        tx.apply(delta, keys)
        work.durations.append(time.perf_counter() - began)
        if delta.status in ("waiting", "completed") and \
                self.active_version(tx.tenant_id, wf.package) not in (None, tx.version):
            work.stale = True
        follow: list[Event] = []
        notes: list[dict[str, Any]] = []
        # A workflow created by this transaction has no recorded result to reuse yet.
        reused = tx.reusable({inv.id: (keys[inv.id], _max_age(inv.options))
                              for inv in delta.invocations if inv.id in keys}
                             ) if keys and not tx.created else {}
        for inv in delta.invocations:
            if inv.id not in tx.state.calls:
                continue  # closed in the same step (the workflow failed)
            if inv.kind == "start":
                work.invocations.append(inv)
                follow += self._start_child(tx, wf, inv.id, inv.name, inv.facts, work, depth)
            elif inv.id in reused:
                follow.append(Result(inv.id, reused[inv.id]))
                notes.append({"event": "reused", "call": inv.id, "function": inv.name})
            else:
                work.invocations.append(inv)
        tx.note(notes)
        if follow:
            self.run(tx, wf, follow, work, depth)
        elif depth == 0:
            self._settle_parent(tx, work)
        return delta

    # ── child workflows ────────────────────────────────────────────────────────────────────────

    def _start_child(self, tx: StepHandle, parent: Workflow, call: int, name: str,
                     facts: list[dict[str, Any]], work: Work, depth: int) -> list[Event]:
        """Start the child of a `start` call; returns the parent's events when the child ended
        at once (or could not start)."""
        if depth + 1 >= MAX_DEPTH:
            return [Failure(call, f"child workflows nest deeper than {MAX_DEPTH}", "StartError")]
        package = name.rpartition(".")[0]
        version = tx.version if package == parent.package else self.active_version(tx.tenant_id, package)
        wf = self.spaces.workflow(tx.tenant_id, name, version) if version else None
        if wf is None:
            return [Failure(call, f"no workflow {name} in an active bundle", "StartError")]
        try:  # checked before the child's row exists, so a refused start leaves no orphan
            checked = [{"type": f["type"], "fields": wf.make_fact(f["type"], f["fields"])}
                       for f in facts]
        except (InputError, EngineError) as exc:
            return [Failure(call, f"starting {name}: {exc}", "StartError")]
        child = tx.start_child(wf.name, package, str(version), call)
        self.run(child, wf, Start(checked), work, depth + 1)
        return _outcome(call, child)

    def _settle_parent(self, tx: StepHandle, work: Work) -> None:
        """A child that ended settles its parent's call, in this transaction; so does its
        parent's end, up the chain."""
        while tx.state.status in ("completed", "failed") and not tx.state.calls:
            found = tx.parent()
            if found is None:
                return
            parent, call = found
            wf = self.spaces.workflow(parent.tenant_id, parent.state.workflow, parent.version)
            if wf is None:
                return
            events = _outcome(call, tx)
            self.run(parent, wf, events, work, depth=1)  # depth 1: settled here, not recursively
            tx = parent


def _outcome(call: int, child: StepHandle) -> list[Event]:
    """The parent's event for a child that ended: its output, or its error; [] while it runs."""
    st = child.state
    if st.status == "completed":
        return [Result(call, st.output or {})]
    if st.status == "failed":
        error = st.error or {}
        return [Failure(call, str(error.get("message", "the child workflow failed")),
                        str(error.get("type", "ChildFailed")), 1)]
    return []


def _max_age(options: dict[str, Any]) -> float | None:
    cache = options.get("cache", True)
    return float(cache) if isinstance(cache, (int, float)) and not isinstance(cache, bool) else None
