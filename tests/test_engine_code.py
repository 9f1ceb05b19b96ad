"""Compiled rule code (emirax.engine.code): real sources are parsed, checked and compiled to IR,
then their sections run against a RecordingHost. Every statement and expression kind, closures
and scopes, placeholders, modify/retract visibility, fail, the step budget, error positions."""

from __future__ import annotations

from typing import Any

import pytest

from emirax.compiler import compile_modules
from emirax.engine.code import (
    Failed,
    Frame,
    LimitError,
    Meter,
    RecordingHost,
    compile_block,
    compile_expr,
    compile_section,
    data,
    placeholders,
    resolve,
)
from emirax.engine.values import FactValue, Placeholder, RuleError
from emirax.parser import parse
from emirax.source import Source
from test_compiler import _cases, _wrap, compile_source

DECLS = """
    fact P(def v, List xs = [], Map m = [:], int n = 0, String s = '')
    fact Q(int n, String tag = 'q', List extra = [1, 'a'])
    fact Inner(String s, int k = 7)
    fact Outer(Inner inner, def any = null)
    function String enc(String s)
    function List split(String source, int n)
"""


def program(action: str, *, match: str = "p: P()", extra: str = "") -> str:
    body = "\n".join("            " + line for line in action.strip("\n").splitlines())
    return (
        f"package t\n\nworkflow W {{{DECLS}\n"
        f"    rule 'r' {{\n        match {{ {match} }}\n        action {{\n{body}\n        }}\n"
        f"{extra}    }}\n}}\n"
        "workflow Child {\n    fact Seed(int n)\n"
        "    rule 'c' {\n        match { s: Seed() }\n        action { complete(n: s.n) }\n    }\n}\n"
    )


def compiled(source: str, checked: bool = True) -> dict[str, Any]:
    if checked:
        return compile_source(source, "t.emx")
    # Some run-time checks are for code the checker refuses (they guard `def`-typed values):
    # compile those without the checker to reach them.
    return compile_modules([parse(Source("t.emx", source))])


def p_fact(**fields: Any) -> FactValue:
    base = {"v": None, "xs": [], "m": {}, "n": 0, "s": ""}
    return FactValue("P", {**base, **fields}, id=1, version=0)


def run(
    action: str,
    *,
    bindings: dict[str, Any] | None = None,
    steps: int = 100_000,
    checked: bool = True,
    match: str = "p: P()",
    **fields: Any,
) -> tuple[Any, RecordingHost]:
    doc = compiled(program(action, match=match), checked)
    wf = doc["workflows"][0]
    host = RecordingHost.for_workflow(wf)
    section = compile_section(wf["rules"][0]["action"])
    env = bindings if bindings is not None else {"p": p_fact(**fields)}
    value = section.run(env, None, host, Meter(steps, rule="r"))
    return value, host


def value_of(action: str, **fields: Any) -> Any:
    return run(action, **fields)[0]


def logs(host: RecordingHost) -> list[str]:
    return [m for (m,) in host.of("log")]


def find_node(doc: Any, **want: Any) -> dict[str, Any]:
    """The first IR node (depth first, source order) with the given keys and values."""
    stack = [doc]
    while stack:
        item = stack.pop(0)
        if isinstance(item, dict):
            if all(item.get(k) == v for k, v in want.items()):
                return item
            stack[:0] = [v for k, v in item.items() if k != "at"]
        elif isinstance(item, list):
            stack[:0] = item
    raise AssertionError(f"no node with {want}")


# ── expressions ────────────────────────────────────────────────────────────────────────────────


def test_literals_and_arithmetic() -> None:
    assert value_of("[1 + 2, 7 / 2, 7.intdiv(2), 7 % 3, 2 * 3.5, 'a' + 1, -p.n, +p.n]", n=4) == [
        3, 3.5, 3, 1, 7.0, "a1", -4, 4,
    ]


def test_comparisons_and_equality() -> None:
    assert value_of("[1 == 1.0, p.v != 1, [1, 2] == [1, 2.0], p.n < 5, p.n >= 4, null < 1, null > 1]",
                    v=True, n=4) == [True, True, True, True, True, False, False]


