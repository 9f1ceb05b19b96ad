"""Incremental matching: alpha memories, hash joins, and the conflict set kept up to date as facts
come and go (a TREAT-style network; docs/engine.md says why this design and not Rete's).

    Matcher(workflow, fired)   insert(fact) / retract(fact) / pop() -> Activation | None

The network:
- Alpha memories: one per distinct (fact type, constant tests), shared between patterns that test
  the same; a fact is tested once per memory. Each memory keeps hash indexes on the fields that
  joins probe (`index == c.index` indexes the Encoded memory on `index`, and, the other way, the
  Chunk memory on `index` too).
- No beta memories (TREAT): partial tuples are not stored. When a fact enters or leaves a memory,
  the matcher enumerates only the tuples that fact can take part in, starting from it and probing
  the other patterns' indexes along the joins (a per-(rule, pattern) plan computed once), so the
  cost of a change follows the facts it joins with, not the size of working memory.
- A change to a `not`, `exists` or `collect` pattern re-evaluates exactly the tuples whose bindings
  the changed fact satisfies (found the same way), replacing their activation: blocked, unblocked,
  or given a new collect list.
- The conflict set holds complete activations by tuple, with an index from fact id to the
  activations holding it (a retract removes them), and a heap in agenda order: salience (high
  first), rule order, then the tuple's fact ids (oldest first), then the collect lists' ids.
- Refraction: `fired` (owned by the workflow state) holds the keys of activations that fired: rule
  name, (id, version) of each fact of the tuple, and of each collect list. A key in it never enters
  the conflict set again; a `modify` makes a new version and so a new key.

Pattern and guard code that raises a RuleError counts as "does not match" and is kept in `errors`
(the step reports it in the trace); a LimitError (a runaway condition) propagates and fails the
workflow.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from emirax.engine.code import Fn, Frame, LimitError, Meter
from emirax.engine.matchcode import RuleCode, rule_factory
from emirax.engine.program import Element, Rule, Test, Workflow
from emirax.engine.values import FactValue, RuleError, equals, truthy

__all__ = ["Activation", "Matcher", "MatchError", "RefractionKey", "hkey", "order_key"]

RefractionKey = tuple[str, tuple[tuple[int, int], ...], tuple[tuple[tuple[int, int], ...], ...]]

# Steps one condition may take (closures in a guard count): a runaway guard fails the workflow.
CONDITION_STEPS = 100_000

_PLAIN = frozenset((str, int, float, type(None)))  # values that are their own key
_BOOL = ("boolean",)
_LIST = ("List",)
_MAP = ("Map",)


def hkey(value: Any) -> Any:
    """A hashable key that is equal for values `==` calls equal (1 and 1.0 share one; true and 1
    do not). Probes still confirm with `equals`."""
    cls = value.__class__
    if cls is str or cls is int or cls is float or value is None:
        return value
    if cls is bool:
        return (_BOOL, value)
    if cls is list:
        return (_LIST, tuple(hkey(x) for x in value))
    if cls is dict:
        return (_MAP, frozenset([(k, x if x.__class__ in _PLAIN else hkey(x)) for k, x in value.items()]))
    if cls is FactValue:
        return (value.type, hkey(dict(value.fields)))
    return (cls.__name__, id(value))


@dataclass(slots=True, eq=False)
class Activation:
    """One tuple of facts that satisfies a rule's match, with its bindings."""

    rule: Rule
    facts: tuple[FactValue, ...]  # the positive patterns' facts, in pattern order
    env: dict[str, Any]  # binding -> FactValue, or list of FactValue for collect
    key: RefractionKey
    order: tuple[Any, ...]
    tkey: tuple[int, tuple[tuple[int, int], ...]]


@dataclass(frozen=True, slots=True)
class MatchError:
    """Pattern or guard code that failed: the tuple did not match."""

    rule: str
    at: list[int] | None
    message: str


