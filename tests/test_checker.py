"""The checker reports every mistake it is sure of, at the offending node's file:line:column.

Each test parses a small `.emx` program and asserts the exact position and the key words of
each diagnostic. Positions are written as `at(src, "needle")`: the 1-based line and column where
the text `needle` starts in the source, so a test says *which* token is blamed.
"""

from __future__ import annotations

import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from emirax import nodes
from emirax.checker import check
from emirax.errors import CheckError, Diagnostic, ParseError
from emirax.parser import parse
from emirax.source import Source, Span
from support import SPEC_EXAMPLE

# A workflow most tests share; their rules follow it.
HEAD = """\
package media.encode

workflow W {
    fact Request(String source, int chunks = 31)
    fact Chunk(int index, String uri)
    fact Box(Chunk chunk, List tags = [])
    function String encode(String uri, int level)
    function List split(String source)
"""


def program(rules: str) -> str:
    return HEAD + rules + "\n}\n"


def at(src: str, needle: str, nth: int = 0) -> tuple[int, int]:
    """Line and column (1-based) of the `nth` occurrence of `needle` in `src`."""
    index = -1
    for _ in range(nth + 1):
        index = src.index(needle, index + 1)
    line = src.count("\n", 0, index) + 1
    column = index - (src.rfind("\n", 0, index) + 1) + 1
    return line, column


def run(*sources: str) -> tuple[list[Diagnostic], list[Diagnostic]]:
    """Check `sources` as one project (files a.emx, b.emx, ...): (errors, warnings)."""
    modules = [parse(Source(f"{chr(97 + i)}.emx", s)) for i, s in enumerate(sources)]
    try:
        warnings = check(modules)
    except CheckError as e:
        assert all(d.severity == "error" for d in e.diagnostics)
        return e.diagnostics, e.warnings
    return [], warnings


def where(diags: list[Diagnostic]) -> list[tuple[int, int]]:
    return [(d.span.line, d.span.column) for d in diags]


def only(diags: list[Diagnostic], src: str, needle: str, *words: str, nth: int = 0) -> Diagnostic:
    """The diagnostics are exactly one, at `needle`, and its message holds every word."""
    assert where(diags) == [at(src, needle, nth)], [str(d) for d in diags]
    (d,) = diags
    for word in words:
        assert word in d.message, (word, d.message)
    return d


def find(diags: list[Diagnostic], src: str, needle: str, *words: str, nth: int = 0) -> Diagnostic:
    """One of the diagnostics is at `needle` and its message holds every word."""
    line, column = at(src, needle, nth)
    for d in diags:
        if (d.span.line, d.span.column) == (line, column) and all(w in d.message for w in words):
            return d
    raise AssertionError(f"no diagnostic at {line}:{column} with {words}: {[str(d) for d in diags]}")


def errors_of(src: str) -> list[Diagnostic]:
    errors, _ = run(src)
    return errors


def warnings_of(src: str) -> list[Diagnostic]:
    errors, warnings = run(src)
    assert errors == [], [str(d) for d in errors]
    return warnings


# ── the SPEC example ──────────────────────────────────────────────────────────────────────────

EXAMPLE = SPEC_EXAMPLE


def test_the_spec_example_checks_clean():
    assert run(EXAMPLE) == ([], [])


def test_a_program_using_the_whole_language_checks_clean():
    src = program("""
    rule 'everything' with [salience: -5, enabled: true] {
        match {
            r: Request(source != '', chunks > 0 && chunks <= 100)
            boxes: collect Box(tags.contains('hd'))
            exists Chunk(index == 0)
            when boxes.isEmpty() || boxes.every { it.chunk.index >= 0 }
        }
        action {
            def parts = (0..<r.chunks).collect { i -> encode("${r.source}#$i", i % 3) }
            def extra = [:]
            extra['all'] = split(r.source)
            def first = parts[0]
            for (b in boxes) {
                if (b.chunk?.uri?.startsWith('s3:')) { log "box ${b.chunk.index}" } else { retract b }
            }
            def label = r.source ?: 'none'
            label += '!'
            [parts: parts, extra: extra, first: first, label: label.toUpperCase()]
        }
        reaction { v ->
            v.parts.eachWithIndex { uri, i -> insert Chunk(index: i, uri: uri) }
            modify r { chunks = r.chunks + 1; source = "${v.label}" }
            complete(count: v.parts.size(), sorted: v.parts.sort { a, b -> a <=> b ? 0 : 1 })
        }
        error { log "failed after ${it.attempts} attempts: ${it.message}"; fail it.message }
    }
""").replace("a <=> b ? 0 : 1", "a < b ? -1 : 1")
    assert run(src) == ([], [])


# ── declarations ──────────────────────────────────────────────────────────────────────────────


def test_all_files_of_a_project_name_the_same_package():
    a = "package media.encode\nworkflow A { }\n"
    b = "package media.other\nworkflow B { }\n"
    errors, _ = run(a, b)
    d = only(errors, b, "media.other", "package 'media.other'", "media.encode", "same package")
    assert d.span.file == "b.emx"


