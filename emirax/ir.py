"""The Emirax IR: the versioned, JSON-serialisable form of a compiled project, and its verifier.

The compiler writes it, bundles carry it, and the engine (on a laptop or in the server) turns it
into its own executable form. It is data only: every expression and statement is a JSON object
whose `op` names one of a closed set of operators (`EXPR_OPS`, `STMT_OPS`), so nothing a tenant
uploads can smuggle host code in. `validate` refuses anything else, with the JSON path of the first
problem, before a document is trusted. docs/ir.md describes every node.

    IR_VERSION                  the version this module reads and writes
    validate(doc)               raise IRError("workflows[0].rules[2].match[1]: ...") or return
    dumps(doc) -> bytes         canonical JSON (sorted keys, compact, UTF-8): same IR, same bytes
    digest(doc) -> str          "sha256:<hex>" of dumps(doc); the bundle's identity
    signatures(doc)             the workflows' facts and functions, for a bundle's manifest
    walk(node)                  every object under an IR node
    METHODS                     the collection and string methods rule code may call, with arity
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from emirax.errors import IRError

IR_VERSION = 1

# The methods the engine implements (emirax/engine/methods.py), name -> (fewest, most) arguments,
# a trailing closure counting as one. The checker reads arity from here.
METHODS: dict[str, tuple[int, int]] = {
    "size": (0, 0), "length": (0, 0), "isEmpty": (0, 0), "contains": (1, 1),
    "containsKey": (1, 1), "get": (1, 2), "keySet": (0, 0), "values": (0, 0), "each": (1, 1),
    "eachWithIndex": (1, 1), "collect": (0, 1), "collectEntries": (1, 1), "findAll": (0, 1),
    "find": (0, 1), "any": (0, 1), "every": (0, 1), "count": (1, 1), "inject": (1, 2),
    "groupBy": (1, 1), "withIndex": (0, 0), "sum": (0, 1), "max": (0, 1), "min": (0, 1),
    "sort": (0, 1), "unique": (0, 1), "reverse": (0, 0), "first": (0, 0), "last": (0, 0),
    "take": (1, 1), "drop": (1, 1), "flatten": (0, 0), "join": (0, 1), "plus": (1, 1),
    "minus": (1, 1), "intdiv": (1, 1), "abs": (0, 0), "round": (0, 1), "toInteger": (0, 0),
    "toDouble": (0, 0), "toString": (0, 0), "fields": (0, 0), "toUpperCase": (0, 0),
    "toLowerCase": (0, 0), "trim": (0, 0), "startsWith": (1, 1), "endsWith": (1, 1),
    "indexOf": (1, 1), "replace": (2, 2), "split": (0, 1), "substring": (1, 2),
    "capitalize": (0, 0), "padLeft": (1, 2), "padRight": (1, 2), "isNumber": (0, 0),
    "isInteger": (0, 0),
}

UNARY_OPERATORS = frozenset(("!", "-", "+"))
BINARY_OPERATORS = frozenset(
    ("||", "&&", "==", "!=", "<", "<=", ">", ">=", "in", "+", "-", "*", "/", "%")
)
ASSIGN_OPERATORS = frozenset(("=", "+=", "-="))
PATTERN_KINDS = frozenset(("fact", "not", "exists", "collect"))
SCALAR_TYPES = frozenset(("String", "int", "long", "double", "boolean", "List", "Map", "def"))

# Sizes past which a document is refused rather than loaded: they bound the engine's work and
# memory for one bundle, far above what a real project needs (the 10,000-line benchmark project
# has about 250,000 nodes).
MAX_NODES = 2_000_000
MAX_DEPTH = 200
MAX_STRING = 65_536
MAX_NAME = 200
MAX_LIST = 100_000

INT_MIN = -(2**63)
INT_MAX = 2**63 - 1

_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_QUALIFIED = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")

# ── the schema ─────────────────────────────────────────────────────────────────────────────────
# Every node is {"op": ..., "at": [line, column], <fields>}; a field's kind names its checker
# below. A node has exactly these keys: anything extra is refused.

EXPR_OPS: dict[str, dict[str, str]] = {
    "lit": {"value": "literal"},
    "interp": {"parts": "exprs"},
    "var": {"name": "ident"},
    "field": {"name": "ident"},
    "list": {"items": "exprs"},
    "map": {"entries": "entries"},
    "attr": {"obj": "expr", "name": "ident", "safe": "bool", "spread": "bool"},
    "index": {"obj": "expr", "index": "expr"},
    "method": {"obj": "expr", "name": "method", "args": "exprs", "safe": "bool", "spread": "bool"},
    "call": {"name": "ident", "args": "exprs"},
    "invoke": {"function": "ident", "args": "exprs"},
    "start": {"workflow": "qualified", "facts": "facts"},
    "closure": {"params": "idents", "implicit": "bool", "body": "stmts"},
    "unary": {"operator": "unary", "operand": "expr"},
    "binary": {"operator": "binary", "left": "expr", "right": "expr"},
    "ternary": {"cond": "expr", "then": "expr", "else": "expr"},
    "elvis": {"left": "expr", "right": "expr"},
    "range": {"start": "expr", "end": "expr", "exclusive": "bool"},
    "fact": {"type": "ident", "fields": "fields"},
}

STMT_OPS: dict[str, dict[str, str]] = {
    "expr": {"expr": "expr"},
    "def": {"name": "ident", "value": "expr?"},
    "assign": {"target": "target", "operator": "assign", "value": "expr"},
    "if": {"cond": "expr", "then": "stmts", "else": "stmts?"},
    "for": {"var": "ident", "iterable": "expr", "body": "stmts"},
    "return": {"value": "expr?"},
    "insert": {"fact": "fact"},
    "modify": {"binding": "ident", "fields": "fields"},
    "retract": {"binding": "ident"},
    "complete": {"fields": "fields"},
    "fail": {"reason": "expr"},
    "log": {"message": "expr"},
}

OPS = frozenset(EXPR_OPS) | frozenset(STMT_OPS)


# ── canonical form ─────────────────────────────────────────────────────────────────────────────


def dumps(doc: Mapping[str, Any]) -> bytes:
    """The canonical bytes of an IR document: equal documents give equal bytes on every host."""
    return json.dumps(
        doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8")


def digest(doc: Mapping[str, Any]) -> str:
    """The identity of an IR document: `sha256:` and the hex digest of its canonical bytes."""
    return "sha256:" + hashlib.sha256(dumps(doc)).hexdigest()


def signatures(doc: Mapping[str, Any]) -> list[dict[str, Any]]:
    """What each workflow accepts and calls, by full name: the part of a manifest people read."""
    package = doc["package"]
    out: list[dict[str, Any]] = []
    for wf in doc["workflows"]:
        out.append({
            "name": f"{package}.{wf['name']}",
            "facts": {
                f["name"]: {fd["name"]: fd["type"] for fd in f["fields"]} for f in wf["facts"]
            },
            "functions": {
                fn["name"]: {
                    "returns": fn["returns"],
                    "params": [[p["name"], p["type"]] for p in fn["params"]],
                    "options": fn["options"],
                }
                for fn in wf["functions"]
            },
            "rules": [r["name"] for r in wf["rules"]],
        })
    return out


def walk(node: Any) -> Iterator[dict[str, Any]]:
    """Every object under `node` (expressions, statements, and the objects holding them)."""
    stack = [node]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            yield item
            stack.extend(v for k, v in item.items() if k != "at")
        elif isinstance(item, list):
            stack.extend(item)


# ── verification ───────────────────────────────────────────────────────────────────────────────


def validate(doc: Any) -> None:
    """Raise IRError naming the JSON path of the first problem, or return when `doc` is valid IR."""
    _Validator().document(doc)


class _Validator:
    """Walks a document once, counting nodes, and checks names against the declarations."""

    def __init__(self) -> None:
        self.nodes = 0
        self.facts: dict[str, dict[str, dict[str, Any]]] = {}
        self.functions: dict[str, dict[str, Any]] = {}

    # — structure —

    def document(self, doc: Any) -> None:
        obj = _object(doc, "", ("ir_version", "package", "workflows"))
        if obj["ir_version"] != IR_VERSION or type(obj["ir_version"]) is not int:
            raise IRError(
                f"ir_version: this Emirax reads IR version {IR_VERSION}, "
                f"not {obj['ir_version']!r}"
            )
        _qualified(obj["package"], "package")
        workflows = _list(obj["workflows"], "workflows")
        if not workflows:
            raise IRError("workflows: a bundle needs at least one workflow")
        names: set[str] = set()
        for i, wf in enumerate(workflows):
            name = self.workflow(wf, f"workflows[{i}]")
            if name in names:
                raise IRError(f"workflows[{i}].name: workflow '{name}' is declared twice")
            names.add(name)

    def workflow(self, wf: Any, path: str) -> str:
        obj = _object(wf, path, ("name", "facts", "functions", "rules"))
        name = _ident(obj["name"], f"{path}.name")
        self.facts = {}
        for i, fact in enumerate(_list(obj["facts"], f"{path}.facts")):
            self.fact_decl(fact, f"{path}.facts[{i}]")
        for decl_path, decl in self._each(obj["facts"], f"{path}.facts"):
            for j, fd in enumerate(decl["fields"]):
                if fd["type"] not in SCALAR_TYPES and fd["type"] not in self.facts:
                    raise IRError(f"{decl_path}.fields[{j}].type: unknown type {fd['type']!r}")
        self.functions = {}
        for i, fn in enumerate(_list(obj["functions"], f"{path}.functions")):
            self.function_decl(fn, f"{path}.functions[{i}]")
        rule_names: set[str] = set()
        for i, rule in enumerate(_list(obj["rules"], f"{path}.rules")):
            rname = self.rule(rule, f"{path}.rules[{i}]", i)
            if rname in rule_names:
                raise IRError(f"{path}.rules[{i}].name: rule {rname!r} is declared twice")
            rule_names.add(rname)
        return name

    @staticmethod
    def _each(items: list[Any], path: str) -> list[tuple[str, Any]]:
        return [(f"{path}[{i}]", item) for i, item in enumerate(items)]

    def fact_decl(self, fact: Any, path: str) -> None:
        obj = _object(fact, path, ("name", "fields"))
        name = _ident(obj["name"], f"{path}.name")
        if name in self.facts:
            raise IRError(f"{path}.name: fact {name!r} is declared twice")
        fields: dict[str, dict[str, Any]] = {}
        for j, fd in enumerate(_list(obj["fields"], f"{path}.fields")):
            fpath = f"{path}.fields[{j}]"
            fobj = _object(fd, fpath, ("name", "type", "required", "default"))
            fname = _ident(fobj["name"], f"{fpath}.name")
            _ident(fobj["type"], f"{fpath}.type")
            _bool(fobj["required"], f"{fpath}.required")
            if fobj["default"] is not None:
                self.constant(fobj["default"], f"{fpath}.default")
            if fname in fields:
                raise IRError(f"{fpath}.name: field {fname!r} is declared twice")
            fields[fname] = fobj
        self.facts[name] = fields

    def function_decl(self, fn: Any, path: str) -> None:
        obj = _object(fn, path, ("name", "returns", "params", "options"))
        name = _ident(obj["name"], f"{path}.name")
        _ident(obj["returns"], f"{path}.returns")
        for j, p in enumerate(_list(obj["params"], f"{path}.params")):
            pobj = _object(p, f"{path}.params[{j}]", ("name", "type"))
            _ident(pobj["name"], f"{path}.params[{j}].name")
            _ident(pobj["type"], f"{path}.params[{j}].type")
        _options(obj["options"], f"{path}.options")
        if name in self.functions:
            raise IRError(f"{path}.name: function {name!r} is declared twice")
        self.functions[name] = obj

    def rule(self, rule: Any, path: str, index: int) -> str:
        keys = ("name", "index", "salience", "enabled", "file", "at", "match", "action",
                "reaction", "error")
        if isinstance(rule, dict) and "priority" in rule:  # optional: absent means 0
            keys += ("priority",)
            _int(rule["priority"], f"{path}.priority")
        obj = _object(rule, path, keys)
        name = _string(obj["name"], f"{path}.name", MAX_NAME)
        if not name.strip():
            raise IRError(f"{path}.name: a rule needs a name")
        if obj["index"] != index or type(obj["index"]) is not int:
            raise IRError(f"{path}.index: expected {index}, the rule's position")
        _int(obj["salience"], f"{path}.salience")
        _bool(obj["enabled"], f"{path}.enabled")
        _string(obj["file"], f"{path}.file", 1024)
        _at(obj["at"], f"{path}.at")
        items = _list(obj["match"], f"{path}.match")
        for j, item in enumerate(items):
            self.match_item(item, f"{path}.match[{j}]")
        self.section(obj["action"], f"{path}.action", param=False)
        for key in ("reaction", "error"):
            if obj[key] is not None:
                self.section(obj[key], f"{path}.{key}", param=True)
        return name

    def match_item(self, item: Any, path: str) -> None:
        if isinstance(item, dict) and item.get("kind") == "guard":
            obj = _object(item, path, ("kind", "expr", "at"))
            _at(obj["at"], f"{path}.at")
            self.expr(obj["expr"], f"{path}.expr", 0)
            return
        obj = _object(item, path, ("kind", "type", "binding", "alpha", "joins", "beta", "at"))
        if obj["kind"] not in PATTERN_KINDS:
            raise IRError(f"{path}.kind: unknown pattern kind {obj['kind']!r}")
        fact = self._fact_type(obj["type"], f"{path}.type")
        if obj["binding"] is not None:
            _ident(obj["binding"], f"{path}.binding")
        _at(obj["at"], f"{path}.at")
        for key in ("alpha", "beta"):
            for j, e in enumerate(_list(obj[key], f"{path}.{key}")):
                self.expr(e, f"{path}.{key}[{j}]", 0)
        for j, join in enumerate(_list(obj["joins"], f"{path}.joins")):
            jpath = f"{path}.joins[{j}]"
            jobj = _object(join, jpath, ("field", "expr"))
            if _ident(jobj["field"], f"{jpath}.field") not in fact:
                raise IRError(f"{jpath}.field: {obj['type']} has no field {jobj['field']!r}")
            self.expr(jobj["expr"], f"{jpath}.expr", 0)

    def constant(self, value: Any, path: str) -> None:
        """A fact field's default: literals, and lists and maps of them, nothing to evaluate."""
        self.expr(value, path, 0)
        stack = [value]
        while stack:
            node = stack.pop()
            if node["op"] == "list":
                stack.extend(node["items"])
            elif node["op"] == "map":
                stack.extend(e["value"] for e in node["entries"])
                stack.extend(e["key"] for e in node["entries"])
            elif node["op"] != "lit":
                raise IRError(f"{path}: a default is a literal, not {node['op']!r}")

    def section(self, section: Any, path: str, *, param: bool) -> None:
        obj = _object(section, path, ("param", "body"))
        if param:
            _ident(obj["param"], f"{path}.param")
        elif obj["param"] is not None:
            raise IRError(f"{path}.param: an action takes no parameter")
        self.stmts(obj["body"], f"{path}.body", 0)

    def _fact_type(self, name: Any, path: str) -> dict[str, dict[str, Any]]:
        fact = self.facts.get(_ident(name, path))
        if fact is None:
            raise IRError(f"{path}: unknown fact type {name!r}")
        return fact

    # — code —

    def stmts(self, value: Any, path: str, depth: int) -> None:
        for i, stmt in enumerate(_list(value, path)):
            self.node(stmt, f"{path}[{i}]", depth + 1, STMT_OPS, "statement")

    def expr(self, value: Any, path: str, depth: int) -> None:
        self.node(value, path, depth + 1, EXPR_OPS, "expression")

    def node(
        self, value: Any, path: str, depth: int, ops: dict[str, dict[str, str]], what: str
    ) -> None:
        self.nodes += 1
        if self.nodes > MAX_NODES:
            raise IRError(f"{path}: the IR has more than {MAX_NODES} nodes")
        if depth > MAX_DEPTH:
            raise IRError(f"{path}: nested deeper than {MAX_DEPTH} levels")
        if not isinstance(value, dict):
            raise IRError(f"{path}: expected an {what} object, got {_kind(value)}")
        op = value.get("op")
        shape = ops.get(op) if isinstance(op, str) else None
        if shape is None:
            raise IRError(f"{path}.op: unknown {what} operator {op!r}")
        _object(value, path, ("op", "at", *shape))
        _at(value["at"], f"{path}.at")
        for key, kind in shape.items():
            _FIELD_CHECKS[kind](self, value[key], f"{path}.{key}", depth)
        if op == "insert" and value["fact"]["type"] not in self.facts:
            raise IRError(f"{path}.fact.type: unknown fact type {value['fact']['type']!r}")
        if op == "invoke" and value["function"] not in self.functions:
            raise IRError(f"{path}.function: unknown function {value['function']!r}")
        if op == "invoke" and len(value["args"]) != len(self.functions[value["function"]]["params"]):
            raise IRError(f"{path}.args: wrong number of arguments for {value['function']!r}")

    def fact_node(self, value: Any, path: str, depth: int) -> None:
        self.expr(value, path, depth)
        if value["op"] != "fact":
            raise IRError(f"{path}.op: expected a fact value, got {value['op']!r}")

    def fact_ctor_fields(self, value: Any, path: str, depth: int) -> None:
        for i, item in enumerate(_list(value, path)):
            obj = _object(item, f"{path}[{i}]", ("name", "value"))
            _ident(obj["name"], f"{path}[{i}].name")
            self.expr(obj["value"], f"{path}[{i}].value", depth)

    def entries(self, value: Any, path: str, depth: int) -> None:
        for i, item in enumerate(_list(value, path)):
            obj = _object(item, f"{path}[{i}]", ("key", "value"))
            self.expr(obj["key"], f"{path}[{i}].key", depth)
            self.expr(obj["value"], f"{path}[{i}].value", depth)

    def facts_list(self, value: Any, path: str, depth: int) -> None:
        for i, item in enumerate(_list(value, path)):
            self.fact_node(item, f"{path}[{i}]", depth)

    def target(self, value: Any, path: str, depth: int) -> None:
        self.expr(value, path, depth)
        if value["op"] not in ("var", "attr", "index"):
            raise IRError(f"{path}.op: cannot assign to {value['op']!r}")


