"""Groovy value semantics for rule code: truth, equality, ordering, arithmetic and text.

Rule values are plain JSON-shaped Python values (None, bool, int, float, str, list, dict) plus
`FactValue` (a read-only view of one fact), `Closure`, and `Placeholder` (the not-yet-known result
of a function called in an action: using one as an operand, condition or receiver is an error). Every operator of the language is defined
here once, so the compiled sections, the matcher and the methods agree on what `==` or `<` means:

- `==` is value equality: `1 == 1.0`, lists and maps compare element-wise, facts by type and fields;
  `true == 1` is false (booleans are not numbers).
- ordering comparisons with null are false; comparing unlike types (a String with an int) is an error.
- `int / int` gives a double (`intdiv` divides integers); integers are 64-bit and overflow is an error.
- `+` concatenates strings (with anything on the right), lists, and merges maps.
- text of a value (interpolation, `toString`) follows Groovy: `[1, a]`, `[k:v]`, `null`, `true`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

INT_MIN = -(2**63)
INT_MAX = 2**63 - 1
# The longest string `*` may build: beyond it a fact could not be stored anyway.
MAX_TEXT = 10_000_000


class RuleError(Exception):
    """An error raised by rule code at run time.

    `at` is the `[line, column]` of the IR node that failed (set by the compiled code, innermost
    node first); the engine adds the rule and file when it reports it.
    """

    def __init__(self, message: str, type_: str = "RuleError", at: list[int] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.type = type_
        self.at = at


class Placeholder:
    """The result of `invoke`/`start` in an action, known only once the invocation finishes.

    It may be stored in lists, maps, locals and closure results; every other use raises the error
    of `pending()`. `id` is the host's number for the invocation, `label` what was called.
    """

    __slots__ = ("id", "label")

    def __init__(self, id: int, label: str) -> None:
        self.id = id
        self.label = label

    def pending(self, what: str = "") -> RuleError:
        where = f": it cannot be used {what}" if what else ""
        return RuleError(
            f"the result of '{self.label}' is not known until the reaction{where}", "PendingValue"
        )

    def __repr__(self) -> str:
        return f"Placeholder({self.id}, {self.label!r})"


def check_known(what: str, *values: Any) -> None:
    """Raise the placeholder error when any of `values` is a placeholder (error paths only)."""
    for value in values:
        if isinstance(value, Placeholder):
            raise value.pending(what)


@dataclass(frozen=True, slots=True)
class FactValue:
    """A fact as rule code sees it: `type`, `fields`, and the engine's `id` and `version`."""

    type: str
    fields: Mapping[str, Any]
    id: int = 0
    version: int = 0

    def get(self, name: str) -> Any:
        if name in self.fields:
            return self.fields[name]
        raise RuleError(f"{self.type} has no field '{name}'", "MissingField")


class Closure:
    """A closure value: `fn` takes exactly `len(params)` arguments (one, `it`, when none declared)."""

    __slots__ = ("fn", "arity", "explicit")

    def __init__(self, fn: Callable[..., Any], arity: int, explicit: bool = True) -> None:
        self.fn = fn
        self.arity = arity if explicit else 1
        self.explicit = explicit

    def __call__(self, *args: Any) -> Any:
        if len(args) == self.arity:
            return self.fn(*args)
        if not args and not self.explicit:
            return self.fn(None)  # `{ it }()`: an implicit-`it` closure called with nothing
        if self.arity == 1:
            # Groovy passes a map entry (or several values) to a one-parameter closure as one value.
            return self.fn(args[0] if len(args) == 1 else list(args))
        if len(args) == 1 and isinstance(args[0], list) and len(args[0]) == self.arity:
            return self.fn(*args[0])
        if self.arity == 0:
            return self.fn()
        raise RuleError(
            f"closure takes {self.arity} parameter(s) but was called with {len(args)}", "ArityError"
        )


def type_name(value: Any) -> str:
    """The language's name for a value's type, for error messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "int"
    if isinstance(value, float):
        return "double"
    if isinstance(value, str):
        return "String"
    if isinstance(value, list):
        return "List"
    if isinstance(value, dict):
        return "Map"
    if isinstance(value, FactValue):
        return value.type
    if isinstance(value, Closure):
        return "Closure"
    if isinstance(value, Placeholder):
        return f"the result of '{value.label}'"
    return type(value).__name__


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def truthy(value: Any) -> bool:
    """Groovy truth: null, false, 0, '' and empty collections are false."""
    if value is None:
        return False
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)):
        return value != 0
    if isinstance(value, (str, list, dict)):
        return len(value) > 0
    check_known("as a condition", value)
    return True


def equals(a: Any, b: Any) -> bool:
    """Groovy `==`: value equality across numbers, collections and facts."""
    if a is b:
        return True
    if a is None or b is None:
        return False
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if is_number(a) and is_number(b):
        return a == b
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(equals(x, y) for x, y in zip(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(equals(a[k], b[k]) for k in a)
    if isinstance(a, FactValue) and isinstance(b, FactValue):
        return a.type == b.type and equals(dict(a.fields), dict(b.fields))
    check_known("as an operand of '=='", a, b)
    return type(a) is type(b) and a == b


def compare(a: Any, b: Any) -> int | None:
    """Order two values: negative, zero or positive; None when either is null (so `<` is false)."""
    if a is None or b is None:
        return None
    if is_number(a) and is_number(b):
        return (a > b) - (a < b)
    if isinstance(a, str) and isinstance(b, str):
        return (a > b) - (a < b)
    if isinstance(a, bool) and isinstance(b, bool):
        return int(a) - int(b)
    if isinstance(a, list) and isinstance(b, list):
        for x, y in zip(a, b):
            c = compare(x, y)
            if c:
                return c
        return len(a) - len(b)
    check_known("in a comparison", a, b)
    raise RuleError(f"cannot compare {type_name(a)} with {type_name(b)}", "TypeError")


def sort_key(value: Any) -> Any:
    """A key for Python's sort that follows `compare` (nulls first, as Groovy sorts them)."""
    return _SortKey(value)