def test_a_workflow_name_is_declared_once_across_the_files_of_a_project():
    a = "package p\nworkflow A { }\n"
    b = "package p\nworkflow B { }\n\nworkflow A { }\n"
    errors, _ = run(a, b)
    d = only(errors, b, "workflow A", "workflow 'A' is declared twice", "a.emx:2:1")
    assert d.span.file == "b.emx"


def test_duplicate_fact_function_and_rule_names_in_a_workflow():
    src = program("""
    fact Chunk(int index)
    function String encode(String uri)
    rule 'r' {
        match { c: Chunk() }
        action { log 'a' }
    }
    rule 'r' {
        match { c: Chunk() }
        action { log 'b' }
    }
""")
    errors = errors_of(src)
    assert where(errors) == [
        at(src, "fact Chunk", 1), at(src, "function String encode", 1), at(src, "rule 'r'", 1)
    ]
    assert "fact 'Chunk' is declared twice" in errors[0].message
    assert "function 'encode' is declared twice" in errors[1].message
    assert "rule 'r' is declared twice" in errors[2].message


def test_duplicate_fields_and_parameters():
    src = program("""
    fact Pair(int a, String a)
    function def f(int x, List x)
""")
    errors = errors_of(src)
    assert where(errors) == [at(src, "String a"), at(src, "List x")]
    assert "two fields named 'a'" in errors[0].message
    assert "two parameters named 'x'" in errors[1].message


def test_unknown_types_in_declarations_with_a_hint():
    src = program("""
    fact Job(string name, Chunks part, Chunk chunk, def any, long big, double d, boolean b, Map m)
    function Strin f(Lst xs)
    function void g()
""")
    errors = errors_of(src)
    assert where(errors) == [
        at(src, "string name"), at(src, "Chunks"), at(src, "Strin f"), at(src, "Lst"), at(src, "void")
    ]
    assert all("unknown type" in e.message for e in errors)
    assert [e.hint for e in errors[:4]] == [
        "did you mean 'String'?", "did you mean 'Chunk'?", "did you mean 'String'?",
        "did you mean 'List'?",
    ]


def test_fact_defaults_are_literals_of_the_field_type():
    src = program("""
    fact Job(int n = 'x', int m = 1.5, double d = 1, String s = null, List l = [1, 'a'], Map o = [a: 1], String e = foo, Chunk c = null, boolean f = 0)
""")
    errors = errors_of(src)
    assert where(errors) == [at(src, "'x'"), at(src, "1.5"), at(src, "foo"), at(src, "0)")]
    assert "default of 'Job.n' must be an int, not a String" in errors[0].message
    assert "default of 'Job.m' must be an int, not a double" in errors[1].message
    assert "must be a literal" in errors[2].message
    assert "must be a boolean" in errors[3].message


@pytest.mark.parametrize(
    "option, needle, words",
    [
        ("timeout: '30x'", "'30x'", ["timeout", "duration"]),
        ("timeout: 30", "30", ["timeout", "duration"]),
        ("timeout: '0s'", "'0s'", ["timeout", "duration"]),
        ("retries: -1", "-1", ["retries", "0 or more"]),
        ("retries: 'x'", "'x'", ["retries"]),
        ("backoff: 'linear'", "'linear'", ["backoff", "exponential"]),
        ("priority: 'high'", "'high'", ["priority", "int"]),
        ("queue: ''", "''", ["queue"]),
        ("cache: 3", "3]", ["cache"]),
        ("timeout: x", "x]", ["timeout", "literal"]),
        ("timout: '1s'", "timout", ["unknown option 'timout'"]),
    ],
)
def test_function_options_are_known_keys_with_literal_values_of_the_right_type(option, needle, words):
    src = program(f"    function String f() with [{option}]\n")
    errors = errors_of(src)
    d = only(errors, src, needle, *words)
    if "timout" in option:
        assert d.hint == "did you mean 'timeout'?"


def test_valid_function_options_and_durations():
    src = program(
        "    function String f() with [timeout: '100ms', retries: 0, backoff: 'exponential', "
        "priority: -3, queue: 'gpu', cache: true]\n"
        "    function String g() with [timeout: '5m', backoff: '30s', cache: '2h']\n"
    )
    assert run(src) == ([], [])


def test_rule_options_are_salience_enabled_and_priority_only():
    src = program("""
    rule 'r' with [salience: 'high', enabled: 1, priority: 'top', weight: 2] {
        match { c: Chunk() }
        action { log 'x' }
    }
""")
    errors = errors_of(src)
    assert where(errors) == [at(src, "'high'"), at(src, "1,"), at(src, "'top'"), at(src, "weight")]
    assert "salience" in errors[0].message and "int" in errors[0].message
    assert "enabled" in errors[1].message and "true or false" in errors[1].message
    assert "priority" in errors[2].message and "int" in errors[2].message
    assert "unknown option 'weight' for a rule" in errors[3].message


