"""Value semantics of rule code (SPEC section 2): equality, ordering, arithmetic, truth, text,
and the collection and string methods, on emirax.engine.values and emirax.engine.methods."""

from __future__ import annotations

from typing import Any

import pytest

from emirax.engine import values as V
from emirax.engine.code import LimitError, Meter
from emirax.engine.methods import METHODS, call_method
from emirax.engine.values import Closure, FactValue, Placeholder, RuleError


def m(receiver: Any, name: str, *args: Any, meter: Meter | None = None) -> Any:
    return call_method(meter or Meter(), receiver, name, list(args))


def key(fn: Any) -> Closure:
    return Closure(fn, 1)


def cmp(fn: Any) -> Closure:
    return Closure(fn, 2)


# ── equality ───────────────────────────────────────────────────────────────────────────────────


@pytest.mark.parametrize(
    ("a", "b", "equal"),
    [
        (1, 1.0, True),
        (0, -0.0, True),
        (True, 1, False),
        (False, 0, False),
        (True, True, True),
        (None, None, True),
        (None, 0, False),
        ("a", "a", True),
        ("1", 1, False),
        ([1, 2], [1.0, 2], True),
        ([1, 2], [2, 1], False),
        ([1, [2, 3]], [1, [2, 3.0]], True),
        ({"a": 1, "b": [1]}, {"b": [1.0], "a": 1}, True),
        ({"a": 1}, {"a": 1, "b": 2}, False),
        ({"a": None}, {}, False),
    ],
)
def test_equality_is_by_value(a: Any, b: Any, equal: bool) -> None:
    assert V.equals(a, b) is equal
    assert V.equals(b, a) is equal


def test_facts_are_equal_by_type_and_fields_not_id() -> None:
    a = FactValue("P", {"n": 1}, id=1, version=0)
    assert V.equals(a, FactValue("P", {"n": 1.0}, id=7, version=3))
    assert not V.equals(a, FactValue("Q", {"n": 1}))
    assert not V.equals(a, FactValue("P", {"n": 2}))


# ── ordering ───────────────────────────────────────────────────────────────────────────────────


@pytest.mark.parametrize("op", [V.less, V.less_equal, V.greater, V.greater_equal])
@pytest.mark.parametrize(("a", "b"), [(None, 1), (1, None), (None, None), (None, "a")])
def test_ordering_with_null_is_false(op: Any, a: Any, b: Any) -> None:
    assert op(a, b) is False


def test_ordering_of_numbers_strings_and_lists() -> None:
    assert V.less(1, 1.5) and V.greater_equal(2.0, 2) and V.less_equal(2, 2)
    assert V.less("a", "b") and not V.less("b", "a")
    assert V.less([1, 2], [1, 3]) and V.less([1], [1, 0])


def test_ordering_unlike_types_is_an_error() -> None:
    with pytest.raises(RuleError, match="cannot compare String with int"):
        V.less("a", 1)


# ── arithmetic ─────────────────────────────────────────────────────────────────────────────────


def test_int_divided_by_int_is_a_double() -> None:
    assert V.divide(7, 2) == 3.5 and isinstance(V.divide(6, 3), float)
    assert V.divide(6, 3) == 2.0


def test_intdiv_truncates_towards_zero() -> None:
    assert V.intdiv(7, 2) == 3
    assert V.intdiv(-7, 2) == -3
    assert m(7, "intdiv", -2) == -3
    with pytest.raises(RuleError, match="division by zero"):
        V.intdiv(1, 0)
    with pytest.raises(RuleError, match="intdiv needs two integers"):
        V.intdiv(1.5, 1)


def test_division_and_remainder_by_zero_are_errors() -> None:
    for fn in (V.divide, V.modulo):
        with pytest.raises(RuleError, match="division by zero"):
            fn(1, 0)


def test_remainder_takes_the_sign_of_the_dividend() -> None:
    assert V.modulo(-7, 3) == -1 and V.modulo(7, -3) == 1 and V.modulo(7, 3) == 1
    assert V.modulo(7.5, 2) == 1.5


@pytest.mark.parametrize(
    "compute",
    [
        lambda: V.add(V.INT_MAX, 1),
        lambda: V.subtract(V.INT_MIN, 1),
        lambda: V.multiply(2**62, 2),
        lambda: V.negate(V.INT_MIN),
        lambda: V.intdiv(V.INT_MIN, -1),
        lambda: m(V.INT_MIN, "abs"),
    ],
)
def test_integer_overflow_is_an_error(compute: Any) -> None:
    with pytest.raises(RuleError, match="integer overflow") as info:
        compute()
    assert info.value.type == "ArithmeticError"


