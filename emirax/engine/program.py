"""A bundle's IR made runnable, once per loaded version: fact types, functions and compiled rules.

    Program.from_ir(ir, version=...)  -> Program      validates the IR, compiles every workflow
    Program.from_bundle(bundle)       -> Program
    program.workflow(name)            -> Workflow     by full name, or short name when unique

A `Workflow` holds what the matcher and the step loop need and nothing else: each rule's match
list as `Element`s (alpha tests, joins and beta tests compiled to closures, with the bindings each
one reads), its sections compiled by `code.compile_section`, the fact types with their defaults,
and the declared functions with their normalised options. Everything is built from the IR, which
is data; no Python a tenant wrote is ever imported or evaluated.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from emirax import ir as irmod
from emirax.engine.code import Fn, Section, compile_expr, compile_section, fact_defaults
from emirax.engine.values import is_number
from emirax.errors import EmiraxError

__all__ = [
    "Element", "EngineError", "FactType", "Function", "InputError", "Join", "Program", "Rule",
    "Test", "Workflow",
]


class EngineError(EmiraxError):
    """A request the engine cannot serve (unknown workflow, a closed workflow, a bad event)."""


class InputError(EngineError):
    """Facts from outside (a start request, added facts) that do not fit the workflow's types."""


@dataclass(frozen=True, slots=True)
class Test:
    """A compiled condition and the rule bindings it reads."""

    fn: Fn
    deps: frozenset[str]


@dataclass(frozen=True, slots=True)
class Join:
    """`field == expr` where expr reads bindings only. `ref` is (binding, field) when expr is
    exactly `binding.field` of a positive pattern: the matcher then also probes the other way."""

    field: str
    fn: Fn
    deps: frozenset[str]
    ref: tuple[str, str] | None


@dataclass(slots=True)
class Element:
    """One entry of a rule's match list: a pattern (fact, not, exists, collect) or a guard."""

    pos: int
    kind: str
    type: str | None
    binding: str | None
    at: list[int]
    alpha: list[Fn] = field(default_factory=list)
    alpha_key: str = ""
    # (field, constant) when the constant tests are exactly `field == constant`: the matcher then
    # routes facts to the memory by hashing the field instead of running the test.
    alpha_eq: tuple[str, Any] | None = None
    joins: list[Join] = field(default_factory=list)
    beta: list[Test] = field(default_factory=list)
    guard: Test | None = None

    @property
    def positive(self) -> bool:
        return self.kind == "fact"


@dataclass(slots=True)
class Rule:
    name: str
    index: int
    salience: int
    enabled: bool
    file: str
    at: list[int]
    elements: list[Element]
    action: Section
    reaction: Section | None
    error: Section | None
    priority: int = 0  # added to the queue priority of every call its sections make
    # Positions (in `elements`) of the positive patterns: an activation's tuple, in this order.
    positives: list[int] = field(default_factory=list)
    collects: list[int] = field(default_factory=list)

    def where(self, at: list[int] | None = None) -> str:
        line, col = at or self.at
        return f"{self.file}:{line}:{col}"


@dataclass(frozen=True, slots=True)
class FactType:
    name: str
    fields: Mapping[str, str]  # field name -> declared type
    required: frozenset[str]
    defaults: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class Function:
    name: str
    returns: str
    params: tuple[tuple[str, str], ...]
    options: Mapping[str, Any]


