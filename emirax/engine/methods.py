"""The collection and string methods of rule code (`xs.collect { ... }`, `s.toUpperCase()`).

One table, `METHODS`, maps a method name to its implementation. Each implementation takes the
section's `Meter` (so loops over big collections and closure calls are charged to the step budget),
the receiver and the arguments, and never mutates the receiver: collection methods return new
values, as the language promises. A method applied to a receiver it does not know fails with a
`RuleError` naming both.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from decimal import ROUND_HALF_UP, Decimal
from typing import Any, Protocol

from emirax.engine.values import (
    Closure,
    FactValue,
    RuleError,
    compare,
    contains,
    equals,
    intdiv,
    is_number,
    sort_key,
    to_text,
    truthy,
    type_name,
)
from emirax.engine import values as v


class Meter(Protocol):
    """What methods need from the section's step budget."""

    def tick(self, n: int = 1) -> None: ...


Method = Callable[..., Any]
METHODS: dict[str, Method] = {}

# What Java's Integer/Double parsers accept (Python's int() would also take '1_000' and ' 1 ').
_INTEGER = re.compile(r"[+-]?[0-9]+")
_NUMBER = re.compile(r"[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?")


def method(*names: str) -> Callable[[Method], Method]:
    def register(fn: Method) -> Method:
        for name in names:
            METHODS[name] = fn
        return fn

    return register


def call_method(meter: Meter, receiver: Any, name: str, args: list[Any]) -> Any:
    """Apply method `name` to `receiver` with `args`; the one entry point for compiled code."""
    impl = METHODS.get(name)
    if impl is None:
        raise RuleError(f"unknown method '{name}'", "MissingMethod")
    meter.tick()
    try:
        return impl(meter, receiver, *args)
    except TypeError as exc:  # wrong argument count for the method
        if "positional argument" in str(exc):
            raise RuleError(f"wrong number of arguments for {type_name(receiver)}.{name}()", "ArityError") from None
        raise


# ── helpers ────────────────────────────────────────────────────────────────────────────────────


def _items(meter: Meter, receiver: Any, name: str) -> list[Any]:
    """The elements a collection method walks: a list, a map's entries, a string's characters."""
    if isinstance(receiver, list):
        items = receiver
    elif isinstance(receiver, dict):
        items = [{"key": k, "value": val} for k, val in receiver.items()]
    elif isinstance(receiver, str):
        items = list(receiver)
    else:
        raise RuleError(f"{type_name(receiver)} has no method '{name}'", "MissingMethod")
    meter.tick(len(items))
    return items


def _closure(fn: Any, name: str) -> Closure:
    if not isinstance(fn, Closure):
        raise RuleError(f"{name} needs a closure, not {type_name(fn)}", "TypeError")
    return fn


def _apply(meter: Meter, fn: Closure, item: Any) -> Any:
    meter.tick()
    if fn.arity == 2 and item.__class__ is dict and item.keys() == {"key", "value"}:
        return fn(item["key"], item["value"])
    if fn.arity == 1:
        return fn.fn(item)  # the common case, without Closure.__call__'s adaptation
    return fn(item)


def _need(receiver: Any, kind: type | tuple[type, ...], name: str) -> None:
    if not isinstance(receiver, kind) or isinstance(receiver, bool):
        raise RuleError(f"{type_name(receiver)} has no method '{name}'", "MissingMethod")


# ── size and membership ────────────────────────────────────────────────────────────────────────


@method("size", "length")
def _size(meter: Meter, receiver: Any) -> int:
    _need(receiver, (list, dict, str), "size")
    return len(receiver)


@method("isEmpty")
def _is_empty(meter: Meter, receiver: Any) -> bool:
    _need(receiver, (list, dict, str), "isEmpty")
    return len(receiver) == 0


@method("contains")
def _contains(meter: Meter, receiver: Any, item: Any) -> bool:
    meter.tick(len(receiver) if isinstance(receiver, (list, str)) else 1)
    return contains(receiver, item)


@method("containsKey")
def _contains_key(meter: Meter, receiver: Any, key: Any) -> bool:
    _need(receiver, dict, "containsKey")
    return key in receiver


@method("get")
def _get(meter: Meter, receiver: Any, key: Any, default: Any = None) -> Any:
    found = v.get_index(receiver, key)
    return default if found is None else found