def test_int_limits_themselves_are_fine() -> None:
    assert V.add(V.INT_MAX - 1, 1) == V.INT_MAX
    assert V.subtract(V.INT_MIN + 1, 1) == V.INT_MIN


def test_plus_on_strings_lists_and_maps() -> None:
    assert V.add("n=", 1) == "n=1"
    assert V.add("x", None) == "xnull"
    assert V.add([1], [2, 3]) == [1, 2, 3]
    assert V.add([1], 2) == [1, 2]
    assert V.add({"a": 1}, {"b": 2}) == {"a": 1, "b": 2}
    assert V.subtract([1, 2, 1, 3], 1) == [2, 3]
    assert V.multiply("ab", 3) == "ababab"


def test_arithmetic_on_wrong_types_is_an_error() -> None:
    with pytest.raises(RuleError, match=r"cannot apply '\+' to int and String"):
        V.add(1, "a")
    with pytest.raises(RuleError, match="cannot apply '-' to boolean and int"):
        V.subtract(True, 1)


# ── truth ──────────────────────────────────────────────────────────────────────────────────────


@pytest.mark.parametrize("value", [None, False, 0, 0.0, "", [], {}])
def test_falsy_values(value: Any) -> None:
    assert V.truthy(value) is False


@pytest.mark.parametrize("value", [True, 1, -1, 0.5, "false", " ", [0], {"a": None}, FactValue("P", {})])
def test_truthy_values(value: Any) -> None:
    assert V.truthy(value) is True


# ── ranges ─────────────────────────────────────────────────────────────────────────────────────


def test_ranges() -> None:
    assert V.make_range(0, 3, False) == [0, 1, 2, 3]
    assert V.make_range(0, 3, True) == [0, 1, 2]
    assert V.make_range(5, 1, False) == []
    assert V.make_range(5, 1, True) == []
    assert V.make_range(2, 2, True) == []
    with pytest.raises(RuleError, match="a range needs integers"):
        V.make_range(0, 1.5, False)


# ── text ───────────────────────────────────────────────────────────────────────────────────────


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (None, "null"),
        (True, "true"),
        (False, "false"),
        (42, "42"),
        (1.0, "1.0"),
        (2.5, "2.5"),
        (-0.5, "-0.5"),
        (0.001, "0.001"),
        (0.0001, "1.0E-4"),
        (1e7, "1.0E7"),
        (12345678.0, "1.2345678E7"),
        (1e20, "1.0E20"),
        (0.1 + 0.2, "0.30000000000000004"),
        ("plain", "plain"),
        ([], "[]"),
        ([1, "a", None, [2.0]], "[1, a, null, [2.0]]"),
        ({}, "[:]"),
        ({"a": 1, "b": "x"}, "[a:1, b:x]"),
        ({"l": [1, {"k": None}]}, "[l:[1, [k:null]]]"),
        (FactValue("P", {"n": 1, "s": "x"}), "P(n:1, s:x)"),
    ],
)
def test_to_text_is_groovy_style(value: Any, text: str) -> None:
    assert V.to_text(value) == text


# ── navigation ─────────────────────────────────────────────────────────────────────────────────


def test_missing_map_key_and_out_of_range_index_are_null() -> None:
    assert V.get_attr({"a": 1}, "b") is None
    assert V.get_index({"a": 1}, "b") is None
    assert V.get_index([], 0) is None
    assert V.get_index([1, 2], 5) is None
    assert V.get_index([1, 2], -1) == 2
    assert V.get_index("abc", 1) == "b"


def test_null_receiver_needs_safe_navigation() -> None:
    assert V.get_attr(None, "a", safe=True) is None
    with pytest.raises(RuleError, match=r"cannot read 'a' of null \(use '\?\.'"):
        V.get_attr(None, "a")


def test_fact_fields_and_unknown_fields() -> None:
    fact = FactValue("P", {"n": 1})
    assert V.get_attr(fact, "n") == 1
    with pytest.raises(RuleError, match="P has no field 'x'"):
        V.get_attr(fact, "x")
    assert V.get_attr([{"a": 1}, {"a": 2}], "a") == [1, 2]


def test_in_operator() -> None:
    assert V.contains([1, 2], 2.0)
    assert V.contains({"k": 1}, "k") and not V.contains({"k": 1}, "v")
    assert V.contains("hello", "ell")
    assert not V.contains(None, 1)
    with pytest.raises(RuleError, match="'in' needs a List, Map or String"):
        V.contains(3, 1)


# ── collection methods ─────────────────────────────────────────────────────────────────────────


