"""Property tests of the engine: the incremental matcher (`engine.matcher.Matcher`) against the
naive one (`engine.naive.NaiveMatcher`) on random programs and random event sequences.

Owns the random program generator. A program has three fact types, A(int x, int y, String s),
B(int x, int y) and C(int x, int y, def v), whose `v` mixes values that `==` relates across
kinds (1 and 1.0, [1] and [1.0]) and values it keeps apart (true and 1). Its 1-5 rules mix bound
patterns, alpha tests (`field == constant` ones too), joins, beta tests, `not`, `exists`,
`collect` with `when` guards, and tests that read a collect binding; actions insert, modify,
retract, log, complete and call a function (whose result a reaction inserts). Programs are
valid by construction (the checker accepts every one) and terminate by construction:

- a rule inserts only types ranked above every type it matches positively or collects (A < B <
  C), so each stratum is finite once the one below is;
- `modify` sets `y` to the sink value 9 (a second such modify changes nothing, so makes no new
  version), or decrements `x` of a binding whose pattern requires `x > 0`;
- the firing limit is kept small anyway, so a loop the reasoning above missed costs little (and
  both engines must still agree on the failure).

Each event (start, added facts, a function's result or failure) is applied to three runs of the
same program: the incremental matcher, the naive matcher, and the incremental matcher rebuilt
from the state's JSON before every step (the path of a state loaded from a store). Their deltas
(with the firing trace, in order) and states must be identical at every step. Afterwards the
same events given as one batch must end in the same state with the same firings, and a new
version of the same rules must fire nothing (always on, with nothing new to do).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from emirax.engine.matcher import Matcher
from emirax.engine.naive import NaiveMatcher
from emirax.engine.program import Workflow
from emirax.engine.state import WorkflowState
from emirax.engine.step import AddFacts, Failure, Limits, Reevaluate, Result, Start, step
from emirax.errors import SourceError
from enginekit import program_of

TYPES = ("A", "B", "C")
RANK = {t: i for i, t in enumerate(TYPES)}
SINK = 9
LIMITS = Limits(firings=300, facts=300)

# ── the program model ─────────────────────────────────────────────────────────────────────────


@dataclass
class Pattern:
    kind: str  # fact, not, exists, collect
    type: str
    binding: str | None
    tests: list[str]
    decrements: bool = False  # requires x > 0, so an action may decrement x


@dataclass
class Guard:
    expr: str


@dataclass
class Rule:
    name: str
    salience: int
    match: list[Pattern | Guard]
    action: list[str]
    enabled: bool = True
    calls: bool = False  # the action's value is a function call
    reaction: str | None = None
    error: str | None = None


@dataclass
class Model:
    rules: list[Rule] = field(default_factory=list)

    def source(self) -> str:
        out = [
            "package prop", "", "workflow W {",
            "    fact A(int x, int y, String s = 'p')",
            "    fact B(int x, int y)",
            "    fact C(int x, int y, def v = null)",
            "    function int f(int n)",
        ]
        for r in self.rules:
            out += _rule_lines(r)
        return "\n".join(out + ["}"]) + "\n"


def _rule_lines(r: Rule) -> list[str]:
    options = [f"salience: {r.salience}"] * bool(r.salience) + ["enabled: false"] * (not r.enabled)
    head = f" with [{', '.join(options)}]" if options else ""
    out = [f"    rule '{r.name}'{head} {{", "        match {"]
    out += ["            " + _item(item) for item in r.match]
    out += ["        }", "        action {"]
    out += ["            " + s for s in r.action]
    out.append("        }")
    if r.reaction is not None:
        out.append(f"        reaction {{ v -> {r.reaction} }}")
    if r.error is not None:
        out.append(f"        error {{ err -> {r.error} }}")
    return out + ["    }"]


def _item(item: Pattern | Guard) -> str:
    if isinstance(item, Guard):
        return f"when {item.expr}"
    head = f"{item.binding}: " if item.binding else ""
    kind = "" if item.kind == "fact" else item.kind + " "
    return f"{head}{kind}{item.type}({', '.join(item.tests)})"


# ── strategies ────────────────────────────────────────────────────────────────────────────────

SMALL = st.integers(0, 3)


# Values of C.v, and how rule code writes them.
V_VALUES = [None, 1, 1.0, True, "p", [1], [1.0]]
V_LITERALS = ["null", "1", "1.0", "true", "'p'", "[1]", "[1.0]"]


@st.composite
def alpha_test(draw: st.DrawFn, fact_type: str) -> str:
    choices = [
        lambda: f"x > {draw(SMALL)}",
        lambda: f"y < {draw(st.integers(1, 4))}",
        lambda: f"x == {draw(SMALL)}",
        lambda: f"y != {draw(SMALL)}",
        lambda: f"x + y > {draw(st.integers(0, 5))}",
    ]
    if fact_type == "A":
        choices.append(lambda: f"s == '{draw(st.sampled_from(['p', 'q']))}'")
    if fact_type == "C":
        choices.append(lambda: f"v {draw(st.sampled_from(['==', '!=']))} {draw(st.sampled_from(V_LITERALS))}")
    return draw(st.sampled_from(choices))()


@st.composite
def join_test(draw: st.DrawFn, fact_type: str, bound: list[tuple[str, str]]) -> str:
    """`field == expr over bindings`: a hash join on an earlier positive binding (probed both
    ways when expr is exactly `b.field`)."""
    name, other = draw(st.sampled_from(bound))
    if fact_type == other == "C" and draw(st.booleans()):
        return f"v == {name}.v"
    if fact_type == other == "A" and draw(st.integers(0, 3)) == 0:
        return f"s == {name}.s"
    mine, theirs = draw(st.sampled_from(["x", "y"])), draw(st.sampled_from(["x", "y"]))
    if draw(st.integers(0, 3)) == 0:
        return f"{mine} == {name}.{theirs} + {draw(st.integers(-1, 1))}"
    return f"{mine} == {name}.{theirs}"


@st.composite
def beta_test(draw: st.DrawFn, fact_type: str, bound: list[tuple[str, str]]) -> str:
    name, other = draw(st.sampled_from(bound))
    if fact_type == other == "C" and draw(st.integers(0, 2)) == 0:
        return f"v != {name}.v"
    mine, theirs = draw(st.sampled_from(["x", "y"])), draw(st.sampled_from(["x", "y"]))
    op = draw(st.sampled_from([">", "<=", "!="]))
    if draw(st.booleans()):
        return f"{mine} {op} {name}.{theirs}"
    return f"{mine} + {name}.{theirs} {op} {draw(st.integers(0, 5))}"


@st.composite
def pattern(draw: st.DrawFn, kind: str, index: int, bound: list[tuple[str, str]],
            collects: list[str]) -> Pattern:
    fact_type = draw(st.sampled_from(TYPES))
    tests: list[str] = []
    for _ in range(draw(st.integers(0, 2))):
        menu = ["alpha"] + (["join", "beta"] if bound else []) + (["coll"] if collects else [])
        what = draw(st.sampled_from(menu))
        if what == "alpha":
            tests.append(draw(alpha_test(fact_type)))
        elif what == "join":
            tests.append(draw(join_test(fact_type, bound)))
        elif what == "beta":
            tests.append(draw(beta_test(fact_type, bound)))
        else:
            c = draw(st.sampled_from(collects))
            op = draw(st.sampled_from(["==", ">=", "<"]))
            tests.append(f"{draw(st.sampled_from(['x', 'y']))} {op} {c}.size()")
    decrements = kind == "fact" and draw(st.integers(0, 3)) == 0
    if decrements:
        tests.append("x > 0")
    binding = None
    if kind == "fact" and (draw(st.integers(0, 4)) > 0):
        binding = f"p{index}"
    elif kind == "collect":
        binding = f"c{index}"
    return Pattern(kind, fact_type, binding, tests, decrements)


@st.composite
def guard(draw: st.DrawFn, bound: list[tuple[str, str]], collects: list[str]) -> Guard | None:
    options = []
    if bound:
        a, b = draw(st.sampled_from(bound))[0], draw(st.sampled_from(bound))[0]
        options += [f"{a}.x > {b}.y", f"{a}.x + {b}.y != {draw(st.integers(0, 5))}"]
    if collects:
        c = draw(st.sampled_from(collects))
        options += [f"{c}.size() > {draw(SMALL)}", f"{c}.size() <= {draw(st.integers(1, 4))}"]
        if bound:
            options.append(f"{c}.size() == {draw(st.sampled_from(bound))[0]}.x")
    return Guard(draw(st.sampled_from(options))) if options else None


@st.composite
def match_list(draw: st.DrawFn) -> list[Pattern | Guard]:
    items: list[Pattern | Guard] = []
    bound: list[tuple[str, str]] = []
    collects: list[str] = []
    for i in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["fact", "fact", "fact", "not", "exists", "collect", "guard"]))
        if kind == "guard":
            g = draw(guard(bound, collects))
            if g is not None:
                items.append(g)
            continue
        p = draw(pattern(kind, i, bound, collects))
        items.append(p)
        if p.kind == "fact" and p.binding:
            bound.append((p.binding, p.type))
        if p.kind == "collect" and p.binding:
            collects.append(p.binding)
    if not items:
        items.append(draw(pattern("fact", 9, [], [])))
    return items


@dataclass
class Scope:
    """What a rule's action may use: its bindings, and the types it may insert."""

    positives: list[Pattern]
    collects: list[str]
    above: list[str]  # stratification: types ranked above everything matched or collected

    @classmethod
    def of(cls, match: list[Pattern | Guard]) -> Scope:
        patterns = [p for p in match if isinstance(p, Pattern)]
        floor = max([RANK[p.type] for p in patterns if p.kind in ("fact", "collect")], default=-1)
        return cls([p for p in patterns if p.kind == "fact"],
                   [p.binding for p in patterns if p.kind == "collect" and p.binding],
                   [t for t in TYPES if RANK[t] > floor])

    @property
    def bound(self) -> list[Pattern]:
        return [p for p in self.positives if p.binding]

    def values(self) -> list[str]:
        """Expressions an insert, log or complete may use (small ints, never an error)."""
        out = [str(k) for k in range(4)]
        out += [f"{p.binding}.{f}" for p in self.bound for f in ("x", "y")]
        return out + [f"{c}.size()" for c in self.collects]