@method("keySet")
def _key_set(meter: Meter, receiver: Any) -> list[Any]:
    _need(receiver, dict, "keySet")
    return list(receiver.keys())


@method("values")
def _values(meter: Meter, receiver: Any) -> list[Any]:
    _need(receiver, dict, "values")
    return list(receiver.values())


# ── iteration ──────────────────────────────────────────────────────────────────────────────────


@method("each")
def _each(meter: Meter, receiver: Any, fn: Any) -> Any:
    fn = _closure(fn, "each")
    for item in _items(meter, receiver, "each"):
        _apply(meter, fn, item)
    return receiver


@method("eachWithIndex")
def _each_with_index(meter: Meter, receiver: Any, fn: Any) -> Any:
    fn = _closure(fn, "eachWithIndex")
    for i, item in enumerate(_items(meter, receiver, "eachWithIndex")):
        meter.tick()
        fn(item, i)
    return receiver


@method("collect")
def _collect(meter: Meter, receiver: Any, fn: Any = None) -> list[Any]:
    items = _items(meter, receiver, "collect")
    if fn is None:
        return list(items)
    fn = _closure(fn, "collect")
    return [_apply(meter, fn, item) for item in items]


@method("collectEntries")
def _collect_entries(meter: Meter, receiver: Any, fn: Any) -> dict[str, Any]:
    fn = _closure(fn, "collectEntries")
    out: dict[str, Any] = {}
    for item in _items(meter, receiver, "collectEntries"):
        pair = _apply(meter, fn, item)
        if isinstance(pair, dict):
            out.update(pair)
        elif isinstance(pair, list) and len(pair) == 2:
            out[to_text(pair[0])] = pair[1]
        else:
            raise RuleError("collectEntries' closure must return [key, value] or a map", "TypeError")
    return out


@method("findAll")
def _find_all(meter: Meter, receiver: Any, fn: Any = None) -> Any:
    items = _items(meter, receiver, "findAll")
    keep = [item for item in items if truthy(_apply(meter, _closure(fn, "findAll"), item) if fn else item)]
    if isinstance(receiver, dict):
        return {e["key"]: e["value"] for e in keep}
    return keep


@method("find")
def _find(meter: Meter, receiver: Any, fn: Any = None) -> Any:
    for item in _items(meter, receiver, "find"):
        if truthy(_apply(meter, _closure(fn, "find"), item) if fn else item):
            return item
    return None


@method("any")
def _any(meter: Meter, receiver: Any, fn: Any = None) -> bool:
    return any(truthy(_apply(meter, _closure(fn, "any"), x) if fn else x) for x in _items(meter, receiver, "any"))


@method("every")
def _every(meter: Meter, receiver: Any, fn: Any = None) -> bool:
    return all(truthy(_apply(meter, _closure(fn, "every"), x) if fn else x) for x in _items(meter, receiver, "every"))


@method("count")
def _count(meter: Meter, receiver: Any, what: Any) -> int:
    items = _items(meter, receiver, "count")
    if isinstance(what, Closure):
        return sum(1 for x in items if truthy(_apply(meter, what, x)))
    return sum(1 for x in items if equals(x, what))


@method("inject")
def _inject(meter: Meter, receiver: Any, initial: Any, fn: Any = None) -> Any:
    if fn is None:
        items = _items(meter, receiver, "inject")
        if not items:
            return None
        initial, items, fn = items[0], items[1:], initial
    else:
        items = _items(meter, receiver, "inject")
    fn = _closure(fn, "inject")
    acc = initial
    for item in items:
        meter.tick()
        acc = fn(acc, item)
    return acc


@method("groupBy")
def _group_by(meter: Meter, receiver: Any, fn: Any) -> dict[str, list[Any]]:
    fn = _closure(fn, "groupBy")
    groups: dict[str, list[Any]] = {}
    for item in _items(meter, receiver, "groupBy"):
        key = _apply(meter, fn, item)
        groups.setdefault(key if isinstance(key, str) else to_text(key), []).append(item)
    return groups


@method("withIndex")
def _with_index(meter: Meter, receiver: Any) -> list[list[Any]]:
    return [[item, i] for i, item in enumerate(_items(meter, receiver, "withIndex"))]