def test_and_or_short_circuit_and_give_booleans() -> None:
    value = value_of("[p.v && p.v.missing, !p.v || p.v.missing, p.n && 'x', p.n || 0, !p.n]", v=None, n=3)
    assert value == [False, True, True, True, False]


def test_in_ternary_and_elvis() -> None:
    assert value_of("[2 in p.xs, 'k' in p.m, p.n ? 'yes' : 'no', p.v ?: 'default', p.s ?: 'empty']",
                    xs=[1, 2], m={"k": 1}, n=0, v="given") == [True, True, "no", "given", "empty"]


def test_integer_overflow_is_a_rule_error() -> None:
    with pytest.raises(RuleError, match="integer overflow"):
        run("p.n + 1", n=2**63 - 1)


def test_ranges() -> None:
    assert value_of("[0..3, 3..0, 0..<3, 2..<2]") == [[0, 1, 2, 3], [], [0, 1, 2], []]


def test_safe_navigation_and_spread() -> None:
    assert value_of("[p.v?.x, p.v?.size(), p.xs*.a, p.xs*.size()]", v=None,
                    xs=[{"a": 1}, None, {"a": 3}]) == [None, None, [1, None, 3], [1, None, 1]]
    with pytest.raises(RuleError, match="cannot read 'x' of null"):
        run("p.v.x", v=None)


def test_interpolation_is_plain_text() -> None:
    assert value_of('def s = p.s\n"n=${p.n + 1}, s=$s, l=${p.xs}, m=${p.m}, d=${1 / 4}, z=${p.v}"',
                    n=1, s="hi", xs=[1, "a"], m={"k": None}, v=None) == (
        "n=2, s=hi, l=[1, a], m=[k:null], d=0.25, z=null"
    )
    # `$x` takes one identifier: the rest is text (SPEC section 2).
    assert value_of('"$p.s"', s="hi").endswith(".s")


def test_map_literals_and_computed_keys() -> None:
    assert value_of("[a: 1, 'b c': 2, (p.n): 3, (p.s): 4]", n=5, s="k") == {
        "a": 1, "b c": 2, "5": 3, "k": 4,
    }


def test_indexing() -> None:
    assert value_of("[p.xs[0], p.xs[-1], p.xs[9], [][0], p.m['k'], p.m['missing'], p.s[1]]",
                    xs=[1, 2], m={"k": "v"}, s="ab") == [1, 2, None, None, "v", None, "b"]


def test_methods_with_trailing_closures() -> None:
    value = value_of("""
        def doubled = p.xs.collect { it * 2 }
        def big = p.xs.findAll { x -> x > 1 }
        def total = p.xs.inject(0) { acc, x -> acc + x }
        def desc = p.xs.sort { a, b -> b - a }
        [doubled, big, total, desc, p.xs, p.xs.max { -it }, p.m.collect { k, v -> k + v }]
    """, xs=[2, 1, 3], m={"a": "1"})
    assert value == [[4, 2, 6], [2, 3], 6, [3, 2, 1], [2, 1, 3], 1, ["a1"]]


# ── closures and scopes ────────────────────────────────────────────────────────────────────────


def test_calling_closures_held_in_locals() -> None:
    assert value_of("""
        def twice = { n -> n * 2 }
        def echo = { it }
        def none = { -> 'none' }
        [twice(3), echo(), echo(5), none()]
    """) == [6, None, 5, "none"]


def test_closure_arity_is_checked_on_call() -> None:
    with pytest.raises(RuleError, match=r"closure 'twice' takes 1 argument\(s\), not 2") as info:
        run("def twice = { n -> n * 2 }\ntwice(1, 2)")
    assert info.value.type == "ArityError"
    with pytest.raises(RuleError, match="takes 0 or 1 argument"):
        run("def echo = { it }\necho(1, 2)", checked=False)


def test_calling_a_non_closure_is_an_error() -> None:
    with pytest.raises(RuleError, match="'c' is int, not a closure"):
        run("def c = p.v\nc(1)", v=3)