# ── rules and sections ────────────────────────────────────────────────────────────────────────


def test_match_and_action_are_required():
    src = program("""
    rule 'no match' {
        action { log 'x' }
    }
    rule 'no action' {
        match { c: Chunk() }
        reaction { log 'y' }
    }
""")
    errors = errors_of(src)
    assert where(errors) == [at(src, "rule 'no match'"), at(src, "rule 'no action'")]
    assert "rule 'no match' has no 'match' section" in errors[0].message
    assert "rule 'no action' has no 'action' section" in errors[1].message


def test_sections_come_in_order_and_at_most_once():
    src = program("""
    rule 'r' {
        match { c: Chunk() }
        reaction { log 'r' }
        action { log 'a' }
        action { log 'b' }
    }
""")
    errors = errors_of(src)
    assert where(errors) == [at(src, "action { log 'a'"), at(src, "action { log 'b'")]
    assert "'action' must come before 'reaction'" in errors[0].message
    assert "second 'action' section" in errors[1].message


def test_a_rule_name_is_not_empty():
    src = program("""
    rule '  ' {
        match { c: Chunk() }
        action { log 'x' }
    }
""")
    only(errors_of(src), src, "rule '  '", "needs a name")


# ── patterns ──────────────────────────────────────────────────────────────────────────────────


def rule_with_match(match: str, action: str = "log 'x'") -> str:
    return program(f"""
    rule 'r' {{
        match {{
{match}
        }}
        action {{ {action} }}
    }}
""")


def test_unknown_fact_type_in_a_pattern_and_its_fields_are_not_reported_again():
    src = rule_with_match("            r: Reqest(chunks > 0, nothing == 1)\n            c: Chunk(index == 1)")
    d = only(errors_of(src), src, "r: Reqest", "unknown fact type 'Reqest'")
    assert d.hint == "did you mean 'Request'?"


def test_unknown_field_inside_a_pattern_with_a_hint():
    src = rule_with_match("            c: Chunk(indx == 1)")
    d = only(errors_of(src), src, "indx", "unknown field 'indx' of Chunk")
    assert d.hint == "did you mean 'index'?"


def test_earlier_bindings_are_usable_inside_a_pattern():
    src = rule_with_match("            c: Chunk()\n            d: Chunk(index == c.index + 1, uri != c.uri)")
    assert run(src) == ([], [])


def test_a_binding_that_shadows_a_field_of_a_pattern_using_it():
    src = rule_with_match("            uri: Chunk()\n            Chunk(uri == 'x')")
    line = at(src, "Chunk(uri")[0]
    only(errors_of(src), src, "uri: Chunk", "binding 'uri'", "field of Chunk", f"line {line}")


def test_duplicate_bindings():
    src = rule_with_match("            c: Chunk()\n            c: Request()")
    only(errors_of(src), src, "c: Request", "'c' is bound twice")


def _rule_with_pattern(pattern: nodes.Pattern) -> nodes.Module:
    """A tree the parser refuses to build (it reports these forms itself), for the checker."""
    span = Span("t.emx", 3, 9)
    rule = nodes.Rule(
        "r", None, [pattern], nodes.Section("action", [], nodes.Block([]), span), span=span
    )
    chunk = nodes.FactDecl("Chunk", [nodes.FieldDecl(nodes.TypeRef("int"), "index")])
    return nodes.Module("p", [nodes.Workflow("W", [chunk], [], [rule])], "t.emx")


@pytest.mark.parametrize("kind", ["not", "exists"])
def test_not_and_exists_patterns_cannot_bind(kind):
    span = Span("t.emx", 4, 13)
    module = _rule_with_pattern(nodes.Pattern(kind, "Chunk", [], "c", span))
    with pytest.raises(CheckError) as info:
        check([module])
    (d,) = info.value.diagnostics
    assert d.span == span and f"'{kind}' pattern" in d.message and "cannot bind" in d.message


def test_collect_must_bind():
    span = Span("t.emx", 4, 13)
    module = _rule_with_pattern(nodes.Pattern("collect", "Chunk", [], None, span))
    with pytest.raises(CheckError) as info:
        check([module])
    (d,) = info.value.diagnostics
    assert d.span == span and "'collect'" in d.message and "needs a name" in d.message


def test_constraints_must_be_boolean_where_known():
    src = rule_with_match("            c: Chunk(index, uri)\n            when c.index")
    warnings = warnings_of(src)
    # Groovy truth makes an int legal, but it is likely a mistake; a String is a usual idiom.
    assert where(warnings) == [at(src, "index, uri)"), at(src, "c.index")]
    assert "constraint is an int, not a boolean" in warnings[0].message
    assert "guard is an int" in warnings[1].message


