"""The Emirax checker: names, structure and types of a parsed project, before anything runs.

    check(modules) -> list[Diagnostic]      the warnings; raises CheckError holding every error
                                            (and the warnings, as its `warnings` attribute)

It walks the AST of every module of one project (one bundle) and collects every mistake it can be
sure of, each at the span of the offending node, with a hint where one helps ("did you mean
'index'?"). It never stops at the first error: a rule with an unknown fact type still has its
other rules, sections and expressions checked. What it checks (SPEC section 2):

- declarations: one package per project; no duplicate workflows, facts, functions, rules, fields
  or parameters; declared types exist; fact defaults are literals of the field's type; function
  and rule options are known, literal and of the right type (durations like '30s');
- rules: `match` and `action` present, sections in order and at most once, a non-empty name;
- patterns: known fact types and fields, bindings bound before use and never twice, a binding
  never shadowing a field its pattern uses, `not`/`exists` without binding, `collect` with one;
- code: every name bound (match, `def`, closure and `for` parameters, the section parameter,
  `it`); assignment only to `def` locals; `insert`/`modify`/`retract` on known facts and fields
  with values of the right type; known functions and methods with the right arity; declared
  functions and `start` only in `action`, their results (placeholders, see emirax.types) never
  used as operands, conditions or arguments; a `reaction` reading a value the action cannot give;
- types where known (emirax.types): mismatches that surely fail are errors; legal but suspicious
  code (`'a' == 1`, an int used as a condition) is a warning.

Unknown things are typed `def` and never reported twice: one mistake gives one diagnostic.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field, fields, is_dataclass

from emirax import nodes
from emirax import types as T
from emirax.errors import CheckError, Diagnostic
from emirax.source import Span
from emirax.types import Ty

# ── tables ─────────────────────────────────────────────────────────────────────────────────────

# Result of a method, by code: a type, or how it follows from the receiver and the closure:
# "recv" the receiver's type, "elem" one element, "elems" a list of the receiver's elements,
# "mapped" a list of the closure's results, "strings" a list of strings.
_R = str | Ty
METHOD_SIGNATURES: dict[str, tuple[int, int, _R]] = {
    "size": (0, 0, T.INT), "length": (0, 0, T.INT), "isEmpty": (0, 0, T.BOOLEAN),
    "contains": (1, 1, T.BOOLEAN), "containsKey": (1, 1, T.BOOLEAN), "get": (1, 2, T.DEF),
    "keySet": (0, 0, "strings"), "values": (0, 0, T.LIST),
    "each": (1, 1, "recv"), "eachWithIndex": (1, 1, "recv"), "collect": (0, 1, "mapped"),
    "collectEntries": (1, 1, T.MAP), "findAll": (0, 1, "elems"), "find": (0, 1, "elem"),
    "any": (0, 1, T.BOOLEAN), "every": (0, 1, T.BOOLEAN), "count": (1, 1, T.INT),
    "inject": (1, 2, T.DEF), "groupBy": (1, 1, T.MAP), "withIndex": (0, 0, T.LIST),
    "sum": (0, 1, T.DEF), "max": (0, 1, "elem"), "min": (0, 1, "elem"), "sort": (0, 1, "elems"),
    "unique": (0, 1, "elems"), "reverse": (0, 0, "recv"), "first": (0, 0, "elem"),
    "last": (0, 0, "elem"), "take": (1, 1, "recv"), "drop": (1, 1, "recv"),
    "flatten": (0, 0, T.LIST), "join": (0, 1, T.STRING), "plus": (1, 1, T.DEF),
    "minus": (1, 1, T.DEF), "intdiv": (1, 1, T.INT), "abs": (0, 0, "recv"), "round": (0, 1, T.DEF),
    "toInteger": (0, 0, T.INT), "toDouble": (0, 0, T.DOUBLE), "toString": (0, 0, T.STRING),
    "fields": (0, 0, T.MAP),
    "toUpperCase": (0, 0, T.STRING), "toLowerCase": (0, 0, T.STRING), "trim": (0, 0, T.STRING),
    "startsWith": (1, 1, T.BOOLEAN), "endsWith": (1, 1, T.BOOLEAN), "indexOf": (1, 1, T.INT),
    "replace": (2, 2, T.STRING), "split": (0, 1, "strings"), "substring": (1, 2, T.STRING),
    "capitalize": (0, 0, T.STRING), "padLeft": (1, 2, T.STRING), "padRight": (1, 2, T.STRING),
    "isNumber": (0, 0, T.BOOLEAN), "isInteger": (0, 0, T.BOOLEAN),
}
# Methods whose closure takes (element, index) or (accumulator, element) instead of elements.
_INDEXED = frozenset(("eachWithIndex",))
_COMPARATORS = frozenset(("sort", "min", "max"))

FUNCTION_OPTIONS = ("timeout", "retries", "backoff", "priority", "queue", "cache")
RULE_OPTIONS = ("salience", "enabled", "priority")
DURATION = re.compile(r"^[0-9]+(ms|s|m|h)$")

# Symbol kinds.
BINDING, COLLECT, LOCAL, PARAM, LOOP, FIELD, SECTION = (
    "binding", "collect", "local", "parameter", "loop variable", "field", "section parameter",
)


def _known_methods() -> tuple[frozenset[str], dict[str, tuple[int, int]]]:
    """The method names rule code may call: the IR's list (the one the engine implements) when
    emirax.ir provides it, else this module's table. Arity comes from the IR when it gives one."""
    try:
        from emirax.ir import METHODS  # type: ignore[attr-defined]
    except ImportError:
        return frozenset(METHOD_SIGNATURES), {}
    arity: dict[str, tuple[int, int]] = {}
    if isinstance(METHODS, Mapping):
        for name, value in METHODS.items():
            if (
                isinstance(value, tuple) and len(value) == 2
                and all(isinstance(v, int) for v in value)
            ):
                arity[name] = value
    return frozenset(METHODS), arity


# ── project model ──────────────────────────────────────────────────────────────────────────────


@dataclass(slots=True)
class FieldInfo:
    ty: Ty
    required: bool


@dataclass(slots=True)
class FunctionInfo:
    decl: nodes.FunctionDecl
    params: list[Ty]
    returns: Ty


@dataclass(slots=True)
class WorkflowInfo:
    decl: nodes.Workflow
    facts: dict[str, dict[str, FieldInfo]] = field(default_factory=dict)
    functions: dict[str, FunctionInfo] = field(default_factory=dict)


class Sym:
    """A name in scope: what binds it, its static type, where, and (for the reaction's
    parameter) whether a read has been reported already."""

    __slots__ = ("name", "kind", "ty", "span", "flag")

    def __init__(self, name: str, kind: str, ty: Ty, span: Span) -> None:
        self.name = name
        self.kind = kind
        self.ty = ty
        self.span = span
        self.flag = False


class Frame:
    """The code being checked: a section or a closure (what `return` leaves)."""

    __slots__ = ("kind", "in_action", "returns")

    def __init__(self, kind: str, in_action: bool) -> None:
        self.kind = kind
        self.in_action = in_action
        self.returns: list[Ty] = []