def test_closures_read_and_assign_enclosing_locals() -> None:
    value, host = run("""
        def count = 0
        def total = 0
        p.xs.each { count += 1 }
        [[1, 2], [3]].each { row -> row.each { total += it } }
        def bump = { count = count + 10 }
        bump()
        log "count=$count total=$total"
        [count, total]
    """, xs=[5, 6])
    assert value == [12, 6]
    assert logs(host) == ["count=12 total=6"]


def test_each_loop_iteration_gets_fresh_locals_for_its_closures() -> None:
    assert value_of("""
        def fs = []
        for (i in 0..<3) {
            def j = i * 10
            fs = fs + [{ -> j + i }]
        }
        fs.collect { it() }
    """) == [0, 11, 22]


def test_a_block_local_hides_an_outer_local_only_inside_the_block() -> None:
    value, host = run("""
        def x = 1
        if (true) {
            def x = 2
            log "inner $x"
        }
        for (i in [1]) {
            def x = 3
        }
        x
    """)
    assert value == 1 and logs(host) == ["inner 2"]


def test_return_leaves_the_innermost_closure() -> None:
    value, host = run("""
        def found = p.xs.find { if (it > 1) { return true }; return false }
        def label = { n -> if (n > 2) { return 'big' }; 'small' }
        log "found=$found ${label(1)} ${label(3)}"
        found
    """, xs=[1, 2, 3])
    assert value == 2 and logs(host) == ["found=2 small big"]


def test_return_leaves_the_section_with_its_value() -> None:
    value, host = run("""
        for (x in p.xs) {
            if (x > 1) {
                return "stopped at $x"
            }
            log "saw $x"
        }
        log 'never'
        'unreachable'
    """, xs=[1, 2, 3])
    assert value == "stopped at 2" and logs(host) == ["saw 1"]


def test_section_value_is_the_last_expression_else_null() -> None:
    assert value_of("def x = 1") is None
    assert value_of("if (true) { 5 }") is None
    assert value_of("def x = 1\nx + 1") == 2
    assert value_of("return") is None


def test_recursion_too_deep_is_a_limit_error() -> None:
    with pytest.raises(LimitError):
        run("def f\nf = { n -> f(n + 1) }\nf(0)", steps=10**9)


# ── assignment ─────────────────────────────────────────────────────────────────────────────────


def test_assignment_operators_on_locals() -> None:
    assert value_of("""
        def a = 1
        a += 2
        a -= 1
        def s = 'x'
        s += 1
        def l = [1]
        l += 2
        l -= 1
        [a, s, l]
    """) == [2, "x1", [2]]


def test_assignment_into_a_local_list_or_map_updates_a_copy() -> None:
    value = value_of("""
        def a = [1, 2]
        def b = a
        b[0] = 9
        b[4] = 5
        b[-1] += 1
        def m = [:]
        m.k = 1
        m['j'] = [1]
        m.k += 5
        m.j[0] = 'x'
        def copy = p.xs
        copy[0] = 'changed'
        [a, b, m, p.xs, copy]
    """, xs=[1])
    assert value == [[1, 2], [9, 2, None, None, 6], {"k": 6, "j": ["x"]}, [1], ["changed"]]


def test_facts_are_read_only() -> None:
    read_only = r"'p' is a match binding, and facts are read-only: use modify p"
    with pytest.raises(RuleError, match=read_only) as info:
        run("p.m.k = 1", m={})
    assert info.value.at is not None
    with pytest.raises(RuleError, match="facts are read-only: cannot assign to 'n' of P"):
        run("def q = [p]\nq[0].n = 1", checked=False)


def test_assignment_into_null_is_an_error() -> None:
    with pytest.raises(RuleError, match="cannot assign to 'k' of null"):
        run("def m = [a: null]\nm.a.k = 1")


# ── statements ─────────────────────────────────────────────────────────────────────────────────


def test_if_else_chains() -> None:
    for n, expected in [(20, "big"), (7, "medium"), (1, "small")]:
        _, host = run("""
            if (p.n > 10) {
                log "big"
            } else if (p.n > 5) {
                log "medium"
            } else {
                log "small"
            }
        """, n=n)
        assert logs(host) == [expected]