def test_a_closure_as_a_constraint_is_an_error():
    src = rule_with_match("            c: Chunk({ index > 0 })")
    only(errors_of(src), src, "{ index", "closure", "always true")


def test_when_sees_only_the_bindings_above_it():
    src = rule_with_match("            when c.index > 0\n            c: Chunk()")
    line = at(src, "c: Chunk()")[0]
    only(errors_of(src), src, "c.index", "'c' is used before it is bound", f"line {line}")


def test_a_pattern_cannot_use_a_binding_bound_below_it():
    src = rule_with_match("            a: Chunk(index == b.index)\n            b: Chunk()")
    only(errors_of(src), src, "b.index", "'b' is used before it is bound")


def test_a_pattern_cannot_use_its_own_binding():
    src = rule_with_match("            a: Chunk(a.index > 0)")
    d = only(errors_of(src), src, "a.index", "'a' is bound by this pattern")
    assert "index" in d.hint


# ── names in code ─────────────────────────────────────────────────────────────────────────────


def rule_with(action: str, reaction: str | None = None, error: str | None = None, match: str = "c: Chunk(); r: Request()") -> str:
    sections = f"        match {{ {match} }}\n        action {{\n{action}\n        }}\n"
    if reaction is not None:
        sections += f"        reaction {{\n{reaction}\n        }}\n"
    if error is not None:
        sections += f"        error {{\n{error}\n        }}\n"
    return program("    rule 'r' {\n" + sections + "    }\n")


def test_unknown_name_with_a_hint():
    src = rule_with("            def total = 1\n            log totl")
    d = only(errors_of(src), src, "totl", "unknown name 'totl'")
    assert d.hint == "did you mean 'total'?"


def test_it_is_bound_only_in_closures_without_parameters_and_sections_without_one():
    src = rule_with(
        "            log it\n            [1].each { x -> log it }\n            [1].each { log it }",
        reaction="            log it",
        error="            log it.message",
    )
    errors = errors_of(src)
    assert where(errors) == [at(src, "it\n"), at(src, "it }")]
    assert all("'it' is not defined here" in e.message for e in errors)


def test_names_bound_by_match_def_for_and_closure_parameters():
    src = rule_with(
        "            def n = c.index\n"
        "            for (x in [1, 2]) { n += x }\n"
        "            [a: 1].each { k, v -> log \"$k $v ${r.source}\" }\n"
        "            n"
    )
    assert run(src) == ([], [])


def test_assigning_a_name_never_declared_with_def():
    src = rule_with(
        "            count = 1\n"
        "            c = null\n"
        "            for (x in [1]) { x = 2 }\n"
        "            [1].each { it = 3 }"
    )
    errors = errors_of(src)
    assert where(errors) == [at(src, "count"), at(src, "c = null"), at(src, "x = 2"), at(src, "it = 3")]
    assert "cannot assign to 'count': it was never declared" in errors[0].message
    assert errors[0].hint == "declare it first: def count = ..."
    assert "cannot assign to binding 'c'" in errors[1].message and "modify c" in errors[1].hint
    assert "cannot assign to loop variable 'x'" in errors[2].message
    assert "cannot assign to parameter 'it'" in errors[3].message


def test_a_local_used_before_its_def_or_outside_its_block():
    src = rule_with(
        "            log early\n"
        "            def early = 1\n"
        "            if (true) { def inner = 2 }\n"
        "            log inner"
    )
    errors = errors_of(src)
    assert where(errors) == [at(src, "early\n"), at(src, "inner\n")]
    assert "'early' is used before it is defined" in errors[0].message
    assert "'inner' is not visible here" in errors[1].message


def test_a_def_twice_in_one_block_and_a_def_hiding_a_binding():
    src = rule_with("            def a = 1\n            def a = 2\n            def c = 3")
    errors = errors_of(src)
    assert where(errors) == [at(src, "def a", 1), at(src, "def c")]
    assert "'a' is already defined in this block" in errors[0].message
    assert "hides the match binding 'c'" in errors[1].message


# ── insert, modify, retract ───────────────────────────────────────────────────────────────────


def test_insert_unknown_fact_type():
    src = rule_with("            insert Chunck(index: 1, uri: 'a')")
    d = only(errors_of(src), src, "Chunck", "unknown fact type 'Chunck'")
    assert d.hint == "did you mean 'Chunk'?"


def test_insert_unknown_field_duplicate_field_and_missing_field():
    src = rule_with(
        "            insert Chunk(indx: 1, uri: 'a')\n"
        "            insert Chunk(index: 1, uri: 'a', uri: 'b')\n"
        "            insert Chunk(index: 1)"
    )
    errors = errors_of(src)
    assert where(errors) == [
        at(src, "Chunk(indx"), at(src, "indx"), at(src, "uri: 'b'"), at(src, "Chunk(index: 1)\n")
    ]
    assert "Chunk needs field 'index'" in errors[0].message
    assert "Chunk has no field 'indx'" in errors[1].message
    assert errors[1].hint == "did you mean 'index'?"
    assert "field 'uri' is given twice" in errors[2].message
    assert "Chunk needs field 'uri' (no default)" in errors[3].message


