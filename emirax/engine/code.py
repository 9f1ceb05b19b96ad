"""Rule code: IR expressions and statements turned into nested Python closures, once, at load.

    compile_expr(node) -> Fn                 an expression; call it with a Frame
    compile_block(stmts) -> Fn               statements; the value of the last expression statement
    compile_section(section_ir) -> Section   action/reaction/error; Section.run(bindings, param,
                                             host, meter) -> the section's value
    Frame, Meter, LimitError, Failed, Host (Protocol), RecordingHost, Placeholder,
    resolve(value, results), placeholders(value), data(value), fact_defaults(workflow_ir)

Nothing here writes or evaluates Python source: each IR node becomes one small closure specialised
for its operator and arity (constant right operands are captured, not re-evaluated), so running a
section is calling closures. Values and operators come from `values`, methods from `methods`.

Frames and names. A `Frame` holds a dict of variables, its parent frame (closures read and assign
enclosing locals by reference), the root frame (the section's: match bindings and the section
parameter live there), the `Meter`, the `Host`, and `fact` (the fact a pattern test is reading:
`field` nodes read it). Names are resolved when compiling: a local is read from the frame that
declares it, so many frames up as there are closures in between; a name no scope declares is read
from the root frame (a binding). A section and a closure call each get a frame; a block (`if` or
`for` body) gets its own frame only when it must: it declares a name that a closure inside it could
capture (each loop iteration then gets fresh locals, as in Groovy) or that hides an outer local.
Other blocks share their function's frame, which is cheaper.

Decisions (SPEC section 2 leaves them open):
- Statements and control. A block charges its statement count to the meter on entry; a loop
  iteration costs one more step, a closure call at least one, a method call one plus its own work.
  `return` leaves the innermost closure or the section; the value of a section or closure is that
  of its last statement when it is an expression statement (an `if` last gives null), or the
  returned value.
- Assignment into a list or map (`m.k = v`, `m[k] = v`, `xs[i] += 1`) rebinds the local holding it
  to an updated copy; no value is ever changed in place. So a fact's list, a default, or another
  local holding the same list never changes, and collection methods stay non-mutating. The target
  must start at a local or parameter; a fact on the way is an error (use `modify`). A list index
  past the end pads with nulls (Groovy); a negative one counts from the end.
- Map keys are strings: a computed key `(e): v` uses the text of `e` (as indexing does).
- `for (x in xs)` loops over a list, a range (lazily: `0..<n` builds no list), the characters of
  a string, or a map's entries, each a map `[key: k, value: v]` (so `e.key` and `e.value` read as
  in Groovy); null loops zero times; anything else is an error.
- A nested fact `T(...)` (a fact-typed field, or a fact stored in a `def` field) is stored as a
  plain map of its fields, defaults filled: `o.inner.s` reads the same before and after storage,
  and the declaration gives its type. Every value leaving rule code (fact fields, `complete`
  output, function arguments, child facts) goes through `data()`: facts become maps of fields,
  closures and placeholders are refused.
- `modify` and `retract` take any name holding one fact (a binding, or `it` over a collect list).
  The host gets the FactValue; `modify` returns the new one (or None: then it is built here, one
  version up) and the name holds it afterwards; after `retract` the name raises "b was retracted".
- `fail 'reason'` calls `host.fail(reason)` then raises `Failed`, which is not a RuleError: the
  engine catches it to stop. `log` passes the text of its value.
- Placeholders (what `host.invoke`/`host.start` return) may sit in lists, maps, locals, closure
  arguments and results, and be appended with `+`; as an operand, condition, index, receiver,
  method or function argument, in a string, or in stored data they raise a RuleError.

Errors: a RuleError raised while running carries `at` ([line, column]) of the innermost failing
node that records one (calls, methods, attributes, indexing, operators), else of its statement.
Python recursion past its limit becomes a LimitError.
"""

from __future__ import annotations

import math

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from emirax.engine import values as V
from emirax.engine.methods import METHODS
from emirax.ir import walk
from emirax.engine.values import (
    Closure,
    FactValue,
    Placeholder,
    RuleError,
    equals,
    to_text,
    truthy,
    type_name,
)

__all__ = [
    "Failed", "Fn", "Frame", "Host", "LimitError", "Meter", "Placeholder", "RecordingHost",
    "Section", "compile_block", "compile_expr", "compile_section", "data", "fact_defaults",
    "placeholders", "resolve",
]

IR = Mapping[str, Any]
Fn = Callable[["Frame"], Any]

DEFAULT_STEPS = 100_000


# ── run-time support ───────────────────────────────────────────────────────────────────────────


class LimitError(RuleError):
    """A section ran past its step budget (or nested calls too deeply)."""

    def __init__(self, message: str, limit: int, type_: str = "StepLimit") -> None:
        super().__init__(message, type_)
        self.limit = limit