class _SortKey:
    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value

    def __lt__(self, other: _SortKey) -> bool:
        if self.value is None:
            return other.value is not None
        if other.value is None:
            return False
        return (compare(self.value, other.value) or 0) < 0


def less(a: Any, b: Any) -> bool:
    c = compare(a, b)
    return c is not None and c < 0


def less_equal(a: Any, b: Any) -> bool:
    c = compare(a, b)
    return c is not None and c <= 0


def greater(a: Any, b: Any) -> bool:
    c = compare(a, b)
    return c is not None and c > 0


def greater_equal(a: Any, b: Any) -> bool:
    c = compare(a, b)
    return c is not None and c >= 0


def checked_int(value: int) -> int:
    """Fail on 64-bit overflow instead of growing silently like Python ints."""
    if INT_MIN <= value <= INT_MAX:
        return value
    raise RuleError("integer overflow", "ArithmeticError")


def _checked_float(value: float) -> float:
    if math.isinf(value) or math.isnan(value):
        raise RuleError("arithmetic result is not a finite number", "ArithmeticError")
    return value


def _numbers(op: str, a: Any, b: Any) -> None:
    if not (is_number(a) and is_number(b)):
        check_known(f"as an operand of '{op}'", a, b)
        raise RuleError(f"cannot apply '{op}' to {type_name(a)} and {type_name(b)}", "TypeError")


def _arith(value: int | float) -> int | float:
    return checked_int(value) if isinstance(value, int) else _checked_float(value)


def add(a: Any, b: Any) -> Any:
    if isinstance(a, str):
        return a + to_text(b)
    if isinstance(a, list):
        return a + b if isinstance(b, list) else a + [b]
    if isinstance(a, dict) and isinstance(b, dict):
        return {**a, **b}
    _numbers("+", a, b)
    return _arith(a + b)


def subtract(a: Any, b: Any) -> Any:
    if isinstance(a, list):
        drop = b if isinstance(b, list) else [b]
        return [x for x in a if not any(equals(x, d) for d in drop)]
    if isinstance(a, dict) and isinstance(b, dict):
        return {k: v for k, v in a.items() if not (k in b and equals(b[k], v))}
    _numbers("-", a, b)
    return _arith(a - b)


def multiply(a: Any, b: Any) -> Any:
    if isinstance(a, str) and isinstance(b, int) and not isinstance(b, bool):
        if len(a) * b > MAX_TEXT:
            raise RuleError(f"'*' would make a string longer than {MAX_TEXT} characters", "LimitError")
        return a * max(b, 0)
    _numbers("*", a, b)
    return _arith(a * b)


def divide(a: Any, b: Any) -> float:
    _numbers("/", a, b)
    if b == 0:
        raise RuleError("division by zero", "ArithmeticError")
    return _checked_float(a / b)


def modulo(a: Any, b: Any) -> Any:
    _numbers("%", a, b)
    if b == 0:
        raise RuleError("division by zero", "ArithmeticError")
    # Java's remainder takes the sign of the dividend, unlike Python's modulo.
    return _arith(math.fmod(a, b) if isinstance(a, float) or isinstance(b, float) else _rem(a, b))


def _rem(a: int, b: int) -> int:
    r = abs(a) % abs(b)
    return -r if a < 0 else r


def intdiv(a: Any, b: Any) -> int:
    if not (isinstance(a, int) and isinstance(b, int)) or isinstance(a, bool) or isinstance(b, bool):
        raise RuleError(f"intdiv needs two integers, not {type_name(a)} and {type_name(b)}", "TypeError")
    if b == 0:
        raise RuleError("division by zero", "ArithmeticError")
    q = abs(a) // abs(b)
    return checked_int(q if (a >= 0) == (b >= 0) else -q)


def negate(a: Any) -> Any:
    if not is_number(a):
        check_known("as an operand of '-'", a)
        raise RuleError(f"cannot negate {type_name(a)}", "TypeError")
    return _arith(-a)