def test_insert_fields_with_defaults_may_be_left_out():
    src = rule_with("            insert Request(source: 's')\n            insert Box(chunk: Chunk(index: 1, uri: 'u'))")
    assert run(src) == ([], [])


def test_insert_value_types_must_match_the_fields():
    src = rule_with(
        "            insert Chunk(index: 'one', uri: 2)\n"
        "            insert Request(source: c.uri, chunks: 1.5)\n"
        "            insert Request(source: r.source, chunks: c.index / 2)"
    )
    errors = errors_of(src)
    assert where(errors) == [at(src, "'one'"), at(src, "2)"), at(src, "1.5"), at(src, "c.index / 2")]
    assert "field 'index' of Chunk is an int, but this value is a String" in errors[0].message
    assert "field 'uri' of Chunk is a String, but this value is an int" in errors[1].message
    assert "is an int, but this value is a double" in errors[3].message  # int / int is a double


def test_a_fact_typed_field_takes_a_nested_fact():
    src = rule_with(
        "            insert Box(chunk: 'x')\n"
        "            insert Box(chunk: Chunk(index: 1))\n"
        "            insert Box(chunk: Request(source: 'a'))\n"
        "            insert Box(chunk: c)"
    )
    errors = errors_of(src)
    assert where(errors) == [at(src, "'x'"), at(src, "Chunk(index: 1)"), at(src, "Request(source")]
    assert "field 'chunk' of Box is a Chunk, but this value is a String" in errors[0].message
    assert "Chunk needs field 'uri'" in errors[1].message
    assert "is a Chunk, but this value is a Request" in errors[2].message


def test_modify_needs_a_fact_binding_known_fields_and_matching_types():
    src = rule_with(
        "            modify c { indx = 1 }\n"
        "            modify c { index = 'x'; uri = c.uri + '!' }\n"
        "            modify cs { index = 1 }\n"
        "            def n = 1\n"
        "            modify n { index = 1 }\n"
        "            modify zz { index = 1 }",
        match="c: Chunk(); cs: collect Chunk()",
    )
    errors = errors_of(src)
    assert where(errors) == [
        at(src, "indx"), at(src, "'x'"), at(src, "modify cs"), at(src, "modify n"), at(src, "modify zz")
    ]
    assert "Chunk has no field 'indx'" in errors[0].message and errors[0].hint == "did you mean 'index'?"
    assert "field 'index' of Chunk is an int, but this value is a String" in errors[1].message
    assert "'cs' is a collect binding" in errors[2].message
    assert "modify takes a fact bound in match, and 'n' is a local of type int" in errors[3].message
    assert "unknown binding 'zz'" in errors[4].message


def test_retract_needs_a_fact_binding():
    src = rule_with(
        "            retract c\n"
        "            cs.each { retract it }\n"
        "            retract cs\n"
        "            retract cz",
        match="c: Chunk(); cs: collect Chunk()",
    )
    errors = errors_of(src)
    assert where(errors) == [at(src, "retract cs"), at(src, "retract cz")]
    assert "'cs' is a collect binding (a list of facts): retract takes one fact" in errors[0].message
    assert "unknown binding 'cz'" in errors[1].message and errors[1].hint.startswith("did you mean")


# ── functions, start, methods ─────────────────────────────────────────────────────────────────


def test_unknown_functions_and_wrong_arity():
    src = rule_with("            encod(c.uri, 1)\n            encode(c.uri)\n            size(1)")
    errors = errors_of(src)
    assert where(errors) == [at(src, "encod("), at(src, "encode(c.uri)"), at(src, "size(1)")]
    assert "unknown function 'encod'" in errors[0].message and errors[0].hint == "did you mean 'encode'?"
    assert "function 'encode' takes 2 arguments (String uri, int level), not 1" in errors[1].message
    assert "unknown function 'size'" in errors[2].message and "method" in errors[2].hint


def test_function_argument_types_must_match_the_parameters():
    src = rule_with("            encode(c.index, 'high')")
    errors = errors_of(src)
    assert where(errors) == [at(src, "c.index,"), at(src, "'high'")]
    assert "argument 'uri' of 'encode' is a String, but this value is an int" in errors[0].message


def test_functions_and_start_only_in_action():
    src = rule_with(
        "            encode(c.uri, 1)",
        reaction="            encode(c.uri, 2)\n            start media.encode.W(Chunk(index: 1, uri: 'u'))",
        error="            split(c.uri)",
        match="c: Chunk(); when encode(c.uri, 0) != null",
    )
    errors = errors_of(src)
    assert where(errors) == [
        at(src, "encode(c.uri, 0)"), at(src, "encode(c.uri, 2)"), at(src, "start media"),
        at(src, "split(c.uri)"),
    ]
    assert "function 'encode' can be called only in 'action', not in 'match'" in errors[0].message
    assert "not in 'reaction'" in errors[1].message
    assert "'start' can be used only in 'action', not in 'reaction'" in errors[2].message
    assert "function 'split' can be called only in 'action', not in 'error'" in errors[3].message


