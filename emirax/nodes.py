"""The Emirax abstract syntax tree.

Plain dataclasses, one per construct of the language (SPEC section 2), each with the `Span` of the
text it came from. The parser builds them; the checker reads them; the compiler turns them into IR.
Nothing here knows about Lark. Named `nodes` rather than `ast` to stay clear of the stdlib module.

Layout:
    Module ─ package, workflows ─ Workflow ─ facts, functions, rules
    Rule ─ options, match (Pattern | Guard), action / reaction / error (Section = params + Block)
    Stmt: ExprStmt Def Assign If For Return Insert Modify Retract Complete Fail Log
    Expr: Literal Interp Name ListLit MapLit Attr Index Call MethodCall Closure Unary Binary
          Ternary Elvis Range FactCtor Start
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Union

from emirax.source import NO_SPAN, Span

# ── expressions ────────────────────────────────────────────────────────────────────────────────


@dataclass(slots=True)
class Literal:
    """`123`, `1.5`, `'text'`, `"text without interpolation"`, `true`, `false`, `null`."""

    value: int | float | str | bool | None
    span: Span = NO_SPAN


@dataclass(slots=True)
class Interp:
    """`"a ${b} $c"`: `parts` alternate freely between literal text (str) and expressions."""

    parts: list[Union[str, "Expr"]]
    span: Span = NO_SPAN


@dataclass(slots=True)
class Name:
    """A bare identifier: a local, a binding, a closure parameter, `it`, or (in a pattern) a field."""

    id: str
    span: Span = NO_SPAN


@dataclass(slots=True)
class ListLit:
    """`[a, b, c]` (and `[]`)."""

    items: list["Expr"]
    span: Span = NO_SPAN


@dataclass(slots=True)
class MapEntry:
    """One `key: value` of a map literal. `key` is a str for `name:`/`'str':`/`123:` keys, or an
    expression for a computed `(expr):` key."""

    key: Union[str, "Expr"]
    value: "Expr"
    span: Span = NO_SPAN


@dataclass(slots=True)
class MapLit:
    """`[a: 1, 'b': 2]` (and `[:]`)."""

    entries: list[MapEntry]
    span: Span = NO_SPAN


@dataclass(slots=True)
class Attr:
    """`obj.name`, `obj?.name` (safe) or `obj*.name` (spread over a list)."""

    obj: "Expr"
    name: str
    safe: bool = False
    spread: bool = False
    span: Span = NO_SPAN


@dataclass(slots=True)
class Index:
    """`obj[index]` (lists, maps, strings)."""

    obj: "Expr"
    index: "Expr"
    span: Span = NO_SPAN


@dataclass(slots=True)
class Call:
    """`name(args)` with an optional trailing closure: a declared function or a builtin."""

    name: str
    args: list["Expr"]
    span: Span = NO_SPAN


@dataclass(slots=True)
class MethodCall:
    """`obj.name(args) { closure }`, with `?.` (safe) or `*.` (spread) as for `Attr`.

    A trailing closure is appended to `args`, so `xs.collect { it * 2 }` has one argument."""

    obj: "Expr"
    name: str
    args: list["Expr"]
    safe: bool = False
    spread: bool = False
    span: Span = NO_SPAN


@dataclass(slots=True)
class Closure:
    """`{ a, b -> body }`; `params` is empty when none are declared (then `it` is bound)."""

    params: list[str]
    body: "Block"
    explicit_params: bool = False
    span: Span = NO_SPAN


@dataclass(slots=True)
class Unary:
    """`!x`, `-x`, `+x`."""

    op: str
    operand: "Expr"
    span: Span = NO_SPAN


@dataclass(slots=True)
class Binary:
    """`l op r` for op in `|| && == != < <= > >= in + - * / %`."""

    op: str
    left: "Expr"
    right: "Expr"
    span: Span = NO_SPAN


@dataclass(slots=True)
class Ternary:
    """`cond ? then : other`."""

    cond: "Expr"
    then: "Expr"
    other: "Expr"
    span: Span = NO_SPAN


@dataclass(slots=True)
class Elvis:
    """`left ?: right`: `left` when it is truthy, else `right`."""

    left: "Expr"
    right: "Expr"
    span: Span = NO_SPAN


@dataclass(slots=True)
class Range:
    """`a..b` (inclusive) or `a..<b` (exclusive)."""

    start: "Expr"
    end: "Expr"
    exclusive: bool = False
    span: Span = NO_SPAN


@dataclass(slots=True)
class FieldArg:
    """`field: value` inside `insert T(...)`, `T(...)` or `complete(...)`."""

    name: str
    value: "Expr"
    span: Span = NO_SPAN


@dataclass(slots=True)
class FactCtor:
    """`T(field: v, ...)`: a new fact value, after `insert`, nested in another, or in `start`."""

    type: str
    fields: list[FieldArg]
    span: Span = NO_SPAN


@dataclass(slots=True)
class Start:
    """`start pkg.Workflow(T(...), ...)`: a child workflow, usable where a function call is."""

    workflow: str
    facts: list[FactCtor]
    span: Span = NO_SPAN


Expr = Union[
    Literal, Interp, Name, ListLit, MapLit, Attr, Index, Call, MethodCall, Closure, Unary, Binary,
    Ternary, Elvis, Range, FactCtor, Start,
]

# ── statements ─────────────────────────────────────────────────────────────────────────────────


@dataclass(slots=True)
class Block:
    """A braced list of statements."""

    stmts: list["Stmt"]
    span: Span = NO_SPAN


@dataclass(slots=True)
class ExprStmt:
    expr: Expr
    span: Span = NO_SPAN


@dataclass(slots=True)
class Def:
    """`def name = value` (value may be None: `def name`)."""

    name: str
    value: Expr | None
    span: Span = NO_SPAN


@dataclass(slots=True)
class Assign:
    """`target op value` with op in `= += -=`; target is a Name, Attr or Index."""

    target: Expr
    op: str
    value: Expr
    span: Span = NO_SPAN


@dataclass(slots=True)
class If:
    """`if (cond) { then } else { other }`; `other` is a Block, an If (else if) or None."""

    cond: Expr
    then: Block
    other: Union[Block, "If", None] = None
    span: Span = NO_SPAN


@dataclass(slots=True)
class For:
    """`for (var in iterable) { body }`."""

    var: str
    iterable: Expr
    body: Block
    span: Span = NO_SPAN


@dataclass(slots=True)
class Return:
    value: Expr | None
    span: Span = NO_SPAN


@dataclass(slots=True)
class Insert:
    """`insert T(field: v, ...)`."""

    fact: FactCtor
    span: Span = NO_SPAN


@dataclass(slots=True)
class Modify:
    """`modify binding { field = value ... }`: assignments apply together, on the old values."""

    binding: str
    assignments: list[FieldArg]
    span: Span = NO_SPAN


@dataclass(slots=True)
class Retract:
    binding: str
    span: Span = NO_SPAN


@dataclass(slots=True)
class Complete:
    """`complete(key: v, ...)`: sets the workflow's output."""

    fields: list[FieldArg]
    span: Span = NO_SPAN