# ── aggregation and ordering ───────────────────────────────────────────────────────────────────


@method("sum")
def _sum(meter: Meter, receiver: Any, fn: Any = None) -> Any:
    items = _items(meter, receiver, "sum")
    if fn is not None:
        items = [_apply(meter, _closure(fn, "sum"), x) for x in items]
    total: Any = 0
    for x in items:
        total = v.add(total, x) if total != 0 or not isinstance(x, (str, list)) else x
    return total


def _order(a: Any, b: Any) -> int:
    """`compare` with null as the smallest value (Groovy's min/max): never None."""
    if a is None or b is None:
        return (a is not None) - (b is not None)
    return compare(a, b) or 0


def _extreme(meter: Meter, receiver: Any, fn: Any, name: str, sign: int) -> Any:
    items = _items(meter, receiver, name)
    if not items:
        return None
    best = items[0]
    if fn is None or (isinstance(fn, Closure) and fn.arity == 1):
        key = (lambda x: _apply(meter, fn, x)) if fn is not None else (lambda x: x)
        best_key = key(best)
        for item in items[1:]:
            k = key(item)
            if _order(k, best_key) * sign > 0:  # strictly better: ties keep the first
                best, best_key = item, k
        return best
    fn = _closure(fn, name)
    for item in items[1:]:
        meter.tick()
        c = fn(item, best)
        if not is_number(c):
            raise RuleError(f"a {name} comparator must return a number, not {type_name(c)}", "TypeError")
        if c * sign > 0:
            best = item
    return best


@method("max")
def _max(meter: Meter, receiver: Any, fn: Any = None) -> Any:
    return _extreme(meter, receiver, fn, "max", 1)


@method("min")
def _min(meter: Meter, receiver: Any, fn: Any = None) -> Any:
    return _extreme(meter, receiver, fn, "min", -1)


@method("sort")
def _sort(meter: Meter, receiver: Any, fn: Any = None) -> list[Any]:
    items = list(_items(meter, receiver, "sort"))
    meter.tick(len(items))
    if fn is None:
        return sorted(items, key=sort_key)
    fn = _closure(fn, "sort")
    if fn.arity == 1:
        return sorted(items, key=lambda x: sort_key(_apply(meter, fn, x)))
    import functools

    def cmp(a: Any, b: Any) -> int:
        meter.tick()
        c = fn(a, b)
        if not is_number(c):
            raise RuleError("a sort comparator must return a number", "TypeError")
        return (c > 0) - (c < 0)

    return sorted(items, key=functools.cmp_to_key(cmp))


@method("unique")
def _unique(meter: Meter, receiver: Any, fn: Any = None) -> list[Any]:
    out: list[Any] = []
    keys: list[Any] = []
    for item in _items(meter, receiver, "unique"):
        k = _apply(meter, _closure(fn, "unique"), item) if fn else item
        meter.tick(len(keys))
        if not any(equals(k, seen) for seen in keys):
            keys.append(k)
            out.append(item)
    return out


@method("reverse")
def _reverse(meter: Meter, receiver: Any) -> Any:
    if isinstance(receiver, str):
        return receiver[::-1]
    return list(reversed(_items(meter, receiver, "reverse")))


@method("first")
def _first(meter: Meter, receiver: Any) -> Any:
    _need(receiver, list, "first")
    return receiver[0] if receiver else None


@method("last")
def _last(meter: Meter, receiver: Any) -> Any:
    _need(receiver, list, "last")
    return receiver[-1] if receiver else None


@method("take")
def _take(meter: Meter, receiver: Any, n: int) -> Any:
    _need(receiver, (list, str), "take")
    return receiver[: max(n, 0)]


@method("drop")
def _drop(meter: Meter, receiver: Any, n: int) -> Any:
    _need(receiver, (list, str), "drop")
    return receiver[max(n, 0):]


@method("flatten")
def _flatten(meter: Meter, receiver: Any) -> list[Any]:
    out: list[Any] = []

    def walk(xs: list[Any]) -> None:
        meter.tick(len(xs))
        for x in xs:
            walk(x) if isinstance(x, list) else out.append(x)

    _need(receiver, list, "flatten")
    walk(receiver)
    return out