def test_empty_collections() -> None:
    assert m([], "sum") == 0
    assert m([], "max") is None
    assert m([], "min") is None
    assert m([], "first") is None
    assert m([], "find", key(lambda x: True)) is None
    assert m([], "every", key(lambda x: False)) is True
    assert m([], "any") is False


def test_sum() -> None:
    assert m([1, 2, 3], "sum") == 6
    assert m([1, 2.5], "sum") == 3.5
    assert m(["a", "b"], "sum") == "ab"
    assert m([{"n": 2}, {"n": 3}], "sum", key(lambda x: x["n"])) == 5


def test_sort_is_stable_and_does_not_mutate() -> None:
    xs = [3, 1, 2]
    assert m(xs, "sort") == [1, 2, 3]
    assert xs == [3, 1, 2]
    people = [{"n": "b", "a": 2}, {"n": "a", "a": 1}, {"n": "c", "a": 2}, {"n": "d", "a": 1}]
    by_age = m(people, "sort", key(lambda p: p["a"]))
    assert [p["n"] for p in by_age] == ["a", "d", "b", "c"]
    desc = m(people, "sort", cmp(lambda x, y: y["a"] - x["a"]))
    assert [p["n"] for p in desc] == ["b", "c", "a", "d"]
    assert m([None, 2, 1], "sort") == [None, 1, 2]


def test_min_max_with_a_key_closure_ties_keep_the_first() -> None:
    xs = [{"n": "a", "v": 1}, {"n": "b", "v": 3}, {"n": "c", "v": 3}, {"n": "d", "v": 1}]
    assert m(xs, "max", key(lambda x: x["v"]))["n"] == "b"
    assert m(xs, "min", key(lambda x: x["v"]))["n"] == "a"
    assert m([3, 1, 3], "max") == 3


def test_min_max_with_a_comparator() -> None:
    words = ["bb", "a", "ccc", "dd"]
    by_length = cmp(lambda x, y: len(x) - len(y))
    assert m(words, "max", by_length) == "ccc"
    assert m(words, "min", by_length) == "a"
    assert m(["bb", "dd"], "max", by_length) == "bb"


def test_min_max_treat_null_as_smallest() -> None:
    assert m([None, 3, 1], "max") == 3
    assert m([3, None, 1], "min") is None


def test_iteration_methods() -> None:
    assert m([1, 2, 3], "collect", key(lambda x: x * 2)) == [2, 4, 6]
    assert m([1, 2, 3], "findAll", key(lambda x: x > 1)) == [2, 3]
    assert m([1, 2, 3], "find", key(lambda x: x > 1)) == 2
    assert m([1, 2, 3], "any", key(lambda x: x > 2)) is True
    assert m([1, 2, 3], "every", key(lambda x: x > 2)) is False
    assert m([1, 2, 1], "count", 1) == 2
    assert m([1, 2, 3], "inject", 10, cmp(lambda a, x: a + x)) == 16
    assert m(["ab", "c", "de"], "groupBy", key(len)) == {"2": ["ab", "de"], "1": ["c"]}
    assert m([1, 1, 2], "unique") == [1, 2]
    assert m([1, [2, [3]]], "flatten") == [1, 2, 3]
    assert m([1, "a", None], "join", "-") == "1-a-null"
    assert m([1, 2, 3], "take", 2) == [1, 2] and m([1, 2, 3], "drop", 2) == [3]
    assert m([1, 2], "reverse") == [2, 1] and m([1, 2], "last") == 2
    assert m(["a", "b"], "withIndex") == [["a", 0], ["b", 1]]


def test_map_methods_see_entries() -> None:
    data = {"a": 1, "b": 2}
    assert m(data, "keySet") == ["a", "b"]
    assert m(data, "values") == [1, 2]
    assert m(data, "collect", cmp(lambda k, v: f"{k}{v}")) == ["a1", "b2"]
    assert m(data, "collect", key(lambda e: e["key"])) == ["a", "b"]
    assert m(data, "findAll", cmp(lambda k, v: v > 1)) == {"b": 2}
    assert m(data, "containsKey", "a") and m(data, "get", "z", 0) == 0
    assert m(data, "collectEntries", cmp(lambda k, v: [v, k])) == {"1": "a", "2": "b"}


def test_methods_never_mutate_their_receiver() -> None:
    xs = [3, 1, 2]
    data = {"a": 1}
    for name, args in [("sort", ()), ("reverse", ()), ("plus", ([4],)), ("minus", (1,)),
                       ("unique", ()), ("collect", (key(lambda x: x),))]:
        m(xs, name, *args)
    m(data, "plus", {"b": 2})
    assert xs == [3, 1, 2] and data == {"a": 1}


