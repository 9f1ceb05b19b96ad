"""The parser turns every construct of SPEC section 2 into the AST of emirax.nodes, with spans."""

from __future__ import annotations

import dataclasses
import logging
import re
from pathlib import Path

import pytest

from emirax import nodes
from emirax.parser import build_lark, grammar_path, parse
from emirax.source import Source, Span
from support import SPEC_EXAMPLE

SPEC = Path(__file__).resolve().parents[1].parent / "shared" / "SPEC.md"

EXAMPLE = SPEC_EXAMPLE


def parse_text(text: str, name: str = "t.emx") -> nodes.Module:
    return parse(Source(name, text))


def in_action(body: str) -> list[nodes.Stmt]:
    """Parse `body` as the statements of an action and return them."""
    module = parse_text(
        "package p\nworkflow W {\n  rule 'r' {\n    match { a: A() }\n    action {\n"
        + body
        + "\n    }\n  }\n}\n"
    )
    action = module.workflows[0].rules[0].action
    assert action is not None
    return action.body.stmts


def expr(text: str) -> nodes.Expr:
    """Parse one expression (as the value of `x = ...`)."""
    (stmt,) = in_action(f"x = {text}")
    assert isinstance(stmt, nodes.Assign)
    return stmt.value


def match_items(text: str) -> list[nodes.MatchItem]:
    module = parse_text(
        "package p\nworkflow W {\n  rule 'r' {\n    match {\n" + text + "\n    }\n"
        "    action { }\n  }\n}\n"
    )
    return module.workflows[0].rules[0].match