@st.composite
def insert_stmt(draw: st.DrawFn, scope: Scope) -> str:
    t = draw(st.sampled_from(scope.above))
    values = scope.values()
    x, y = draw(st.sampled_from(values)), draw(st.sampled_from(values))
    v = ""
    if t == "C" and draw(st.booleans()):
        same_kind = [f"{p.binding}.v" for p in scope.bound if p.type == "C"]
        v = f", v: {draw(st.sampled_from(V_LITERALS + same_kind))}"
    return f"insert {t}(x: {x}, y: {y}{v})"


@st.composite
def change_stmt(draw: st.DrawFn, scope: Scope, kind: str) -> str:
    """A modify or retract of a binding (or of every fact of a collect list)."""
    if kind == "each":
        c = draw(st.sampled_from(scope.collects))
        verb = draw(st.sampled_from(["retract it", f"modify it {{ y = {SINK} }}"]))
        return f"{c}.each {{ {verb} }}"
    p = draw(st.sampled_from(scope.bound))
    if kind == "retract":
        return f"retract {p.binding}"
    if p.decrements and draw(st.booleans()):
        return f"modify {p.binding} {{ x = {p.binding}.x - 1 }}"
    return f"modify {p.binding} {{ y = {SINK} }}"


@st.composite
def action(draw: st.DrawFn, scope: Scope) -> list[str]:
    """1-3 statements: inserts, logs and completes first, then changes to bindings, at most one
    per binding (so no statement reads a binding an earlier one retracted)."""
    first: list[str] = []
    changes: dict[str, str] = {}
    for _ in range(draw(st.integers(1, 3))):
        menu = ["insert"] * 4 * bool(scope.above) + ["log", "complete"]
        menu += ["modify", "modify", "retract"] * bool(scope.bound) + ["each"] * bool(scope.collects)
        kind = draw(st.sampled_from(menu))
        if kind == "insert":
            first.append(draw(insert_stmt(scope)))
        elif kind == "log":
            first.append(f'log "seen ${{{draw(st.sampled_from(scope.values()))}}}"')
        elif kind == "complete":
            first.append(f"complete(n: {draw(st.sampled_from(scope.values()))})")
        else:
            stmt = draw(change_stmt(scope, kind))
            changes.setdefault(stmt.split()[1] if kind != "each" else stmt, stmt)
    return first + list(changes.values())