@dataclass
class Workflow:
    """One workflow of a loaded bundle version, ready for `step`."""

    name: str  # package.Workflow
    package: str
    short: str
    version: str | None
    digest: str | None
    facts: dict[str, FactType]
    functions: dict[str, Function]
    rules: list[Rule]
    rules_by_name: dict[str, Rule]
    # Which (rule, element) read facts of each type: the matcher's routing table.
    by_type: dict[str, list[tuple[Rule, Element]]]
    # The matcher's network layout and generated code, built once per loaded version.
    match_code: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    def fact_defaults(self, fact_type: str) -> Mapping[str, Any]:
        ft = self.facts.get(fact_type)
        return ft.defaults if ft is not None else {}

    def make_fact(self, fact_type: str, fields: Any) -> dict[str, Any]:
        """Fields of a fact from outside (start, add facts), defaults filled, checked against the
        declaration; raises InputError saying what is wrong."""
        ft = self.facts.get(fact_type)
        if ft is None:
            known = ", ".join(sorted(self.facts)) or "none"
            raise InputError(f"{self.name} has no fact type '{fact_type}' (known: {known})")
        if not isinstance(fields, dict):
            raise InputError(f"the fields of a {fact_type} must be an object")
        for name, value in fields.items():
            declared = ft.fields.get(name)
            if declared is None:
                raise InputError(
                    f"{fact_type} has no field '{name}' (fields: {', '.join(ft.fields) or 'none'})"
                )
            if not _fits(value, declared, self.facts):
                raise InputError(
                    f"{fact_type}.{name} is {declared}, not {_json_type(value)}: {_short(value)}"
                )
        missing = sorted(ft.required - fields.keys())
        if missing:
            raise InputError(f"{fact_type} needs field(s) {', '.join(missing)}")
        merged = {**ft.defaults, **fields}
        return {name: merged[name] for name in ft.fields if name in merged}


_JSON_TYPES = {bool: "boolean", int: "int", float: "double", str: "String", list: "List", dict: "Map"}


def _json_type(value: Any) -> str:
    return "null" if value is None else _JSON_TYPES.get(type(value), type(value).__name__)


def _short(value: Any) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= 60 else text[:57] + "..."


def _fits(value: Any, declared: str, facts: Mapping[str, FactType]) -> bool:
    """Whether a JSON value fits a declared field type (null fits every type, as in Groovy)."""
    if value is None or declared == "def":
        return True
    if declared == "String":
        return isinstance(value, str)
    if declared in ("int", "long"):
        return isinstance(value, int) and not isinstance(value, bool) and -(2**63) <= value < 2**63
    if declared == "double":
        return is_number(value)
    if declared == "boolean":
        return isinstance(value, bool)
    if declared == "List":
        return isinstance(value, list)
    if declared == "Map":
        return isinstance(value, dict)
    nested = facts.get(declared)  # a fact type: a map of that type's fields
    return isinstance(value, dict) and nested is not None and all(
        k in nested.fields and _fits(v, nested.fields[k], facts) for k, v in value.items()
    )


@dataclass
class Program:
    """Every workflow of one bundle version, compiled."""

    package: str
    version: str | None
    digest: str | None
    workflows: dict[str, Workflow] = field(default_factory=dict)

    @classmethod
    def from_ir(cls, doc: Mapping[str, Any], *, version: str | None = None,
                digest: str | None = None, validated: bool = False) -> Program:
        if not validated:
            irmod.validate(doc)
        digest = digest or irmod.digest(doc)
        program = cls(doc["package"], version, digest)
        for wf in doc["workflows"]:
            compiled = _workflow(doc["package"], wf, version, digest)
            program.workflows[compiled.name] = compiled
        return program

    @classmethod
    def from_bundle(cls, bundle: Any) -> Program:
        """From a verified `bundle.Bundle` (its IR was validated on load)."""
        return cls.from_ir(bundle.ir, version=bundle.manifest.get("version"),
                           digest=bundle.digest, validated=True)

    def workflow(self, name: str) -> Workflow:
        """A workflow by full name (`package.Name`) or by its short name."""
        found = self.workflows.get(name) or self.workflows.get(f"{self.package}.{name}")
        if found is None:
            known = ", ".join(sorted(self.workflows)) or "none"
            raise EngineError(f"no workflow '{name}' in bundle {self.package} (workflows: {known})")
        return found