def _check_exprs(v: _Validator, value: Any, path: str, depth: int) -> None:
    for i, item in enumerate(_list(value, path)):
        v.expr(item, f"{path}[{i}]", depth)


def _check_optional_expr(v: _Validator, value: Any, path: str, depth: int) -> None:
    if value is not None:
        v.expr(value, path, depth)


def _check_optional_stmts(v: _Validator, value: Any, path: str, depth: int) -> None:
    if value is not None:
        v.stmts(value, path, depth)


def _check_idents(v: _Validator, value: Any, path: str, depth: int) -> None:
    for i, item in enumerate(_list(value, path)):
        _ident(item, f"{path}[{i}]")


def _check_method(v: _Validator, value: Any, path: str, depth: int) -> None:
    if value not in METHODS:
        raise IRError(f"{path}: unknown method {value!r}")


def _check_operator(allowed: frozenset[str]) -> Callable[[_Validator, Any, str, int], None]:
    def check(v: _Validator, value: Any, path: str, depth: int) -> None:
        if value not in allowed:
            raise IRError(f"{path}: unknown operator {value!r}")

    return check


_FIELD_CHECKS: dict[str, Callable[[_Validator, Any, str, int], None]] = {
    "expr": lambda v, value, path, depth: v.expr(value, path, depth),
    "expr?": _check_optional_expr,
    "exprs": _check_exprs,
    "stmts": lambda v, value, path, depth: v.stmts(value, path, depth),
    "stmts?": _check_optional_stmts,
    "literal": lambda v, value, path, depth: _literal(value, path),
    "ident": lambda v, value, path, depth: _ident(value, path),
    "idents": _check_idents,
    "qualified": lambda v, value, path, depth: _qualified(value, path),
    "bool": lambda v, value, path, depth: _bool(value, path),
    "method": _check_method,
    "unary": _check_operator(UNARY_OPERATORS),
    "binary": _check_operator(BINARY_OPERATORS),
    "assign": _check_operator(ASSIGN_OPERATORS),
    "entries": _Validator.entries,
    "fields": _Validator.fact_ctor_fields,
    "facts": _Validator.facts_list,
    "fact": _Validator.fact_node,
    "target": _Validator.target,
}

