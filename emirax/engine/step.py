"""One evaluation step: a workflow's state plus one event gives the delta a host persists.

    step(workflow, state, event, limits=Limits()) -> Delta

Events: `Start(facts)`, `AddFacts(facts)`, `Result(call, value)`, `Failure(call, message, ...)`,
`Reevaluate()` (the state meets a new version of its bundle: pass the new version's workflow).
`step` applies the event, runs the agenda to quiescence, and returns what changed: facts
inserted, modified and retracted (net, by id), invocations to queue and to cancel, refraction keys
added, pending activations opened, updated and closed, the status, output and error, and the trace.
The state object is changed in place to match; a host that fails to persist the delta must drop
the state object and load it again. No I/O, no clock, no threads: the same state and event give
the same delta on every host.

Semantics (SPEC section 2, with the decisions it leaves open, in docs/engine.md):
- A section's effects are atomic: they are buffered while it runs and applied when it returns. An
  action that raises applies nothing (its error section runs instead; without one the workflow
  fails), and its invocations are never queued.
- An action that started invocations leaves a pending activation; its reaction runs with the
  bindings of the firing once every invocation succeeded, with the action's value resolved. The
  first invocation that fails (after its retries, counted by the host) closes it: the other open
  invocations are cancelled and the error section gets `err`.
- `fail`, an error in a reaction or an error section, a rule without an error section whose action
  failed, and every limit fail the workflow: open invocations are cancelled, and the error records
  the rule, the section and the source position.
- Status at the end of a step: `failed`; else `running` while invocations are open; else
  `completed` once `complete` has set the output; else `waiting`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from emirax.engine.code import Failed, LimitError, Meter, Placeholder, RecordingHost, data, resolve
from emirax.engine.matcher import Activation, Matcher
from emirax.engine.program import EngineError, InputError, Rule, Workflow
from emirax.engine.state import Pending, WorkflowState, fact_hash
from emirax.engine.values import FactValue, RuleError, equals

__all__ = [
    "AddFacts", "Delta", "Failure", "Invocation", "Limits", "Reevaluate", "Result", "Start", "step",
]


@dataclass(frozen=True)
class Limits:
    """What one workflow may use; every limit fails the workflow with an error naming the rule."""

    steps: int = 100_000  # per section run (loops, closure and method calls count)
    firings: int = 10_000  # per evaluation: a rule loop stops here
    facts: int = 100_000  # live facts per workflow
    fact_bytes: int = 64 * 1024  # one fact's fields, as compact JSON


# ── events ─────────────────────────────────────────────────────────────────────────────────────

FactInput = Mapping[str, Any] | tuple[str, Mapping[str, Any]]


@dataclass(frozen=True)
class Start:
    facts: tuple[FactInput, ...] | list[FactInput] = ()


@dataclass(frozen=True)
class AddFacts:
    facts: tuple[FactInput, ...] | list[FactInput]


@dataclass(frozen=True)
class Result:
    call: int
    value: Any


@dataclass(frozen=True)
class Failure:
    call: int
    message: str
    type: str = "FunctionError"
    attempts: int = 1


@dataclass(frozen=True)
class Reevaluate:
    """Evaluate under the workflow passed to `step` (a new bundle version): always on."""


Event = Start | AddFacts | Result | Failure | Reevaluate


# ── the delta ──────────────────────────────────────────────────────────────────────────────────


@dataclass
class Invocation:
    """Work for a runner (`kind` "call") or a child workflow to start (`kind` "start")."""

    id: int
    kind: str
    name: str  # the function, or the child workflow's full name
    args: list[Any]
    facts: list[dict[str, Any]]
    options: dict[str, Any]
    rule: str

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "kind": self.kind, "name": self.name, "args": self.args,
                "facts": self.facts, "options": self.options, "rule": self.rule}


class Delta:
    """What one step changed (see the module docstring); built by `step`, read by hosts."""

    __slots__ = ("inserted", "modified", "retracted", "invocations", "cancelled", "fired",
                 "opened", "updated", "closed", "status", "output", "error", "firings", "trace")

    def __init__(self) -> None:
        self.inserted: list[FactValue] = []
        self.modified: list[FactValue] = []
        self.retracted: list[int] = []
        self.invocations: list[Invocation] = []
        self.cancelled: list[int] = []
        self.fired: list[Any] = []  # refraction keys
        self.opened: list[Pending] = []
        self.updated: list[Pending] = []
        self.closed: list[int] = []
        self.status = "waiting"
        self.output: dict[str, Any] | None = None
        self.error: dict[str, Any] | None = None
        self.firings = 0
        self.trace: list[dict[str, Any]] = []

    def to_json(self) -> dict[str, Any]:
        fact = lambda f: {"id": f.id, "version": f.version, "type": f.type, "fields": f.fields}  # noqa: E731
        return {
            "inserted": [fact(f) for f in self.inserted],
            "modified": [fact(f) for f in self.modified],
            "retracted": self.retracted,
            "invocations": [i.to_json() for i in self.invocations],
            "cancelled": self.cancelled,
            "fired": [k[0] for k in self.fired],
            "status": self.status, "output": self.output, "error": self.error,
            "firings": self.firings, "trace": self.trace,
        }


# ── the step ───────────────────────────────────────────────────────────────────────────────────


def step(workflow: Workflow, state: WorkflowState, event: Event | list[Event], *,
         limits: Limits = Limits(), trace: bool = True, matcher: type = Matcher) -> Delta:
    """Apply `event` to `state` under `workflow`, run to quiescence, and return the delta.

    A list of events is applied in order with a run to quiescence after each, exactly as
    separate steps would, but gives one delta (a host commits a batch of results at once).
    Every event is validated before any is applied: a bad one raises and changes nothing."""
    events = event if isinstance(event, list) else [event]
    return _Step(workflow, state, limits, trace, matcher).run(events)


class _Stop(Exception):
    """The workflow failed: stop evaluating."""


class _Step:
    def __init__(self, wf: Workflow, state: WorkflowState, limits: Limits, trace: bool,
                 matcher_cls: type) -> None:
        self.wf = wf
        self.state = state
        self.limits = limits
        self.tracing = trace
        self.matcher_cls = matcher_cls
        self.delta = Delta()
        self.touched: dict[int, int | None] = {}  # fact id -> version before this step
        self.status_before = state.status
        self.matcher: Any = None
        self.meter = Meter(limits.steps)  # one per step, reset for each section run
        self.event_firings = 0  # the firing limit is per evaluation, so per event of a batch
        self.section = "action"  # the section whose effects are being applied

    # ── driving ────────────────────────────────────────────────────────────────────────────────

    def run(self, events: list[Event]) -> Delta:
        state = self.state
        if state.workflow != self.wf.name:
            raise EngineError(f"this state belongs to {state.workflow}, not {self.wf.name}")
        checked = []
        added = 0
        for i, event in enumerate(events):
            if i and event.__class__ is Start:
                raise EngineError("Start can only be the first event of a batch")
            payload = self._check_event(event)
            if event.__class__ is Start or event.__class__ is AddFacts:
                added += len(payload)
            checked.append((event, payload))
        if added and len(state.facts) + added > self.limits.facts:
            raise InputError(f"the workflow would hold more than {self.limits.facts} facts "
                             f"({len(state.facts)} now, {added} added)")
        for event, facts in checked:
            if state.status == "failed":  # terminal: a late result or fact changes nothing
                if isinstance(event, (Result, Failure)):
                    self._trace("ignored", call=event.call, reason="the workflow has failed")
                elif isinstance(event, AddFacts):
                    self._trace("ignored", reason="facts for a workflow that has failed")
                continue
            self.event_firings = 0
            try:
                if self.matcher is None or isinstance(event, Reevaluate):
                    self._ensure_matcher(isinstance(event, Reevaluate))
                self._apply_event(event, facts)
                self._quiesce()
            except _Stop:
                pass
        return self._finish()

    def _check_event(self, event: Event) -> Any:
        """Refuse a bad event before anything changes. Returns what the event carries, checked
        and copied: the facts of Start/AddFacts, the value of a Result."""
        state = self.state
        cls = event.__class__
        if cls is Result:
            try:
                data(event.value, "as a function result")
            except RuleError as exc:
                raise InputError(f"invocation {event.call}: {exc.message}") from None
            # the engine keeps a copy, so the host's object stays its own
            return _copy(event.value)
        if cls is Start:
            if state.next_fact > 1 or state.fired or state.status != "waiting":
                raise EngineError(f"workflow {state.workflow} has already started")
        elif cls is AddFacts:
            if state.status == "failed":
                raise EngineError("the workflow has failed: facts can no longer be added")
        elif cls is not Failure and cls is not Reevaluate:
            raise EngineError(f"unknown event {event!r}")
        else:
            return None
        if isinstance(event, (Start, AddFacts)):
            return [self._input_fact(f, i) for i, f in enumerate(event.facts)]
        return []

    def _input_fact(self, item: Any, i: int) -> tuple[str, dict[str, Any]]:
        if isinstance(item, tuple) and len(item) == 2:
            fact_type, fields = item
        elif isinstance(item, Mapping) and set(item) <= {"type", "fields"} and "type" in item:
            fact_type, fields = item["type"], item.get("fields", {})
        else:
            raise InputError(f"fact {i + 1}: expected {{\"type\": ..., \"fields\": {{...}}}}")
        if not isinstance(fact_type, str):
            raise InputError(f"fact {i + 1}: \"type\" must be a string")
        try:
            fields = self.wf.make_fact(fact_type, _copy(fields))
            size = len(_compact(fields))
        except InputError as exc:
            raise InputError(f"fact {i + 1}: {exc}") from None
        except (TypeError, ValueError) as exc:
            raise InputError(f"fact {i + 1}: not JSON data ({exc})") from None
        if size > self.limits.fact_bytes:
            raise InputError(f"fact {i + 1}: {fact_type} is {size} bytes, over the limit of "
                             f"{self.limits.fact_bytes}")
        return fact_type, fields

    def _ensure_matcher(self, reevaluate: bool) -> None:
        state = self.state
        m = state.matcher
        if m is None or state.matcher_for is not self.wf or type(m) is not self.matcher_cls:
            state.index_facts()
            try:
                m = self.matcher_cls(self.wf, state.fired)
                state.matcher, state.matcher_for = m, self.wf
                for _, f in sorted(state.facts.items()):
                    m.insert(f)
            except LimitError as exc:
                state.matcher = None
                self._fail_limit(None, exc)
        self.matcher = m
        if reevaluate or state.version != self.wf.version:
            if state.version is not None and state.version != self.wf.version:
                self._trace("version", **{"from": state.version, "to": self.wf.version})
            state.version = self.wf.version

    def _apply_event(self, event: Event, facts: Any) -> None:
        cls = event.__class__
        if cls is Result:
            self._result(event, facts)  # type: ignore[arg-type]
        elif cls is Start or cls is AddFacts:
            self._trace("start" if cls is Start else "facts", count=len(facts))
            self._effects([("insert", t, f) for t, f in facts], None)
        elif cls is Failure:
            self._failure(event)  # type: ignore[arg-type]

    def _quiesce(self) -> None:
        pop, fire = self.matcher.pop, self._fire
        try:
            while (act := pop()) is not None:
                fire(act)
        except LimitError as exc:  # a matcher that evaluates lazily (the naive one) raises here
            self._fail_limit(None, exc)
        if self.matcher.errors:
            self._match_errors()

    def _finish(self) -> Delta:
        state, delta = self.state, self.delta
        if state.status != "failed":
            if state.calls:
                state.status = "running"
            elif state.output is not None:
                state.status = "completed"
            else:
                state.status = "waiting"
        if state.status != self.status_before:
            self._trace("status", **{"from": self.status_before, "to": state.status})
        touched = self.touched
        for fid, before in (sorted(touched.items()) if len(touched) > 1 else touched.items()):
            now = state.facts.get(fid)
            if before is None:
                if now is not None:
                    delta.inserted.append(now)
            elif now is None:
                delta.retracted.append(fid)
            elif now.version != before:
                delta.modified.append(now)
        delta.status, delta.output, delta.error = state.status, state.output, state.error
        return delta

    # ── firing ─────────────────────────────────────────────────────────────────────────────────

    def _fire(self, act: Activation) -> None:
        rule, delta = act.rule, self.delta
        delta.firings += 1
        self.event_firings += 1
        if self.event_firings > self.limits.firings:
            self._fail(rule, "match", "FiringLimit",
                       f"more than {self.limits.firings} firings in one evaluation "
                       f"(do the rule's own inserts or modifies match it again?)", None)
        self.state.fired.add(act.key)
        delta.fired.append(act.key)
        if self.tracing:
            self._trace("fire", rule=rule.name, facts=[f.id for f in act.facts])
        host = _SectionHost(self, rule)
        value = self._section(rule, "action", act.env, None, host)
        if value is _FAILED:
            return
        if host.calls_made:
            self._open(rule, act.env, value, host)
        elif rule.reaction is not None:
            self._reaction(rule, act.env, value)

    def _section(self, rule: Rule, name: str, env: Mapping[str, Any], param: Any,
                 host: _SectionHost) -> Any:
        """Run a section and apply its effects; on error, run the error section or fail."""
        section = getattr(rule, name)
        meter = self.meter
        meter.used, meter.rule = 0, rule.name
        try:
            value = section.run(env, param, host, meter)
        except Failed as exc:
            self._fail(rule, name, "Failed", exc.reason, exc.at)
        except LimitError as exc:
            self._fail_limit(rule, exc, name)
        except RuleError as exc:
            err = {"message": exc.message, "type": exc.type, "function": None, "attempts": 0}
            if name == "action" and rule.error is not None:
                self._trace("error", rule=rule.name, section=name, message=exc.message)
                self._section(rule, "error", env, err, _SectionHost(self, rule))
                return _FAILED
            self._fail(rule, name, exc.type, exc.message, exc.at)
        self.section = name  # a fact limit hit while applying names this section
        self._effects(host.effects, rule)
        return value

    def _open(self, rule: Rule, env: dict[str, Any], value: Any, host: _SectionHost) -> None:
        state = self.state
        p = Pending(state.next_pending, rule.name, env, value,  # the activation's own dict
                    [c.id for c in host.calls_made], labels=[c.label for c in host.calls_made])
        state.next_pending += 1
        state.pending[p.id] = p
        for c in p.calls:
            state.calls[c] = p.id
        self.delta.opened.append(p)
        self.delta.invocations.extend(host.invocations)
        if self.tracing:
            for inv in host.invocations:
                self._trace("invoke", rule=rule.name, call=inv.id, kind=inv.kind, name=inv.name)

    def _reaction(self, rule: Rule, env: Mapping[str, Any], value: Any) -> None:
        host = _SectionHost(self, rule)
        self._section(rule, "reaction", env, value, host)
        if host.calls_made:
            self._fail(rule, "reaction", "RuleError", "a reaction cannot call functions", None)

    # ── invocation results ─────────────────────────────────────────────────────────────────────

    def _take(self, call: int, what: str) -> Pending | None:
        state = self.state
        pid = state.calls.pop(call, None)
        if pid is None:
            self._trace("ignored", call=call, reason=f"{what} for an invocation that is not open")
            return None
        return state.pending[pid]

    def _result(self, event: Result, value: Any) -> None:
        p = self._take(event.call, "a result")
        if p is None:
            return
        p.results[event.call] = value  # checked to be data, and copied
        if self.tracing:
            self._trace("result", call=event.call)
        if len(p.results) < len(p.calls):
            self.delta.updated.append(p)
            return
        self._close(p)
        rule = self.wf.rules_by_name.get(p.rule)
        if rule is None:
            self._trace("dropped", rule=p.rule, reason="the rule is not in this bundle version")
        elif rule.reaction is not None:
            self._reaction(rule, p.bindings, resolve(p.value, p.results))

    def _failure(self, event: Failure) -> None:
        p = self._take(event.call, "a failure")
        if p is None:
            return
        self._close(p)
        label = p.labels[p.calls.index(event.call)] if event.call in p.calls else ""
        self._trace("failure", call=event.call, message=event.message, attempts=event.attempts)
        rule = self.wf.rules_by_name.get(p.rule)
        if rule is None:
            self._trace("dropped", rule=p.rule, reason="the rule is not in this bundle version")
            return
        err = {"message": event.message, "type": event.type, "function": label,
               "attempts": event.attempts}
        if rule.error is None:
            self._fail(rule, "action", event.type, f"{label}: {event.message}", None)
        self._trace("error", rule=rule.name, section="action", message=event.message)
        self._section(rule, "error", p.bindings, err, _SectionHost(self, rule))

    def _close(self, p: Pending) -> None:
        state = self.state
        state.pending.pop(p.id, None)
        for c in p.calls:
            if state.calls.pop(c, None) is not None:
                self.delta.cancelled.append(c)
                self._trace("cancel", call=c)
        self.delta.closed.append(p.id)

    # ── effects on working memory ──────────────────────────────────────────────────────────────

    def _effects(self, effects: Iterable[tuple[Any, ...]], rule: Rule | None) -> None:
        try:
            for eff in effects:
                kind = eff[0]
                if kind == "insert":
                    self._insert(eff[1], eff[2], rule)
                elif kind == "modify":
                    self._modify(eff[1], eff[2], rule)
                elif kind == "retract":
                    self._retract(eff[1].id, rule)
                elif kind == "complete":
                    self.state.output = eff[1]
                    self._trace("complete", rule=rule.name if rule else None, output=eff[1])
                elif kind == "log":
                    self._trace("log", rule=rule.name if rule else None, message=eff[1])
        except LimitError as exc:
            self._fail_limit(rule, exc)

    def _insert(self, fact_type: str, fields: dict[str, Any], rule: Rule | None) -> None:
        state = self.state
        h = fact_hash(fact_type, fields)
        if h in state.identity and state.find_equal(fact_type, fields, h) is not None:
            return  # a set: an equal fact is present
        if _size_bound(fields) > self.limits.fact_bytes:
            self._check_size(fact_type, fields, rule)
        if len(state.facts) >= self.limits.facts:
            self._fail(rule, self.section, "FactLimit",
                       f"the workflow would hold more than {self.limits.facts} facts", None)
        fid = state.next_fact
        state.next_fact += 1
        fact = FactValue(fact_type, fields, fid, 1)
        state.facts[fid] = fact
        state.remember(fact, h)
        self.touched.setdefault(fid, None)
        if self.tracing:
            self._trace("insert", rule=rule.name if rule else None, fact=fid, type=fact_type)
        self.matcher.insert(fact)

    def _modify(self, old: FactValue, changes: dict[str, Any], rule: Rule | None) -> None:
        state = self.state
        cur = state.facts.get(old.id)
        if cur is None:
            self._trace("ignored", rule=rule.name if rule else None, fact=old.id,
                        reason="modify of a fact that was retracted")
            return
        fields = {**cur.fields, **changes}
        if equals(fields, dict(cur.fields)):
            return  # nothing changes: no new version, so no new activation
        h = fact_hash(cur.type, fields)
        if state.find_equal(cur.type, fields, h) is not None:  # the set keeps the one present
            self._retract(cur.id, rule)
            return
        self._check_size(cur.type, fields, rule)
        new = FactValue(cur.type, fields, cur.id, cur.version + 1)
        self.touched.setdefault(cur.id, cur.version)
        state.forget(cur)
        state.facts[cur.id] = new
        state.remember(new, h)
        if self.tracing:
            self._trace("modify", rule=rule.name if rule else None, fact=cur.id,
                        version=new.version)
        self.matcher.retract(cur)
        self.matcher.insert(new)

    def _retract(self, fid: int, rule: Rule | None) -> None:
        state = self.state
        cur = state.facts.pop(fid, None)
        if cur is None:
            return
        self.touched.setdefault(fid, cur.version)
        state.forget(cur)
        if self.tracing:
            self._trace("retract", rule=rule.name if rule else None, fact=fid)
        self.matcher.retract(cur)

    def _check_size(self, fact_type: str, fields: dict[str, Any], rule: Rule | None) -> None:
        if _size_bound(fields) <= self.limits.fact_bytes:
            return
        size = len(_compact(fields))
        if size > self.limits.fact_bytes:
            self._fail(rule, self.section, "FactSizeLimit",
                       f"a {fact_type} of {size} bytes is over the limit of "
                       f"{self.limits.fact_bytes} bytes per fact", None)

    # ── failing ────────────────────────────────────────────────────────────────────────────────

    def _fail_limit(self, rule: Rule | None, exc: LimitError, section: str = "match") -> None:
        culprit = getattr(exc, "rule", None)  # a match condition names its own rule
        if culprit is not None:
            rule, section = self.wf.rules_by_name.get(culprit, rule), "match"
        self._fail(rule, section, exc.type, exc.message, exc.at)

    def _fail(self, rule: Rule | None, section: str, type_: str, message: str,
              at: list[int] | None) -> None:
        state = self.state
        error: dict[str, Any] = {"type": type_, "message": message, "rule": None, "section": section}
        if rule is not None:
            line, column = at or rule.at
            error.update(rule=rule.name, file=rule.file, line=line, column=column)
        state.error = error
        state.status = "failed"
        for p in sorted(state.pending.values(), key=lambda p: p.id):
            self._close(p)
        self._trace("fail", **error)
        raise _Stop

    def _match_errors(self) -> None:
        m = self.matcher
        if m.errors:
            seen = set()
            for e in m.errors:
                if (e.rule, e.message) not in seen:
                    seen.add((e.rule, e.message))
                    self._trace("match_error", rule=e.rule, at=e.at, message=e.message)
            m.errors.clear()

    def _trace(self, event: str, **detail: Any) -> None:
        if self.tracing or event in _ALWAYS:
            self.delta.trace.append({"event": event, **detail})


# Traced even with trace=False: what a host must know about.
_ALWAYS = frozenset(("fail", "status", "ignored", "version", "dropped"))
_FAILED = object()


def _copy(value: Any) -> Any:
    """A copy of JSON data (lists and maps all the way down)."""
    cls = value.__class__
    if cls is dict:
        return {k: _copy(v) for k, v in value.items()}
    if cls is list:
        return [_copy(v) for v in value]
    return value


def _size_bound(fields: dict[str, Any]) -> int:
    """An upper bound of the compact JSON size of flat fields, without encoding them (the common
    case); a nested value gives "unknown" (past any limit), so the exact size is computed."""
    n = 2
    for k, v in fields.items():
        cls = v.__class__
        if cls is str:
            n += 6 * (len(k) + len(v)) + 6  # \uXXXX at worst
        elif cls is int or cls is float or cls is bool or v is None:
            n += 6 * len(k) + 30
        else:
            return 1 << 62
    return n


def _compact(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


class _SectionHost(RecordingHost):
    """The Host a section runs against: effects are recorded (as RecordingHost does) and applied
    when the section returns; calls become invocations of this workflow."""

    def __init__(self, run: _Step, rule: Rule) -> None:
        # RecordingHost's own fields, but `effects` is all it records here (defaults come from
        # the workflow, calls are numbered by the state): no dataclass __init__ on the hot path.
        self.effects: list[tuple[Any, ...]] = []
        self.run = run
        self.rule = rule
        self.calls_made: list[Placeholder] = []
        self.invocations: list[Invocation] = []

    def _call(self, kind: str, name: str, label: str, args: list[Any],
              facts: list[dict[str, Any]], options: dict[str, Any]) -> Placeholder:
        state = self.run.state
        cid = state.next_call
        state.next_call += 1
        ph = Placeholder(cid, label)
        self.calls_made.append(ph)
        self.invocations.append(Invocation(cid, kind, name, args, facts, options, self.rule.name))
        return ph

    def invoke(self, function: str, args: list[Any]) -> Placeholder:
        fn = self.run.wf.functions.get(function)
        options = dict(fn.options) if fn is not None else {}
        if self.rule.priority:  # the queue serves the function's and the rule's priority, summed
            options["priority"] = (options.get("priority") or 0) + self.rule.priority
        # A copy: the host's function may change its arguments; stored facts must not change.
        return self._call("call", function, function, _copy(args), [], options)

    def start(self, workflow: str, facts: list[tuple[str, dict[str, Any]]]) -> Placeholder:
        return self._call("start", workflow, f"start {workflow}", [],
                          [{"type": t, "fields": _copy(f)} for t, f in facts], {})

    def fact_defaults(self, fact_type: str) -> Mapping[str, Any]:
        return self.run.wf.fact_defaults(fact_type)
