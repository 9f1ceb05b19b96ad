"""Running a workflow to quiescence on one machine, no server: the host behind `emirax run` and
`emirax test`.

    LocalRun(program, functions, concurrency=32).run("VideoEncode", facts) -> Outcome

It drives `engine.step` the way the server will: each event (start, a result, a failure) is one
step, and the invocations a step returns are run by a thread pool, so the 31 encodes of a fan-out
run at once. Function options are honoured: `retries` (attempts after the first), `backoff`
(seconds, or "exponential": 1, 2, 4, ... seconds, capped at a minute) and `timeout` (per attempt;
a late result is dropped). A child workflow (`start`) runs in the same loop, and its completion
or failure is its parent's result. With `sequential=True` (rule tests) every invocation runs on
the calling thread in id order and backoff does not sleep, so a run is exactly repeatable.

Functions come from a Python module the user names (their own code, on their own machine): each
declared function is a callable of the same name, or one registered with `emirax.runner.function`.
"""

from __future__ import annotations

import heapq
import importlib.util
import sys
import time
from collections.abc import Callable, Mapping
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from emirax.engine.program import EngineError, InputError, Program, Workflow
from emirax.engine.state import WorkflowState
from emirax.engine.step import AddFacts, Delta, Failure, Invocation, Limits, Result, Start, step
from emirax import runner
from emirax.errors import EmiraxError

__all__ = ["FunctionsError", "LocalRun", "Outcome", "backoff_seconds", "load_functions"]

MAX_BACKOFF = 60.0


class FunctionsError(EmiraxError):
    """The functions module could not be loaded."""


def load_functions(path: str | Path) -> dict[str, Callable[..., Any]]:
    """The callables of a functions module, by declared name (see the module docstring)."""
    path = Path(path)
    if not path.is_file():
        raise FunctionsError(f"{path}: no such file")
    name = f"emirax_functions_{abs(hash(str(path.resolve())))}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise FunctionsError(f"{path}: not a Python module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:  # the user's module: any error it raises is theirs to see
        raise FunctionsError(f"{path}: importing it raised {type(exc).__name__}: {exc}") from None
    return runner.functions_of(module)


@dataclass
class Outcome:
    """How a local run ended: the root workflow's status, output, error and facts, and the trace
    of every workflow it ran (root and children), timed from the start."""

    status: str
    output: dict[str, Any] | None
    error: dict[str, Any] | None
    facts: list[dict[str, Any]]
    trace: list[dict[str, Any]] = field(default_factory=list)
    fired: list[str] = field(default_factory=list)  # rule names in firing order (root workflow)
    calls: int = 0

    def to_json(self) -> dict[str, Any]:
        return {"status": self.status, "output": self.output, "error": self.error,
                "facts": self.facts}


@dataclass
class _Flow:
    id: int
    workflow: Workflow
    state: WorkflowState
    parent: tuple[int, int] | None  # (parent flow, call id)


@dataclass(order=True)
class _Retry:
    due: float
    seq: int
    flow: int = field(compare=False)
    inv: Invocation = field(compare=False)
    attempt: int = field(compare=False)