def order_key(rule: Rule, facts: Iterable[FactValue], collected: Iterable[list[FactValue]]) -> tuple[Any, ...]:
    return (-rule.salience, rule.index, tuple(f.id for f in facts),
            tuple(tuple(f.id for f in lst) for lst in collected))


def make_activation(rule: Rule, facts: tuple[FactValue, ...], env: dict[str, Any],
                    collected: list[list[FactValue]]) -> Activation:
    versions = tuple([(f.id, f.version) for f in facts])
    if collected:
        coll = tuple([tuple([(f.id, f.version) for f in lst]) for lst in collected])
        ids = tuple([tuple([f.id for f in lst]) for lst in collected])
    else:
        coll = ids = ()
    return Activation(rule, facts, env, (rule.name, versions, coll),
                      (-rule.salience, rule.index, tuple([f.id for f in facts]), ids),
                      (rule.index, versions))


def same(a: Any, b: Any) -> bool:
    """`equals`, with the common case (two ints, two strings) first."""
    cls = a.__class__
    if cls is b.__class__ and (cls is int or cls is str):
        return a == b
    return equals(a, b)


class Memory:
    """An alpha memory: the facts of one type passing the same constant tests, with hash indexes
    on the fields joins probe."""

    __slots__ = ("type", "tests", "facts", "index")

    def __init__(self, fact_type: str, tests: list[Fn]) -> None:
        self.type = fact_type
        self.tests = tests
        self.facts: dict[int, FactValue] = {}
        self.index: dict[str, dict[Any, dict[int, FactValue]]] = {}

    def add_index(self, field: str) -> None:
        self.index.setdefault(field, {})

    def add(self, fact: FactValue) -> None:
        self.facts[fact.id] = fact
        for name, idx in self.index.items():
            k = hkey(fact.fields.get(name))
            bucket = idx.get(k)
            if bucket is None:
                idx[k] = {fact.id: fact}
            else:
                bucket[fact.id] = fact

    def remove(self, fact_id: int) -> FactValue | None:
        fact = self.facts.pop(fact_id, None)
        if fact is not None:
            for name, idx in self.index.items():
                k = hkey(fact.fields.get(name))
                bucket = idx.get(k)
                if bucket is not None:
                    bucket.pop(fact_id, None)
                    if not bucket:
                        del idx[k]
        return fact

    def probe(self, field: str, value: Any) -> Iterable[FactValue]:
        bucket = self.index[field].get(hkey(value))
        return () if bucket is None else bucket.values()


# ── plans ──────────────────────────────────────────────────────────────────────────────────────


@dataclass(frozen=True, slots=True)
class _Check:
    """A test applied to the fact at `pos` once everything it reads is bound."""

    pos: int
    field: str | None  # a join: fields[field] == fn(frame); None: a beta test, truthy(fn(frame))
    fn: Fn
    ref: tuple[str, str] | None = None  # the join's expr is `binding.field`: read it directly


@dataclass(frozen=True, slots=True)
class _Step:
    """Bind the positive pattern at `pos`: candidates from a probe (`own` join, or `reverse`
    from a bound fact's field), else a scan of the memory; then apply `checks`."""

    pos: int
    binding: str | None
    own: tuple[str, Fn] | None  # (indexed field, expr over bindings)
    reverse: tuple[int, str, str] | None  # (bound pos, its field, indexed field here)
    checks: tuple[_Check, ...]


@dataclass(frozen=True, slots=True)
class _Plan:
    seed_binding: str | None  # set in env when the seed is a positive pattern
    first: tuple[_Check, ...]
    steps: tuple[_Step, ...]


def _tests(el: Element) -> list[tuple[frozenset[str], _Check]]:
    out = [(j.deps, _Check(el.pos, j.field, j.fn, j.ref)) for j in el.joins]
    out += [(t.deps, _Check(el.pos, None, t.fn)) for t in el.beta]
    return out


