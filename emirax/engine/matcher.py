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
  the other patterns' indexes along the joins (a per-(rule, pattern) plan, computed once per
  loaded version and compiled to straight-line Python by `matchcode.py`), so the cost of a
  change follows the facts it joins with, not the size of working memory. A probe's hit needs
  no second test: `hkey` is equal exactly when `==` is.
- A change to a `not`, `exists` or `collect` pattern re-evaluates exactly the tuples whose bindings
  the changed fact satisfies (found the same way), replacing their activation: blocked, unblocked,
  or given a new collect list. An insert into a `not` only drops (it can only block), and nothing
  when the rule has no activation.
- The network's layout (memories, indexes, which patterns read which memory, the match code) is
  built once per loaded version and cached on the Workflow; a Matcher only creates empty memories.
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
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from emirax.engine.code import Fn, Frame, LimitError, Meter
from emirax.engine.matchcode import RuleCode, rule_factory
from emirax.engine.program import Element, Rule, Workflow
from emirax.engine.values import FactValue, RuleError, equals, truthy

__all__ = ["Activation", "Matcher", "MatchError", "RefractionKey", "hkey", "make_activation"]

RefractionKey = tuple[str, tuple[tuple[int, int], ...], tuple[tuple[tuple[int, int], ...], ...]]

# Steps one condition may take (closures in a guard count): a runaway guard fails the workflow.
CONDITION_STEPS = 100_000

_PLAIN = frozenset((str, int, float, type(None)))  # values that are their own key
_BOOL = ("boolean",)
_LIST = ("List",)
_MAP = ("Map",)