def test_for_over_lists_ranges_maps_strings_and_null() -> None:
    value = value_of("""
        def out = []
        for (x in p.xs) { out += x }
        for (i in 1..2) { out += i }
        for (e in p.m) { out += "${e.key}=${e.value}" }
        for (c in 'ab') { out += c }
        for (z in p.v) { out += 'never' }
        out
    """, xs=[0], m={"a": 1, "b": 2}, v=None)
    assert value == [0, 1, 2, "a=1", "b=2", "a", "b"]


def test_for_over_a_number_is_an_error() -> None:
    with pytest.raises(RuleError, match="cannot loop over int"):
        run("for (x in p.v) { }", v=3)


def test_insert_fills_defaults_and_nests_facts_as_maps() -> None:
    _, host = run("""
        insert Q(n: p.n)
        insert Q(n: 2, tag: 'given')
        insert Outer(inner: Inner(s: 'x'), any: p)
    """, n=1)
    assert host.of("insert") == [
        ("Q", {"n": 1, "tag": "q", "extra": [1, "a"]}),
        ("Q", {"n": 2, "tag": "given", "extra": [1, "a"]}),
        ("Outer", {"inner": {"s": "x", "k": 7},
                   "any": {"v": None, "xs": [], "m": {}, "n": 1, "s": ""}}),
    ]


def test_modify_sees_old_values_then_the_new_fact() -> None:
    value, host = run("""
        modify p {
            n = p.n + 1
            s = "was ${p.n}"
        }
        log "now ${p.n} ${p.s}"
        p
    """, n=1)
    (old, changes), = host.of("modify")
    assert old.fields["n"] == 1 and changes == {"n": 2, "s": "was 1"}
    assert logs(host) == ["now 2 was 1"]
    assert value.fields["n"] == 2 and value.version == 1 and value.id == 1


def test_retract_then_reading_the_binding_is_an_error() -> None:
    with pytest.raises(RuleError, match="p was retracted") as info:
        run("retract p\nlog \"${p.n}\"")
    assert info.value.at is not None
    _, host = run("retract p\nlog 'done'")
    assert [f.type for (f,) in host.of("retract")] == ["P"] and logs(host) == ["done"]


def test_retract_each_fact_of_a_collect() -> None:
    facts = [FactValue("Q", {"n": i}, id=10 + i) for i in range(3)]
    _, host = run("qs.each { retract it }", match="qs: collect Q()", bindings={"qs": facts})
    assert [f.id for (f,) in host.of("retract")] == [10, 11, 12]


def test_complete_and_log() -> None:
    _, host = run("complete(total: p.n * 2, xs: p.xs, fact: p)\nlog 42", n=2, xs=[1])
    (output,), = host.of("complete")
    assert output["total"] == 4 and output["xs"] == [1] and output["fact"]["n"] == 2
    assert logs(host) == ["42"]


def test_fail_ends_the_section_at_once() -> None:
    with pytest.raises(Failed) as info:
        run("log 'before'\nfail \"bad ${p.n}\"\nlog 'after'", n=3)
    assert info.value.reason == "bad 3" and info.value.at is not None
    assert not isinstance(info.value, RuleError)
    # The host saw the failure too, and nothing after it.
    host = RecordingHost()
    doc = compiled(program("log 'before'\nfail 'x'\nlog 'after'"))
    with pytest.raises(Failed):
        compile_section(doc["workflows"][0]["rules"][0]["action"]).run(
            {"p": p_fact()}, None, host, Meter())
    assert host.effects == [("log", "before"), ("fail", "x")]


# ── placeholders ───────────────────────────────────────────────────────────────────────────────


def test_fan_out_map_and_list_of_calls_resolve() -> None:
    value, host = run("[a: enc(p.s), b: [enc('y'), enc('z')]]", s="x")
    assert host.of("invoke") == [("enc", ["x"], 1), ("enc", ["y"], 2), ("enc", ["z"], 3)]
    assert [ph.id for ph in placeholders(value)] == [1, 2, 3]
    assert resolve(value, {1: "X", 2: "Y", 3: "Z"}) == {"a": "X", "b": ["Y", "Z"]}