_OPTION_KEYS = ("timeout", "retries", "backoff", "priority", "queue", "cache")


def _options(value: Any, path: str) -> None:
    obj = _object(value, path, _OPTION_KEYS)
    if obj["timeout"] is not None:
        _seconds(obj["timeout"], f"{path}.timeout")
    if obj["backoff"] is not None and obj["backoff"] != "exponential":
        _seconds(obj["backoff"], f"{path}.backoff")
    if _int(obj["retries"], f"{path}.retries") < 0:
        raise IRError(f"{path}.retries: must be 0 or more")
    _int(obj["priority"], f"{path}.priority")
    if obj["queue"] is not None:
        _string(obj["queue"], f"{path}.queue", MAX_NAME)
    if type(obj["cache"]) is not bool:
        _seconds(obj["cache"], f"{path}.cache")


# ── leaf checks ────────────────────────────────────────────────────────────────────────────────


def _kind(value: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean",
            int: "an integer", float: "a number", type(None): "null"}.get(type(value), "a value")


def _object(value: Any, path: str, keys: tuple[str, ...]) -> dict[str, Any]:
    where = path or "document"
    if not isinstance(value, dict):
        raise IRError(f"{where}: expected an object, got {_kind(value)}")
    missing = [k for k in keys if k not in value]
    if missing:
        raise IRError(f"{where}: missing {', '.join(repr(k) for k in missing)}")
    extra = sorted(str(k) for k in value if k not in keys)
    if extra:
        raise IRError(f"{where}: unexpected {', '.join(repr(k) for k in extra)}")
    return value