@st.composite
def rule(draw: st.DrawFn, index: int) -> Rule:
    match = draw(match_list())
    scope = Scope.of(match)
    r = Rule(f"r{index}", draw(st.sampled_from([0, 0, 0, 5, -1])), match, draw(action(scope)),
             enabled=draw(st.integers(0, 9)) > 0)
    if draw(st.integers(0, 3)) == 0:
        # The argument is read first: the statements before the call may retract a binding.
        r.action = [f"def arg = {draw(st.sampled_from(scope.values()))}"] + r.action + ["f(arg)"]
        r.calls = True
        if scope.above and draw(st.booleans()):
            r.reaction = f"insert {draw(st.sampled_from(scope.above))}(x: v, y: 1)"
        if scope.above and draw(st.booleans()):
            r.error = f"insert {draw(st.sampled_from(scope.above))}(x: err.attempts, y: 2)"
    return r


@st.composite
def model(draw: st.DrawFn) -> Model:
    return Model([draw(rule(i)) for i in range(draw(st.integers(1, 5)))])


@st.composite
def fact_in(draw: st.DrawFn) -> tuple[str, dict[str, Any]]:
    t = draw(st.sampled_from(TYPES))
    fields: dict[str, Any] = {"x": draw(SMALL), "y": draw(SMALL)}
    if t == "A" and draw(st.booleans()):
        fields["s"] = draw(st.sampled_from(["p", "q"]))
    if t == "C" and draw(st.booleans()):
        fields["v"] = draw(st.sampled_from(V_VALUES))
    return (t, fields)