def test_calls_in_closures_and_locals_fan_out() -> None:
    value, host = run("""
        def parts = p.xs.collect { enc(it) }
        def first = enc('head')
        parts + first
    """, xs=["a", "b"])
    assert [args for (_, args, _) in host.of("invoke")] == [["a"], ["b"], ["head"]]
    assert resolve(value, {1: 1, 2: 2, 3: 3}) == [1, 2, 3]


def test_a_single_call_is_the_action_value() -> None:
    value, host = run("split(p.s, 3)", s="src")
    assert isinstance(value, Placeholder) and resolve(value, {1: ["a", "b"]}) == ["a", "b"]
    assert host.of("invoke") == [("split", ["src", 3], 1)]


def test_start_passes_the_child_facts() -> None:
    value, host = run("start Child(Seed(n: p.n))", n=4)
    assert host.of("start") == [("t.Child", [("Seed", {"n": 4})], 1)]
    assert isinstance(value, Placeholder) and value.label == "start t.Child"


@pytest.mark.parametrize(
    ("action", "what"),
    [
        ("def r = enc('x')\nr + 1", "operand"),
        ("def r = enc('x')\nif (r) { log 'x' }", "condition"),
        ("def r = enc('x')\nr.size()", "receiver of 'size'"),
        ("def r = enc('x')\n[1].contains(r)", "argument of 'contains'"),
        ("def r = enc('x')\nenc(r)", "argument of 'enc'"),
        ("def r = enc('x')\nenc([r])", "argument of 'enc'"),
        ("def r = enc('x')\nlog \"got $r\"", "in a string"),
        ("def r = enc('x')\ninsert Q(n: r)", "in a field of Q"),
        ("def r = enc('x')\ncomplete(v: r)", "in the output"),
        ("def r = enc('x')\nr.length", "to read 'length'"),
        ("def r = enc('x')\nr ?: 1", "condition"),
        ("def r = enc('x')\nfor (c in r) { }", "loops over"),
    ],
)
def test_using_a_placeholder_is_an_error(action: str, what: str) -> None:
    with pytest.raises(RuleError, match="the result of 'enc' is not known until the reaction") as info:
        run(action, checked=False)
    assert what in info.value.message
    assert info.value.type == "PendingValue" and info.value.at is not None


def test_placeholders_may_be_kept_in_lists_maps_and_closure_results() -> None:
    value, _ = run("""
        def wrap = { -> [r: enc('x')] }
        def held = wrap()
        def all = [held, [enc('y')]]
        all
    """)
    assert resolve(value, {1: "X", 2: "Y"}) == [{"r": "X"}, ["Y"]]


def test_data_refuses_closures() -> None:
    with pytest.raises(RuleError, match="a closure cannot be stored in a field of Q"):
        run("insert Q(n: { -> 1 })", checked=False)
    assert data({"a": [FactValue("P", {"n": 1})]}) == {"a": [{"n": 1}]}


# ── the step budget ────────────────────────────────────────────────────────────────────────────


def test_step_limit_stops_a_long_loop() -> None:
    with pytest.raises(LimitError, match="rule 'r' used more than 1000 steps") as info:
        run("for (i in 0..<1000000) { }", steps=1000)
    assert info.value.type == "StepLimit" and info.value.limit == 1000


def test_step_limit_counts_closure_calls_and_method_work() -> None:
    with pytest.raises(LimitError):
        run("(0..<100000).collect { it }", steps=5000)
    with pytest.raises(LimitError):
        run("def f = { -> 1 }\nfor (i in 0..<10) { f() }", steps=20)


def test_every_statement_and_iteration_costs_a_step() -> None:
    doc = compiled(program("def a = 1\ndef b = 2\nfor (i in 0..<10) { a += i }"))
    meter = Meter(10_000)
    compile_section(doc["workflows"][0]["rules"][0]["action"]).run(
        {"p": p_fact()}, None, RecordingHost(), meter)
    assert meter.used >= 3 + 10 * 2


# ── positions and pattern tests ────────────────────────────────────────────────────────────────