@dataclass(slots=True)
class PatternCtx:
    """The pattern whose constraints are being checked (bare names are its fields)."""

    pattern: nodes.Pattern
    fields: dict[str, FieldInfo] | None  # None: unknown fact type, so no field is reported


# ── entry point ────────────────────────────────────────────────────────────────────────────────


def check(modules: list[nodes.Module]) -> list[Diagnostic]:
    """Check the modules of one project; return the warnings, raise CheckError with all errors."""
    checker = Checker()
    checker.check_project(modules)
    errors = [d for d in checker.diagnostics if d.severity == "error"]
    warnings = sorted(
        (d for d in checker.diagnostics if d.severity != "error"), key=Diagnostic.sort_key
    )
    if errors:
        exc = CheckError(errors)
        exc.warnings = warnings
        raise exc
    return warnings


def did_you_mean(name: str, candidates: Iterable[str]) -> str | None:
    """'did you mean 'x'?' for the closest candidate (a different case counts as closest)."""
    pool = [c for c in candidates if c != name]
    lower = name.lower()
    for c in pool:
        if c.lower() == lower:
            return f"did you mean '{c}'?"
    close = difflib.get_close_matches(name, pool, n=1, cutoff=0.6)
    return f"did you mean '{close[0]}'?" if close else None


def _name_span(span: Span, name: str) -> Span:
    """The span of a name written at the start of `span` (a binding before its pattern)."""
    return Span(span.file, span.line, span.column, span.line, span.column + len(name))


def _where(span: Span) -> str:
    return f"line {span.line}" if span.line else "elsewhere"


def _a(ty: Ty | str) -> str:
    text = str(ty)
    return ("an " if text[:1].lower() in "aeiou" else "a ") + text


# ── the checker ────────────────────────────────────────────────────────────────────────────────