def walk(value: object):
    """Every AST node under `value` (dataclass instances), depth first. Strings must be plain
    `str` (a Lark token is a `str` subclass and must not leak into the tree)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, Span):
        yield value
        for f in dataclasses.fields(value):
            yield from walk(getattr(value, f.name))
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from walk(item)
    elif isinstance(value, str):
        assert type(value) is str, repr(value)


# ── the SPEC example ──────────────────────────────────────────────────────────────────────────


def test_spec_example_parses_into_the_expected_tree():
    module = parse_text(EXAMPLE, "encode.emx")
    assert module.package == "media.encode"
    assert module.file == "encode.emx"
    assert module.package_span == Span("encode.emx", 1, 9, 1, 21)
    (wf,) = module.workflows
    assert wf.name == "VideoEncode"
    assert [f.name for f in wf.facts] == ["Request", "Chunk", "Encoded", "Assembled", "Failed"]
    request = wf.facts[0]
    assert [(f.type.name, f.name) for f in request.fields] == [
        ("String", "source"),
        ("String", "recipe"),
        ("int", "chunks"),
    ]
    assert request.fields[2].default == nodes.Literal(31, request.fields[2].default.span)
    assert [f.name for f in wf.functions] == ["split", "encode", "assemble"]
    encode = wf.functions[1]
    assert encode.returns.name == "String"
    assert [(p.type.name, p.name) for p in encode.params] == [("String", "uri"), ("String", "recipe")]
    assert encode.options is not None
    assert [(e.key, e.value.value) for e in encode.options.entries] == [
        ("timeout", "2h"),
        ("retries", 3),
        ("priority", 5),
    ]
    assert wf.functions[0].options is None
    assert [r.name for r in wf.rules] == ["split source", "encode chunk", "assemble"]

    split = wf.rules[0]
    assert [(p.kind, p.type, p.binding) for p in split.match] == [
        ("fact", "Request", "req"),
        ("not", "Chunk", None),
    ]
    assert split.reaction is not None and split.reaction.params == ["parts"]
    (each,) = split.reaction.body.stmts
    call = each.expr
    assert isinstance(call, nodes.MethodCall) and call.name == "eachWithIndex"
    (closure,) = call.args
    assert isinstance(closure, nodes.Closure) and closure.params == ["uri", "i"]
    (insert,) = closure.body.stmts
    assert isinstance(insert, nodes.Insert)
    assert insert.fact.type == "Chunk"
    assert [f.name for f in insert.fact.fields] == ["index", "uri"]
    assert split.error is not None and split.error.params == ["err"]
    failed = split.error.body.stmts[0].fact.fields[0].value
    assert isinstance(failed, nodes.Interp)
    assert failed.parts[0] == "split: "
    assert isinstance(failed.parts[1], nodes.Attr) and failed.parts[1].name == "message"

    chunk = wf.rules[1]
    not_encoded = chunk.match[2]
    assert not_encoded.kind == "not"
    (constraint,) = not_encoded.constraints
    assert isinstance(constraint, nodes.Binary) and constraint.op == "=="
    assert constraint.left == nodes.Name("index", constraint.left.span)

    assemble = wf.rules[2]
    assert assemble.options is not None
    assert assemble.options.entries[0].key == "salience"
    assert [(getattr(m, "kind", "when")) for m in assemble.match] == ["fact", "collect", "when", "not"]
    assert isinstance(assemble.match[2], nodes.Guard)
    # action { assemble(done.sort { it.index }*.uri) }
    (stmt,) = assemble.action.body.stmts
    outer = stmt.expr
    assert isinstance(outer, nodes.Call) and outer.name == "assemble"
    spread = outer.args[0]
    assert isinstance(spread, nodes.Attr) and spread.spread and spread.name == "uri"
    sort = spread.obj
    assert isinstance(sort, nodes.MethodCall) and sort.name == "sort"
    (key,) = sort.args
    assert isinstance(key, nodes.Closure) and key.params == [] and not key.explicit_params
    assert key.body.stmts[0].expr == nodes.Attr(
        nodes.Name("it", key.body.stmts[0].expr.obj.span), "index", span=key.body.stmts[0].expr.span
    )
    assert [type(s) for s in assemble.reaction.body.stmts] == [nodes.Insert, nodes.Complete]
    assert [(n, s.line) for n, s in assemble.section_order] == [
        ("match", 43),
        ("action", 49),
        ("reaction", 50),
    ]


def test_the_example_in_the_spec_file_still_parses():
    if not SPEC.exists():
        pytest.skip("the shared SPEC is not next to this checkout")
    text = SPEC.read_text()
    start = text.index("```groovy\n") + len("```groovy\n")
    module = parse_text(text[start : text.index("```", start)])
    assert len(module.workflows[0].rules) == 3


def test_every_node_has_a_span_in_the_file_and_no_lark_object_leaks():
    module = parse_text(EXAMPLE, "encode.emx")
    count = 0
    for node in walk(module):
        count += 1
        assert type(node).__module__ == "emirax.nodes", node
        span = node.span
        assert span.file == "encode.emx", node
        assert span.line >= 1 and span.column >= 1, node
        assert (span.end_line, span.end_column) >= (span.line, span.column), node
    assert count > 120


def test_spans_run_from_the_first_token_to_the_last():
    module = parse_text(EXAMPLE, "e.emx")
    rule = module.workflows[0].rules[2]
    assert rule.span == Span("e.emx", 42, 5, 54, 6)
    (stmt,) = rule.action.body.stmts
    assert stmt.expr.span == Span("e.emx", 49, 18, 49, 55)  # assemble(...) including ')'
    assert rule.action.span == Span("e.emx", 49, 9, 49, 57)  # action { ... }
    insert = rule.reaction.body.stmts[0]
    assert insert.span == Span("e.emx", 51, 13, 51, 39)
    assert insert.fact.span == Span("e.emx", 51, 20, 51, 39)
    assert rule.match[1].span == Span("e.emx", 45, 13, 45, 36)  # done: collect Encoded()


# ── declarations ──────────────────────────────────────────────────────────────────────────────


def test_package_workflows_facts_and_functions():
    module = parse_text(
        "package a.b.c\n"
        "workflow One {\n"
        "  fact F()\n"
        "  fact G(def any, List xs = [], Map m = [:], F nested, boolean ok = false)\n"
        "  function def f() with []\n"
        "  function Map g(int a, long b, double c) with [timeout: '30s', backoff: 'exponential']\n"
        "}\n"
        "workflow Two { }\n"
    )
    assert module.package == "a.b.c"
    assert [w.name for w in module.workflows] == ["One", "Two"]
    one = module.workflows[0]
    assert one.facts[0].fields == []
    g = one.facts[1]
    assert [f.type.name for f in g.fields] == ["def", "List", "Map", "F", "boolean"]
    assert isinstance(g.fields[1].default, nodes.ListLit)
    assert isinstance(g.fields[2].default, nodes.MapLit)
    assert g.fields[3].default is None
    f, gfun = one.functions
    assert f.returns.name == "def" and f.params == []
    assert f.options == nodes.MapLit([], f.options.span)
    assert [p.type.name for p in gfun.params] == ["int", "long", "double"]
    assert [e.key for e in gfun.options.entries] == ["timeout", "backoff"]
    assert module.workflows[1].facts == module.workflows[1].rules == []


def test_rule_sections_are_recorded_in_source_order_keeping_the_first_of_each():
    module = parse_text(
        "package p\nworkflow W {\n"
        "  rule 'r' with [salience: -5, enabled: false] {\n"
        "    action { 1 }\n"
        "    match { a: A() }\n"
        "    action { 2 }\n"
        "    error { log it }\n"
        "  }\n"
        "  rule \"plain double quoted\" { match { } }\n"
        "}\n"
    )
    rule, second = module.workflows[0].rules
    assert [name for name, _ in rule.section_order] == ["action", "match", "action", "error"]
    assert [(s.line, s.column) for _, s in rule.section_order] == [(4, 5), (5, 5), (6, 5), (7, 5)]
    assert rule.action.body.stmts[0].expr.value == 1  # the first one is kept
    assert rule.reaction is None
    assert rule.error.params == []
    salience = rule.options.entries[0].value
    assert salience == nodes.Literal(-5, Span("t.emx", 3, 28, 3, 30))
    assert second.name == "plain double quoted"
    assert second.action is None  # the checker reports a missing action
    assert second.match == []


# ── match ─────────────────────────────────────────────────────────────────────────────────────


def test_patterns_of_every_kind():
    items = match_items(
        "      c: Chunk(index > 3, uri != null)\n"
        "      Request()\n"
        "      not Encoded(index == c.index)\n"
        "      exists Failed()\n"
        "      all: collect Chunk(index < c.index)\n"
        "      when all.size() > 2 && c.uri\n"
    )
    kinds = [(i.kind, i.type, i.binding, len(i.constraints)) for i in items[:5]]
    assert kinds == [
        ("fact", "Chunk", "c", 2),
        ("fact", "Request", None, 0),
        ("not", "Encoded", None, 1),
        ("exists", "Failed", None, 0),
        ("collect", "Chunk", "all", 1),
    ]
    guard = items[5]
    assert isinstance(guard, nodes.Guard)
    assert isinstance(guard.expr, nodes.Binary) and guard.expr.op == "&&"
    assert items[0].constraints[0].left == nodes.Name("index", items[0].constraints[0].left.span)


# ── statements ────────────────────────────────────────────────────────────────────────────────


def test_statements():
    stmts = in_action(
        "def a = 1\n"
        "def b\n"
        "a = 2; a += 3; a -= 4\n"
        "m.f = 1\n"
        "m['k'] = 2\n"
        "if (a > 1) { log 'big' } else if (a < 0) { log 'neg' } else { log 'small' }\n"
        "for (x in 0..<3) { a += x }\n"
        "insert Chunk(index: 1, uri: 'u', meta: Meta(size: 3))\n"
        "modify c { index = c.index + 1; uri = 'v' }\n"
        "retract c\n"
        "complete(uri: 'done', n: a)\n"
        "fail 'no way'\n"
        "log \"a is $a\"\n"
        "return a"
    )
    types = [type(s) for s in stmts]
    assert types == [
        nodes.Def, nodes.Def, nodes.Assign, nodes.Assign, nodes.Assign, nodes.Assign,
        nodes.Assign, nodes.If, nodes.For, nodes.Insert, nodes.Modify, nodes.Retract,
        nodes.Complete, nodes.Fail, nodes.Log, nodes.Return,
    ]  # fmt: skip
    assert stmts[0].name == "a" and stmts[0].value.value == 1
    assert stmts[1].value is None
    assert [s.op for s in stmts[2:5]] == ["=", "+=", "-="]
    assert isinstance(stmts[5].target, nodes.Attr)
    assert isinstance(stmts[6].target, nodes.Index)
    if_stmt = stmts[7]
    assert isinstance(if_stmt.other, nodes.If)
    assert isinstance(if_stmt.other.other, nodes.Block)
    loop = stmts[8]
    assert loop.var == "x" and isinstance(loop.iterable, nodes.Range) and loop.iterable.exclusive
    insert = stmts[9]
    nested = insert.fact.fields[2].value
    assert isinstance(nested, nodes.FactCtor) and nested.type == "Meta"
    assert nested.fields[0].name == "size"
    modify = stmts[10]
    assert modify.binding == "c"
    assert [a.name for a in modify.assignments] == ["index", "uri"]
    assert stmts[11].binding == "c"
    assert [f.name for f in stmts[12].fields] == ["uri", "n"]
    assert stmts[13].reason.value == "no way"
    assert isinstance(stmts[14].message, nodes.Interp)
    assert isinstance(stmts[15].value, nodes.Name)


def test_return_without_value_and_else_on_the_next_line():
    stmts = in_action("if (a) {\n  return\n}\nelse {\n  x = 1\n}")
    (if_stmt,) = stmts
    assert if_stmt.then.stmts[0] == nodes.Return(None, if_stmt.then.stmts[0].span)
    assert isinstance(if_stmt.other, nodes.Block)


def test_start_is_an_expression_taking_fact_values():
    value = expr("start media.encode.VideoEncode(Request(source: s, recipe: 'x'), Extra())")
    assert isinstance(value, nodes.Start)
    assert value.workflow == "media.encode.VideoEncode"
    assert [f.type for f in value.facts] == ["Request", "Extra"]
    assert value.facts[1].fields == []


# ── expressions ───────────────────────────────────────────────────────────────────────────────


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("0", 0),
        ("123", 123),
        ("1.5", 1.5),
        ("9223372036854775807", 2**63 - 1),
        ("-9223372036854775808", -(2**63)),
        ("'plain'", "plain"),
        ('"no interpolation"', "no interpolation"),
        ("''", ""),
        ('""', ""),
        (r"'esc \n \t \\ \' \" \$ \u00e9'", "esc \n \t \\ ' \" $ \u00e9"),
        (r'"esc \n \t \\ \' \" \$ \u00e9"', "esc \n \t \\ ' \" $ \u00e9"),
        ("'$not ${interpolated}'", "$not ${interpolated}"),
        (r"'\uD83D\uDE00'", "\U0001F600"),
        (r'"\uD83D\uDE00!"', "\U0001F600!"),
        ('"a // not a comment /* nor this */"', "a // not a comment /* nor this */"),
        ("true", True),
        ("false", False),
        ("null", None),
    ],
)
def test_literals(text, value):
    lit = expr(text)
    assert isinstance(lit, nodes.Literal)
    assert lit.value == value
    assert type(lit.value) is type(value)


def test_interpolated_string_parts():
    value = expr('"chunk $i of ${r.chunks + 1}${x}!"')
    assert isinstance(value, nodes.Interp)
    text, name, text2, total, inner = value.parts[:5]
    assert text == "chunk " and text2 == " of "
    assert name == nodes.Name("i", name.span)
    assert isinstance(total, nodes.Binary) and total.op == "+"
    assert inner == nodes.Name("x", inner.span)
    assert value.parts[5] == "!"
    nested = expr('"outer ${ m["k"] } done"')
    assert isinstance(nested.parts[1], nodes.Index)
    assert nested.parts[1].index.value == "k"


def test_names_attributes_calls_and_indexes():
    value = expr("a.b?.c*.d[0].m(1, 2)?.n()*.o { it }")
    assert isinstance(value, nodes.MethodCall) and value.name == "o" and value.spread
    assert isinstance(value.args[0], nodes.Closure)
    n = value.obj
    assert isinstance(n, nodes.MethodCall) and n.name == "n" and n.safe and n.args == []
    m = n.obj
    assert m.name == "m" and [a.value for a in m.args] == [1, 2] and not m.safe
    index = m.obj
    assert isinstance(index, nodes.Index) and index.index.value == 0
    d = index.obj
    assert isinstance(d, nodes.Attr) and d.name == "d" and d.spread and not d.safe
    c = d.obj
    assert c.name == "c" and c.safe and not c.spread
    b = c.obj
    assert b.name == "b" and not b.safe and not b.spread
    assert b.obj == nodes.Name("a", b.obj.span)


def test_calls_with_trailing_closures():
    call = expr("f(1) { it * 2 }")
    assert isinstance(call, nodes.Call) and call.name == "f"
    assert isinstance(call.args[0], nodes.Literal) and isinstance(call.args[1], nodes.Closure)
    method = expr("xs.inject(0) { acc, x -> acc + x }")
    assert [type(a) for a in method.args] == [nodes.Literal, nodes.Closure]
    assert method.args[1].params == ["acc", "x"] and method.args[1].explicit_params
    bare = expr("xs.collect { -> 1 }")
    assert bare.args[0].params == [] and bare.args[0].explicit_params
    nothing = expr("{ }")
    assert isinstance(nothing, nodes.Closure) and nothing.body.stmts == []


def test_keywords_are_plain_names_after_a_dot_and_as_keys():
    value = expr("x.match.collect.error.start.function.if")
    names = []
    while isinstance(value, nodes.Attr):
        names.append(value.name)
        value = value.obj
    assert names == ["if", "function", "start", "error", "collect", "match"]
    m = expr("[start: 1, true: 2, if: 3, null: 4, rule: 5, 'q': 6, \"d\": 7, 8: 9, (k): 10]")
    assert [e.key for e in m.entries[:8]] == ["start", "true", "if", "null", "rule", "q", "d", "8"]
    assert m.entries[8].key == nodes.Name("k", m.entries[8].key.span)
    fields = in_action("complete(start: 1, error: 2)")[0].fields
    assert [f.name for f in fields] == ["start", "error"]


def test_lists_and_maps():
    assert expr("[]") == nodes.ListLit([], expr("[]").span)
    empty = expr("[:]")
    assert isinstance(empty, nodes.MapLit) and empty.entries == []
    lst = expr("[1, 'two', [3],]")
    assert [type(i) for i in lst.items] == [nodes.Literal, nodes.Literal, nodes.ListLit]
    m = expr("[a: f(x), b: [c: 1]]")
    assert isinstance(m.entries[0].value, nodes.Call)
    assert isinstance(m.entries[1].value, nodes.MapLit)
    interp_key = expr('["k$i": 1]')
    assert isinstance(interp_key.entries[0].key, nodes.Interp)


@pytest.mark.parametrize(
    ("text", "shape"),
    [
        ("1 + 2 * 3", ("+", 1, ("*", 2, 3))),
        ("1 - 2 - 3", ("-", ("-", 1, 2), 3)),
        ("6 / 3 % 2", ("%", ("/", 6, 3), 2)),
        ("a || b && c", ("||", "a", ("&&", "b", "c"))),
        ("a == b < c", ("==", "a", ("<", "b", "c"))),
        ("a != b >= c", ("!=", "a", (">=", "b", "c"))),
        ("a in b && c <= d", ("&&", ("in", "a", "b"), ("<=", "c", "d"))),
        ("a < 1 + 2", ("<", "a", ("+", 1, 2))),
        ("a..b + 1", ("..", "a", ("+", "b", 1))),
        ("0..<n", ("..<", 0, "n")),
        ("1 .. 2 == r", ("==", ("..", 1, 2), "r")),
        ("-a * b", ("*", ("-", "a"), "b")),
        ("-2 * -1.5", ("*", -2, -1.5)),
        ("-(3)", -3),
        ("1 - -2", ("-", 1, -2)),
        ("-true", ("-", True)),
        ("!a && !!b", ("&&", ("!", "a"), ("!", ("!", "b")))),
        ("+a.b", ("+", ("attr", "a", "b"))),
        ("a ? b : c ? d : e", ("?", "a", "b", ("?", "c", "d", "e"))),
        ("a ?: b ?: c", ("?:", "a", ("?:", "b", "c"))),
        ("a || b ? c : d", ("?", ("||", "a", "b"), "c", "d")),
        ("(a + b) * c", ("*", ("+", "a", "b"), "c")),
    ],
)
def test_operator_precedence(text, shape):
    assert _shape(expr(text)) == shape


def _shape(e):
    if isinstance(e, nodes.Literal):
        return e.value
    if isinstance(e, nodes.Name):
        return e.id
    if isinstance(e, nodes.Binary):
        return (e.op, _shape(e.left), _shape(e.right))
    if isinstance(e, nodes.Unary):
        return (e.op, _shape(e.operand))
    if isinstance(e, nodes.Range):
        return ("..<" if e.exclusive else "..", _shape(e.start), _shape(e.end))
    if isinstance(e, nodes.Ternary):
        return ("?", _shape(e.cond), _shape(e.then), _shape(e.other))
    if isinstance(e, nodes.Elvis):
        return ("?:", _shape(e.left), _shape(e.right))
    if isinstance(e, nodes.Attr):
        return ("attr", _shape(e.obj), e.name)
    raise AssertionError(e)


def test_a_call_with_named_arguments_and_an_upper_case_name_is_a_fact_value():
    fact = expr("Chunk(index: 1, uri: u)")
    assert isinstance(fact, nodes.FactCtor) and [f.name for f in fact.fields] == ["index", "uri"]
    assert isinstance(expr("Done()"), nodes.FactCtor)
    call = expr("split(a, 2)")
    assert isinstance(call, nodes.Call) and call.name == "split" and len(call.args) == 2
    assert isinstance(expr("Upper(a)"), nodes.Call)  # positional: a call (the checker decides)


# ── newlines, separators and comments ─────────────────────────────────────────────────────────


def test_newlines_end_statements_except_where_the_statement_obviously_goes_on():
    stmts = in_action(
        "x = a +\n    b\n"
        "y = f(1,\n      2)\n"
        "z = [\n  1,\n  2\n]\n"
        "w = xs\n"
        "    // a comment between the lines\n"
        "    .findAll { it > 1 }\n"
        "    /* and a block comment */\n"
        "    ?.first()\n"
        "    *.size\n"
        "v = ok\n    ? 1\n    : 2\n"
        "u = a\n    && b\n    || c\n"
        "t = a\n    ?: b\n"
        "s = xs.collect { x ->\n    x * 2\n}\n"
        "r = 1; q = 2;\n"
    )
    assert [s.target.id for s in stmts] == ["x", "y", "z", "w", "v", "u", "t", "s", "r", "q"]
    assert isinstance(stmts[0].value, nodes.Binary)
    assert len(stmts[1].value.args) == 2
    assert len(stmts[2].value.items) == 2
    assert isinstance(stmts[3].value, nodes.Attr) and stmts[3].value.spread
    assert isinstance(stmts[4].value, nodes.Ternary)
    assert stmts[5].value.op == "||"
    assert isinstance(stmts[6].value, nodes.Elvis)


def test_comments_and_division():
    stmts = in_action("x = a / b // half\ny = a /* x */ / 2 /* multi\nline */\nz = a//b")
    assert stmts[0].value.op == "/" and stmts[0].value.right.id == "b"
    assert stmts[1].value.op == "/" and stmts[1].value.right.value == 2
    assert stmts[2].value == nodes.Name("a", stmts[2].value.span)  # `//b` is a comment


def test_windows_line_endings_tabs_and_a_byte_order_mark():
    module = parse_text("\ufeffpackage p\r\nworkflow W {\r\n\trule 'r' {\r\n\t\taction { x }\r\n\t}\r\n}\r\n")
    assert module.workflows[0].rules[0].action.body.stmts[0].expr.id == "x"


def test_a_file_with_only_a_package():
    module = parse_text("// header\npackage only.this\n")
    assert module.package == "only.this" and module.workflows == []


# ── the grammar itself ────────────────────────────────────────────────────────────────────────


def test_the_grammar_has_no_lalr_conflicts():
    """Lark resolves shift/reduce conflicts silently (logging them at debug level)."""
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    lark_logger = logging.getLogger("lark")
    handler = Keep(level=logging.DEBUG)
    old_level = lark_logger.level
    lark_logger.addHandler(handler)
    lark_logger.setLevel(logging.DEBUG)
    try:
        build_lark(debug=True)
    finally:
        lark_logger.removeHandler(handler)
        lark_logger.setLevel(old_level)
    conflicts = [r.getMessage() for r in records if re.search("conflict", r.getMessage(), re.I)]
    assert conflicts == []


def test_the_grammar_file_is_the_one_in_the_checkout_or_the_package():
    path = grammar_path()
    assert path.name == "emirax.lark" and path.is_file()
    assert "LALR" in path.read_text()


def test_the_grammar_cache_is_written_and_a_corrupt_one_is_ignored(tmp_path, monkeypatch):
    monkeypatch.setenv("EMIRAX_CACHE_DIR", str(tmp_path))
    first = build_lark(cached=True)
    (cache,) = tmp_path.iterdir()
    assert cache.name.startswith("grammar-") and cache.stat().st_size > 1000
    cache.write_bytes(b"not a cache\n" + b"\x00" * 100)
    again = build_lark(cached=True)
    text = "package p\nworkflow W { rule 'r' { action { x = [a: 1] } } }\n"
    assert again.parse(text) == first.parse(text)


def test_names_that_start_with_a_keyword_are_names():
    stmts = in_action(
        "def index = notes + inserted + starts + errors + failed + collection\n"
        "elsewhere = iffy ?: forms ?: defaults ?: logs ?: returned ?: nullable ?: trueish\n"
        "for (i in index) { log i }"
    )
    assert stmts[0].name == "index"
    assert isinstance(stmts[1], nodes.Assign) and stmts[1].target.id == "elsewhere"
    assert stmts[2].var == "i" and stmts[2].iterable.id == "index"


def test_parses_are_independent_and_thread_safe():
    from concurrent.futures import ThreadPoolExecutor

    from emirax.errors import ParseError

    with pytest.raises(ParseError):
        parse_text("package p\nworkflow W { rule 'r' { action { x = ( } }")
    assert parse_text(EXAMPLE).workflows[0].name == "VideoEncode"  # no state left behind

    def one(i: int) -> str:
        return parse_text(EXAMPLE.replace("VideoEncode", f"W{i}"), f"f{i}.emx").workflows[0].name

    with ThreadPoolExecutor(4) as pool:
        assert list(pool.map(one, range(8))) == [f"W{i}" for i in range(8)]


def test_a_large_file_parses_quickly():
    """About 0.2 s on the reference machine (10,000 lines: about 1 s); the bound is loose."""
    import time

    rule = EXAMPLE[EXAMPLE.index("    rule 'encode chunk'") : EXAMPLE.index("    rule 'assemble'")]
    head = EXAMPLE[: EXAMPLE.index("    rule 'split source'")]
    rules = "".join(rule.replace("'encode chunk'", f"'encode chunk {i}'") for i in range(200))
    text = head + rules + "}\n"
    assert text.count("\n") > 2000
    start = time.perf_counter()
    module = parse_text(text)
    elapsed = time.perf_counter() - start
    assert len(module.workflows[0].rules) == 200
    assert elapsed < 2.0, f"{elapsed:.2f} s for {text.count(chr(10))} lines"


def test_every_reserved_word_is_a_keyword_of_the_grammar():
    from emirax.parser import RESERVED

    grammar = grammar_path().read_text()
    keywords = set(re.findall(r"^[A-Z]+\.1: /([a-z]+)\\b/$", grammar, re.M))
    assert keywords == set(RESERVED)
    assert len(RESERVED) == 30  # SPEC section 2, "Precise rules"
