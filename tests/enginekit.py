"""What the engine test modules share: source text to a runnable workflow through the real front
end, a small driver around `engine.step`, and readers for the trace.

    wf = workflow_of(SOURCE)                  # pipeline.build on a temp folder, then Program
    run = Driver(wf).start(("A", {"n": 1}))   # every step's Delta is kept in run.deltas
    run.fires()                               # [(rule, [fact ids]), ...] of the last step

Nothing here reaches into the engine's internals: tests see what a host sees (deltas, the
state's JSON, the trace).
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from emirax.engine.matcher import Matcher
from emirax.engine.program import Program, Workflow
from emirax.engine.state import WorkflowState
from emirax.engine.step import (
    AddFacts,
    Delta,
    Failure,
    Limits,
    Reevaluate,
    Result,
    Start,
    step,
)
from emirax.pipeline import build

FactIn = tuple[str, dict[str, Any]]


def program_of(source: str, *, version: str = "1", name: str = "rules.emx") -> Program:
    """Compile `source` (one .emx file) with the front end every host uses, cache off."""
    with tempfile.TemporaryDirectory(prefix="emirax-engine-") as tmp:
        path = Path(tmp) / name
        path.write_text(source, encoding="utf-8")
        result = build(path, cache_dir=False)
    assert result.ir is not None
    return Program.from_ir(result.ir, version=version)


def workflow_of(source: str, name: str = "W", *, version: str = "1") -> Workflow:
    return program_of(source, version=version).workflow(name)


def wrap(body: str, package: str = "t", name: str = "W") -> str:
    """A one-workflow source around declarations and rules."""
    return f"package {package}\n\nworkflow {name} {{\n{body}\n}}\n"


class Driver:
    """One workflow instance driven event by event, keeping every delta."""

    def __init__(self, wf: Workflow, *, limits: Limits = Limits(), matcher: type = Matcher,
                 state: WorkflowState | None = None) -> None:
        self.wf = wf
        self.state = state if state is not None else WorkflowState.new(wf.name)
        self.limits = limits
        self.matcher = matcher
        self.deltas: list[Delta] = []

    @property
    def last(self) -> Delta:
        return self.deltas[-1]

    def send(self, event: Any, wf: Workflow | None = None) -> Delta:
        if wf is not None:
            self.wf = wf
        delta = step(self.wf, self.state, event, limits=self.limits, matcher=self.matcher)
        self.deltas.append(delta)
        return delta

    def start(self, *facts: FactIn) -> Driver:
        self.send(Start(list(facts)))
        return self

    def add(self, *facts: FactIn) -> Driver:
        self.send(AddFacts(list(facts)))
        return self

    def result(self, call: int, value: Any) -> Driver:
        self.send(Result(call, value))
        return self

    def failure(self, call: int, message: str = "boom", type_: str = "FunctionError",
                attempts: int = 1) -> Driver:
        self.send(Failure(call, message, type_, attempts))
        return self

    def reevaluate(self, wf: Workflow) -> Driver:
        self.send(Reevaluate(), wf)
        return self

    # ── reading ──────────────────────────────────────────────────────────────────────────────

    def fires(self, delta: Delta | None = None) -> list[tuple[str, list[int]]]:
        return fires(delta or self.last)

    def all_fires(self) -> list[tuple[str, list[int]]]:
        return [f for d in self.deltas for f in fires(d)]

    def rules_fired(self) -> list[str]:
        return [rule for rule, _ in self.all_fires()]

    def facts(self, fact_type: str | None = None) -> list[dict[str, Any]]:
        """The live facts' fields (of one type), oldest first."""
        return [f["fields"] for f in self.state.fact_list()
                if fact_type is None or f["type"] == fact_type]

    def fact_ids(self, fact_type: str) -> list[int]:
        return [fid for fid, f in sorted(self.state.facts.items()) if f.type == fact_type]

    def open_calls(self) -> list[int]:
        return sorted(self.state.calls)

    def invocations(self, delta: Delta | None = None) -> list[dict[str, Any]]:
        return [i.to_json() for i in (delta or self.last).invocations]

    def events(self, kind: str, delta: Delta | None = None) -> list[dict[str, Any]]:
        return events(delta or self.last, kind)


def fires(delta: Delta) -> list[tuple[str, list[int]]]:
    """The firings of one step, in order, as (rule, fact ids of the tuple)."""
    return [(e["rule"], e["facts"]) for e in delta.trace if e["event"] == "fire"]


def events(delta: Delta, kind: str) -> list[dict[str, Any]]:
    return [e for e in delta.trace if e["event"] == kind]


def state_json(state: WorkflowState) -> str:
    """The state as the text a host would store (round-trips through json)."""
    return json.dumps(state.to_json(), sort_keys=True)


def deltas_json(deltas: Iterable[Delta]) -> str:
    return json.dumps([d.to_json() for d in deltas], sort_keys=True)