class Failed(Exception):
    """`fail 'reason'` ran: the section stops at once and the workflow fails (not a RuleError)."""

    def __init__(self, reason: str, at: list[int] | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.at = at


class Meter:
    """The step budget of one section run: `tick(n)` raises LimitError once past `limit`."""

    __slots__ = ("limit", "used", "rule")

    def __init__(self, limit: int = DEFAULT_STEPS, rule: str | None = None) -> None:
        self.limit = limit
        self.used = 0
        self.rule = rule

    def tick(self, n: int = 1) -> None:
        self.used += n
        if self.used > self.limit:
            who = f"rule '{self.rule}'" if self.rule is not None else "the section"
            raise LimitError(f"{who} used more than {self.limit} steps", self.limit)


class Host(Protocol):
    """The effects of rule code; the engine implements it, `RecordingHost` records them."""

    def insert(self, fact_type: str, fields: dict[str, Any]) -> None: ...

    def modify(self, fact: FactValue, fields: dict[str, Any]) -> FactValue | None: ...

    def retract(self, fact: FactValue) -> None: ...

    def complete(self, fields: dict[str, Any]) -> None: ...

    def fail(self, reason: str) -> None: ...

    def log(self, message: str) -> None: ...

    def invoke(self, function: str, args: list[Any]) -> Placeholder: ...

    def start(self, workflow: str, facts: list[tuple[str, dict[str, Any]]]) -> Placeholder: ...

    def fact_defaults(self, fact_type: str) -> Mapping[str, Any]: ...


class Frame:
    """Variables of one running section, closure call or block (see the module docstring).

    A matcher may build one root Frame (bindings in `vars`) and set `fact` per candidate fact
    before calling a compiled pattern test: `field` nodes read `root.fact`.
    """

    __slots__ = ("vars", "parent", "root", "meter", "host", "fact")

    def __init__(
        self,
        vars: dict[str, Any],
        meter: Meter,
        host: Any = None,
        parent: Frame | None = None,
        fact: FactValue | None = None,
    ) -> None:
        self.vars = vars
        self.parent = parent
        self.root = self if parent is None else parent.root
        self.meter = meter
        self.host = host
        self.fact = fact


class _Retracted:
    """What a name holds after `retract name`."""

    __slots__ = ()


RETRACTED = _Retracted()


class _Return:
    """The signal a `return` statement hands up to its closure or section."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value


def resolve(value: Any, results: Mapping[int, Any]) -> Any:
    """`value` with every placeholder in it (in nested lists and maps) replaced by its result."""
    cls = value.__class__
    if cls is Placeholder:
        try:
            return results[value.id]
        except KeyError:
            raise ValueError(f"no result for invocation {value.id} ('{value.label}')") from None
    if cls is list:
        return [resolve(x, results) for x in value]
    if cls is dict:
        return {k: resolve(x, results) for k, x in value.items()}
    return value


def placeholders(value: Any) -> list[Placeholder]:
    """Every placeholder in `value` (nested lists and maps), in order."""
    found: list[Placeholder] = []
    stack = [value]
    while stack:
        item = stack.pop()
        cls = item.__class__
        if cls is Placeholder:
            found.append(item)
        elif cls is list:
            stack.extend(reversed(item))
        elif cls is dict:
            stack.extend(reversed(list(item.values())))
    return found


_SCALARS = frozenset((str, int, float, bool, type(None)))


def data(value: Any, where: str = "in a fact") -> Any:
    """`value` as stored data: facts become maps of their fields; closures and placeholders are
    refused. Returns `value` itself when it already is plain data."""
    cls = value.__class__
    if cls in _SCALARS:
        if cls is float and not math.isfinite(value):
            raise RuleError(f"{value} cannot be stored {where}: numbers must be finite", "TypeError")
        return value
    if cls is list:
        out = [data(x, where) for x in value]
        return value if all(a is b for a, b in zip(out, value)) else out
    if cls is dict:
        changed = False
        new: dict[str, Any] = {}
        for k, x in value.items():
            y = data(x, where)
            changed = changed or y is not x or k.__class__ is not str
            new[k if k.__class__ is str else to_text(k)] = y
        return new if changed else value
    if cls is FactValue:
        return {k: data(x, where) for k, x in value.fields.items()}
    if cls is Placeholder:
        raise value.pending(f"{where} (store it in the reaction)")
    if cls is Closure:
        raise RuleError(f"a closure cannot be stored {where}: facts and outputs are data", "TypeError")
    raise RuleError(f"{type_name(value)} cannot be stored {where}", "TypeError")


def _located(exc: RuleError, at: list[int]) -> RuleError:
    if exc.at is None:
        exc.at = at
    return exc


# ── the recording host ─────────────────────────────────────────────────────────────────────────


@dataclass
class RecordingHost:
    """A Host that records every effect, in order, as tuples (for tests and naive paths).

    `effects` holds ("insert", type, fields), ("modify", fact, fields), ("retract", fact),
    ("complete", fields), ("fail", reason), ("log", message), ("invoke", function, args, id),
    ("start", workflow, facts, id). Placeholders are numbered 1, 2, ... in call order.
    """

    defaults: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    effects: list[tuple[Any, ...]] = field(default_factory=list)
    calls: int = 0

    @classmethod
    def for_workflow(cls, workflow_ir: IR) -> RecordingHost:
        return cls(defaults=fact_defaults(workflow_ir))

    def of(self, kind: str) -> list[tuple[Any, ...]]:
        """The recorded effects of one kind ("insert", "log", ...), without the kind."""
        return [e[1:] for e in self.effects if e[0] == kind]

    def insert(self, fact_type: str, fields: dict[str, Any]) -> None:
        self.effects.append(("insert", fact_type, fields))

    def modify(self, fact: FactValue, fields: dict[str, Any]) -> FactValue:
        self.effects.append(("modify", fact, fields))
        return FactValue(fact.type, {**fact.fields, **fields}, fact.id, fact.version + 1)

    def retract(self, fact: FactValue) -> None:
        self.effects.append(("retract", fact))

    def complete(self, fields: dict[str, Any]) -> None:
        self.effects.append(("complete", fields))

    def fail(self, reason: str) -> None:
        self.effects.append(("fail", reason))

    def log(self, message: str) -> None:
        self.effects.append(("log", message))

    def invoke(self, function: str, args: list[Any]) -> Placeholder:
        self.calls += 1
        self.effects.append(("invoke", function, args, self.calls))
        return Placeholder(self.calls, function)

    def start(self, workflow: str, facts: list[tuple[str, dict[str, Any]]]) -> Placeholder:
        self.calls += 1
        self.effects.append(("start", workflow, facts, self.calls))
        return Placeholder(self.calls, f"start {workflow}")

    def fact_defaults(self, fact_type: str) -> Mapping[str, Any]:
        return self.defaults.get(fact_type, {})


def fact_defaults(workflow_ir: IR) -> dict[str, dict[str, Any]]:
    """The default value of every defaulted field of a workflow's facts, by fact type."""
    frame = Frame({}, Meter())
    out: dict[str, dict[str, Any]] = {}
    for fact in workflow_ir["facts"]:
        out[fact["name"]] = {
            f["name"]: compile_expr(f["default"])(frame)
            for f in fact["fields"]
            if f["default"] is not None
        }
    return out


# ── compile-time scopes ────────────────────────────────────────────────────────────────────────


class _Scope:
    """Names declared in one function (section, closure) or block, at compile time."""

    __slots__ = ("names", "own_frame", "parent", "function")

    def __init__(self, names: set[str], own_frame: bool, parent: _Scope | None, function: bool) -> None:
        self.names = names
        self.own_frame = own_frame
        self.parent = parent
        self.function = function


class _Ctx:
    """Compile state: the scope chain and the names some `retract` may empty."""

    def __init__(self, retracted: frozenset[str], params: Iterable[str] = ()) -> None:
        self.scope = _Scope(set(params), True, None, True)
        self.retracted = retracted

    def depth(self, name: str) -> int | None:
        """How many frames up `name` lives, or None when no scope declares it (a root name)."""
        depth = 0
        scope: _Scope | None = self.scope
        while scope is not None:
            if name in scope.names:
                return depth
            if scope.own_frame:
                depth += 1
            scope = scope.parent
        return None

    def _in_function(self, name: str) -> bool:
        scope: _Scope | None = self.scope
        while scope is not None:
            if name in scope.names:
                return True
            if scope.function:
                return False
            scope = scope.parent
        return False

    def push_function(self, params: Iterable[str]) -> None:
        self.scope = _Scope(set(params), True, self.scope, True)

    def push_block(self, stmts: list[IR], extra: Iterable[str] = ()) -> bool:
        """Enter a block; True when it needs its own frame (see the module docstring)."""
        declared = {s["name"] for s in stmts if s["op"] == "def"} | set(extra)
        own = bool(declared) and (
            _has_closure(stmts) or any(self._in_function(n) for n in declared)
        )
        self.scope = _Scope(set(), own, self.scope, False)
        return own

    def declare(self, name: str) -> None:
        self.scope.names.add(name)

    def pop(self) -> None:
        assert self.scope.parent is not None
        self.scope = self.scope.parent


def _has_closure(node: Any) -> bool:
    return any(n.get("op") == "closure" for n in walk(node))


def _retracted_names(node: Any) -> frozenset[str]:
    return frozenset(n["binding"] for n in walk(node) if n.get("op") == "retract")


# ── expressions ────────────────────────────────────────────────────────────────────────────────


def compile_expr(node: IR, ctx: _Ctx | None = None) -> Fn:
    """An expression as a closure over a Frame. Without `ctx`, every name is read from the
    frame's root (bindings), and `field` nodes from `frame.fact`: the form pattern tests take."""
    if ctx is None:
        ctx = _Ctx(_retracted_names(node))
    return _EXPR[node["op"]](node, ctx)


def _const(value: Any) -> Fn:
    return lambda frame: value


def _is_lit(node: IR) -> bool:
    return node["op"] == "lit"


def _lit(node: IR, ctx: _Ctx) -> Fn:
    return _const(node["value"])


def _text(value: Any) -> str:
    return value if value.__class__ is str else to_text(value)


def _interp(node: IR, ctx: _Ctx) -> Fn:
    parts = [compile_expr(p, ctx) if not _is_lit(p) else _const(to_text(p["value"])) for p in node["parts"]]
    at = node["at"]
    if len(parts) == 1:
        (only,) = parts

        def interp1(frame: Frame) -> str:
            try:
                return _text(only(frame))
            except RuleError as exc:
                raise _located(exc, at)

        return interp1

    def interp(frame: Frame) -> str:
        try:
            return "".join([_text(p(frame)) for p in parts])
        except RuleError as exc:
            raise _located(exc, at)

    return interp


def _var(node: IR, ctx: _Ctx) -> Fn:
    return _reader(node["name"], ctx, node["at"])


def _reader(name: str, ctx: _Ctx, at: list[int]) -> Fn:
    depth = ctx.depth(name)
    checked = name in ctx.retracted

    def missing() -> RuleError:
        return RuleError(f"unknown name '{name}'", "NameError", at)

    def retracted() -> RuleError:
        return RuleError(f"{name} was retracted", "Retracted", at)

    if depth is None:
        if checked:
            def read_root_checked(frame: Frame) -> Any:
                try:
                    value = frame.root.vars[name]
                except KeyError:
                    raise missing() from None
                if value is RETRACTED:
                    raise retracted()
                return value

            return read_root_checked

        def read_root(frame: Frame) -> Any:
            try:
                return frame.root.vars[name]
            except KeyError:
                raise missing() from None

        return read_root

    def read(frame: Frame) -> Any:
        for _ in range(depth):
            frame = frame.parent  # type: ignore[assignment]
        try:
            value = frame.vars[name]
        except KeyError:
            raise missing() from None
        if value is RETRACTED:
            raise retracted()
        return value

    if depth == 0 and not checked:
        def read0(frame: Frame) -> Any:
            try:
                return frame.vars[name]
            except KeyError:
                raise missing() from None

        return read0
    if depth == 1 and not checked:
        def read1(frame: Frame) -> Any:
            try:
                return frame.parent.vars[name]  # type: ignore[union-attr]
            except KeyError:
                raise missing() from None

        return read1
    return read


def _owner(name: str, ctx: _Ctx) -> Callable[[Frame], dict[str, Any]]:
    """The variables dict holding local `name` (assignment, modify, retract)."""
    depth = ctx.depth(name)
    if depth is None:
        return lambda frame: frame.root.vars
    if depth == 0:
        return lambda frame: frame.vars

    def owner(frame: Frame) -> dict[str, Any]:
        for _ in range(depth):
            frame = frame.parent  # type: ignore[assignment]
        return frame.vars

    return owner


def _field(node: IR, ctx: _Ctx) -> Fn:
    name = node["name"]
    at = node["at"]

    def read_field(frame: Frame) -> Any:
        fact = frame.root.fact  # the root: a pattern's closures have frames of their own
        if fact is None:
            raise RuleError(f"no fact to read field '{name}' from", "NameError", at)
        try:
            return fact.fields[name]
        except KeyError:
            raise RuleError(f"{fact.type} has no field '{name}'", "MissingField", at) from None

    return read_field


def _list(node: IR, ctx: _Ctx) -> Fn:
    items = [compile_expr(i, ctx) for i in node["items"]]
    if not items:
        return lambda frame: []
    return lambda frame: [item(frame) for item in items]


def _map(node: IR, ctx: _Ctx) -> Fn:
    keys: list[Any] = []
    vals: list[Fn] = []
    constant_keys = True
    for entry in node["entries"]:
        key = entry["key"]
        if _is_lit(key):
            keys.append(to_text(key["value"]))
        else:
            keys.append(compile_expr(key, ctx))
            constant_keys = False
        vals.append(compile_expr(entry["value"], ctx))
    if not keys:
        return lambda frame: {}
    if constant_keys:
        pairs = tuple(zip(keys, vals))
        return lambda frame: {k: v(frame) for k, v in pairs}
    at = node["at"]
    entries = tuple(zip(keys, vals))

    def map_(frame: Frame) -> dict[str, Any]:
        out: dict[str, Any] = {}
        try:
            for key, value in entries:
                if callable(key):
                    key = key(frame)
                    key = key if key.__class__ is str else to_text(key)
                out[key] = value(frame)
        except RuleError as exc:
            raise _located(exc, at)
        return out

    return map_


def _attr(node: IR, ctx: _Ctx) -> Fn:
    obj = compile_expr(node["obj"], ctx)
    name, safe, spread, at = node["name"], node["safe"], node["spread"], node["at"]
    get_attr = V.get_attr

    if spread:
        def spread_attr(frame: Frame) -> Any:
            o = obj(frame)
            try:
                if o is None and safe:
                    return None
                if o.__class__ is not list:
                    V.check_known(f"to read '{name}'", o)
                    raise RuleError(f"'*.' needs a List, not {type_name(o)}", "TypeError")
                return [None if x is None else get_attr(x, name) for x in o]
            except RuleError as exc:
                raise _located(exc, at)

        return spread_attr

    def attr(frame: Frame) -> Any:
        o = obj(frame)
        if o.__class__ is FactValue:  # the common case: a binding's field
            fields = o.fields
            if name in fields:
                return fields[name]
        try:
            return get_attr(o, name, safe)
        except RuleError as exc:
            raise _located(exc, at)

    return attr


def _index(node: IR, ctx: _Ctx) -> Fn:
    obj = compile_expr(node["obj"], ctx)
    index = compile_expr(node["index"], ctx)
    at = node["at"]
    get_index = V.get_index

    def index_(frame: Frame) -> Any:
        try:
            return get_index(obj(frame), index(frame))
        except RuleError as exc:
            raise _located(exc, at)

    return index_


_PY_ERRORS = (TypeError, ValueError, AttributeError, IndexError, KeyError, OverflowError)


def _method(node: IR, ctx: _Ctx) -> Fn:
    obj = compile_expr(node["obj"], ctx)
    name, safe, spread, at = node["name"], node["safe"], node["spread"], node["at"]
    impl = METHODS[name]
    args = [compile_expr(a, ctx) for a in node["args"]]
    pending_ok = name == "plus"  # `xs.plus(f(x))` appends a placeholder, like `xs + f(x)`

    def bad_call(recv: Any, vals: list[Any]) -> RuleError:
        kinds = ", ".join(type_name(x) for x in vals)
        return RuleError(f"cannot call {name}({kinds}) on {type_name(recv)}", "TypeError", at)

    def apply(frame: Frame, recv: Any, vals: list[Any]) -> Any:
        if recv.__class__ is Placeholder:
            raise recv.pending(f"as the receiver of '{name}'")
        meter = frame.meter
        meter.tick()
        try:
            return impl(meter, recv, *vals)
        except RuleError as exc:
            raise _located(exc, at)
        except _PY_ERRORS:
            raise bad_call(recv, vals) from None

    def arguments(frame: Frame) -> list[Any]:
        vals = [a(frame) for a in args]
        if not pending_ok:
            for x in vals:
                if x.__class__ is Placeholder:
                    raise _located(x.pending(f"as an argument of '{name}'"), at)
        return vals

    if spread:
        def spread_method(frame: Frame) -> Any:
            recv = obj(frame)
            if recv is None and safe:
                return None
            if recv.__class__ is not list:
                V.check_known(f"as the receiver of '{name}'", recv)
                raise RuleError(f"'*.' needs a List, not {type_name(recv)}", "TypeError", at)
            vals = arguments(frame)
            return [None if x is None else apply(frame, x, vals) for x in recv]

        return spread_method

    if not args:
        def method0(frame: Frame) -> Any:
            recv = obj(frame)
            if recv is None and safe:
                return None
            return apply(frame, recv, [])

        return method0

    def method(frame: Frame) -> Any:
        recv = obj(frame)
        if recv is None and safe:
            return None
        return apply(frame, recv, arguments(frame))

    return method


def _call(node: IR, ctx: _Ctx) -> Fn:
    name, at = node["name"], node["at"]
    read = _reader(name, ctx, at)
    args = [compile_expr(a, ctx) for a in node["args"]]
    n = len(args)

    def call(frame: Frame) -> Any:
        fn = read(frame)
        if fn.__class__ is not Closure:
            V.check_known("as a closure", fn)
            raise RuleError(f"'{name}' is {type_name(fn)}, not a closure", "TypeError", at)
        vals = [a(frame) for a in args]
        if fn.explicit:
            if n != fn.arity:
                raise RuleError(
                    f"closure '{name}' takes {fn.arity} argument(s), not {n}", "ArityError", at
                )
        elif n > 1:
            raise RuleError(f"closure '{name}' takes 0 or 1 argument (it), not {n}", "ArityError", at)
        elif n == 0:
            vals = [None]
        try:
            return fn.fn(*vals)
        except RuleError as exc:
            raise _located(exc, at)

    return call


def _invoke(node: IR, ctx: _Ctx) -> Fn:
    function, at = node["function"], node["at"]
    args = [compile_expr(a, ctx) for a in node["args"]]
    where = f"as an argument of '{function}'"

    def invoke(frame: Frame) -> Any:
        try:
            vals = [v if (v := a(frame)).__class__ in _SCALARS else data(v, where) for a in args]
        except RuleError as exc:
            raise _located(exc, at)
        return frame.host.invoke(function, vals)

    return invoke


def _start(node: IR, ctx: _Ctx) -> Fn:
    workflow = node["workflow"]
    facts = [(f["type"], _fact_fields(f, ctx)) for f in node["facts"]]

    def start(frame: Frame) -> Any:
        return frame.host.start(workflow, [(t, fields(frame)) for t, fields in facts])

    return start


def _fact(node: IR, ctx: _Ctx) -> Fn:
    # A nested `T(...)` is a map of its fields (see the module docstring).
    return _fact_fields(node, ctx)


def _fact_fields(node: IR, ctx: _Ctx) -> Callable[[Frame], dict[str, Any]]:
    fact_type, at = node["type"], node["at"]
    given = tuple((f["name"], compile_expr(f["value"], ctx)) for f in node["fields"])
    where = f"in a field of {fact_type}"

    def fields(frame: Frame) -> dict[str, Any]:
        out: dict[str, Any] = {}
        try:
            for name, value in given:
                v = value(frame)
                out[name] = v if v.__class__ in _SCALARS else data(v, where)
        except RuleError as exc:
            raise _located(exc, at)
        for name, default in frame.host.fact_defaults(fact_type).items():
            if name not in out:
                out[name] = default
        return out

    return fields


def _closure(node: IR, ctx: _Ctx) -> Fn:
    params = list(node["params"])
    explicit = not node["implicit"]
    ctx.push_function(params)
    try:
        body = _function_body(node["body"], ctx)
    finally:
        ctx.pop()
    arity = len(params)

    if arity == 0:
        def make0(frame: Frame) -> Closure:
            meter, host = frame.meter, frame.host
            return Closure(lambda: body(Frame({}, meter, host, frame)), 0, True)

        return make0
    if arity == 1:
        (p,) = params

        def make1(frame: Frame) -> Closure:
            meter, host = frame.meter, frame.host
            return Closure(lambda a: body(Frame({p: a}, meter, host, frame)), 1, explicit)

        return make1

    def make(frame: Frame) -> Closure:
        meter, host = frame.meter, frame.host

        def fn(*args: Any) -> Any:
            return body(Frame(dict(zip(params, args)), meter, host, frame))

        return Closure(fn, arity, True)

    return make


def _unary(node: IR, ctx: _Ctx) -> Fn:
    operand = compile_expr(node["operand"], ctx)
    op, at = node["operator"], node["at"]
    if op == "!":
        def not_(frame: Frame) -> bool:
            try:
                return not truthy(operand(frame))
            except RuleError as exc:
                raise _located(exc, at)

        return not_
    if op == "-":
        negate = V.negate

        def neg(frame: Frame) -> Any:
            try:
                return negate(operand(frame))
            except RuleError as exc:
                raise _located(exc, at)

        return neg

    def plus(frame: Frame) -> Any:
        value = operand(frame)
        if not V.is_number(value):
            V.check_known("as an operand of '+'", value)
            raise RuleError(f"cannot apply '+' to {type_name(value)}", "TypeError", at)
        return value

    return plus


_INT_MIN, _INT_MAX = V.INT_MIN, V.INT_MAX


# Fast paths for the common same-type cases; everything else goes through `values`.


def _fast_add(a: Any, b: Any) -> Any:
    cls = a.__class__
    if cls is int and b.__class__ is int:
        r = a + b
        if _INT_MIN <= r <= _INT_MAX:
            return r
    elif cls is str and b.__class__ is str:
        return a + b
    return V.add(a, b)


def _fast_sub(a: Any, b: Any) -> Any:
    if a.__class__ is int and b.__class__ is int:
        r = a - b
        if _INT_MIN <= r <= _INT_MAX:
            return r
    return V.subtract(a, b)


def _fast_mul(a: Any, b: Any) -> Any:
    if a.__class__ is int and b.__class__ is int:
        r = a * b
        if _INT_MIN <= r <= _INT_MAX:
            return r
    return V.multiply(a, b)


def _fast_eq(a: Any, b: Any) -> bool:
    cls = a.__class__
    if cls is b.__class__ and (cls is str or cls is int):
        return a == b
    return equals(a, b)


def _ordered(cls: type, other: Any) -> bool:
    """Both operands plain ints, floats or strings of the same class: Python's order is ours."""
    return other.__class__ is cls and (cls is int or cls is str or cls is float)


def _fast_lt(a: Any, b: Any) -> bool:
    return a < b if _ordered(a.__class__, b) else V.less(a, b)


def _fast_le(a: Any, b: Any) -> bool:
    return a <= b if _ordered(a.__class__, b) else V.less_equal(a, b)


def _fast_gt(a: Any, b: Any) -> bool:
    return a > b if _ordered(a.__class__, b) else V.greater(a, b)


def _fast_ge(a: Any, b: Any) -> bool:
    return a >= b if _ordered(a.__class__, b) else V.greater_equal(a, b)


_BINARY: dict[str, Callable[[Any, Any], Any]] = {
    "==": _fast_eq,
    "!=": lambda a, b: not _fast_eq(a, b),
    "<": _fast_lt,
    "<=": _fast_le,
    ">": _fast_gt,
    ">=": _fast_ge,
    "in": lambda a, b: V.contains(b, a),
    "+": _fast_add,
    "-": _fast_sub,
    "*": _fast_mul,
    "/": V.divide,
    "%": V.modulo,
}


def _binary(node: IR, ctx: _Ctx) -> Fn:
    op, at = node["operator"], node["at"]
    left = compile_expr(node["left"], ctx)
    right_node = node["right"]
    right = compile_expr(right_node, ctx)
    if op == "&&":
        def and_(frame: Frame) -> bool:
            try:
                return truthy(left(frame)) and truthy(right(frame))
            except RuleError as exc:
                raise _located(exc, at)

        return and_
    if op == "||":
        def or_(frame: Frame) -> bool:
            try:
                return truthy(left(frame)) or truthy(right(frame))
            except RuleError as exc:
                raise _located(exc, at)

        return or_
    fn = _BINARY[op]
    if _is_lit(right_node):
        constant = right_node["value"]

        def binary_const(frame: Frame) -> Any:
            try:
                return fn(left(frame), constant)
            except RuleError as exc:
                raise _located(exc, at)

        return binary_const

    def binary(frame: Frame) -> Any:
        try:
            return fn(left(frame), right(frame))
        except RuleError as exc:
            raise _located(exc, at)

    return binary


def _ternary(node: IR, ctx: _Ctx) -> Fn:
    cond = compile_expr(node["cond"], ctx)
    then = compile_expr(node["then"], ctx)
    other = compile_expr(node["else"], ctx)
    at = node["at"]

    def ternary(frame: Frame) -> Any:
        try:
            test = truthy(cond(frame))
        except RuleError as exc:
            raise _located(exc, at)
        return then(frame) if test else other(frame)

    return ternary


def _elvis(node: IR, ctx: _Ctx) -> Fn:
    left = compile_expr(node["left"], ctx)
    right = compile_expr(node["right"], ctx)
    at = node["at"]

    def elvis(frame: Frame) -> Any:
        value = left(frame)
        try:
            test = truthy(value)
        except RuleError as exc:
            raise _located(exc, at)
        return value if test else right(frame)

    return elvis


def _range_bounds(start: Any, end: Any, exclusive: bool) -> range:
    if start.__class__ is not int or end.__class__ is not int:
        V.check_known("as a range bound", start, end)
        raise RuleError(
            f"a range needs integers, not {type_name(start)} and {type_name(end)}", "TypeError"
        )
    return range(start, end if exclusive else end + 1)


def _range(node: IR, ctx: _Ctx) -> Fn:
    start = compile_expr(node["start"], ctx)
    end = compile_expr(node["end"], ctx)
    exclusive, at = node["exclusive"], node["at"]

    def range_(frame: Frame) -> list[int]:
        try:
            bounds = _range_bounds(start(frame), end(frame), exclusive)
            frame.meter.tick(len(bounds))  # charge before building: `0..10**12` fails cleanly
        except RuleError as exc:
            raise _located(exc, at)
        return list(bounds)

    return range_


_EXPR: dict[str, Callable[[IR, _Ctx], Fn]] = {
    "lit": _lit,
    "interp": _interp,
    "var": _var,
    "field": _field,
    "list": _list,
    "map": _map,
    "attr": _attr,
    "index": _index,
    "method": _method,
    "call": _call,
    "invoke": _invoke,
    "start": _start,
    "closure": _closure,
    "unary": _unary,
    "binary": _binary,
    "ternary": _ternary,
    "elvis": _elvis,
    "range": _range,
    "fact": _fact,
}


# ── statements ─────────────────────────────────────────────────────────────────────────────────
# A compiled statement returns None, or a _Return to leave its closure or section.

Stmt = Callable[[Frame], "_Return | None"]


def _stmt(node: IR, ctx: _Ctx) -> Stmt:
    return _STMT[node["op"]](node, ctx)


def _runner(stmts: list[IR], ctx: _Ctx, extra_steps: int = 0) -> Stmt:
    """Statements in the current scope, charging `len(stmts) + extra_steps` on entry."""
    pairs = tuple((_stmt(s, ctx), s["at"]) for s in stmts)
    n = len(pairs) + extra_steps
    if not pairs:
        if n == 0:
            return lambda frame: None

        def charge(frame: Frame) -> None:
            frame.meter.tick(n)

        return charge
    if len(pairs) == 1:
        ((only, only_at),) = pairs

        def run1(frame: Frame) -> _Return | None:
            frame.meter.tick(n)
            try:
                return only(frame)
            except RuleError as exc:
                raise _located(exc, only_at)

        return run1

    def run(frame: Frame) -> _Return | None:
        frame.meter.tick(n)
        at = None
        try:
            for fn, at in pairs:
                signal = fn(frame)
                if signal is not None:
                    return signal
        except RuleError as exc:
            raise _located(exc, at)  # type: ignore[arg-type]
        return None

    return run


def _block(stmts: list[IR] | None, ctx: _Ctx) -> Stmt:
    """A braced block (`if`/`else` body) in its own scope, with its own frame when needed."""
    if not stmts:
        return lambda frame: None
    own = ctx.push_block(stmts)
    try:
        inner = _runner(stmts, ctx)
    finally:
        ctx.pop()
    if not own:
        return inner
    return lambda frame: inner(Frame({}, frame.meter, frame.host, frame))


def _function_body(stmts: list[IR], ctx: _Ctx) -> Fn:
    """The body of a section or closure (in the current function scope): returns its value."""
    steps = max(1, len(stmts))
    if not stmts:
        def empty(frame: Frame) -> None:
            frame.meter.tick(1)

        return empty
    init = tuple((_stmt(s, ctx), s["at"]) for s in stmts[:-1])
    last = stmts[-1]
    last_at = last["at"]
    if last["op"] == "expr":
        tail: Fn = compile_expr(last["expr"], ctx)
    elif last["op"] == "return":
        tail = compile_expr(last["value"], ctx) if last["value"] is not None else _const(None)
    else:
        final = _stmt(last, ctx)

        def tail(frame: Frame) -> Any:
            signal = final(frame)
            return None if signal is None else signal.value

    if not init:
        def body1(frame: Frame) -> Any:
            frame.meter.tick(steps)
            try:
                return tail(frame)
            except RuleError as exc:
                raise _located(exc, last_at)

        return body1

    def body(frame: Frame) -> Any:
        frame.meter.tick(steps)
        at = None
        try:
            for fn, at in init:
                signal = fn(frame)
                if signal is not None:
                    return signal.value
            at = last_at
            return tail(frame)
        except RuleError as exc:
            raise _located(exc, at)  # type: ignore[arg-type]

    return body


def _s_expr(node: IR, ctx: _Ctx) -> Stmt:
    expr = compile_expr(node["expr"], ctx)

    def expr_stmt(frame: Frame) -> None:
        expr(frame)

    return expr_stmt


def _s_def(node: IR, ctx: _Ctx) -> Stmt:
    name = node["name"]
    value = compile_expr(node["value"], ctx) if node["value"] is not None else _const(None)
    ctx.declare(name)  # after the value: `def x = x` reads an outer x, as the checker sees it

    def def_(frame: Frame) -> None:
        frame.vars[name] = value(frame)

    return def_


def _s_assign(node: IR, ctx: _Ctx) -> Stmt:
    target, op, at = node["target"], node["operator"], node["at"]
    value = compile_expr(node["value"], ctx)
    combine = {"=": None, "+=": _fast_add, "-=": _fast_sub}[op]
    if target["op"] == "var":
        return _assign_var(target["name"], combine, value, ctx, at)
    # `a.b[i].c op= v`: walk down to the local at the root, collecting the steps.
    steps: list[tuple[str, Any]] = []
    node_ = target
    while node_["op"] in ("attr", "index"):
        if node_["op"] == "attr":
            steps.append(("key", node_["name"]))
        else:
            steps.append(("index", compile_expr(node_["index"], ctx)))
        node_ = node_["obj"]
    steps.reverse()
    if node_["op"] != "var":
        def refuse(frame: Frame) -> None:
            raise RuleError(
                "can only assign into a list or map held in a local (def) or parameter",
                "TypeError", at,
            )

        return refuse
    root = node_["name"]
    if ctx.depth(root) is None:
        def refuse_binding(frame: Frame) -> None:
            raise RuleError(
                f"'{root}' is a match binding, and facts are read-only: use modify {root} {{ ... }}",
                "TypeError", at,
            )

        return refuse_binding
    read = _reader(root, ctx, at)
    owner = _owner(root, ctx)

    def assign_into(frame: Frame) -> None:
        try:
            keys = [k if kind == "key" else k(frame) for kind, k in steps]
            new = value(frame)
            holder = owner(frame)
            holder[root] = _updated(read(frame), keys, new, combine, frame.meter)
        except RuleError as exc:
            raise _located(exc, at)

    return assign_into


def _assign_var(name: str, combine: Callable[[Any, Any], Any] | None, value: Fn, ctx: _Ctx,
                at: list[int]) -> Stmt:
    owner = _owner(name, ctx)
    if combine is None:
        def assign(frame: Frame) -> None:
            owner(frame)[name] = value(frame)

        return assign
    read = _reader(name, ctx, at)

    def assign_op(frame: Frame) -> None:
        new = combine(read(frame), value(frame))
        owner(frame)[name] = new

    return assign_op


def _updated(container: Any, keys: list[Any], new: Any,
             combine: Callable[[Any, Any], Any] | None, meter: Meter) -> Any:
    """A copy of `container` with the element at path `keys` set (or combined with) `new`."""
    key = keys[0]
    if container.__class__ is dict:
        k = key if key.__class__ is str else to_text(key)
        old = container.get(k)
        out_map = dict(container)
        meter.tick(1 + len(container) // 64)
        out_map[k] = _leaf(old, keys[1:], new, combine, meter)
        return out_map
    if container.__class__ is list:
        if key.__class__ is not int:
            V.check_known("as an index", key)
            raise RuleError(f"a List index must be an int, not {type_name(key)}", "TypeError")
        i = key + len(container) if key < 0 else key
        if i < 0:
            raise RuleError(f"index {key} is before the start of a list of {len(container)}", "IndexError")
        meter.tick(1 + max(0, i - len(container)) + len(container) // 64)
        out_list = list(container)
        if i >= len(out_list):
            out_list.extend([None] * (i + 1 - len(out_list)))
        out_list[i] = _leaf(out_list[i], keys[1:], new, combine, meter)
        return out_list
    if container.__class__ is FactValue:
        raise RuleError(
            f"facts are read-only: cannot assign to '{to_text(key)}' of {container.type} "
            "(use modify)", "TypeError",
        )
    if container is None:
        raise RuleError(f"cannot assign to '{to_text(key)}' of null", "NullPointer")
    V.check_known("as an assignment target", container)
    raise RuleError(f"cannot assign into {type_name(container)}", "TypeError")


def _leaf(old: Any, rest: list[Any], new: Any, combine: Callable[[Any, Any], Any] | None,
          meter: Meter) -> Any:
    if rest:
        return _updated(old, rest, new, combine, meter)
    return new if combine is None else combine(old, new)


def _s_if(node: IR, ctx: _Ctx) -> Stmt:
    cond = compile_expr(node["cond"], ctx)
    then = _block(node["then"], ctx)
    other = _block(node["else"], ctx) if node["else"] else None
    at = node["at"]

    def test(frame: Frame) -> bool:
        try:
            return truthy(cond(frame))
        except RuleError as exc:
            raise _located(exc, at)

    if other is None:
        def if_(frame: Frame) -> _Return | None:
            return then(frame) if test(frame) else None

        return if_

    def if_else(frame: Frame) -> _Return | None:
        return then(frame) if test(frame) else other(frame)

    return if_else


def _items(value: Any) -> Iterable[Any]:
    cls = value.__class__
    if cls is list or cls is str:
        return value
    if cls is dict:
        return [{"key": k, "value": x} for k, x in value.items()]
    if value is None:
        return ()
    V.check_known("as what a 'for' loops over", value)
    raise RuleError(f"cannot loop over {type_name(value)}: 'for' takes a List, Map, String or range",
                    "TypeError")


def _s_for(node: IR, ctx: _Ctx) -> Stmt:
    var, at = node["var"], node["at"]
    iterable = node["iterable"]
    if iterable["op"] == "range":  # loop over the bounds lazily: no list is built
        start = compile_expr(iterable["start"], ctx)
        end = compile_expr(iterable["end"], ctx)
        exclusive = iterable["exclusive"]

        def items(frame: Frame) -> Iterable[Any]:
            return _range_bounds(start(frame), end(frame), exclusive)
    else:
        source = compile_expr(iterable, ctx)

        def items(frame: Frame) -> Iterable[Any]:
            return _items(source(frame))

    own = ctx.push_block(node["body"], (var,))
    ctx.declare(var)
    try:
        body = _runner(node["body"], ctx, extra_steps=1)
    finally:
        ctx.pop()

    if own:
        def for_own(frame: Frame) -> _Return | None:
            try:
                seq = items(frame)
            except RuleError as exc:
                raise _located(exc, at)
            meter, host = frame.meter, frame.host
            for x in seq:
                signal = body(Frame({var: x}, meter, host, frame))
                if signal is not None:
                    return signal
            return None

        return for_own

    def for_(frame: Frame) -> _Return | None:
        try:
            seq = items(frame)
        except RuleError as exc:
            raise _located(exc, at)
        local = frame.vars
        for x in seq:
            local[var] = x
            signal = body(frame)
            if signal is not None:
                return signal
        return None

    return for_


def _s_return(node: IR, ctx: _Ctx) -> Stmt:
    value = compile_expr(node["value"], ctx) if node["value"] is not None else _const(None)
    return lambda frame: _Return(value(frame))


def _s_insert(node: IR, ctx: _Ctx) -> Stmt:
    fact = node["fact"]
    fact_type = fact["type"]
    fields = _fact_fields(fact, ctx)

    def insert(frame: Frame) -> None:
        frame.host.insert(fact_type, fields(frame))

    return insert


def _fact_of(name: str, ctx: _Ctx, at: list[int], verb: str) -> Callable[[Frame], FactValue]:
    read = _reader(name, ctx, at)

    def fact(frame: Frame) -> FactValue:
        value = read(frame)
        if value.__class__ is not FactValue:
            V.check_known(f"with {verb}", value)
            raise RuleError(f"{verb} takes a fact, and '{name}' is {type_name(value)}", "TypeError", at)
        return value

    return fact


def _s_modify(node: IR, ctx: _Ctx) -> Stmt:
    name, at = node["binding"], node["at"]
    fact = _fact_of(name, ctx, at, "modify")
    owner = _owner(name, ctx)
    assignments = tuple((f["name"], compile_expr(f["value"], ctx)) for f in node["fields"])

    def modify(frame: Frame) -> None:
        old = fact(frame)
        changes: dict[str, Any] = {}
        for field_name, value in assignments:  # every right side sees the old fact
            if field_name not in old.fields:
                raise RuleError(f"{old.type} has no field '{field_name}'", "MissingField", at)
            changes[field_name] = data(value(frame), f"in a field of {old.type}")
        new = frame.host.modify(old, changes)
        if new is None:
            new = FactValue(old.type, {**old.fields, **changes}, old.id, old.version + 1)
        owner(frame)[name] = new

    return modify


def _s_retract(node: IR, ctx: _Ctx) -> Stmt:
    name, at = node["binding"], node["at"]
    fact = _fact_of(name, ctx, at, "retract")
    owner = _owner(name, ctx)

    def retract(frame: Frame) -> None:
        frame.host.retract(fact(frame))
        owner(frame)[name] = RETRACTED

    return retract


def _s_complete(node: IR, ctx: _Ctx) -> Stmt:
    fields = tuple((f["name"], compile_expr(f["value"], ctx)) for f in node["fields"])

    def complete(frame: Frame) -> None:
        frame.host.complete({name: data(value(frame), "in the output") for name, value in fields})

    return complete


def _s_fail(node: IR, ctx: _Ctx) -> Stmt:
    reason, at = compile_expr(node["reason"], ctx), node["at"]

    def fail(frame: Frame) -> None:
        text = to_text(reason(frame))
        frame.host.fail(text)
        raise Failed(text, at)

    return fail


def _s_log(node: IR, ctx: _Ctx) -> Stmt:
    message = compile_expr(node["message"], ctx)

    def log(frame: Frame) -> None:
        frame.host.log(to_text(message(frame)))

    return log


_STMT: dict[str, Callable[[IR, _Ctx], Stmt]] = {
    "expr": _s_expr,
    "def": _s_def,
    "assign": _s_assign,
    "if": _s_if,
    "for": _s_for,
    "return": _s_return,
    "insert": _s_insert,
    "modify": _s_modify,
    "retract": _s_retract,
    "complete": _s_complete,
    "fail": _s_fail,
    "log": _s_log,
}


# ── sections ───────────────────────────────────────────────────────────────────────────────────


def compile_block(stmts: list[IR], params: Iterable[str] = ()) -> Fn:
    """Statements as a function body: call with a Frame; gives the value of the last expression
    statement (or the returned value). `params` are names the frame declares (not bindings)."""
    ctx = _Ctx(_retracted_names(stmts), params)
    return _function_body(stmts, ctx)


class Section:
    """One compiled section (action, reaction or error)."""

    __slots__ = ("param", "body")

    def __init__(self, param: str | None, body: Fn) -> None:
        self.param = param
        self.body = body

    def run(self, bindings: Mapping[str, Any], param_value: Any, host: Any, meter: Meter) -> Any:
        """Run with the activation's bindings (name -> FactValue, or list for collect) and the
        section parameter's value; returns the section's value (placeholders unresolved).
        Raises RuleError (with `at`), LimitError, or Failed."""
        env = dict(bindings)
        if self.param is not None:
            env[self.param] = param_value
        frame = Frame(env, meter, host)
        try:
            return self.body(frame)
        except RecursionError:
            who = f"rule '{meter.rule}'" if meter.rule is not None else "the section"
            raise LimitError(f"{who} nested closure calls too deeply", meter.limit, "DepthLimit") from None
        finally:
            # A root frame refers to itself, and closures in its variables refer back to it: both
            # are cycles only the garbage collector could free. Nothing outlives the run (what
            # leaves a section is data), so they are broken here and freed at once.
            env.clear()
            frame.root = None  # type: ignore[assignment]


def compile_section(section_ir: IR) -> Section:
    """Compile `{"param": name|None, "body": [statements]}` once; run it many times."""
    param = section_ir["param"]
    body = section_ir["body"]
    ctx = _Ctx(_retracted_names(body), [param] if param else [])
    return Section(param, _function_body(body, ctx))