# An event before it meets a state: results and failures name the k-th open call.
EVENT = st.one_of(
    st.tuples(st.just("add"), st.lists(fact_in(), min_size=1, max_size=3)),
    st.tuples(st.just("result"), st.integers(0, 7), SMALL),
    st.tuples(st.just("add"), st.lists(fact_in(), min_size=1, max_size=3)),
    st.tuples(st.just("result"), st.integers(0, 7), SMALL),
    st.tuples(st.just("failure"), st.integers(0, 7), st.just(0)),
)
EVENTS = st.tuples(st.lists(fact_in(), min_size=0, max_size=6),
                   st.lists(EVENT, min_size=2, max_size=8))

# ── the comparison ────────────────────────────────────────────────────────────────────────────


def _compile(m: Model) -> tuple[Workflow, Workflow]:
    source = m.source()
    try:
        first = program_of(source).workflow("W")
    except SourceError:
        # Valid by construction; test_generated_programs_are_valid fails if that slips.
        assume(False)
    return first, program_of(source, version="2").workflow("W")


class _Runs:
    """The same workflow under three engines, stepped in lockstep."""

    def __init__(self, wf: Workflow) -> None:
        self.wf = wf
        self.states = [WorkflowState.new(wf.name) for _ in range(3)]
        self.sent: list[Any] = []
        self.deltas: list[dict[str, Any]] = []

    def step(self, event: Any) -> dict[str, Any]:
        """Apply `event` under all three engines; their deltas and states must be identical."""
        outs = []
        for i, matcher in enumerate((Matcher, NaiveMatcher, Matcher)):
            if i == 2:  # a state loaded from a store: the matcher is rebuilt from the facts
                self.states[2] = WorkflowState.from_json(json.loads(json.dumps(self.states[2].to_json())))
            delta = step(self.wf, self.states[i], event, limits=LIMITS, matcher=matcher)
            outs.append(json.dumps(delta.to_json(), sort_keys=True))
        assert outs[0] == outs[1], "incremental and naive matchers disagree"
        assert outs[0] == outs[2], "a matcher rebuilt from the stored state disagrees"
        docs = [json.dumps(s.to_json(), sort_keys=True) for s in self.states]
        assert docs[0] == docs[1] == docs[2]
        self.sent.append(event)
        self.deltas.append(json.loads(outs[0]))
        return self.deltas[-1]

    def check_batch(self) -> None:
        """The events so far as one batch: the same state and firings as step by step."""
        state = WorkflowState.new(self.wf.name)
        delta = step(self.wf, state, list(self.sent), limits=LIMITS).to_json()
        assert json.dumps(state.to_json(), sort_keys=True) == json.dumps(
            self.states[0].to_json(), sort_keys=True)
        fired = [e for d in self.deltas for e in d["trace"] if e["event"] == "fire"]
        assert [e for e in delta["trace"] if e["event"] == "fire"] == fired

    def event(self, raw: tuple[Any, ...]) -> Any:
        """A drawn event made concrete: results and failures go to the k-th open call."""
        kind = raw[0]
        if kind == "add":
            return AddFacts(raw[1])
        open_calls = sorted(self.states[0].calls)
        if not open_calls:
            return None
        call = open_calls[raw[1] % len(open_calls)]
        if kind == "result":
            return Result(call, raw[2])
        return Failure(call, "boom", "FunctionError", 1 + raw[1] % 3)


def check_same(m: Model, start: list[tuple[str, dict[str, Any]]], raw_events: list[Any]) -> None:
    wf, again = _compile(m)
    runs = _Runs(wf)
    runs.step(Start(start))
    for raw in raw_events:
        if runs.states[0].status == "failed":
            break
        event = runs.event(raw)
        if event is not None:
            runs.step(event)
    runs.check_batch()
    # Always on with nothing new: a new version of the same rules fires nothing.
    if runs.states[0].status != "failed":
        quiet = step(again, runs.states[0], Reevaluate(), limits=LIMITS)
        assert quiet.firings == 0, f"re-evaluation fired again: {quiet.trace}"


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(model(), EVENTS)
def test_incremental_matches_naive(m: Model, events: tuple[list[Any], list[Any]]) -> None:
    check_same(m, *events)


@pytest.mark.slow
@settings(max_examples=3000, suppress_health_check=[HealthCheck.too_slow])
@given(model(), EVENTS)
def test_incremental_matches_naive_long(m: Model, events: tuple[list[Any], list[Any]]) -> None:
    check_same(m, *events)


def test_generated_programs_are_valid() -> None:
    """The generator's programs pass the checker: no example is thrown away."""
    found: list[str] = []

    @settings(max_examples=60, database=None)
    @given(model())
    def compile_one(m: Model) -> None:
        try:
            program_of(m.source())
        except SourceError as exc:
            found.append(f"{m.source()}\n{exc}")

    compile_one()
    assert not found, found[0]

