"""The Emirax compiler: checked AST modules of one project -> the IR document (emirax.ir).

    compile_modules(modules) -> dict      the IR; the modules must have passed check()

The IR is verified where it is consumed, not here: `emirax.bundle` validates it before writing
and on every load, and engine hosts validate what they load (tests validate every compiled case).

It decides everything the engine should not have to: which calls are declared functions
(`invoke`) and which are closures held in locals (`call`); which names inside a pattern are the
fact's fields (`field`) and which are bindings (`var`); how each pattern's constraints split for
the matcher into `alpha` tests (on the fact alone), `joins` (`field == expr over bindings`, hash
joinable) and `beta` tests (the rest); rule order, salience and enabled; function options in
seconds with their defaults. Positions survive as `at: [line, column]` so run-time errors can
name the source. Output depends only on the modules' content and file names, never on the host,
so the same sources give byte-identical IR (and so the same bundle digest).
"""

from __future__ import annotations

import re
from typing import Any

from emirax import nodes
from emirax.ir import IR_VERSION, walk
from emirax.source import Span

IR = dict[str, Any]

_DURATION = re.compile(r"^([0-9]+)(ms|s|m|h)$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}


def compile_modules(modules: list[nodes.Module]) -> IR:
    """Compile the (checked) modules of one project into an IR document."""
    ordered = sorted(modules, key=lambda m: m.file)
    package = ordered[0].package if ordered else ""
    workflows = [
        _compile_workflow(package, wf, module.file)
        for module in ordered
        for wf in module.workflows
    ]
    return {"ir_version": IR_VERSION, "package": package, "workflows": workflows}


def duration_seconds(text: str) -> int | float:
    """'30s' -> 30, '100ms' -> 0.1, '2h' -> 7200 (the checker has validated the text)."""
    m = _DURATION.match(text)
    if m is None:
        raise ValueError(f"not a duration: {text!r}")
    value = int(m.group(1)) * _UNIT_SECONDS[m.group(2)]
    return int(value) if float(value).is_integer() else round(value, 3)


def _at(span: Span) -> list[int]:
    return [span.line, span.column]


# ── declarations ───────────────────────────────────────────────────────────────────────────────


def _compile_workflow(package: str, wf: nodes.Workflow, file: str) -> IR:
    functions = {fn.name for fn in wf.functions}
    fields = {f.name: [fd.name for fd in f.fields] for f in wf.facts}
    code = _Code(package, functions, fields)
    return {
        "name": wf.name,
        "facts": [_fact_decl(f, code) for f in wf.facts],
        "functions": [_function_decl(fn) for fn in wf.functions],
        "rules": [code.rule(rule, i, file) for i, rule in enumerate(wf.rules)],
    }


def _fact_decl(decl: nodes.FactDecl, code: _Code) -> IR:
    return {
        "name": decl.name,
        "fields": [
            {
                "name": fd.name,
                "type": fd.type.name,
                "required": fd.default is None,
                "default": None if fd.default is None else code.expr(fd.default),
            }
            for fd in decl.fields
        ],
    }


def _options(options: nodes.MapLit | None) -> dict[str, Any]:
    """The literal `with [...]` options of a declaration, by name (the checker vetted them)."""
    out: dict[str, Any] = {}
    for entry in options.entries if options else []:
        if isinstance(entry.key, str) and isinstance(entry.value, nodes.Literal):
            out[entry.key] = entry.value.value
    return out


def _function_decl(fn: nodes.FunctionDecl) -> IR:
    given = _options(fn.options)
    timeout = given.get("timeout")
    backoff = given.get("backoff")
    cache = given.get("cache", True)
    return {
        "name": fn.name,
        "returns": fn.returns.name,
        "params": [{"name": p.name, "type": p.type.name} for p in fn.params],
        "options": {
            "timeout": duration_seconds(timeout) if timeout else None,
            "retries": given.get("retries", 0),
            "backoff": backoff if backoff in (None, "exponential") else duration_seconds(backoff),
            "priority": given.get("priority", 0),
            "queue": given.get("queue"),
            "cache": cache if isinstance(cache, bool) else duration_seconds(cache),
        },
    }


# ── code ───────────────────────────────────────────────────────────────────────────────────────


class _Code:
    """Translates the rules of one workflow; `pattern_fields` is set while inside a pattern."""

    def __init__(self, package: str, functions: set[str], facts: dict[str, list[str]]) -> None:
        self.package = package
        self.functions = functions
        self.facts = facts
        self.pattern_fields: frozenset[str] = frozenset()
        # Closure parameters and locals declared inside a pattern's closures shadow its fields.
        self.shadow: list[set[str]] = []

    def rule(self, rule: nodes.Rule, index: int, file: str) -> IR:
        options = _options(rule.options)
        bound: set[str] = set()
        match = [self.match_item(item, bound) for item in rule.match]
        # Written only when set: the IR (and digest) of every rule without it stays as it was.
        extra = {"priority": options["priority"]} if options.get("priority") else {}
        return {
            "name": rule.name,
            "index": index,
            "salience": options.get("salience", 0),
            "enabled": options.get("enabled", True),
            "file": file,
            "at": _at(rule.span),
            "match": match,
            "action": self.section(rule.action, param=None),
            "reaction": self.section(rule.reaction, param="it") if rule.reaction else None,
            "error": self.section(rule.error, param="it") if rule.error else None,
            **extra,
        }

    def section(self, section: nodes.Section | None, *, param: str | None) -> IR:
        if section is None:  # the checker requires an action; an empty one keeps the IR whole
            return {"param": None, "body": []}
        name = (section.params[0] if section.params else param) if param else None
        return {"param": name, "body": self.block(section.body)}

    # — match —

    def match_item(self, item: nodes.MatchItem, bound: set[str]) -> IR:
        if isinstance(item, nodes.Guard):
            return {"kind": "guard", "expr": self.expr(item.expr), "at": _at(item.span)}
        self.pattern_fields = frozenset(self.facts.get(item.type, ()))
        try:
            compiled = [self.expr(c) for c in item.constraints]
        finally:
            self.pattern_fields = frozenset()
        alpha: list[IR] = []
        joins: list[IR] = []
        beta: list[IR] = []
        for expr in compiled:
            uses_bindings = bool(_vars(expr) & bound)
            join = _as_join(expr, bound) if uses_bindings else None
            if not uses_bindings:
                alpha.append(expr)
            elif join is not None:
                joins.append(join)
            else:
                beta.append(expr)
        if item.binding:
            bound.add(item.binding)
        return {
            "kind": item.kind, "type": item.type, "binding": item.binding,
            "alpha": alpha, "joins": joins, "beta": beta, "at": _at(item.span),
        }

    # — statements —

    def block(self, block: nodes.Block) -> list[IR]:
        return [self.stmt(s) for s in block.stmts]

    def stmt(self, s: nodes.Stmt) -> IR:
        at = _at(s.span)
        match s:
            case nodes.ExprStmt():
                return {"op": "expr", "at": at, "expr": self.expr(s.expr)}
            case nodes.Def():
                if self.shadow:
                    self.shadow[-1].add(s.name)
                value = None if s.value is None else self.expr(s.value)
                return {"op": "def", "at": at, "name": s.name, "value": value}
            case nodes.Assign():
                return {"op": "assign", "at": at, "target": self.expr(s.target),
                        "operator": s.op, "value": self.expr(s.value)}
            case nodes.If():
                return {"op": "if", "at": at, "cond": self.expr(s.cond),
                        "then": self.block(s.then), "else": self.other(s.other)}
            case nodes.For():
                return {"op": "for", "at": at, "var": s.var, "iterable": self.expr(s.iterable),
                        "body": self.scoped([s.var], s.body)}
            case nodes.Return():
                value = None if s.value is None else self.expr(s.value)
                return {"op": "return", "at": at, "value": value}
            case nodes.Insert():
                return {"op": "insert", "at": at, "fact": self.expr(s.fact)}
            case nodes.Modify():
                return {"op": "modify", "at": at, "binding": s.binding,
                        "fields": self.field_args(s.assignments)}
            case nodes.Retract():
                return {"op": "retract", "at": at, "binding": s.binding}
            case nodes.Complete():
                return {"op": "complete", "at": at, "fields": self.field_args(s.fields)}
            case nodes.Fail():
                return {"op": "fail", "at": at, "reason": self.expr(s.reason)}
            case nodes.Log():
                return {"op": "log", "at": at, "message": self.expr(s.message)}
        raise TypeError(f"not a statement: {type(s).__name__}")

    def other(self, other: nodes.Block | nodes.If | None) -> list[IR] | None:
        if other is None:
            return None
        if isinstance(other, nodes.If):
            return [self.stmt(other)]
        return self.block(other)

    def scoped(self, names: list[str], body: nodes.Block) -> list[IR]:
        self.shadow.append(set(names))
        try:
            return self.block(body)
        finally:
            self.shadow.pop()

    def field_args(self, args: list[nodes.FieldArg]) -> list[IR]:
        return [{"name": a.name, "value": self.expr(a.value)} for a in args]

    # — expressions —

    def expr(self, e: nodes.Expr) -> IR:
        at = _at(e.span)
        match e:
            case nodes.Literal():
                return {"op": "lit", "at": at, "value": e.value}
            case nodes.Interp():
                parts = [
                    {"op": "lit", "at": at, "value": p} if isinstance(p, str) else self.expr(p)
                    for p in e.parts
                ]
                return {"op": "interp", "at": at, "parts": parts}
            case nodes.Name():
                return {"op": self.name_kind(e.id), "at": at, "name": e.id}
            case nodes.ListLit():
                return {"op": "list", "at": at, "items": [self.expr(i) for i in e.items]}
            case nodes.MapLit():
                return {"op": "map", "at": at, "entries": [self.entry(en) for en in e.entries]}
            case nodes.Attr():
                return {"op": "attr", "at": at, "obj": self.expr(e.obj), "name": e.name,
                        "safe": e.safe, "spread": e.spread}
            case nodes.Index():
                return {"op": "index", "at": at, "obj": self.expr(e.obj),
                        "index": self.expr(e.index)}
            case nodes.Call():
                args = [self.expr(a) for a in e.args]
                if e.name in self.functions:
                    return {"op": "invoke", "at": at, "function": e.name, "args": args}
                return {"op": "call", "at": at, "name": e.name, "args": args}
            case nodes.MethodCall():
                return {"op": "method", "at": at, "obj": self.expr(e.obj), "name": e.name,
                        "args": [self.expr(a) for a in e.args], "safe": e.safe,
                        "spread": e.spread}
            case nodes.Closure():
                return self.closure(e, at)
            case nodes.Unary():
                return {"op": "unary", "at": at, "operator": e.op, "operand": self.expr(e.operand)}
            case nodes.Binary():
                return {"op": "binary", "at": at, "operator": e.op, "left": self.expr(e.left),
                        "right": self.expr(e.right)}
            case nodes.Ternary():
                return {"op": "ternary", "at": at, "cond": self.expr(e.cond),
                        "then": self.expr(e.then), "else": self.expr(e.other)}
            case nodes.Elvis():
                return {"op": "elvis", "at": at, "left": self.expr(e.left),
                        "right": self.expr(e.right)}
            case nodes.Range():
                return {"op": "range", "at": at, "start": self.expr(e.start),
                        "end": self.expr(e.end), "exclusive": e.exclusive}
            case nodes.FactCtor():
                return {"op": "fact", "at": at, "type": e.type,
                        "fields": self.field_args(e.fields)}
            case nodes.Start():
                workflow = e.workflow if "." in e.workflow else f"{self.package}.{e.workflow}"
                return {"op": "start", "at": at, "workflow": workflow,
                        "facts": [self.expr(f) for f in e.facts]}
        raise TypeError(f"not an expression: {type(e).__name__}")

    def name_kind(self, name: str) -> str:
        if name in self.pattern_fields and not any(name in s for s in self.shadow):
            return "field"
        return "var"

    def entry(self, entry: nodes.MapEntry) -> IR:
        key = entry.key
        key_ir = {"op": "lit", "at": _at(entry.span), "value": key} if isinstance(key, str) \
            else self.expr(key)
        return {"key": key_ir, "value": self.expr(entry.value)}

    def closure(self, e: nodes.Closure, at: list[int]) -> IR:
        implicit = not e.params and not e.explicit_params
        params = ["it"] if implicit else list(e.params)
        return {"op": "closure", "at": at, "params": params, "implicit": implicit,
                "body": self.scoped(params, e.body)}


# ── pattern analysis ───────────────────────────────────────────────────────────────────────────


def _vars(expr: IR) -> set[str]:
    return {n["name"] for n in walk(expr) if n.get("op") == "var"}


def _uses_fields(expr: IR) -> bool:
    return any(n.get("op") == "field" for n in walk(expr))


def _as_join(expr: IR, bound: set[str]) -> IR | None:
    """`field == e` (or `e == field`) where `e` reads bindings and no field: a hash join."""
    if expr["op"] != "binary" or expr["operator"] != "==":
        return None
    for side, other in ((expr["left"], expr["right"]), (expr["right"], expr["left"])):
        if side["op"] == "field" and not _uses_fields(other) and _vars(other) <= bound:
            return {"field": side["name"], "expr": other}
    return None
