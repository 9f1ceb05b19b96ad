"""Match code: each rule's match list turned into Python source once per loaded version, so that
finding and evaluating tuples is straight-line loops and dict probes, not an interpreter walking
plans.

    rule_factory(rule, plans, posts) -> factory   compiled once per Rule (cached on the Workflow)
    factory(env) -> RuleCode                       per Matcher: binds that matcher's memories

For a rule, the source holds:
- `evaluate(facts)`: the activation of one tuple of positive facts under every condition of the
  rule against current memory (`not`/`exists`/`collect` probe their memory's index, guards and
  tests that read collect bindings run), or None;
- `seed_<pos>(fact)`: the positive tuples in which `fact`, at pattern `pos`, passes every test that
  reads only positive bindings (the matcher's per-(rule, pattern) plan, unrolled into nested loops).

What is generated is fixed text around identifiers the generator makes itself (`x3`, `I3_1`); the
only names from the bundle, field and binding names, appear as `repr()` string literals, and every
test that is not a plain `binding.field` equality is the closure `code.compile_expr` built,
passed in and called. Nothing a tenant wrote is ever Python source; the IR was validated before.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from emirax.engine.program import Element, Rule

__all__ = ["RuleCode", "rule_factory"]


@dataclass(frozen=True, slots=True)
class RuleCode:
    evaluate: Callable[[tuple[Any, ...]], Any]
    seeds: dict[int, Callable[[Any], list[tuple[Any, ...]]]]


class _Source:
    """Python source with indentation and the constants it refers to (passed in by name)."""

    def __init__(self, positions: dict[str | None, int]) -> None:
        self.positions = positions  # positive binding -> its pattern's position (`x<pos>`)
        self.lines: list[str] = []
        self.consts: dict[str, Any] = {}
        self.indexes: dict[str, tuple[int, str]] = {}  # variable -> (element pos, indexed field)
        self.facts: dict[str, int] = {}  # variable -> element pos whose memory's facts it is

    def emit(self, depth: int, line: str) -> None:
        self.lines.append("    " * depth + line)

    def const(self, prefix: str, value: Any) -> str:
        name = f"{prefix}{len(self.consts)}"
        self.consts[name] = value
        return name

    def index(self, pos: int, indexed: str | tuple[str, ...]) -> str:
        """The variable holding pattern `pos`'s index on a field, or on several (a tuple)."""
        for name, known in self.indexes.items():
            if known == (pos, indexed):
                return name
        name = f"I{pos}_{len(self.indexes)}"
        self.indexes[name] = (pos, indexed)
        return name

    def memory(self, pos: int) -> str:
        name = f"F{pos}"
        self.facts[name] = pos
        return name


def rule_factory(rule: Rule, plans: dict[int, Any], posts: dict[int, list[Any]]) -> Callable[..., RuleCode]:
    """Generate and compile a rule's match code; the result binds it to one matcher's memories."""
    src = _Source({rule.elements[p].binding: p for p in rule.positives if rule.elements[p].binding})
    src.emit(1, "def evaluate(facts):")
    _evaluate(src, rule, posts)
    seeds = []
    for pos, plan in sorted(plans.items()):
        src.emit(1, f"def seed_{pos}(f):")
        _seed(src, rule, pos, plan)
        seeds.append(pos)
    header = ["def factory(M, rt):",
              "    V = rt.value; C = rt.check; E = rt.error; same = rt.same; hkey = rt.hkey",
              "    truthy = rt.truthy; RuleError = rt.RuleError; make = rt.make_activation",
              "    rule = rt.rule; _id = rt.by_id"]
    header += [f"    {name} = M[{pos}].index[{field!r}]" for name, (pos, field) in src.indexes.items()]
    header += [f"    {name} = M[{pos}].facts" for name, pos in src.facts.items()]
    footer = [f"    return RuleCode(evaluate, {{{', '.join(f'{p}: seed_{p}' for p in seeds)}}})"]
    text = "\n".join(header + src.lines + footer) + "\n"
    namespace: dict[str, Any] = {"RuleCode": RuleCode, **src.consts}
    exec(compile(text, f"<match code of rule {rule.name!r}>", "exec"), namespace)  # noqa: S102
    factory = namespace["factory"]
    factory.source = text  # for tests and debugging
    factory.indexes = sorted(set(src.indexes.values()), key=repr)  # what the memories must index
    return factory


def _var(pos: int) -> str:
    return f"x{pos}"


# ── evaluate ───────────────────────────────────────────────────────────────────────────────────


def _evaluate(src: _Source, rule: Rule, posts: dict[int, list[Any]]) -> None:
    d = 2
    positives = [_var(p) for p in rule.positives]
    if positives:
        src.emit(d, f"{', '.join(positives)}, = facts")
    src.emit(d, "env = {}")  # filled in pattern order: bindings keep the order of the source
    src.emit(d, "coll = []")
    src.emit(d, "try:")
    src.emit(d + 1, "pass")
    for el in rule.elements:
        if el.kind == "fact":
            if el.binding:
                src.emit(d + 1, f"env[{el.binding!r}] = {_var(el.pos)}")
            for check in posts[el.pos]:
                src.emit(d + 1, f"if not C({src.const('K', check.fn)}, env, {_var(el.pos)}, "
                                f"{check.field!r}): return None")
        elif el.kind == "guard":
            assert el.guard is not None
            src.emit(d + 1, f"if not truthy(V({src.const('G', el.guard.fn)}, env, None)): return None")
        else:
            _condition(src, d + 1, el)
    src.emit(d, "except RuleError as exc:")
    src.emit(d + 1, "E(exc)")
    src.emit(d + 1, "return None")
    src.emit(d, "return make(rule, facts, env, coll)")