def test_start_takes_facts_of_a_known_child_workflow():
    src = rule_with(
        "            def a = start media.encode.W(Chunk(index: 1, uri: 'u'))\n"
        "            def b = start media.encode.Nope(Chunk(index: 1, uri: 'u'))\n"
        "            def d = start media.encode.W(Chunk(index: 1))\n"
        "            def e = start other.pkg.X(Anything(x: 1))\n"
        "            [a, b, d, e]"
    )
    errors = errors_of(src)
    assert where(errors) == [at(src, "start media.encode.Nope"), at(src, "Chunk(index: 1))")]
    assert "unknown workflow 'media.encode.Nope'" in errors[0].message
    assert "Chunk needs field 'uri'" in errors[1].message


def test_results_of_calls_are_placeholders_in_the_action():
    src = rule_with(
        "            def u = encode(c.uri, 1)\n"
        "            log \"got $u\"\n"
        "            def n = u.size()\n"
        "            if (u) { log 'x' }\n"
        "            encode(u, 2)\n"
        "            encode(c.uri, 1) + '!'\n"
        "            insert Chunk(index: 1, uri: encode(c.uri, 3))"
    )
    errors = errors_of(src)
    assert where(errors) == [
        at(src, "$u"), at(src, "u.size"), at(src, "u) {"), at(src, "u, 2"),
        at(src, "encode(c.uri, 1) +"), at(src, "encode(c.uri, 3)"),
    ]
    assert all("in 'action' it is only a placeholder" in e.message for e in errors)
    assert "'u' holds the result of a function call" in errors[0].message
    assert "as an argument of 'encode'" in errors[3].message
    assert "the result of 'encode' cannot be used as an operand of '+'" in errors[4].message


def test_placeholders_may_go_into_lists_maps_locals_and_closure_results():
    src = rule_with(
        "            def all = [:]\n"
        "            def parts = [c.uri, r.source].collect { encode(it, 1) }\n"
        "            all['split'] = split(r.source)\n"
        "            def acc = []\n"
        "            for (x in [1, 2]) { acc += encode(c.uri, x) }\n"
        "            [parts: parts, all: all, acc: acc, one: encode(c.uri, 0)]",
        reaction="            v -> log v.parts.join(',')",
    )
    assert run(src) == ([], [])


def test_unknown_method_with_a_hint_and_method_arity():
    src = rule_with("            c.uri.toUppercase()\n            [1].join(',', 2)\n            [1].each()")
    errors = errors_of(src)
    assert where(errors) == [at(src, "c.uri.toUppercase"), at(src, "[1].join"), at(src, "[1].each")]
    assert "unknown method 'toUppercase'" in errors[0].message
    assert errors[0].hint == "did you mean 'toUpperCase'?"
    assert "method 'join' takes 0 to 1 arguments, not 2" in errors[1].message
    assert "method 'each' takes 1 argument, not 0" in errors[2].message


def test_field_access_on_a_fact_type_to_an_unknown_field():
    src = rule_with(
        "            log c.indx\n"
        "            log c?.uri?.size()\n"
        "            cs.collect { it.uri }\n"
        "            cs*.indx",
        match="c: Chunk(); cs: collect Chunk()",
    )
    errors = errors_of(src)
    assert where(errors) == [at(src, "c.indx"), at(src, "cs*.indx")]
    assert "Chunk has no field 'indx'" in errors[0].message
    assert errors[0].hint == "did you mean 'index'?"


def test_properties_of_plain_values_and_of_the_error_parameter():
    src = rule_with(
        "            log c.uri.length\n            log 'x'",
        error="            err -> log err.mesage + err.message + err.attempts",
    )
    errors = errors_of(src)
    assert where(errors) == [at(src, "c.uri.length"), at(src, "err.mesage")]
    assert "a String has no property 'length'" in errors[0].message
    assert errors[0].hint == "'length' is a method: write .length()"
    assert "an error has no field 'mesage'" in errors[1].message
    assert errors[1].hint == "did you mean 'message'?"


# ── sections that cannot work ─────────────────────────────────────────────────────────────────


def test_a_reaction_reading_a_value_the_action_cannot_give():
    src = rule_with("            log 'no call'", reaction="            x -> log \"$x\"; log x")
    only(errors_of(src), src, "$x", "reaction reads 'x' but the action gives no value")


def test_a_reaction_reading_it_when_the_action_gives_nothing():
    src = rule_with("            insert Chunk(index: 1, uri: 'u')", reaction="            log it")
    only(errors_of(src), src, "it\n", "reaction reads 'it'")