def hkey(value: Any) -> Any:
    """A hashable key that is equal exactly when the language's `==` calls two values equal (1
    and 1.0 share one; true and 1 do not; lists and maps element by element), so a hash-index
    hit needs no second test."""
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
    on the fields joins probe: one field (a name), or several at once (a tuple of names, keyed by
    the tuple of their values) when a pattern is probed by several joins together. A bucket of an
    index is the one fact with that key, or a dict of them by id when there are several (most
    keys hold one: no dict is made for it)."""

    __slots__ = ("type", "tests", "facts", "index", "uses")

    def __init__(self, fact_type: str, tests: list[Fn], indexed: Iterable[Any] = ()) -> None:
        self.type = fact_type
        self.tests = tests
        self.facts: dict[int, FactValue] = {}
        self.index: dict[Any, dict[Any, Any]] = {f: {} for f in indexed}
        self.uses: list[tuple[Rule, Element]] = []  # the patterns reading this memory

    def add(self, fact: FactValue) -> None:
        self.facts[fact.id] = fact
        fields = fact.fields
        for name, idx in self.index.items():
            k = hkey(fields.get(name)) if name.__class__ is str else tuple([hkey(fields.get(n)) for n in name])
            bucket = idx.get(k)
            if bucket is None:
                idx[k] = fact  # most keys hold one fact: no dict for it
            elif bucket.__class__ is dict:
                bucket[fact.id] = fact
            else:
                idx[k] = {bucket.id: bucket, fact.id: fact}

    def remove(self, fact_id: int) -> FactValue | None:
        fact = self.facts.pop(fact_id, None)
        if fact is not None:
            fields = fact.fields
            for name, idx in self.index.items():
                k = hkey(fields.get(name)) if name.__class__ is str else tuple([hkey(fields.get(n)) for n in name])
                bucket = idx.get(k)
                if bucket.__class__ is dict:
                    bucket.pop(fact_id, None)
                    if len(bucket) == 1:
                        idx[k] = next(iter(bucket.values()))
                elif bucket is not None and bucket.id == fact_id:
                    del idx[k]
        return fact


# ── plans ──────────────────────────────────────────────────────────────────────────────────────


@dataclass(frozen=True, slots=True)
class _Check:
    """A test applied to the fact at `pos` once everything it reads is bound."""

    pos: int
    field: str | None  # a join: fields[field] == fn(frame); None: a beta test, truthy(fn(frame))
    fn: Fn
    ref: tuple[str, str] | None = None  # the join's expr is `binding.field`: read it directly


@dataclass(frozen=True, slots=True)
class _Probe:
    """A way to find candidates for a pattern through an index: `indexed` (a field of this
    pattern) equal to `ref` (a bound pattern's position and field) or to `fn` over bindings.
    `check` is the join it stands for: (position of the pattern holding it, its fn)."""

    indexed: str
    ref: tuple[int, str] | None
    fn: Fn | None
    check: tuple[int, Fn]


@dataclass(frozen=True, slots=True)
class _Step:
    """Bind the positive pattern at `pos`: candidates from one index probe on every field its
    `probes` name (its own joins whose bindings are bound, and the joins of bound patterns that
    name it: a composite index when there are several), or a scan of the memory when there is
    none; then apply `checks`."""

    pos: int
    binding: str | None
    probes: tuple[_Probe, ...]
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
        binding_pos = {els[q].binding: q for q in bound if els[q].binding and els[q].positive}
        probes = [_Probe(j.field, (binding_pos[j.ref[0]], j.ref[1]) if j.ref else None,
                         None if j.ref else j.fn, (pos, j.fn))
                  for j in el.joins if j.deps <= names]
        if el.binding:
            probes += [_Probe(j.ref[1], (q, j.field), None, (q, j.fn))
                       for q in bound for j in els[q].joins
                       if j.ref is not None and j.ref[0] == el.binding]
        bound.append(pos)
        if el.binding:
            names.add(el.binding)
        pending += [(d, c) for d, c in _tests(el) if d <= positive_names]
        ready, pending = _ready(pending, names)
        # The joins the probe uses hold already: an index hit is `==` (one probe per field).
        probes = list({p.indexed: p for p in reversed(probes)}.values())[::-1]
        done = {p.check for p in probes}
        ready = tuple(c for c in ready if (c.pos, c.fn) not in done)
        steps.append(_Step(pos, el.binding, tuple(probes), ready))
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



@dataclass
class _Layout:
    """The shape of a workflow's network, computed once per loaded version: which memories
    exist, what they index, which patterns read them, and each rule's match code. A Matcher
    instantiates it (empty memories) in a few microseconds."""

    specs: list[tuple[str, list[Fn], tuple[str, Any] | None, list[Any]]]  # type, tests, eq, indexed
    uses: list[list[tuple[Rule, Element]]]  # per memory: the patterns reading it
    element_memory: dict[tuple[int, int], int]
    fully_checked: frozenset[tuple[int, int]]
    rules: list[Rule]  # the enabled ones
    factories: dict[int, Callable[..., RuleCode]]


def _layout(workflow: Workflow) -> _Layout:
    cached = workflow.match_code.get("layout")
    if cached is not None:
        return cached
    keys: dict[str, int] = {}
    specs: list[tuple[str, list[Fn], tuple[str, Any] | None, list[Any]]] = []
    uses: list[list[tuple[Rule, Element]]] = []
    element_memory: dict[tuple[int, int], int] = {}
    for fact_type, patterns in workflow.by_type.items():
        for rule, el in patterns:
            i = keys.get(el.alpha_key)
            if i is None:
                i = keys[el.alpha_key] = len(specs)
                eq = (el.alpha_eq[0], hkey(el.alpha_eq[1])) if el.alpha_eq is not None else None
                specs.append((fact_type, el.alpha, eq, []))
                uses.append([])
            element_memory[rule.index, el.pos] = i
            uses[i].append((rule, el))
    rules = [r for r in workflow.rules if r.enabled]
    fully_checked = set()
    for rule in rules:
        names = _positive_names(rule)
        for el in rule.elements:
            if el.kind == "not" and all(d <= names for d, _ in _tests(el)):
                fully_checked.add((rule.index, el.pos))
    factories = {}
    for rule in rules:
        plans = {el.pos: make_plan(rule, el.pos) for el in rule.elements if el.type}
        factory = factories[rule.index] = rule_factory(rule, plans, post_checks(rule))
        for pos, indexed in factory.indexes:  # the indexes its code probes
            _index(specs[element_memory[rule.index, pos]][3], indexed)
    layout = _Layout(specs, uses, element_memory, frozenset(fully_checked), rules, factories)
    workflow.match_code["layout"] = layout
    return layout


def _index(fields: list[Any], field: Any) -> None:
    if field not in fields:
        fields.append(field)


class Matcher:
    """The incremental matcher of one workflow's working memory."""

    def __init__(self, workflow: Workflow, fired: set[Any]) -> None:
        self.workflow = workflow
        self.fired = fired
        self.errors: list[MatchError] = []
        self.meter = Meter(CONDITION_STEPS)
        self.frame = Frame({}, self.meter)
        layout = _layout(workflow)
        self.memories = [Memory(t, tests, fields) for t, tests, _, fields in layout.specs]
        # type -> memories whose constant tests run as code
        self.of_type: dict[str, list[Memory]] = {}
        # type -> field -> hkey(constant) -> memories: `field == constant` tests, by hashing
        self.eq_of_type: dict[str, dict[str, dict[Any, list[Memory]]]] = {}
        for mem, (t, _, eq, _) in zip(self.memories, layout.specs):
            if eq is None:
                self.of_type.setdefault(t, []).append(mem)
            else:
                self.eq_of_type.setdefault(t, {}).setdefault(eq[0], {}).setdefault(eq[1], []).append(mem)
        for mem, patterns in zip(self.memories, layout.uses):
            mem.uses = patterns
        # `not` patterns whose every test enumeration checks: an insert there can only block,
        # so the tuples it finds are dropped without re-evaluation.
        self.fully_checked = layout.fully_checked
        self.counts: dict[int, int] = {r.index: 0 for r in workflow.rules}  # activations per rule
        self.acts: dict[tuple[int, Any], Activation] = {}
        self.by_fact: dict[int, set[tuple[int, Any]]] = {}
        self.heap: list[tuple[tuple[Any, ...], int, Activation]] = []
        self.seq = 0
        self.code: dict[int, RuleCode] = {}
        for rule in layout.rules:
            memories = {el.pos: self.memories[layout.element_memory[rule.index, el.pos]]
                        for el in rule.elements if el.type}
            self.code[rule.index] = layout.factories[rule.index](memories, _Runtime(self, rule))
        # A rule without positive patterns (`not Chunk()`, a bare guard) has one tuple, the empty
        # one, which no insert would ever seed.
        for rule in layout.rules:
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
            for rule, el in m.uses:
                self._changed(rule, el, fact, inserted=True)

    def retract(self, fact: FactValue) -> None:
        left = [m for m in self.memories if m.type == fact.type and m.remove(fact.id)]
        if not left:
            return
        for tkey in list(self.by_fact.get(fact.id, ())):
            self._drop(tkey)
        for m in left:
            for rule, el in m.uses:
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
        except LimitError as exc:
            raise runaway(mem.uses[0][0], exc) from None
        except RuleError as exc:  # a shared memory: every rule that reads it did not match
            for name in dict.fromkeys(rule.name for rule, _ in mem.uses):
                self.errors.append(MatchError(name, exc.at, exc.message))
            return False

    def _error(self, rule: Rule, exc: RuleError) -> None:
        if isinstance(exc, LimitError):
            raise runaway(rule, exc) from None
        self.errors.append(MatchError(rule.name, exc.at, exc.message))


def runaway(rule: Rule, exc: LimitError) -> LimitError:
    """A match condition past its step budget, named for its rule (the step blames that rule,
    not the one whose change woke the condition)."""
    exc.message = f"rule '{rule.name}': a match condition used more than {exc.limit} steps"
    exc.args = (exc.message,)
    exc.rule = rule.name  # type: ignore[attr-defined]
    return exc