def _condition(src: _Source, d: int, el: Element) -> None:
    """not / exists / collect against the memory, with the bindings in `env` and `x<pos>`."""
    y = f"y{el.pos}"
    probed = list({j.field: j for j in reversed(el.joins)}.values())[::-1]  # one join a field
    if probed:
        _probe(src, d, el.pos, [j.field for j in probed], [_join_value(src, j, d) for j in probed])
        cands = _bucket(f"b{el.pos}")
    else:
        cands = f"{src.memory(el.pos)}.values()"
    # The probed joins hold (an index hit is `==`); the others are tested.
    test = _passes(src, el, y, d, skip=[j for j in el.joins if j in probed])
    if el.kind == "not":
        src.emit(d, f"for {y} in {cands}:")
        src.emit(d + 1, f"if {test}: return None")
    elif el.kind == "exists":
        src.emit(d, f"for {y} in {cands}:")
        src.emit(d + 1, f"if {test}: break")
        src.emit(d, "else:")
        src.emit(d + 1, "return None")
    else:
        lst = f"c{el.pos}"
        src.emit(d, f"{lst} = [{y} for {y} in {cands} if {test}]")
        src.emit(d, f"{lst}.sort(key=_id)")
        src.emit(d, f"coll.append({lst})")
        if el.binding:
            src.emit(d, f"env[{el.binding!r}] = {lst}")


def _join_value(src: _Source, j: Any, d: int) -> str:
    """An expression for a join's right side, over the bound facts (computed before a loop)."""
    if j.ref is not None:
        return f"x{src.positions[j.ref[0]]}.fields.get({j.ref[1]!r})"
    name = f"v{len(src.lines)}"
    src.emit(d, f"{name} = V({src.const('J', j.fn)}, env, None)")
    return name


def _passes(src: _Source, el: Element, y: str, d: int, skip: list[Any]) -> str:
    """The conjunction of a pattern's joins and beta tests for candidate `y` (errors propagate);
    the joins in `skip` found the candidates by an index probe, so they hold."""
    parts = []
    for j in el.joins:
        if any(j is k for k in skip):
            continue
        parts.append(f"same({y}.fields.get({j.field!r}), {_join_value(src, j, d)})")
    for t in el.beta:
        parts.append(f"truthy(V({src.const('B', t.fn)}, env, {y}))")
    return " and ".join(parts) or "True"


# ── seeds ──────────────────────────────────────────────────────────────────────────────────────


def _seed(src: _Source, rule: Rule, seed: int, plan: Any) -> None:
    d = 2
    src.emit(d, "out = []")
    src.emit(d, f"{_var(seed)} = f")
    src.emit(d, "env = {}")
    if plan.seed_binding:
        src.emit(d, f"env[{plan.seed_binding!r}] = f")
    for check in plan.first:
        src.emit(d, f"if not {_check(src, check)}: return out")
    for step in plan.steps:
        x = _var(step.pos)
        if step.probes:
            values = []
            for k, probe in enumerate(step.probes):
                if probe.ref is not None:
                    values.append(f"{_var(probe.ref[0])}.fields.get({probe.ref[1]!r})")
                    continue
                value = f"w{step.pos}_{k}"
                src.emit(d, f"{value} = rt.probe_value({src.const('P', probe.fn)}, env)")
                src.emit(d, f"if {value} is rt.NO_VALUE: {'return out' if d == 2 else 'continue'}")
                values.append(value)
            _probe(src, d, step.pos, [p.indexed for p in step.probes], values)
            cands = _bucket(f"b{step.pos}")
        else:
            cands = f"{src.memory(step.pos)}.values()"
        src.emit(d, f"for {x} in {cands}:")
        d += 1
        if step.binding:
            src.emit(d, f"env[{step.binding!r}] = {x}")
        for check in step.checks:
            src.emit(d, f"if not {_check(src, check)}: continue")
    tuple_ = ", ".join(_var(p) for p in rule.positives)
    src.emit(d, f"out.append(({tuple_},))" if rule.positives else "out.append(())")
    src.emit(2, "return out")


def _probe(src: _Source, d: int, pos: int, fields: list[str], values: list[str]) -> None:
    """`b<pos>` = the bucket of pattern `pos`'s index on `fields` for `values`: one field, or
    several at once through a composite index keyed by the tuple of their values."""
    if len(fields) == 1:
        src.emit(d, f"b{pos} = {src.index(pos, fields[0])}.get(hkey({values[0]}))")
        return
    key = ", ".join(f"hkey({v})" for v in values)
    src.emit(d, f"b{pos} = {src.index(pos, tuple(fields))}.get(({key}))")


def _bucket(var: str) -> str:
    """The facts of an index bucket held in `var`: none, one fact, or a dict of them by id."""
    return f"(() if {var} is None else {var}.values() if {var}.__class__ is dict else ({var},))"


def _check(src: _Source, check: Any) -> str:
    x = _var(check.pos)
    if check.ref is not None:
        other = f"x{src.positions[check.ref[0]]}"
        return f"same({x}.fields.get({check.field!r}), {other}.fields.get({check.ref[1]!r}))"
    return f"C({src.const('K', check.fn)}, env, {x}, {check.field!r})"