@pytest.mark.parametrize(
    "action",
    [
        "            encode(c.uri, 1)\n            log 'queued'",  # calls a function
        "            c.index + 1",  # ends with an expression
        "            if (c.index > 0) { return 5 }\n            log 'x'",  # returns a value
    ],
)
def test_a_reaction_may_read_what_the_action_gives(action):
    src = rule_with(action, reaction="            v -> log \"$v\"")
    assert run(src) == ([], [])


def test_reaction_and_error_take_one_parameter():
    src = rule_with(
        "            encode(c.uri, 1)",
        reaction="            a, b -> log a",
        error="            e1, e2 -> log e1.message",
    )
    errors = errors_of(src)
    assert where(errors) == [at(src, "reaction {"), at(src, "error {")]
    assert "'reaction' takes one parameter, not 2 (a, b)" in errors[0].message
    assert "'error' takes one parameter, not 2 (e1, e2)" in errors[1].message


def test_the_reaction_parameter_has_the_type_of_the_function_result():
    src = rule_with("            encode(c.uri, 1)", reaction="            uri -> insert Chunk(index: uri, uri: uri)")
    only(errors_of(src), src, "uri, uri", "field 'index' of Chunk is an int, but this value is a String")


# ── types where known ─────────────────────────────────────────────────────────────────────────


def test_comparing_a_string_with_an_int_is_a_warning():
    src = rule_with("            if (c.uri == 1) { log 'x' }\n            log(c.index != 'a')")
    warnings = warnings_of(src)
    assert where(warnings) == [at(src, "c.uri == 1"), at(src, "c.index != 'a'")]
    assert "comparing a String with an int: '==' is always false" in warnings[0].message
    assert warnings[0].severity == "warning"


def test_ordering_unlike_types_is_an_error():
    src = rule_with("            log(c.uri < 3)")
    only(errors_of(src), src, "c.uri < 3", "cannot order a String and an int")


def test_arithmetic_on_strings_except_plus():
    src = rule_with(
        "            def a = c.uri + 1\n"
        "            def b = c.uri - 'x'\n"
        "            def d = c.uri / 2\n"
        "            def e = 1 + c.uri\n"
        "            def f = c.uri * 3\n"
        "            def g = -c.uri"
    )
    errors = errors_of(src)
    assert where(errors) == [at(src, "c.uri - "), at(src, "c.uri / "), at(src, "1 + c.uri"), at(src, "-c.uri")]
    assert "cannot apply '-' to a String and a String" in errors[0].message
    assert "only '+' joins strings" in errors[0].hint
    assert "cannot apply '/' to a String and an int" in errors[1].message
    assert "cannot apply '+' to an int and a String" in errors[2].message
    assert "cannot apply '-' to a String" in errors[3].message


def test_an_int_where_a_boolean_is_needed_is_a_warning_and_collections_are_fine():
    src = rule_with(
        "            if (c.index) { log 'x' }\n"
        "            if (c.uri && [1]) { log 'y' }\n"
        "            log(!c.index)"
    )
    warnings = warnings_of(src)
    assert where(warnings) == [at(src, "c.index)"), at(src, "c.index)", 1)]
    assert "an 'if' condition is an int, not a boolean" in warnings[0].message


def test_loops_and_ranges_need_the_right_types():
    src = rule_with("            for (i in c.index) { log i }\n            def xs = 0..c.uri")
    errors = errors_of(src)
    assert where(errors) == [at(src, "c.index)"), at(src, "c.uri\n")]
    assert "cannot loop over an int" in errors[0].message
    assert "a range needs integers, not a String" in errors[1].message


def test_facts_are_read_only_outside_modify():
    src = rule_with("            c.index = 2")
    d = only(errors_of(src), src, "c.index", "facts are read-only")
    assert d.hint == "write modify c { index = ... }"


def test_closures_cannot_be_stored_in_facts_or_output():
    src = rule_with("            complete(key: { it })\n            complete(a: 1, a: 2)")
    errors = errors_of(src)
    assert where(errors) == [at(src, "{ it }"), at(src, "a: 2")]
    assert "cannot hold a closure" in errors[0].message
    assert "output key 'a' is given twice" in errors[1].message


# ── all together ──────────────────────────────────────────────────────────────────────────────


def test_several_errors_in_one_file_are_all_reported_in_order():
    src = program("""
    rule 'one' {
        match { r: Reqest() }
        action { log r.anything }
    }
    rule 'two' {
        match { c: Chunk(indx > 0) }
        action { encode(c.url, 1) }
        reaction { v -> insert Chunk(index: 1) }
    }
    rule 'three' {
        match { c: Chunk() }
        action { log undefinedName }
    }
""")
    errors = errors_of(src)
    assert where(errors) == [
        at(src, "r: Reqest"), at(src, "indx"), at(src, "c.url"), at(src, "Chunk(index: 1)"),
        at(src, "undefinedName"),
    ]
    assert [e.span.file for e in errors] == ["a.emx"] * 5
    # The CheckError's text names every error with file:line:column.
    with pytest.raises(CheckError) as info:
        check([parse(Source("a.emx", src))])
    text = str(info.value)
    assert text.count("a.emx:") == 5
    assert f"a.emx:{at(src, 'c.url')[0]}:{at(src, 'c.url')[1]}: error: Chunk has no field 'url'" in text