@method("join")
def _join(meter: Meter, receiver: Any, sep: str = "") -> str:
    return sep.join(to_text(x) for x in _items(meter, receiver, "join"))


@method("plus")
def _plus(meter: Meter, receiver: Any, other: Any) -> Any:
    return v.add(receiver, other)


@method("minus")
def _minus(meter: Meter, receiver: Any, other: Any) -> Any:
    return v.subtract(receiver, other)


# ── strings ────────────────────────────────────────────────────────────────────────────────────


def _string_method(name: str, fn: Callable[..., Any]) -> None:
    def impl(meter: Meter, receiver: Any, *args: Any) -> Any:
        _need(receiver, str, name)
        meter.tick(max(1, len(receiver) // 64))
        return fn(receiver, *args)

    METHODS[name] = impl


for _name, _fn in {
    "toUpperCase": str.upper,
    "toLowerCase": str.lower,
    "trim": str.strip,
    "startsWith": lambda s, p: s.startswith(p),
    "endsWith": lambda s, p: s.endswith(p),
    "indexOf": lambda s, p: s.find(p),
    "replace": lambda s, a, b: s.replace(a, b),
    "split": lambda s, sep=None: _split(s, sep),
    "substring": lambda s, a, b=None: _substring(s, a, len(s) if b is None else b),
    "capitalize": lambda s: s[:1].upper() + s[1:],
    "padLeft": lambda s, n, c=" ": s.rjust(n, c),
    "padRight": lambda s, n, c=" ": s.ljust(n, c),
    "isNumber": lambda s: _NUMBER.fullmatch(s) is not None,
    "isInteger": lambda s: _INTEGER.fullmatch(s) is not None,
}.items():
    _string_method(_name, _fn)


def _split(s: str, sep: str | None) -> list[str]:
    """Java's split on a literal separator: trailing empty strings are dropped."""
    if not sep:
        return s.split()
    parts = s.split(sep)
    while parts and parts[-1] == "":
        parts.pop()
    return parts


def _substring(s: str, start: int, end: int) -> str:
    """Java's substring: indices must lie inside the string (no counting from the end)."""
    if not 0 <= start <= end <= len(s):
        raise RuleError(f"substring({start}, {end}) is outside a string of length {len(s)}", "IndexError")
    return s[start:end]


# ── numbers and conversions ────────────────────────────────────────────────────────────────────


@method("intdiv")
def _intdiv(meter: Meter, receiver: Any, other: Any) -> int:
    return intdiv(receiver, other)


@method("abs")
def _abs(meter: Meter, receiver: Any) -> Any:
    _need(receiver, (int, float), "abs")
    return v.checked_int(abs(receiver)) if isinstance(receiver, int) else abs(receiver)


@method("round")
def _round(meter: Meter, receiver: Any, digits: int | None = None) -> Any:
    _need(receiver, (int, float), "round")
    if digits is None:
        # Math.round: half up, also for negative numbers (-2.5 rounds to -2).
        return receiver if isinstance(receiver, int) else v.checked_int(math.floor(receiver + 0.5))
    quantum = Decimal(1).scaleb(-digits)
    return float(Decimal(repr(float(receiver))).quantize(quantum, rounding=ROUND_HALF_UP))


@method("toInteger")
def _to_integer(meter: Meter, receiver: Any) -> int:
    if isinstance(receiver, str) and _INTEGER.fullmatch(receiver.strip()):
        return v.checked_int(int(receiver.strip()))
    if is_number(receiver) and math.isfinite(receiver):
        return v.checked_int(int(receiver))
    raise RuleError(f"cannot convert {to_text(receiver)!r} to an integer", "NumberFormat")


@method("toDouble")
def _to_double(meter: Meter, receiver: Any) -> float:
    if (isinstance(receiver, str) and _NUMBER.fullmatch(receiver.strip())) or is_number(receiver):
        return float(receiver)
    raise RuleError(f"cannot convert {to_text(receiver)!r} to a double", "NumberFormat")


@method("toString")
def _to_string(meter: Meter, receiver: Any) -> str:
    return to_text(receiver)


@method("fields")
def _fields(meter: Meter, receiver: Any) -> dict[str, Any]:
    _need(receiver, FactValue, "fields")
    return dict(receiver.fields)