def test_methods_charge_the_meter() -> None:
    meter = Meter(limit=50)
    with pytest.raises(LimitError, match="used more than 50 steps"):
        m(list(range(100)), "collect", key(lambda x: x), meter=meter)


def test_unknown_receiver_is_an_error() -> None:
    with pytest.raises(RuleError, match="int has no method 'each'"):
        m(3, "each", key(lambda x: x))
    with pytest.raises(RuleError, match="null has no method 'size'"):
        m(None, "size")


# ── string methods ─────────────────────────────────────────────────────────────────────────────


def test_string_methods() -> None:
    assert m("abc", "size") == 3 and m("", "isEmpty")
    assert m("Ab", "toUpperCase") == "AB" and m("Ab", "toLowerCase") == "ab"
    assert m("  x ", "trim") == "x"
    assert m("s3://a", "startsWith", "s3:") and m("a.mp4", "endsWith", ".mp4")
    assert m("hello", "indexOf", "l") == 2 and m("hello", "indexOf", "z") == -1
    assert m("a-b", "replace", "-", "+") == "a+b"
    assert m("a,b,,", "split", ",") == ["a", "b"]
    assert m("a.b", "split", ".") == ["a", "b"]
    assert m(" a  b ", "split") == ["a", "b"]
    assert m("hello", "substring", 1) == "ello" and m("hello", "substring", 1, 3) == "el"
    assert m("word", "capitalize") == "Word"
    assert m("7", "padLeft", 3, "0") == "007" and m("7", "padRight", 3) == "7  "
    assert m("abc", "contains", "b") and m("abc", "reverse") == "cba"
    assert m("x", "toString") == "x" and m([1], "toString") == "[1]"


def test_substring_outside_the_string_is_an_error() -> None:
    with pytest.raises(RuleError, match="outside a string of length 5"):
        m("hello", "substring", 2, 9)


@pytest.mark.parametrize(
    ("text", "number", "integer"),
    [("12", True, True), ("-3", True, True), ("1.5", True, False), ("1e3", True, False),
     ("abc", False, False), ("", False, False), ("1_000", False, False), ("nan", False, False)],
)
def test_number_tests_on_strings(text: str, number: bool, integer: bool) -> None:
    assert m(text, "isNumber") is number
    assert m(text, "isInteger") is integer


def test_conversions() -> None:
    assert m("42", "toInteger") == 42 and m(" 42 ", "toInteger") == 42
    assert m(3.9, "toInteger") == 3
    assert m("1.5", "toDouble") == 1.5 and m(2, "toDouble") == 2.0
    with pytest.raises(RuleError, match="cannot convert 'x' to an integer"):
        m("x", "toInteger")
    with pytest.raises(RuleError, match="to a double"):
        m("inf", "toDouble")


def test_rounding_is_half_up_like_java() -> None:
    assert m(2.5, "round") == 3 and m(-2.5, "round") == -2 and m(-2.6, "round") == -3
    assert m(7, "round") == 7
    assert m(1.005, "round", 2) == 1.01 and m(2.345, "round", 1) == 2.3
    assert m(-4, "abs") == 4 and m(-1.5, "abs") == 1.5


def test_every_ir_method_is_implemented() -> None:
    from emirax import ir

    assert set(ir.METHODS) == set(METHODS)


# ── closures and placeholders ──────────────────────────────────────────────────────────────────


def test_closure_arity_adaptation() -> None:
    implicit = Closure(lambda it: it, 1, explicit=False)
    assert implicit() is None and implicit(5) == 5
    pair = Closure(lambda a, b: (a, b), 2)
    assert pair([1, 2]) == (1, 2)
    with pytest.raises(RuleError, match="takes 2 parameter"):
        pair(1, 2, 3)


def test_placeholders_refuse_to_be_used() -> None:
    ph = Placeholder(1, "encode")
    message = "the result of 'encode' is not known until the reaction"
    for use in (lambda: V.truthy(ph), lambda: V.add(ph, 1), lambda: V.add("a", ph),
                lambda: V.equals(ph, 1), lambda: V.less(ph, 1), lambda: V.to_text(ph),
                lambda: V.get_attr(ph, "x"), lambda: V.get_index([1], ph),
                lambda: V.contains([1], ph), lambda: V.negate(ph)):
        with pytest.raises(RuleError, match=message) as info:
            use()
        assert info.value.type == "PendingValue"
    assert V.add([1], ph) == [1, ph]  # appending to a list is fine: lists may hold placeholders