class Checker:
    """One run over one project. Diagnostics accumulate in `diagnostics`."""

    def __init__(self) -> None:
        self.diagnostics: list[Diagnostic] = []
        self._seen: set[tuple[Span, str]] = set()
        self.methods, self.method_arity = _known_methods()
        self.package = ""
        self.workflows: dict[str, WorkflowInfo] = {}
        # The state of the walk.
        self.wf: WorkflowInfo | None = None
        self.scopes: list[dict[str, Sym]] = []
        self.frames: list[Frame] = []
        self.pattern: PatternCtx | None = None
        self.rule_bindings: dict[str, Span] = {}
        self.section_body: nodes.Block | None = None
        self.action_calls = False
        self.reaction_value = True
        self._expr: dict[type, Callable[[nodes.Expr], Ty]] = {
            nodes.Literal: self.e_literal, nodes.Interp: self.e_interp, nodes.Name: self.e_name,
            nodes.ListLit: self.e_list, nodes.MapLit: self.e_map, nodes.Attr: self.e_attr,
            nodes.Index: self.e_index, nodes.Call: self.e_call, nodes.MethodCall: self.e_method,
            nodes.Closure: self.e_closure, nodes.Unary: self.e_unary, nodes.Binary: self.e_binary,
            nodes.Ternary: self.e_ternary, nodes.Elvis: self.e_elvis, nodes.Range: self.e_range,
            nodes.FactCtor: self.e_fact, nodes.Start: self.e_start,
        }
        self._stmt: dict[type, Callable[[nodes.Stmt], Ty | None]] = {
            nodes.ExprStmt: self.s_expr, nodes.Def: self.s_def, nodes.Assign: self.s_assign,
            nodes.If: self.s_if, nodes.For: self.s_for, nodes.Return: self.s_return,
            nodes.Insert: self.s_insert, nodes.Modify: self.s_modify,
            nodes.Retract: self.s_retract, nodes.Complete: self.s_complete,
            nodes.Fail: self.s_fail, nodes.Log: self.s_log,
        }

    # reporting

    def error(self, span: Span, message: str, hint: str | None = None) -> None:
        self._report(Diagnostic(span, message, "error", hint))

    def warn(self, span: Span, message: str, hint: str | None = None) -> None:
        self._report(Diagnostic(span, message, "warning", hint))

    def _report(self, d: Diagnostic) -> None:
        key = (d.span, d.message)
        if key not in self._seen:
            self._seen.add(key)
            self.diagnostics.append(d)

    # ── project and declarations ──────────────────────────────────────────────────────────────

    def check_project(self, modules: list[nodes.Module]) -> None:
        if not modules:
            return
        first = modules[0]
        self.package = first.package
        for module in modules[1:]:
            if module.package != first.package:
                self.error(
                    module.package_span,
                    f"package '{module.package}' differs from package '{first.package}' of "
                    f"{first.file}: all files of a project name the same package",
                )
        declared: dict[str, nodes.Workflow] = {}
        for module in modules:
            for wf in module.workflows:
                other = declared.get(wf.name)
                if other is not None:
                    self.error(
                        wf.span,
                        f"workflow '{wf.name}' is declared twice (first at {other.span})",
                    )
                    continue
                declared[wf.name] = wf
                self.workflows[wf.name] = self.declare_workflow(wf)
        for module in modules:
            for wf in module.workflows:
                info = self.workflows.get(wf.name)
                # A duplicate workflow is checked against its own declarations all the same.
                self.wf = info if info is not None and info.decl is wf else self.declare_workflow(wf)
                for rule in self._unique_rules(wf):
                    self.check_rule(rule)
        self.wf = None
        if not declared:
            self.error(
                first.package_span if first.package_span.line else Span(first.file, 1, 1),
                "the project declares no workflow: a bundle needs at least one",
                "add one: workflow Name { fact ...  rule '...' { ... } }",
            )

    def declare_workflow(self, wf: nodes.Workflow) -> WorkflowInfo:
        info = WorkflowInfo(wf)
        fact_names = {f.name for f in wf.facts}
        for decl in wf.facts:
            if decl.name in T.DECLARABLE:
                self.error(decl.span, f"fact '{decl.name}' has the name of a built-in type")
            if decl.name in info.facts:
                first = next(f for f in wf.facts if f.name == decl.name)
                self.error(decl.span, f"fact '{decl.name}' is declared twice (first at {first.span})")
                continue
            info.facts[decl.name] = self.declare_fact(decl, fact_names)
        for fn in wf.functions:
            if fn.name in info.functions:
                first = info.functions[fn.name].decl
                self.error(fn.span, f"function '{fn.name}' is declared twice (first at {first.span})")
                continue
            info.functions[fn.name] = self.declare_function(fn, fact_names)
        return info

    def declared_type(self, ref: nodes.TypeRef, fact_names: set[str]) -> Ty:
        ty = T.declared(ref.name, fact_names)
        if ty is not None:
            return ty
        hint = did_you_mean(ref.name, [*T.DECLARABLE, *sorted(fact_names)])
        if ref.name == "void":
            hint = "use def for a result that does not matter"
        self.error(
            ref.span,
            f"unknown type '{ref.name}': a type is String, int, long, double, boolean, List, "
            "Map, def or a fact of this workflow",
            hint,
        )
        return T.DEF

    def declare_fact(self, decl: nodes.FactDecl, fact_names: set[str]) -> dict[str, FieldInfo]:
        out: dict[str, FieldInfo] = {}
        for fd in decl.fields:
            ty = self.declared_type(fd.type, fact_names)
            if fd.name in out:
                self.error(fd.span, f"fact '{decl.name}' has two fields named '{fd.name}'")
                continue
            if fd.default is not None:
                self.check_default(decl.name, fd, ty)
            out[fd.name] = FieldInfo(ty, fd.default is None)
        return out

    def check_default(self, fact: str, fd: nodes.FieldDecl, ty: Ty) -> None:
        value = _literal_type(fd.default)
        if value is None:
            self.error(
                fd.default.span,
                f"the default of '{fact}.{fd.name}' must be a literal (a number, a string, "
                "true, false, null, or a list or map of literals)",
            )
        elif not T.assignable(value, ty):
            self.error(
                fd.default.span,
                f"the default of '{fact}.{fd.name}' must be {_a(ty)}, not {_a(value)}",
            )

    def declare_function(self, fn: nodes.FunctionDecl, fact_names: set[str]) -> FunctionInfo:
        returns = self.declared_type(fn.returns, fact_names)
        params: list[Ty] = []
        seen: set[str] = set()
        for p in fn.params:
            params.append(self.declared_type(p.type, fact_names))
            if p.name in seen:
                self.error(p.span, f"function '{fn.name}' has two parameters named '{p.name}'")
            seen.add(p.name)
        if fn.options is not None:
            self.check_options(fn.options, FUNCTION_OPTIONS, self._function_option, "a function")
        return FunctionInfo(fn, params, returns)

    def check_options(
        self,
        options: nodes.MapLit,
        known: tuple[str, ...],
        check_value: Callable[[str, nodes.Literal], str | None],
        what: str,
    ) -> None:
        seen: set[str] = set()
        for entry in options.entries:
            key = entry.key
            if not isinstance(key, str):
                self.error(entry.span, "an option name is a plain name, such as timeout: '30s'")
                continue
            if key not in known:
                hint = did_you_mean(key, known) or "options of " + what + ": " + ", ".join(known)
                self.error(entry.span, f"unknown option '{key}' for {what}", hint)
                continue
            if key in seen:
                self.error(entry.span, f"option '{key}' is given twice")
            seen.add(key)
            value = entry.value
            if not isinstance(value, nodes.Literal):
                self.error(value.span, f"option '{key}' takes a literal value")
                continue
            problem = check_value(key, value)
            if problem:
                self.error(value.span, f"option '{key}' {problem}")

    @staticmethod
    def _function_option(key: str, lit: nodes.Literal) -> str | None:
        v = lit.value
        is_int = type(v) is int
        if key == "timeout":
            if not (isinstance(v, str) and DURATION.match(v)) or int(re.sub(r"\D", "", v)) == 0:
                return "must be a duration such as '30s', '5m', '2h' or '100ms'"
        elif key == "backoff":
            if not (isinstance(v, str) and (v == "exponential" or DURATION.match(v))):
                return "must be a duration such as '30s' or 'exponential'"
        elif key == "retries":
            if not is_int or v < 0:
                return "must be a whole number of retries (0 or more)"
        elif key == "priority":
            if not is_int:
                return "must be an int"
        elif key == "queue":
            if not (isinstance(v, str) and v):
                return "must be a queue name (a non-empty string)"
        elif key == "cache":
            if not (type(v) is bool or (isinstance(v, str) and DURATION.match(v))):
                return "must be true, false or a duration such as '10m'"
        return None

    @staticmethod
    def _rule_option(key: str, lit: nodes.Literal) -> str | None:
        v = lit.value
        if key in ("salience", "priority") and type(v) is not int:
            return "must be an int"
        if key == "enabled" and type(v) is not bool:
            return "must be true or false"
        return None

    def _unique_rules(self, wf: nodes.Workflow) -> Iterator[nodes.Rule]:
        seen: dict[str, nodes.Rule] = {}
        for rule in wf.rules:
            first = seen.get(rule.name)
            if first is not None:
                self.error(
                    rule.span,
                    f"rule '{rule.name}' is declared twice in workflow '{wf.name}' "
                    f"(first at {first.span})",
                    "rule names identify activations: give each rule its own name",
                )
            else:
                seen[rule.name] = rule
            yield rule

    # ── rules ─────────────────────────────────────────────────────────────────────────────────

    def check_rule(self, rule: nodes.Rule) -> None:
        if not rule.name.strip():
            self.error(rule.span, "a rule needs a name: rule 'what it does' { ... }")
        if rule.options is not None:
            self.check_options(rule.options, RULE_OPTIONS, self._rule_option, "a rule")
        self.check_sections(rule)
        self.section_body = None
        self.rule_bindings = {
            item.binding: item.span
            for item in rule.match
            if isinstance(item, nodes.Pattern) and item.binding
        }
        bound: dict[str, Sym] = {}
        self.frames = [Frame("match", False)]
        self.check_match(rule, bound)
        # Code sections see every binding; a collect binding is the list of its facts.
        gives_value, value_ty = True, T.DEF
        if rule.action is not None:
            gives_value, value_ty = self.check_action(rule.action, bound)
        if rule.reaction is not None:
            self.check_reaction(rule.reaction, bound, gives_value, value_ty)
        if rule.error is not None:
            self.check_error_section(rule.error, bound)
        self.frames = []
        self.scopes = []

    def check_sections(self, rule: nodes.Rule) -> None:
        order = ("match", "action", "reaction", "error")
        seen: dict[str, Span] = {}
        entries = rule.section_order
        if not entries:  # a tree built without the parser: the sections it holds, in order
            entries = [(n, rule.span) for n in order if (rule.match if n == "match" else getattr(rule, n))]
        latest = -1
        for name, span in entries:
            if name in seen:
                self.error(
                    span,
                    f"rule '{rule.name}' has a second '{name}' section "
                    f"(the first is at {_where(seen[name])})",
                    "each section appears at most once",
                )
                continue
            seen[name] = span
            rank = order.index(name) if name in order else latest
            if rank < latest:
                after = next(n for n in order[rank + 1 :] if n in seen)
                self.error(
                    span,
                    f"section '{name}' must come before '{after}'",
                    "sections come in the order match, action, reaction, error",
                )
            latest = max(latest, rank)
        for required in ("match", "action"):
            if required not in seen:
                self.error(
                    rule.span,
                    f"rule '{rule.name}' has no '{required}' section",
                    "every rule has a 'match' and an 'action' section",
                )

    # ── match ─────────────────────────────────────────────────────────────────────────────────

    def check_match(self, rule: nodes.Rule, bound: dict[str, Sym]) -> None:
        assert self.wf is not None
        self.scopes = [bound]
        for item in rule.match:
            if isinstance(item, nodes.Guard):
                self.condition(item.expr, "a 'when' guard")
                continue
            self.check_pattern(item, bound)
        self.pattern = None

    def check_pattern(self, p: nodes.Pattern, bound: dict[str, Sym]) -> None:
        assert self.wf is not None
        facts = self.wf.facts
        fields_ = facts.get(p.type)
        if fields_ is None:
            self.error(
                p.span, f"unknown fact type '{p.type}'", did_you_mean(p.type, facts)
            )
        if p.binding and p.kind in ("not", "exists"):
            self.error(
                p.span,
                f"a '{p.kind}' pattern matches no fact, so it cannot bind a name",
                f"write '{p.kind} {p.type}(...)' without '{p.binding}:'",
            )
        if not p.binding and p.kind == "collect":
            self.error(
                p.span,
                "'collect' gives a list that needs a name",
                f"write 'name: collect {p.type}(...)'",
            )
        self.pattern = PatternCtx(p, fields_)
        field_scope = {
            name: Sym(name, FIELD, info.ty, p.span) for name, info in (fields_ or {}).items()
        }
        self.scopes = [bound, field_scope]
        for constraint in p.constraints:
            self.condition(constraint, "a pattern constraint")
        self.scopes = [bound]
        self.pattern = None
        if not p.binding or p.kind in ("not", "exists"):
            return
        span = _name_span(p.span, p.binding)
        if p.binding in bound:
            self.error(
                span,
                f"'{p.binding}' is bound twice in this match (first at {_where(bound[p.binding].span)})",
                "give each pattern its own binding name",
            )
            return
        ty = T.fact(p.type) if fields_ is not None else T.DEF
        if p.kind == "collect":
            bound[p.binding] = Sym(p.binding, COLLECT, T.list_of(ty), span)
        else:
            bound[p.binding] = Sym(p.binding, BINDING, ty, span)

    # ── sections ──────────────────────────────────────────────────────────────────────────────

    def _enter_section(self, section: nodes.Section, bound: dict[str, Sym], params: dict[str, Sym]) -> None:
        self.scopes = [bound, params, {}]
        self.frames = [Frame(section.name, section.name == "action")]
        self.section_body = section.body

    def check_action(self, section: nodes.Section, bound: dict[str, Sym]) -> tuple[bool, Ty]:
        if section.params:
            self.error(
                section.span,
                "'action' takes no parameter",
                "the action's value goes to the reaction: reaction { value -> ... }",
            )
        self._enter_section(section, bound, {})
        self.action_calls = False
        last = self.block_stmts(section.body.stmts)
        frame = self.frames[0]
        values = [t for t in frame.returns if t is not T.NULL]
        stmts = section.body.stmts
        if last is not None and not (
            isinstance(stmts[-1], nodes.ExprStmt)
            and isinstance(stmts[-1].expr, nodes.Literal)
            and stmts[-1].expr.value is None
        ):
            values.append(last)
        ty = values[0] if values else T.DEF
        for t in values[1:]:
            ty = T.join(ty, t)
        # The reaction receives the value with every placeholder replaced by its result.
        return self.action_calls or bool(values), T.resolved(ty)

    def _section_param(self, section: nodes.Section, ty: Ty) -> dict[str, Sym]:
        if len(section.params) > 1:
            self.error(
                section.span,
                f"'{section.name}' takes one parameter, not {len(section.params)} "
                f"({', '.join(section.params)})",
                f"write {section.name} {{ {section.params[0]} -> ... }}",
            )
        name = section.params[0] if section.params else "it"
        return {name: Sym(name, SECTION, ty, section.span)}

    def check_reaction(
        self, section: nodes.Section, bound: dict[str, Sym], gives: bool, value: Ty
    ) -> None:
        params = self._section_param(section, value if gives else T.NULL)
        self._enter_section(section, bound, params)
        self.reaction_value = gives
        self.block_stmts(section.body.stmts)
        self.reaction_value = True

    def check_error_section(self, section: nodes.Section, bound: dict[str, Sym]) -> None:
        params = self._section_param(section, T.ERROR)
        self._enter_section(section, bound, params)
        self.block_stmts(section.body.stmts)

    # ── statements ────────────────────────────────────────────────────────────────────────────

    def block(self, block: nodes.Block) -> Ty | None:
        self.scopes.append({})
        try:
            return self.block_stmts(block.stmts)
        finally:
            self.scopes.pop()

    def block_stmts(self, stmts: list[nodes.Stmt]) -> Ty | None:
        """Check statements in the innermost scope; the type of the last one when it is an
        expression (the value of a section or closure), else None."""
        last: Ty | None = None
        dispatch = self._stmt
        for stmt in stmts:
            last = dispatch[type(stmt)](stmt)
        return last

    def s_expr(self, s: nodes.ExprStmt) -> Ty:
        return self.expr(s.expr)

    def s_def(self, s: nodes.Def) -> None:
        ty = self.expr(s.value) if s.value is not None else T.NULL
        scope = self.scopes[-1]
        previous = scope.get(s.name)
        if previous is not None:
            self.error(
                s.span,
                f"'{s.name}' is already defined in this block (at {_where(previous.span)})",
                f"assign it without 'def': {s.name} = ...",
            )
        else:
            outer = self.lookup(s.name)
            if outer is not None and outer.kind in (BINDING, COLLECT):
                self.error(
                    s.span,
                    f"'def {s.name}' hides the match binding '{s.name}'",
                    "give the local another name",
                )
        scope[s.name] = Sym(s.name, LOCAL, ty, s.span)

    def s_assign(self, s: nodes.Assign) -> None:
        target = s.target
        if isinstance(target, nodes.Name):
            value = self.expr(s.value)
            sym = self.lookup(target.id)
            if sym is None:
                self.unknown_name(target, assigning=True)
                return
            if sym.kind != LOCAL:
                hint = (
                    f"change a fact with modify {target.id} {{ field = value }}"
                    if sym.kind in (BINDING, COLLECT)
                    else f"declare a local first: def {target.id}2 = {target.id}"
                )
                self.error(
                    target.span,
                    f"cannot assign to {sym.kind} '{target.id}': only names declared with "
                    "'def' can be assigned",
                    hint,
                )
                return
            if s.op != "=":
                if T.is_pending(sym.ty):
                    self.pending_error(target, f"as an operand of '{s.op}'")
                    return
                value = self.arith(s.op[0], sym.ty, value, s.value, s.span)
            sym.ty = value if sym.ty is T.NULL else T.join(sym.ty, value)
            return
        if isinstance(target, nodes.Attr):
            obj = self.operand(target.obj, "as an assignment target")
            if obj.kind == T.FACT_K or obj.kind == T.ERROR_K:
                name = target.obj.id if isinstance(target.obj, nodes.Name) else "b"
                self.error(
                    target.span,
                    f"facts are read-only: cannot assign to '{target.name}' of {obj}",
                    f"write modify {name} {{ {target.name} = ... }}" if obj.kind == T.FACT_K else None,
                )
            elif obj.kind in (T.STRING_K, *T.NUMERIC, T.BOOLEAN_K):
                self.error(target.span, f"{_a(obj)} has no property '{target.name}' to assign")
        elif isinstance(target, nodes.Index):
            self.operand(target.obj, "as an assignment target")
            self.operand(target.index, "as an index")
        else:
            self.expr(target)
        value = self.expr(s.value)
        if s.op != "=" and T.is_pending(value):
            self.pending_error(s.value, f"as an operand of '{s.op}'")

    def s_if(self, s: nodes.If) -> None:
        self.condition(s.cond, "an 'if' condition")
        self.block(s.then)
        other = s.other
        if isinstance(other, nodes.If):
            self.s_if(other)
        elif other is not None:
            self.block(other)

    def s_for(self, s: nodes.For) -> None:
        it = self.operand(s.iterable, "as what a 'for' loops over")
        k = it.kind
        if k in T.NUMERIC or k in (T.BOOLEAN_K, T.FACT_K, T.CLOSURE_K, T.ERROR_K):
            self.error(
                s.iterable.span,
                f"cannot loop over {_a(it)}: 'for' takes a List, a Map, a String or a range",
                "for a count, loop over a range: for (i in 0..<n)",
            )
        elem = T.MAP if k == T.MAP_K else T.element(it)
        self.scopes.append({s.var: Sym(s.var, LOOP, elem, s.span)})
        try:
            self.block(s.body)
        finally:
            self.scopes.pop()

    def s_return(self, s: nodes.Return) -> None:
        ty = self.expr(s.value) if s.value is not None else T.NULL
        self.frames[-1].returns.append(ty)

    def s_insert(self, s: nodes.Insert) -> None:
        assert self.wf is not None
        self.fact_value(s.fact, self.wf.facts)

    def fact_binding(self, name: str, span: Span, verb: str) -> Sym | None:
        """The fact that `modify`/`retract` names: a match binding, or a local or parameter
        holding one fact (an element of a collect list)."""
        sym = self.lookup(name)
        if sym is None:
            self.error(span, f"unknown binding '{name}'", did_you_mean(name, self.visible_names()))
            return None
        if sym.kind == COLLECT:
            self.error(
                span,
                f"'{name}' is a collect binding (a list of facts): {verb} takes one fact",
                f"{verb} each one: {name}.each {{ {verb} it }}" if verb == "retract" else None,
            )
            return None
        if sym.kind == BINDING or sym.ty.kind in (T.FACT_K, T.DEF_K):
            return sym  # a binding, or a value that is (or may be) one fact
        self.error(
            span,
            f"{verb} takes a fact bound in match, and '{name}' is {_a(sym.kind)}"
            + (f" of type {sym.ty}" if sym.ty is not T.DEF else ""),
        )
        return None

    def s_modify(self, s: nodes.Modify) -> None:
        sym = self.fact_binding(s.binding, s.span, "modify")
        fields_: dict[str, FieldInfo] | None = None
        fact_name = ""
        if sym is not None and sym.ty.kind == T.FACT_K and self.wf is not None:
            fact_name = sym.ty.fact or ""
            fields_ = self.wf.facts.get(fact_name)
        seen: set[str] = set()
        for fa in s.assignments:
            value = self.expr(fa.value)
            if fa.name in seen:
                self.error(fa.span, f"field '{fa.name}' is assigned twice in this modify")
            seen.add(fa.name)
            info = None
            if fields_ is not None:
                info = fields_.get(fa.name)
                if info is None:
                    self.error(
                        fa.span,
                        f"{fact_name} has no field '{fa.name}'",
                        did_you_mean(fa.name, fields_),
                    )
            self.stored(fa.value, value, info.ty if info else T.DEF, f"field '{fa.name}' of {fact_name}")

    def s_retract(self, s: nodes.Retract) -> None:
        self.fact_binding(s.binding, s.span, "retract")

    def s_complete(self, s: nodes.Complete) -> None:
        seen: set[str] = set()
        for fa in s.fields:
            if fa.name in seen:
                self.error(fa.span, f"output key '{fa.name}' is given twice")
            seen.add(fa.name)
            value = self.expr(fa.value)
            self.stored(fa.value, value, T.DEF, f"output '{fa.name}'", where="in 'complete'")

    def s_fail(self, s: nodes.Fail) -> None:
        ty = self.expr(s.reason)
        if T.holds_pending(ty):
            self.pending_error(s.reason, "as the reason of 'fail'")

    def s_log(self, s: nodes.Log) -> None:
        ty = self.expr(s.message)
        if T.holds_pending(ty):
            self.pending_error(s.message, "in 'log'")

    def stored(self, node: nodes.Expr, value: Ty, slot: Ty, what: str, where: str = "as a field value") -> None:
        """`value` is written into a fact field or the output: data only, and of the slot's type."""
        if T.holds_pending(value):
            self.pending_error(node, where)
        elif not T.assignable(value, slot):
            if value.kind == T.CLOSURE_K:
                self.error(node.span, f"{what} cannot hold a closure: facts and outputs are data")
            else:
                self.error(node.span, f"{what} is {_a(slot)}, but this value is {_a(value)}")

    # ── fact values ───────────────────────────────────────────────────────────────────────────

    def fact_value(self, ctor: nodes.FactCtor, facts: dict[str, dict[str, FieldInfo]] | None) -> Ty:
        """Check `T(field: v, ...)` against the fact types `facts` (None: the types are not known,
        as for a workflow of another package)."""
        fields_ = facts.get(ctor.type) if facts is not None else None
        if facts is not None and fields_ is None:
            self.error(ctor.span, f"unknown fact type '{ctor.type}'", did_you_mean(ctor.type, facts))
        seen: set[str] = set()
        for fa in ctor.fields:
            if fa.name in seen:
                self.error(fa.span, f"field '{fa.name}' is given twice")
            seen.add(fa.name)
            info = fields_.get(fa.name) if fields_ is not None else None
            if fields_ is not None and info is None:
                self.error(
                    fa.span, f"{ctor.type} has no field '{fa.name}'", did_you_mean(fa.name, fields_)
                )
            slot = info.ty if info is not None else T.DEF
            if isinstance(fa.value, nodes.FactCtor):
                value = self.fact_value(fa.value, facts)
            else:
                value = self.expr(fa.value)
            self.stored(fa.value, value, slot, f"field '{fa.name}' of {ctor.type}")
        if fields_ is not None:
            missing = [n for n, info in fields_.items() if info.required and n not in seen]
            if missing:
                names = ", ".join(f"'{n}'" for n in missing)
                self.error(
                    ctor.span,
                    f"{ctor.type} needs {'field' if len(missing) == 1 else 'fields'} {names} "
                    "(no default)",
                    f"write {ctor.type}("
                    + ", ".join(
                        f"{n}: ..."
                        for n in [*(f.name for f in ctor.fields if f.name in fields_), *missing]
                    )
                    + ")",
                )
        return T.fact(ctor.type) if fields_ is not None else T.DEF

    # ── names ─────────────────────────────────────────────────────────────────────────────────

    def lookup(self, name: str) -> Sym | None:
        for scope in reversed(self.scopes):
            sym = scope.get(name)
            if sym is not None:
                return sym
        return None

    def visible_names(self) -> list[str]:
        names: set[str] = set()
        for scope in self.scopes:
            names.update(scope)
        return sorted(names)

    def unknown_name(self, node: nodes.Name, assigning: bool = False) -> None:
        name = node.id
        pattern = self.pattern
        if name in self.rule_bindings and self.frames and self.frames[0].kind == "match":
            if pattern is not None and pattern.pattern.binding == name:
                fields_ = sorted(pattern.fields or ())
                self.error(
                    node.span,
                    f"'{name}' is bound by this pattern and cannot be used inside it",
                    "inside T(...) bare names are the fact's fields"
                    + (f": {', '.join(fields_)}" if fields_ else ""),
                )
            else:
                self.error(
                    node.span,
                    f"'{name}' is used before it is bound (at {_where(self.rule_bindings[name])})",
                    "a pattern or 'when' sees only the bindings above it",
                )
            return
        if pattern is not None:
            if pattern.fields is None:
                return  # unknown fact type, already reported: its fields are unknown
            self.error(
                node.span,
                f"unknown field '{name}' of {pattern.pattern.type}",
                did_you_mean(name, [*pattern.fields, *self.scopes[0]]),
            )
            return
        if assigning:
            self.error(
                node.span,
                f"cannot assign to '{name}': it was never declared",
                f"declare it first: def {name} = ...",
            )
            return
        if name == "it":
            self.error(
                node.span,
                "'it' is not defined here",
                "'it' is the parameter of a closure without parameters, or of a reaction or "
                "error section without 'x ->'",
            )
            return
        later = self._def_of(name)
        if later is not None:
            if (later.line, later.column) > (node.span.line, node.span.column):
                self.error(
                    node.span,
                    f"'{name}' is used before it is defined (at {_where(later)})",
                )
            else:
                self.error(
                    node.span,
                    f"'{name}' is not visible here: it is defined at {_where(later)} inside "
                    "a block that has ended",
                    f"declare it before that block: def {name}",
                )
            return
        self.error(node.span, f"unknown name '{name}'", did_you_mean(name, self.visible_names()))

    def _def_of(self, name: str) -> Span | None:
        """Where the current section declares `name` with def (only looked up on errors)."""
        if self.section_body is None:
            return None
        for node in _walk(self.section_body):
            if isinstance(node, nodes.Def) and node.name == name:
                return node.span
        return None

    # ── expressions ───────────────────────────────────────────────────────────────────────────

    def expr(self, e: nodes.Expr) -> Ty:
        return self._expr[type(e)](e)

    def pending_error(self, node: nodes.Expr, what: str) -> None:
        if isinstance(node, nodes.Name):
            subject = f"'{node.id}' holds the result of a function call, which"
        elif isinstance(node, nodes.Call):
            subject = f"the result of '{node.name}'"
        elif isinstance(node, nodes.Start):
            subject = "the output of 'start'"
        else:
            subject = "this holds the result of a function call, which"
        self.error(
            node.span,
            f"{subject} cannot be used {what}: in 'action' it is only a placeholder",
            "use the value in 'reaction', which receives the action's value once the calls are done",
        )

    def operand(self, e: nodes.Expr, what: str) -> Ty:
        """The type of `e` where its value is needed now (placeholders are an error)."""
        ty = self.expr(e)
        if ty.kind == T.PENDING_K:
            self.pending_error(e, what)
            return T.DEF
        return ty

    def condition(self, e: nodes.Expr, what: str) -> Ty:
        ty = self.operand(e, "as a condition")
        k = ty.kind
        if k == T.CLOSURE_K:
            self.error(e.span, f"{what} is a closure, which is always true", "did you mean to call a method with it?")
        elif k in T.NUMERIC:
            self.warn(
                e.span,
                f"{what} is {_a(ty)}, not a boolean: it is true when not 0",
                "compare explicitly, e.g. x != 0",
            )
        elif k in (T.FACT_K, T.ERROR_K):
            self.warn(e.span, f"{what} is {_a(ty)}, which is always true")
        elif k == T.NULL_K:
            self.warn(e.span, f"{what} is null, which is always false")
        return ty

    def e_literal(self, e: nodes.Literal) -> Ty:
        v = e.value
        if v is None:
            return T.NULL
        t = type(v)
        if t is bool:
            return T.BOOLEAN
        if t is int:
            return T.INT
        if t is float:
            return T.DOUBLE
        return T.STRING

    def e_interp(self, e: nodes.Interp) -> Ty:
        for part in e.parts:
            if not isinstance(part, str):
                ty = self.expr(part)
                if T.holds_pending(ty):
                    self.pending_error(part, "in a string")
        return T.STRING

    def e_name(self, e: nodes.Name) -> Ty:
        name = e.id
        for scope in reversed(self.scopes):
            sym = scope.get(name)
            if sym is not None:
                break
        else:
            self.unknown_name(e)
            return T.DEF
        kind = sym.kind
        if kind == FIELD:
            shadow = self.scopes[0].get(name)
            if shadow is not None and self.pattern is not None:
                p = self.pattern.pattern
                self.error(
                    shadow.span,
                    f"binding '{name}' has the name of a field of {p.type}, which the pattern "
                    f"at {_where(p.span)} uses",
                    f"rename the binding: inside {p.type}(...) '{name}' is the field",
                )
                return T.DEF
        elif kind == SECTION and not self.reaction_value and not sym.flag:
            sym.flag = True
            self.error(
                e.span,
                f"reaction reads '{name}' but the action gives no value",
                "the action calls no function and its last statement is not an expression, so "
                f"'{name}' is always null",
            )
        return sym.ty

    def e_list(self, e: nodes.ListLit) -> Ty:
        elem: Ty | None = None
        for item in e.items:
            ty = self.expr(item)
            elem = ty if elem is None else T.join(elem, ty)
        return T.list_of(elem)

    def e_map(self, e: nodes.MapLit) -> Ty:
        elem: Ty | None = None
        for entry in e.entries:
            if not isinstance(entry.key, str):
                self.operand(entry.key, "as a map key")
            ty = self.expr(entry.value)
            elem = ty if elem is None else T.join(elem, ty)
        return T.map_of(elem)

    def e_attr(self, e: nodes.Attr) -> Ty:
        obj = self.operand(e.obj, f"to read '.{e.name}'")
        return self.attr_type(obj, e.name, e.span)

    def attr_type(self, obj: Ty, name: str, span: Span) -> Ty:
        k = obj.kind
        if k == T.FACT_K:
            return self.field_type(obj.fact or "", name, span)
        if k == T.LIST_K:
            elem = obj.elem
            if elem is not None and elem.kind in (T.FACT_K, T.LIST_K, T.MAP_K, T.ERROR_K):
                return T.list_of(self.attr_type(elem, name, span))
            return T.LIST
        if k == T.MAP_K:
            return obj.elem or T.DEF
        if k == T.ERROR_K:
            field_ty = T.ERROR_FIELDS.get(name)
            if field_ty is None:
                self.error(
                    span,
                    f"an error has no field '{name}'",
                    did_you_mean(name, T.ERROR_FIELDS) or "its fields: " + ", ".join(T.ERROR_FIELDS),
                )
                return T.DEF
            return T.declared(field_ty, ()) or T.DEF
        if k in (T.STRING_K, T.BOOLEAN_K, T.CLOSURE_K) or k in T.NUMERIC:
            self.error(span, f"{_a(obj)} has no property '{name}'", self._method_hint(name))
        return T.DEF

    def _method_hint(self, name: str) -> str | None:
        if name in self.methods:
            return f"'{name}' is a method: write .{name}()"
        return None

    def field_type(self, fact_name: str, name: str, span: Span) -> Ty:
        assert self.wf is not None
        fields_ = self.wf.facts.get(fact_name)
        if fields_ is None:
            return T.DEF
        info = fields_.get(name)
        if info is None:
            self.error(
                span,
                f"{fact_name} has no field '{name}'",
                did_you_mean(name, fields_) or self._method_hint(name),
            )
            return T.DEF
        return info.ty

    def e_index(self, e: nodes.Index) -> Ty:
        obj = self.operand(e.obj, "to index")
        idx = self.operand(e.index, "as an index")
        k = obj.kind
        if k in (T.LIST_K, T.STRING_K):
            if idx.kind not in (T.DEF_K, T.NULL_K) and idx.kind not in T.INTEGRAL:
                self.error(e.index.span, f"{_a(obj)} index must be an int, not {_a(idx)}")
            return obj.elem or T.DEF if k == T.LIST_K else T.STRING
        if k == T.MAP_K:
            return obj.elem or T.DEF
        if k == T.FACT_K and isinstance(e.index, nodes.Literal) and isinstance(e.index.value, str):
            return self.field_type(obj.fact or "", e.index.value, e.index.span)
        if k in T.NUMERIC or k in (T.BOOLEAN_K, T.CLOSURE_K):
            self.error(e.span, f"cannot index {_a(obj)}")
        return T.DEF

    def e_call(self, e: nodes.Call) -> Ty:
        assert self.wf is not None
        fn = self.wf.functions.get(e.name)
        frame = self.frames[-1]
        if fn is None:
            sym = self.lookup(e.name)
            if sym is None:
                hint = did_you_mean(e.name, self.wf.functions)
                if hint is None and e.name in self.methods:
                    hint = f"'{e.name}' is a method: write value.{e.name}(...)"
                self.error(e.span, f"unknown function '{e.name}'", hint)
            for arg in e.args:
                self.operand(arg, f"as an argument of '{e.name}'")
            return T.DEF
        if not frame.in_action:
            self.error(
                e.span,
                f"function '{e.name}' can be called only in 'action', not in "
                f"{self._place()}",
                "call it in the action: its result reaches the reaction",
            )
        params = fn.decl.params
        if len(e.args) != len(params):
            sig = ", ".join(f"{p.type.name} {p.name}" for p in params)
            n = len(params)
            self.error(
                e.span,
                f"function '{e.name}' takes {n} argument{'s' if n != 1 else ''} ({sig}), "
                f"not {len(e.args)}",
            )
        for i, arg in enumerate(e.args):
            ty = self.expr(arg)
            if T.holds_pending(ty):
                self.pending_error(arg, f"as an argument of '{e.name}'")
            elif i < len(params) and not T.assignable(ty, fn.params[i]):
                self.error(
                    arg.span,
                    f"argument '{params[i].name}' of '{e.name}' is {_a(fn.params[i])}, "
                    f"but this value is {_a(ty)}",
                )
        if frame.in_action:
            self.action_calls = True
            return T.pending(fn.returns)
        return T.DEF

    def _place(self) -> str:
        kind = self.frames[0].kind
        return "'match'" if kind == "match" else f"'{kind}'"

    def e_start(self, e: nodes.Start) -> Ty:
        frame = self.frames[-1]
        if not frame.in_action:
            self.error(
                e.span,
                f"'start' can be used only in 'action', not in {self._place()}",
                "start the child workflow in the action: its output reaches the reaction",
            )
        pkg, _, name = e.workflow.rpartition(".")
        facts: dict[str, dict[str, FieldInfo]] | None = None
        if not pkg or pkg == self.package:
            child = self.workflows.get(name)
            if child is None:
                self.error(
                    e.span,
                    f"unknown workflow '{e.workflow}'",
                    did_you_mean(name, self.workflows)
                    or f"workflows of package '{self.package}': " + ", ".join(sorted(self.workflows)),
                )
            else:
                facts = child.facts
        for ctor in e.facts:
            self.fact_value(ctor, facts)
        if frame.in_action:
            self.action_calls = True
            return T.pending(T.MAP)
        return T.DEF

    def e_method(self, e: nodes.MethodCall) -> Ty:
        recv = self.operand(e.obj, f"to call .{e.name}()")
        name = e.name
        if e.spread:
            base = recv.elem or T.DEF if recv.kind == T.LIST_K else T.DEF
        else:
            base = recv
        if name not in self.methods:
            self.error(
                e.span,
                f"unknown method '{name}'",
                did_you_mean(name, self.methods),
            )
            for arg in e.args:
                self.operand(arg, f"as an argument of '{name}'")
            return T.DEF
        sig = METHOD_SIGNATURES.get(name)
        low, high = self.method_arity.get(name) or (sig[:2] if sig else (0, 99))
        n = len(e.args)
        if not low <= n <= high:
            if low == high:
                takes = f"{low} argument{'s' if low != 1 else ''}"
            else:
                takes = f"{low} to {high} arguments"
            self.error(e.span, f"method '{name}' takes {takes}, not {n}")
        closure_result: Ty = T.DEF
        for arg in e.args:
            if isinstance(arg, nodes.Closure):
                ty = self.e_closure(arg, self._closure_params(name, base, arg))
                closure_result = ty.elem or T.DEF
            else:
                ty = self.expr(arg)
                if T.is_pending(ty) and name != "plus":
                    self.pending_error(arg, f"as an argument of '{name}'")
        result = self._method_result(sig[2] if sig else T.DEF, base, closure_result)
        return T.list_of(result) if e.spread else result

    @staticmethod
    def _closure_params(name: str, recv: Ty, closure: nodes.Closure) -> list[Ty]:
        count = max(1, len(closure.params))
        if recv.kind == T.LIST_K or recv.kind == T.STRING_K:
            elem = T.element(recv)
            if name in _INDEXED:
                return [elem, T.INT]
            if name == "inject":
                return [T.DEF, elem]
            if name in _COMPARATORS and count == 2:
                return [elem, elem]
            return [elem] + [T.DEF] * (count - 1)
        if recv.kind == T.MAP_K:
            if count == 1:
                return [T.MAP]
            return [T.DEF, recv.elem or T.DEF] + [T.DEF] * (count - 2)
        return [T.DEF] * count

    @staticmethod
    def _method_result(code: _R, recv: Ty, closure_result: Ty) -> Ty:
        if isinstance(code, Ty):
            return code
        if code == "recv":
            return recv
        if code == "elem":
            return T.element(recv) if recv.kind == T.LIST_K else T.DEF
        if code == "elems":
            return T.list_of(T.element(recv)) if recv.kind == T.LIST_K else (
                T.LIST if recv.kind in (T.MAP_K, T.STRING_K) else T.DEF
            )
        if code == "mapped":
            return T.list_of(closure_result)
        if code == "strings":
            return T.list_of(T.STRING)
        return T.DEF

    def e_closure(self, e: nodes.Closure, param_types: list[Ty] | None = None) -> Ty:
        scope: dict[str, Sym] = {}
        types = param_types or []
        if e.params:
            for i, p in enumerate(e.params):
                if p in scope:
                    self.error(e.span, f"the closure has two parameters named '{p}'")
                scope[p] = Sym(p, PARAM, types[i] if i < len(types) else T.DEF, e.span)
        elif not e.explicit_params:
            scope["it"] = Sym("it", PARAM, types[0] if types else T.DEF, e.span)
        frame = Frame("closure", self.frames[-1].in_action)
        self.frames.append(frame)
        self.scopes.append(scope)
        self.scopes.append({})
        try:
            last = self.block_stmts(e.body.stmts)
        finally:
            self.scopes.pop()
            self.scopes.pop()
            self.frames.pop()
        result = last if last is not None else T.NULL
        for ty in frame.returns:
            result = T.join(result, ty)
        return T.closure(result)

    def e_unary(self, e: nodes.Unary) -> Ty:
        if e.op == "!":
            self.condition(e.operand, "the operand of '!'")
            return T.BOOLEAN
        ty = self.operand(e.operand, f"as an operand of '{e.op}'")
        if ty.kind in T.NUMERIC:
            return ty
        if ty.kind not in (T.DEF_K, T.NULL_K):
            self.error(e.span, f"cannot apply '{e.op}' to {_a(ty)}: it works on numbers")
        return T.DEF

    def e_binary(self, e: nodes.Binary) -> Ty:
        op = e.op
        if op in ("&&", "||"):
            self.condition(e.left, f"the left side of '{op}'")
            self.condition(e.right, f"the right side of '{op}'")
            return T.BOOLEAN
        what = f"as an operand of '{op}'"
        left = self.operand(e.left, what)
        if op == "+" and left.kind == T.LIST_K:
            # Appending to a list: the list may collect placeholders (SPEC: "put in lists").
            right = self.expr(e.right)
            add = right.elem if right.kind == T.LIST_K else right
            return T.list_of(T.join(left.elem, add or T.DEF) if left.elem else add)
        right = self.operand(e.right, what)
        if op in ("==", "!="):
            if not T.comparable_for_equality(left, right):
                self.warn(
                    e.span,
                    f"comparing {_a(left)} with {_a(right)}: '{op}' is always "
                    f"{'false' if op == '==' else 'true'}",
                    "convert one side first, e.g. x.toString() or s.toInteger()",
                )
            return T.BOOLEAN
        if op in ("<", "<=", ">", ">="):
            if not T.orderable(left, right):
                self.error(e.span, f"cannot order {_a(left)} and {_a(right)} with '{op}'")
            return T.BOOLEAN
        if op == "in":
            k = right.kind
            if k not in (T.LIST_K, T.MAP_K, T.STRING_K, T.DEF_K, T.NULL_K):
                self.error(e.right.span, f"'in' needs a List, a Map or a String, not {_a(right)}")
            return T.BOOLEAN
        return self.arith(op, left, right, e.right, e.span)

    def arith(self, op: str, left: Ty, right: Ty, right_node: nodes.Expr, span: Span) -> Ty:
        """The type of `left op right` for + - * / %, reporting sure failures."""
        kl, kr = left.kind, right.kind
        if kr == T.PENDING_K:
            if kl == T.LIST_K and op == "+":
                return T.list_of(T.join(left.elem, right) if left.elem else right)
            self.pending_error(right_node, f"as an operand of '{op}'")
            return T.DEF
        known_l = kl not in (T.DEF_K, T.NULL_K)
        known_r = kr not in (T.DEF_K, T.NULL_K)
        bad = False
        if op == "+":
            if kl == T.STRING_K:
                return T.STRING
            if kl == T.LIST_K:
                return T.list_of(left.elem) if left.elem else T.LIST
            if kl == T.MAP_K:
                bad = known_r and kr not in (T.MAP_K, T.ERROR_K)
                result = T.MAP
            elif kl in T.NUMERIC:
                bad = known_r and kr not in T.NUMERIC
                result = T.join(left, right) if kr in T.NUMERIC else T.DEF
            else:
                bad = known_l
                result = T.DEF
        elif op == "-":
            if kl in (T.LIST_K, T.MAP_K):
                bad = kl == T.MAP_K and known_r and kr != T.MAP_K
                return left if not bad else self._bad_arith(op, left, right, span)
            if kl in T.NUMERIC:
                bad = known_r and kr not in T.NUMERIC
                result = T.join(left, right) if kr in T.NUMERIC else T.DEF
            else:
                bad = known_l
                result = T.DEF
        elif op == "*":
            if kl == T.STRING_K:
                bad = known_r and kr not in T.INTEGRAL
                result = T.STRING
            elif kl in T.NUMERIC:
                bad = known_r and kr not in T.NUMERIC
                result = T.join(left, right) if kr in T.NUMERIC else T.DEF
            else:
                bad = known_l or kr == T.STRING_K
                result = T.DEF
        else:  # / and %
            bad = (known_l and kl not in T.NUMERIC) or (known_r and kr not in T.NUMERIC)
            if op == "/":
                result = T.DOUBLE if kl in T.NUMERIC and kr in T.NUMERIC else T.DEF
            else:
                result = T.join(left, right) if kl in T.NUMERIC and kr in T.NUMERIC else T.DEF
        if bad:
            return self._bad_arith(op, left, right, span)
        return result

    def _bad_arith(self, op: str, left: Ty, right: Ty, span: Span) -> Ty:
        hint = None
        if T.STRING_K in (left.kind, right.kind):
            hint = (
                "only '+' joins strings (put the string first), and '*' repeats one"
                if op != "+"
                else "put the string first, or write \"${x}\""
            )
        self.error(span, f"cannot apply '{op}' to {_a(left)} and {_a(right)}", hint)
        return T.DEF

    def e_ternary(self, e: nodes.Ternary) -> Ty:
        self.condition(e.cond, "the condition of '?:'")
        return T.join(self.expr(e.then), self.expr(e.other))

    def e_elvis(self, e: nodes.Elvis) -> Ty:
        left = self.operand(e.left, "as the left side of '?:'")
        return T.join(left, self.expr(e.right))

    def e_range(self, e: nodes.Range) -> Ty:
        for end in (e.start, e.end):
            ty = self.operand(end, "as the end of a range")
            if ty.kind not in T.INTEGRAL and ty.kind not in (T.DEF_K, T.NULL_K):
                self.error(end.span, f"a range needs integers, not {_a(ty)}")
        return T.list_of(T.INT)

    def e_fact(self, e: nodes.FactCtor) -> Ty:
        assert self.wf is not None
        return self.fact_value(e, self.wf.facts)


# ── helpers ────────────────────────────────────────────────────────────────────────────────────


def _literal_type(e: nodes.Expr | None) -> Ty | None:
    """The type of a literal default (lists and maps of literals count), or None if not one."""
    if isinstance(e, nodes.Literal):
        v = e.value
        if v is None:
            return T.NULL
        return {bool: T.BOOLEAN, int: T.INT, float: T.DOUBLE, str: T.STRING}[type(v)]
    if isinstance(e, nodes.ListLit):
        return T.LIST if all(_literal_type(i) is not None for i in e.items) else None
    if isinstance(e, nodes.MapLit):
        ok = all(isinstance(en.key, str) and _literal_type(en.value) is not None for en in e.entries)
        return T.MAP if ok else None
    return None


def _walk(node: object) -> Iterator[object]:
    """Every AST node under `node`, depth first (used only to explain an error)."""
    if is_dataclass(node) and not isinstance(node, Span):
        yield node
        for f in fields(node):
            yield from _walk(getattr(node, f.name))
    elif isinstance(node, list):
        for item in node:
            yield from _walk(item)