def _positive_names(rule: Rule) -> frozenset[str]:
    return frozenset(b for p in rule.positives if (b := rule.elements[p].binding))


def make_plan(rule: Rule, seed: int) -> _Plan:
    """How to enumerate the positive tuples a fact at element `seed` takes part in."""
    els = rule.elements
    positive_names = _positive_names(rule)
    seed_el = els[seed]
    bound = [seed]
    names: set[str] = {seed_el.binding} if seed_el.positive and seed_el.binding else set()
    pending = [(d, c) for d, c in _tests(seed_el) if d <= positive_names]
    first, pending = _ready(pending, names)
    steps: list[_Step] = []
    for pos in rule.positives:
        if pos == seed:
            continue
        el = els[pos]
        own = next(((j.field, j.fn) for j in el.joins if j.deps <= names), None)
        reverse = None
        if own is None and el.binding:
            reverse = next(
                ((q, j.field, j.ref[1]) for q in bound for j in els[q].joins
                 if j.ref is not None and j.ref[0] == el.binding),
                None,
            )
        bound.append(pos)
        if el.binding:
            names.add(el.binding)
        pending += [(d, c) for d, c in _tests(el) if d <= positive_names]
        ready, pending = _ready(pending, names)
        steps.append(_Step(pos, el.binding, own, reverse, ready))
    return _Plan(seed_el.binding if seed_el.positive else None, first, tuple(steps))


def _ready(pending: list[tuple[frozenset[str], _Check]], names: set[str]
           ) -> tuple[tuple[_Check, ...], list[tuple[frozenset[str], _Check]]]:
    ready = tuple(c for d, c in pending if d <= names)
    return ready, [(d, c) for d, c in pending if not d <= names]


def post_checks(rule: Rule) -> dict[int, list[_Check]]:
    """Tests of positive patterns that read a collect binding: enumeration cannot apply them, so
    the full evaluation of a tuple does."""
    names = _positive_names(rule)
    return {p: [c for d, c in _tests(rule.elements[p]) if not d <= names] for p in rule.positives}


# ── the matcher ────────────────────────────────────────────────────────────────────────────────

NO_VALUE = object()


class _Runtime:
    """What one rule's generated match code calls back into (see matchcode.py)."""

    NO_VALUE = NO_VALUE
    RuleError = RuleError
    same = staticmethod(same)
    hkey = staticmethod(hkey)
    truthy = staticmethod(truthy)
    make_activation = staticmethod(make_activation)
    by_id = staticmethod(lambda f: f.id)

    def __init__(self, matcher: Matcher, rule: Rule) -> None:
        self.rule = rule
        self.value = matcher._value
        self.matcher = matcher

    def error(self, exc: RuleError) -> None:
        self.matcher._error(self.rule, exc)

    def check(self, fn: Fn, env: dict[str, Any], fact: FactValue, field: str | None) -> bool:
        """A join (`field` set) or beta test of `fact`; an error counts as "does not match"."""
        try:
            value = self.value(fn, env, fact)
            return truthy(value) if field is None else same(fact.fields.get(field), value)
        except RuleError as exc:
            self.matcher._error(self.rule, exc)
            return False

    def probe_value(self, fn: Fn, env: dict[str, Any]) -> Any:
        try:
            return self.value(fn, env, None)
        except RuleError as exc:
            self.matcher._error(self.rule, exc)
            return NO_VALUE