def _list(value: Any, path: str) -> list[Any]:
    if not isinstance(value, list):
        raise IRError(f"{path}: expected a list, got {_kind(value)}")
    if len(value) > MAX_LIST:
        raise IRError(f"{path}: more than {MAX_LIST} items")
    return value


def _string(value: Any, path: str, limit: int = MAX_STRING) -> str:
    if not isinstance(value, str):
        raise IRError(f"{path}: expected a string, got {_kind(value)}")
    if len(value) > limit:
        raise IRError(f"{path}: a string longer than {limit} characters")
    return value


def _ident(value: Any, path: str) -> str:
    text = _string(value, path, MAX_NAME)
    if not _IDENT.fullmatch(text):
        raise IRError(f"{path}: {text!r} is not a name")
    return text


def _qualified(value: Any, path: str) -> str:
    text = _string(value, path, MAX_NAME)
    if not _QUALIFIED.fullmatch(text):
        raise IRError(f"{path}: {text!r} is not a dotted name")
    return text


def _bool(value: Any, path: str) -> bool:
    if type(value) is not bool:
        raise IRError(f"{path}: expected true or false, got {_kind(value)}")
    return value


def _int(value: Any, path: str) -> int:
    if type(value) is not int or not INT_MIN <= value <= INT_MAX:
        raise IRError(f"{path}: expected a 64-bit integer, got {_kind(value)}")
    return value


def _seconds(value: Any, path: str) -> None:
    if type(value) not in (int, float) or not math.isfinite(value) or value <= 0:
        raise IRError(f"{path}: expected a positive number of seconds")


def _at(value: Any, path: str) -> None:
    if (
        not isinstance(value, list) or len(value) != 2
        or any(type(v) is not int or v < 0 for v in value)
    ):
        raise IRError(f"{path}: expected [line, column]")


def _literal(value: Any, path: str) -> None:
    if value is None or type(value) is bool:
        return
    if type(value) is int:
        _int(value, path)
    elif type(value) is float:
        if not math.isfinite(value):
            raise IRError(f"{path}: numbers must be finite")
    elif isinstance(value, str):
        _string(value, path)
    else:
        raise IRError(f"{path}: a literal is null, a boolean, a number or a string")