def _workflow(package: str, wf: Mapping[str, Any], version: str | None, digest: str | None) -> Workflow:
    defaults = fact_defaults(wf)
    facts = {
        f["name"]: FactType(
            f["name"],
            {fd["name"]: fd["type"] for fd in f["fields"]},
            frozenset(fd["name"] for fd in f["fields"] if fd["required"]),
            defaults.get(f["name"], {}),
        )
        for f in wf["facts"]
    }
    functions = {
        fn["name"]: Function(
            fn["name"], fn["returns"], tuple((p["name"], p["type"]) for p in fn["params"]),
            dict(fn["options"]),
        )
        for fn in wf["functions"]
    }
    rules = [_rule(r) for r in wf["rules"]]
    by_type: dict[str, list[tuple[Rule, Element]]] = {}
    for rule in rules:
        if not rule.enabled:
            continue
        for el in rule.elements:
            if el.type is not None:
                by_type.setdefault(el.type, []).append((rule, el))
    return Workflow(
        name=f"{package}.{wf['name']}", package=package, short=wf["name"], version=version,
        digest=digest, facts=facts, functions=functions, rules=rules,
        rules_by_name={r.name: r for r in rules}, by_type=by_type,
    )


def _rule(r: Mapping[str, Any]) -> Rule:
    bindings = {p["binding"] for p in r["match"] if p.get("binding")}
    elements = [_element(i, p, bindings) for i, p in enumerate(r["match"])]
    rule = Rule(
        name=r["name"], index=r["index"], salience=r["salience"], enabled=r["enabled"],
        file=r["file"], at=r["at"], elements=elements,
        action=compile_section(r["action"]),
        reaction=compile_section(r["reaction"]) if r["reaction"] is not None else None,
        error=compile_section(r["error"]) if r["error"] is not None else None,
        priority=r.get("priority", 0),
    )
    rule.positives = [e.pos for e in elements if e.positive]
    rule.collects = [e.pos for e in elements if e.kind == "collect"]
    positive_bindings = {elements[i].binding for i in rule.positives if elements[i].binding}
    for el in elements:
        el.joins = [
            Join(j.field, j.fn, j.deps, j.ref if j.ref and j.ref[0] in positive_bindings else None)
            for j in el.joins
        ]
    return rule


def _element(pos: int, p: Mapping[str, Any], bindings: set[str]) -> Element:
    if p["kind"] == "guard":
        return Element(pos, "guard", None, None, p["at"],
                       guard=Test(compile_expr(p["expr"]), _deps(p["expr"], bindings)))
    return Element(
        pos, p["kind"], p["type"], p.get("binding"), p["at"],
        alpha=[compile_expr(a) for a in p["alpha"]],
        alpha_key=p["type"] + json.dumps(_strip_at(p["alpha"]), sort_keys=True),
        alpha_eq=_field_equals_constant(p["alpha"]),
        joins=[Join(j["field"], compile_expr(j["expr"]), _deps(j["expr"], bindings), _ref(j["expr"]))
               for j in p["joins"]],
        beta=[Test(compile_expr(b), _deps(b, bindings)) for b in p["beta"]],
    )


def _field_equals_constant(alpha: list[Any]) -> tuple[str, Any] | None:
    if len(alpha) != 1:
        return None
    test = alpha[0]
    if test["op"] != "binary" or test["operator"] != "==":
        return None
    for a, b in ((test["left"], test["right"]), (test["right"], test["left"])):
        if a["op"] == "field" and b["op"] == "lit":
            return (a["name"], b["value"])
    return None


def _deps(node: Any, bindings: Iterable[str]) -> frozenset[str]:
    """The rule bindings an expression reads (a closure parameter of the same name counts too:
    over-approximating only makes the matcher test later)."""
    names = set(bindings)
    return frozenset(n["name"] for n in irmod.walk(node) if n.get("op") == "var" and n["name"] in names)


def _ref(expr: Mapping[str, Any]) -> tuple[str, str] | None:
    if (expr.get("op") == "attr" and not expr["safe"] and not expr["spread"]
            and expr["obj"].get("op") == "var"):
        return (expr["obj"]["name"], expr["name"])
    return None


def _strip_at(node: Any) -> Any:
    """The IR without source positions: two patterns with the same tests share an alpha memory."""
    if isinstance(node, dict):
        return {k: _strip_at(v) for k, v in node.items() if k != "at"}
    if isinstance(node, list):
        return [_strip_at(v) for v in node]
    return node