class LocalRun:
    def __init__(self, program: Program, functions: Mapping[str, Callable[..., Any]], *,
                 concurrency: int = 32, limits: Limits = Limits(), sequential: bool = False,
                 on_event: Callable[[dict[str, Any]], None] | None = None) -> None:
        self.program = program
        self.functions = dict(functions)
        self.concurrency = max(1, concurrency)
        self.limits = limits
        self.sequential = sequential
        self.on_event = on_event
        self.flows: dict[int, _Flow] = {}
        self.trace: list[dict[str, Any]] = []
        self.fired: list[str] = []
        self.calls = 0
        self.t0 = time.monotonic()
        self.retries: list[_Retry] = []
        self.seq = 0
        self._attempts: dict[int, int] = {}  # invocation -> the attempt a retry will make

    # ── the run ────────────────────────────────────────────────────────────────────────────────

    def run(self, workflow: str, facts: list[Any]) -> Outcome:
        """Start `workflow` with `facts` and run until nothing is left to do."""
        root = self._new_flow(self.program.workflow(workflow), None)
        self.t0 = time.monotonic()
        self._drive(self._step(root, Start(facts)))
        return self.outcome()

    def add_facts(self, facts: list[Any]) -> Outcome:
        """Add facts to the root workflow of a finished run and run to quiescence again."""
        if not self.flows:
            raise EngineError("nothing has been started yet")
        self._drive(self._step(self.flows[1], AddFacts(facts)))
        return self.outcome()

    def outcome(self) -> Outcome:
        st = self.flows[1].state
        return Outcome(st.status, st.output, st.error, st.fact_list(), self.trace, self.fired,
                       self.calls)

    def _drive(self, queue: list[tuple[int, Invocation]]) -> None:
        if self.sequential:
            self._run_sequential(queue)
        else:
            self._run_parallel(queue)

    def _new_flow(self, wf: Workflow, parent: tuple[int, int] | None) -> _Flow:
        flow = _Flow(len(self.flows) + 1, wf, WorkflowState.new(wf.name), parent)
        self.flows[flow.id] = flow
        return flow

    def _step(self, flow: _Flow, event: Any) -> list[tuple[int, Invocation]]:
        """One engine step; returns the calls to run. Child starts and completions are handled
        here, recursively, since they are steps too."""
        delta = step(flow.workflow, flow.state, event, limits=self.limits)
        self._record(flow, delta)
        work: list[tuple[int, Invocation]] = []
        for inv in delta.invocations:
            if inv.kind == "start":
                work += self._start_child(flow, inv)
            else:
                work.append((flow.id, inv))
        if flow.parent is not None and delta.status in ("completed", "failed") and not flow.state.calls:
            work += self._child_done(flow)
        return work

    def _start_child(self, parent: _Flow, inv: Invocation) -> list[tuple[int, Invocation]]:
        try:
            wf = self.program.workflow(inv.name)
            facts = [{"type": f["type"], "fields": wf.make_fact(f["type"], f["fields"])}
                     for f in inv.facts]
        except EngineError as exc:
            return self._step(parent, Failure(inv.id, str(exc), "StartError", 1))
        child = self._new_flow(wf, (parent.id, inv.id))
        return self._step(child, Start(facts))

    def _child_done(self, child: _Flow) -> list[tuple[int, Invocation]]:
        assert child.parent is not None
        parent_id, call = child.parent
        child.parent = None  # report once
        st = child.state
        if st.status == "completed":
            event: Any = Result(call, st.output or {})
        else:
            message = (st.error or {}).get("message", "the child workflow failed")
            event = Failure(call, message, (st.error or {}).get("type", "ChildFailed"), 1)
        return self._step(self.flows[parent_id], event)

    def _unfinished_children(self) -> list[tuple[int, Invocation]]:
        """At quiescence, a child that is waiting will never complete: its parent's call fails."""
        work: list[tuple[int, Invocation]] = []
        for flow in list(self.flows.values()):
            if flow.parent is not None and flow.state.status == "waiting":
                parent_id, call = flow.parent
                flow.parent = None
                work += self._step(self.flows[parent_id], Failure(
                    call, f"child workflow {flow.workflow.name} ended waiting without calling complete",
                    "ChildWaiting", 1))
        return work

    # ── running calls ──────────────────────────────────────────────────────────────────────────

    def _run_sequential(self, queue: list[tuple[int, Invocation]]) -> None:
        while queue or self.retries:
            if not queue:
                queue += self._unfinished_children()
                if not queue and self.retries:
                    r = heapq.heappop(self.retries)
                    queue.append((r.flow, r.inv))  # no sleeping in tests
                    self._attempts[r.inv.id] = r.attempt
                if not queue:
                    break
            queue.sort(key=lambda w: (w[0], w[1].id))
            flow_id, inv = queue.pop(0)
            attempt = self._attempts.get(inv.id, 1)
            outcome = self._call_once(inv, flow_id, attempt)
            queue += self._settle(flow_id, inv, attempt, outcome)
            if not queue and not self.retries:
                queue += self._unfinished_children()

    def _run_parallel(self, queue: list[tuple[int, Invocation]]) -> None:
        running: dict[Future[Any], tuple[int, Invocation, int, float | None]] = {}
        with ThreadPoolExecutor(self.concurrency, thread_name_prefix="emirax-fn") as pool:
            while True:
                now = time.monotonic()
                while self.retries and self.retries[0].due <= now:
                    r = heapq.heappop(self.retries)
                    queue.append((r.flow, r.inv))
                    self._attempts[r.inv.id] = r.attempt
                for flow_id, inv in queue:
                    timeout = inv.options.get("timeout")
                    deadline = now + timeout if timeout else None
                    attempt = self._attempts.get(inv.id, 1)
                    fut = pool.submit(self._call_once, inv, flow_id, attempt)
                    running[fut] = (flow_id, inv, attempt, deadline)
                queue = []
                if not running and not self.retries:
                    queue = self._unfinished_children()
                    if not queue:
                        return
                    continue
                wake = [d for *_, d in running.values() if d is not None]
                if self.retries:
                    wake.append(self.retries[0].due)
                wait_for = max(0.0, min(wake) - time.monotonic()) if wake else None
                done, _ = wait(list(running), timeout=wait_for, return_when=FIRST_COMPLETED)
                for fut in done:
                    flow_id, inv, attempt, _ = running.pop(fut)
                    queue += self._settle(flow_id, inv, attempt, fut.result())
                now = time.monotonic()
                for fut, (flow_id, inv, attempt, deadline) in list(running.items()):
                    if deadline is not None and deadline <= now:
                        del running[fut]  # the thread finishes on its own; its result is dropped
                        late = runner.Outcome.failure(
                            "Timeout", f"timed out after {inv.options['timeout']:g} s")
                        queue += self._settle(flow_id, inv, attempt, late)

    def _call_once(self, inv: Invocation, flow_id: int, attempt: int) -> runner.Outcome:
        """Run one attempt as a runner would: `emirax.runner.current()` names the invocation, a
        `Permanent` error skips the retries, a result must be JSON data."""
        flow = self.flows[flow_id]
        name = f"{flow.workflow.short}#{flow.id}"
        token = runner._current.set(runner.Invocation(
            inv.id, f"{name}:{inv.id}", name, inv.name, attempt, inv.options))
        try:
            return runner.call(self.functions.get(inv.name), inv.name, inv.args)
        finally:
            runner._current.reset(token)

    def _settle(self, flow_id: int, inv: Invocation, attempt: int,
                outcome: runner.Outcome) -> list[tuple[int, Invocation]]:
        """Apply one attempt's outcome: a result, a retry, or (after the last) a failure."""
        flow = self.flows[flow_id]
        self.calls += 1
        if outcome.ok:
            self._emit(flow, {"event": "returned", "call": inv.id, "function": inv.name,
                              "attempt": attempt})
            try:
                return self._step(flow, Result(inv.id, outcome.result))
            except InputError as exc:
                outcome = runner.Outcome.failure("ResultError", str(exc))
        assert outcome.error is not None
        a, b = outcome.error["type"], outcome.error["message"]
        retries = int(inv.options.get("retries") or 0) if outcome.retry else 0
        self._emit(flow, {"event": "raised", "call": inv.id, "function": inv.name,
                          "attempt": attempt, "type": a, "message": b})
        if attempt <= retries and flow.state.status != "failed" and inv.id in flow.state.calls:
            self.seq += 1
            delay = 0.0 if self.sequential else backoff_seconds(inv.options.get("backoff"), attempt)
            heapq.heappush(self.retries, _Retry(time.monotonic() + delay, self.seq, flow_id, inv,
                                                attempt + 1))
            return []
        return self._step(flow, Failure(inv.id, b, a, attempt))

    # ── the trace ──────────────────────────────────────────────────────────────────────────────

    def _record(self, flow: _Flow, delta: Delta) -> None:
        for ev in delta.trace:
            if ev["event"] == "fire" and flow.id == 1:
                self.fired.append(ev["rule"])
            self._emit(flow, ev)

    def _emit(self, flow: _Flow, ev: dict[str, Any]) -> None:
        ev = {"t": round(time.monotonic() - self.t0, 6), "workflow": f"{flow.workflow.short}#{flow.id}", **ev}
        self.trace.append(ev)
        if self.on_event is not None:
            self.on_event(ev)


def backoff_seconds(option: Any, attempt: int) -> float:
    """Seconds to wait after failed attempt `attempt` (from 1): the function's `backoff` option."""
    if option == "exponential":
        return min(MAX_BACKOFF, 2.0 ** (attempt - 1))
    if isinstance(option, (int, float)):
        return min(float(option), MAX_BACKOFF)
    return 0.0