def test_errors_carry_the_position_of_the_failing_node() -> None:
    source = program("def x = 1\nlog 'a'\ndef y = x / p.n")
    doc = compiled(source)
    division = find_node(doc, op="binary", operator="/")
    section = compile_section(doc["workflows"][0]["rules"][0]["action"])
    with pytest.raises(RuleError, match="division by zero") as info:
        section.run({"p": p_fact(n=0)}, None, RecordingHost(), Meter())
    assert info.value.at == division["at"]
    line = source.splitlines()[division["at"][0] - 1]
    assert "x / p.n" in line


def test_method_errors_name_the_method_call() -> None:
    doc = compiled(program("log 'a'\np.s.substring(5)"))
    call = find_node(doc, op="method", name="substring")
    with pytest.raises(RuleError, match="outside a string") as info:
        compile_section(doc["workflows"][0]["rules"][0]["action"]).run(
            {"p": p_fact(s="ab")}, None, RecordingHost(), Meter())
    assert info.value.at == call["at"]


def test_reaction_binds_its_parameter() -> None:
    extra = '        reaction { v -> log "got ${v.a}" }\n'
    doc = compiled(program("[a: enc('x')]", extra=extra))
    rule = doc["workflows"][0]["rules"][0]
    host = RecordingHost()
    action = compile_section(rule["action"]).run({"p": p_fact()}, None, host, Meter())
    reaction = compile_section(rule["reaction"])
    reaction.run({"p": p_fact()}, resolve(action, {1: "X"}), host, Meter())
    assert logs(host) == ["got X"]


def test_pattern_constraints_read_the_fact_and_the_bindings() -> None:
    doc = compiled(program("log 'x'", match="q: Q()\n p: P(n > 1, n == q.n, xs.contains(q.tag))"))
    pattern = doc["workflows"][0]["rules"][0]["match"][1]
    alpha = compile_expr(pattern["alpha"][0])
    join = compile_expr(pattern["joins"][0]["expr"])
    beta = compile_expr(pattern["beta"][0])
    q = FactValue("Q", {"n": 3, "tag": "t", "extra": []})
    frame = Frame({"q": q}, Meter(), fact=p_fact(n=3, xs=["t"]))
    assert alpha(frame) is True and join(frame) == 3 and beta(frame) is True
    frame.fact = p_fact(n=1, xs=[])
    assert alpha(frame) is False and beta(frame) is False


def test_fields_inside_a_pattern_closure_read_the_candidate_fact() -> None:
    doc = compiled(program("log 'x'", match="p: P(xs.any { it == n }, xs.any { n -> n > 5 })"))
    same, big = (compile_expr(e) for e in doc["workflows"][0]["rules"][0]["match"][0]["alpha"])
    frame = Frame({}, Meter(), fact=p_fact(n=2, xs=[1, 2]))
    assert same(frame) is True and big(frame) is False
    frame.fact = p_fact(n=3, xs=[1, 9])
    assert same(frame) is False and big(frame) is True


def test_compile_block_runs_statements_with_parameters() -> None:
    doc = compiled(program("def a = p.n + 1\na * 2"))
    block = compile_block(doc["workflows"][0]["rules"][0]["action"]["body"])
    assert block(Frame({"p": p_fact(n=2)}, Meter(), RecordingHost())) == 6


def test_a_section_runs_many_times_independently() -> None:
    doc = compiled(program("def seen = []\nfor (x in p.xs) { seen += x }\nseen"))
    section = compile_section(doc["workflows"][0]["rules"][0]["action"])
    for xs in ([1], [2, 3], []):
        assert section.run({"p": p_fact(xs=xs)}, None, RecordingHost(), Meter()) == xs


@pytest.mark.parametrize(("name", "body"), [(c[0], c[1]) for c in _cases()])
def test_every_golden_construct_compiles(name: str, body: str) -> None:
    doc = compile_source(_wrap(body))
    for wf in doc["workflows"]:
        for rule in wf["rules"]:
            for key in ("action", "reaction", "error"):
                if rule[key] is not None:
                    compile_section(rule[key])
            for item in rule["match"]:
                exprs = [item["expr"]] if item["kind"] == "guard" else (
                    item["alpha"] + item["beta"] + [j["expr"] for j in item["joins"]])
                for expr in exprs:
                    compile_expr(expr)