@dataclass(slots=True)
class Fail:
    """`fail expr`: the workflow fails with `reason`."""

    reason: Expr
    span: Span = NO_SPAN


@dataclass(slots=True)
class Log:
    message: Expr
    span: Span = NO_SPAN


Stmt = Union[ExprStmt, Def, Assign, If, For, Return, Insert, Modify, Retract, Complete, Fail, Log]

# ── rules, workflows, modules ──────────────────────────────────────────────────────────────────


@dataclass(slots=True)
class Pattern:
    """One fact pattern of `match`.

    kind: "fact" (`b: T(...)` or `T(...)`), "not", "exists" or "collect" (`b: collect T(...)`).
    `constraints` are boolean expressions where bare names are fields of `type`."""

    kind: str
    type: str
    constraints: list[Expr]
    binding: str | None = None
    span: Span = NO_SPAN


@dataclass(slots=True)
class Guard:
    """`when expr` in `match`: sees the bindings above it."""

    expr: Expr
    span: Span = NO_SPAN


MatchItem = Union[Pattern, Guard]


@dataclass(slots=True)
class Section:
    """`action { ... }`, `reaction { v -> ... }` or `error { err -> ... }`.

    `params` holds the declared parameter (at most one is meaningful); empty means `it`."""

    name: str
    params: list[str]
    body: Block
    span: Span = NO_SPAN


@dataclass(slots=True)
class TypeRef:
    """A declared type: `String`, `int`, `long`, `double`, `boolean`, `List`, `Map`, `def`, or a
    fact type of the same workflow."""

    name: str
    span: Span = NO_SPAN


@dataclass(slots=True)
class FieldDecl:
    """`Type name` or `Type name = default` in a fact declaration (default: a literal expression)."""

    type: TypeRef
    name: str
    default: Expr | None = None
    span: Span = NO_SPAN


@dataclass(slots=True)
class FactDecl:
    name: str
    fields: list[FieldDecl]
    span: Span = NO_SPAN


@dataclass(slots=True)
class Param:
    type: TypeRef
    name: str
    span: Span = NO_SPAN


@dataclass(slots=True)
class FunctionDecl:
    """`function Type name(Type p, ...) with [options]`; options hold literal values only."""

    returns: TypeRef
    name: str
    params: list[Param]
    options: MapLit | None = None
    span: Span = NO_SPAN


@dataclass(slots=True)
class Rule:
    """`rule 'name' with [options] { match {...} action {...} reaction {...} error {...} }`."""

    name: str
    options: MapLit | None
    match: list[MatchItem]
    action: Section | None
    reaction: Section | None = None
    error: Section | None = None
    span: Span = NO_SPAN
    # Which sections appeared and where, in source order, so the checker can report a section
    # repeated or out of order; the parser fills this even when it keeps only the first of each.
    section_order: list[tuple[str, Span]] = field(default_factory=list)


@dataclass(slots=True)
class Workflow:
    name: str
    facts: list[FactDecl]
    functions: list[FunctionDecl]
    rules: list[Rule]
    span: Span = NO_SPAN


@dataclass(slots=True)
class Module:
    """One parsed `.emx` file."""

    package: str
    workflows: list[Workflow]
    file: str = "<unknown>"
    span: Span = NO_SPAN
    package_span: Span = NO_SPAN


Node = Union[Expr, Stmt, MatchItem, Section, Rule, Workflow, Module, FactDecl, FunctionDecl]