def contains(container: Any, item: Any) -> bool:
    """`item in container` and `container.contains(item)`."""
    if isinstance(container, list):
        return any(equals(x, item) for x in container)
    if isinstance(container, dict):
        return item in container if isinstance(item, str) else False
    if isinstance(container, str):
        return isinstance(item, str) and item in container
    if container is None:
        return False
    check_known("as an operand of 'in'", container)
    raise RuleError(f"'in' needs a List, Map or String, not {type_name(container)}", "TypeError")


def make_range(start: Any, end: Any, exclusive: bool) -> list[int]:
    """`a..b` and `a..<b` as a list of ints; empty when `a > b`."""
    if not (isinstance(start, int) and isinstance(end, int)) or isinstance(start, bool) or isinstance(end, bool):
        raise RuleError(f"a range needs integers, not {type_name(start)} and {type_name(end)}", "TypeError")
    return list(range(start, end if exclusive else end + 1))


def to_text(value: Any) -> str:
    """The text of a value, as Groovy's `toString` and string interpolation give it."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value
    if isinstance(value, float):
        return _float_text(value)
    if isinstance(value, list):
        return "[" + ", ".join(to_text(x) for x in value) + "]"
    if isinstance(value, dict):
        if not value:
            return "[:]"
        return "[" + ", ".join(f"{k}:{to_text(v)}" for k, v in value.items()) + "]"
    if isinstance(value, FactValue):
        return f"{value.type}(" + ", ".join(f"{k}:{to_text(v)}" for k, v in value.fields.items()) + ")"
    if isinstance(value, Closure):
        return "Closure"
    check_known("in a string", value)
    return str(value)


def _float_text(value: float) -> str:
    """Java's Double.toString: plain between 10^-3 and 10^7, else `1.2345E7` (shortest digits)."""
    if value == 0:
        return "-0.0" if math.copysign(1.0, value) < 0 else "0.0"
    magnitude = abs(value)
    if 1e-3 <= magnitude < 1e7:
        text = repr(value)
        return text if "." in text else text + ".0"
    digits, exponent = _shortest_digits(magnitude)
    mantissa = digits[0] + "." + (digits[1:] or "0")
    return ("-" if value < 0 else "") + f"{mantissa}E{exponent}"


def _shortest_digits(magnitude: float) -> tuple[str, int]:
    """The shortest decimal digits of a positive float and its scientific exponent."""
    mantissa, _, exp = f"{magnitude!r}".partition("e")
    whole, _, frac = mantissa.partition(".")
    exponent = int(exp or 0)
    digits = (whole + frac).lstrip("0")
    # Shift for the digits before the point, and for the zeros stripped in front of them.
    exponent += len(whole) - 1 - (len(whole + frac) - len((whole + frac).lstrip("0")))
    return digits.rstrip("0") or "0", exponent


def get_attr(obj: Any, name: str, safe: bool = False) -> Any:
    """`obj.name`: a fact's field, a map's key (missing gives null), or spread over a list."""
    if obj is None:
        if safe:
            return None
        raise RuleError(f"cannot read '{name}' of null (use '?.' when it may be null)", "NullPointer")
    if isinstance(obj, FactValue):
        return obj.get(name)
    if isinstance(obj, dict):
        return obj.get(name)
    if isinstance(obj, list):
        return [get_attr(x, name, safe) for x in obj]
    check_known(f"to read '{name}'", obj)
    raise RuleError(f"{type_name(obj)} has no property '{name}'", "MissingProperty")


def get_index(obj: Any, index: Any) -> Any:
    """`obj[index]`: lists and strings by int (negative from the end; out of range gives null),
    maps by key (missing gives null)."""
    if obj is None:
        raise RuleError("cannot index null", "NullPointer")
    if isinstance(obj, dict):
        return obj.get(index) if isinstance(index, str) else obj.get(to_text(index))
    if isinstance(obj, (list, str)):
        if not isinstance(index, int) or isinstance(index, bool):
            check_known("as an index", index)
            raise RuleError(f"a {type_name(obj)} index must be an int, not {type_name(index)}", "TypeError")
        if -len(obj) <= index < len(obj):
            return obj[index]
        return None
    if isinstance(obj, FactValue) and isinstance(index, str):
        return obj.get(index)
    check_known("as an indexed value", obj)
    raise RuleError(f"cannot index {type_name(obj)}", "TypeError")


def to_json(value: Any) -> Any:
    """A value as plain JSON data (facts become {"type", "fields"}); closures are refused."""
    if isinstance(value, FactValue):
        return {"type": value.type, "fields": {k: to_json(v) for k, v in value.fields.items()}}
    if isinstance(value, list):
        return [to_json(x) for x in value]
    if isinstance(value, dict):
        return {str(k): to_json(v) for k, v in value.items()}
    if isinstance(value, Closure):
        raise RuleError("a closure cannot be stored in a fact or output", "TypeError")
    return value