class Matcher:
    """The incremental matcher of one workflow's working memory."""

    def __init__(self, workflow: Workflow, fired: set[Any]) -> None:
        self.workflow = workflow
        self.fired = fired
        self.errors: list[MatchError] = []
        self.meter = Meter(CONDITION_STEPS)
        self.frame = Frame({}, self.meter)
        self.memories: dict[str, Memory] = {}
        self.of_type: dict[str, list[Memory]] = {}  # memories whose constant tests run as code
        # type -> field -> hkey(constant) -> memories: `field == constant` tests, by hashing
        self.eq_of_type: dict[str, dict[str, dict[Any, list[Memory]]]] = {}
        self.uses: dict[int, list[tuple[Rule, Element]]] = {}  # id(memory) -> its patterns
        # Rules whose `not` patterns have every test checked by enumeration: an insert there can
        # only block, so the tuples it finds are dropped without re-evaluation.
        self.fully_checked: set[tuple[int, int]] = set()
        self.counts: dict[int, int] = {r.index: 0 for r in workflow.rules}  # activations per rule
        self.mem: dict[tuple[int, int], Memory] = {}
        self.acts: dict[tuple[int, Any], Activation] = {}
        self.by_fact: dict[int, set[tuple[int, Any]]] = {}
        self.heap: list[tuple[tuple[Any, ...], int, Activation]] = []
        self.seq = 0
        self.code: dict[int, RuleCode] = {}
        self._build()

    def _build(self) -> None:
        for fact_type, uses in self.workflow.by_type.items():
            for rule, el in uses:
                mem = self.memories.get(el.alpha_key)
                if mem is None:
                    mem = self.memories[el.alpha_key] = Memory(fact_type, el.alpha)
                    if el.alpha_eq is not None:
                        field, const = el.alpha_eq
                        by_value = self.eq_of_type.setdefault(fact_type, {}).setdefault(field, {})
                        by_value.setdefault(hkey(const), []).append(mem)
                    else:
                        self.of_type.setdefault(fact_type, []).append(mem)
                self.mem[rule.index, el.pos] = mem
                self.uses.setdefault(id(mem), []).append((rule, el))
        rules = [r for r in self.workflow.rules if r.enabled]
        for rule in rules:
            names = _positive_names(rule)
            for el in rule.elements:
                if el.kind == "not" and all(d <= names for d, _ in _tests(el)):
                    self.fully_checked.add((rule.index, el.pos))
            binding_pos = {rule.elements[p].binding: p for p in rule.positives}
            for el in rule.elements:
                for j in el.joins:
                    self.mem[rule.index, el.pos].add_index(j.field)
                    if j.ref is not None:
                        self.mem[rule.index, binding_pos[j.ref[0]]].add_index(j.ref[1])
        for rule in rules:
            factory = self.workflow.match_code.get(rule.index)
            if factory is None:
                plans = {el.pos: make_plan(rule, el.pos) for el in rule.elements if el.type}
                factory = rule_factory(rule, plans, post_checks(rule))
                self.workflow.match_code[rule.index] = factory
            memories = {el.pos: self.mem[rule.index, el.pos] for el in rule.elements if el.type}
            self.code[rule.index] = factory(memories, _Runtime(self, rule))
        # A rule without positive patterns (`not Chunk()`, a bare guard) has one tuple, the empty
        # one, which no insert would ever seed.
        for rule in rules:
            if not rule.positives:
                self._evaluate_and_add(rule, ())

    # ── changes ────────────────────────────────────────────────────────────────────────────────

    def insert(self, fact: FactValue) -> None:
        entered = [m for m in self.of_type.get(fact.type, ()) if self._alpha(m, fact)]
        by_field = self.eq_of_type.get(fact.type)
        if by_field:
            for field, by_value in by_field.items():
                entered += by_value.get(hkey(fact.fields.get(field)), ())
        for m in entered:
            m.add(fact)
        for m in entered:
            for rule, el in self.uses[id(m)]:
                self._changed(rule, el, fact, inserted=True)

    def retract(self, fact: FactValue) -> None:
        left = [m for m in self.memories.values() if m.type == fact.type and m.remove(fact.id)]
        if not left:
            return
        for tkey in list(self.by_fact.get(fact.id, ())):
            self._drop(tkey)
        for m in left:
            for rule, el in self.uses[id(m)]:
                if not el.positive:
                    self._changed(rule, el, fact, inserted=False)

    def _changed(self, rule: Rule, el: Element, fact: FactValue, inserted: bool) -> None:
        code = self.code[rule.index]
        if el.positive:
            acts, fired = self.acts, self.fired
            for facts in code.seeds[el.pos](fact):
                if len(facts) > 1 and (rule.index, tuple([(f.id, f.version) for f in facts])) in acts:
                    continue  # found twice (the fact is at two patterns); one fact: always new
                act = code.evaluate(facts)
                if act is not None and act.key not in fired:
                    self._add(act)
            return
        if inserted and (rule.index, el.pos) in self.fully_checked:
            if not self.counts[rule.index]:
                return  # it can only block activations, and the rule has none
            for facts in code.seeds[el.pos](fact):
                self._drop((rule.index, tuple([(f.id, f.version) for f in facts])))
            return
        for facts in code.seeds[el.pos](fact):
            self._drop((rule.index, tuple([(f.id, f.version) for f in facts])))
            self._evaluate_and_add(rule, facts)

    # ── the agenda ─────────────────────────────────────────────────────────────────────────────

    def pop(self) -> Activation | None:
        """The next activation to fire (removed from the conflict set), or None at quiescence."""
        heap = self.heap
        while heap:
            act = heapq.heappop(heap)[2]
            if self.acts.get(act.tkey) is act:
                self._drop(act.tkey)
                return act
        return None

    def activations(self) -> list[Activation]:
        """The conflict set in agenda order (for dry runs and tests)."""
        return sorted(self.acts.values(), key=lambda a: a.order)

    def _add(self, act: Activation) -> None:
        self.acts[act.tkey] = act
        self.counts[act.rule.index] += 1
        for f in act.facts:
            s = self.by_fact.get(f.id)
            if s is None:
                self.by_fact[f.id] = {act.tkey}
            else:
                s.add(act.tkey)
        self.seq += 1
        heapq.heappush(self.heap, (act.order, self.seq, act))

    def _drop(self, tkey: tuple[int, Any]) -> None:
        act = self.acts.pop(tkey, None)
        if act is None:
            return
        self.counts[act.rule.index] -= 1
        for f in act.facts:
            s = self.by_fact.get(f.id)
            if s is not None:
                s.discard(tkey)
                if not s:
                    del self.by_fact[f.id]

    # ── evaluation of one tuple ────────────────────────────────────────────────────────────────

    def _evaluate_and_add(self, rule: Rule, facts: tuple[FactValue, ...]) -> None:
        act = self.code[rule.index].evaluate(facts)
        if act is not None and act.key not in self.fired:
            self._add(act)

    def evaluate(self, rule: Rule, facts: tuple[FactValue, ...]) -> Activation | None:
        """The activation of `facts` (the positive patterns' facts) under every condition of the
        rule against current memory, or None when a condition fails."""
        return self.code[rule.index].evaluate(facts)

    # ── running condition code ─────────────────────────────────────────────────────────────────

    def _value(self, fn: Fn, env: dict[str, Any], fact: FactValue | None) -> Any:
        frame = self.frame
        frame.vars = env
        frame.fact = fact
        self.meter.used = 0
        return fn(frame)

    def _alpha(self, mem: Memory, fact: FactValue) -> bool:
        if not mem.tests:
            return True
        try:
            return all(truthy(self._value(t, {}, fact)) for t in mem.tests)
        except LimitError:
            raise
        except RuleError as exc:
            self.errors.append(MatchError("", exc.at, exc.message))
            return False

    def _error(self, rule: Rule, exc: RuleError) -> None:
        if isinstance(exc, LimitError):
            exc.message = f"rule '{rule.name}': a match condition used more than {exc.limit} steps"
            exc.args = (exc.message,)
            raise exc
        self.errors.append(MatchError(rule.name, exc.at, exc.message))