def test_warnings_travel_with_the_errors():
    src = rule_with("            if (c.index) { log nope }")
    errors, warnings = run(src)
    assert where(errors) == [at(src, "nope")]
    assert where(warnings) == [at(src, "c.index")]


def test_checking_a_big_project_is_fast():
    head, rest = EXAMPLE.split("    rule 'split source'", 1)
    rules = "    rule 'split source'" + rest.rsplit("}", 1)[0]
    src = head + "".join(rules.replace("rule '", f"rule 'n{i} ") for i in range(260)) + "}\n"
    assert src.count("\n") > 10_000
    module = parse(Source("big.emx", src))
    start = time.perf_counter()
    assert check([module]) == []
    # About 0.04 s here; the target is well under 0.2 s for 10,000 lines.
    assert time.perf_counter() - start < 0.2


def test_the_method_names_are_the_ones_the_ir_allows():
    ir = pytest.importorskip("emirax.ir")
    from emirax.checker import Checker

    assert Checker().methods == frozenset(ir.METHODS)


# Mutations of a valid program: whatever still parses, the checker answers with diagnostics
# (or nothing), never with an exception of its own.
_MUTATION_WORDS = [
    "it", "c", "r", "cs", "index", "uri", "encode", "split", "Chunk", "Request", "null", "1",
    "1.5", "'x'", "[", "]", "(", ")", "{", "}", "->", "==", "+", "-", "*", "/", "<", "?.", "*.",
    "?:", ".", "def", "return", "insert", "modify", "retract", "start", "collect", "not", "when",
    "size", "each", "sort", "for", "in", "if", "complete", "fail", "log", "true", ":", ",", "\n",
]
_MUTATION_BASE = rule_with(
    "            def xs = [c.uri].collect { encode(it, c.index) }\n"
    "            for (x in cs) { modify x { index = x.index + 1 } }\n"
    "            [all: xs, n: cs*.uri]",
    reaction="            v -> insert Chunk(index: cs.size(), uri: v.all[0] ?: 'none')",
    error="            log \"${it.message}\"; retract c",
    match="c: Chunk(index > 0); cs: collect Chunk(uri != c.uri); when cs.size() < 3",
)


@settings(max_examples=150)
@given(st.lists(st.tuples(st.integers(0, 10**6), st.sampled_from(_MUTATION_WORDS), st.integers(0, 2)), min_size=1, max_size=3))
def test_mutated_programs_only_ever_give_diagnostics(edits):
    src = _MUTATION_BASE
    for where_, word, how in edits:
        at_ = where_ % len(src)
        if how == 0:
            src = src[:at_] + word + src[at_ + 1 :]
        elif how == 1:
            src = src[:at_] + " " + word + " " + src[at_:]
        else:
            src = src[:at_] + src[at_ + 1 :]
    try:
        module = parse(Source("m.emx", src))
    except ParseError:
        return
    try:
        diagnostics = check([module])
    except CheckError as e:
        diagnostics = e.diagnostics
    assert all(d.span.file == "m.emx" and d.span.line >= 1 for d in diagnostics)


def test_the_mutation_base_program_checks_clean():
    # Modify through a loop variable over a collect list, `?:`, spreads and interpolation.
    assert run(_MUTATION_BASE) == ([], [])


def test_an_action_value_mixing_plain_values_and_results_is_not_a_type_error() -> None:
    src = program("""
    rule 'mixed' {
        match { c: Chunk() }
        action { [n: c.index, u: encode(c.uri, 1), all: [c.uri, encode(c.uri, 2)]] }
        reaction { v -> insert Chunk(index: v.n, uri: v.u) }
    }
""")
    errors, _ = run(src)
    assert errors == []


def test_a_mixed_action_value_is_still_a_placeholder_in_the_action() -> None:
    src = program("""
    rule 'mixed' {
        match { c: Chunk() }
        action {
            def v = c.index > 0 ? encode(c.uri, 1) : 'plain'
            v.size()
        }
    }
""")
    errors, _ = run(src)
    find(errors, src, "v.size()", "placeholder")


def test_the_missing_field_hint_leaves_out_a_misspelt_field() -> None:
    src = program("""
    rule 'typo' {
        match { c: Chunk() }
        action { insert Chunk(index: 1, url: c.uri) }
    }
""")
    errors, _ = run(src)
    typo = find(errors, src, "url:", "has no field 'url'")
    assert typo.hint == "did you mean 'uri'?"
    missing = find(errors, src, "Chunk(index", "needs field 'uri'")
    assert missing.hint == "write Chunk(index: ..., uri: ...)"
