"""Syntax errors: where they are reported, how they are worded, and that only ParseError escapes."""

from __future__ import annotations

import random
import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from emirax import nodes
from emirax.errors import Diagnostic, ParseError
from emirax.parser import MAX_ERRORS, parse
from emirax.source import Source

# A program with most constructs, to mutate.
EXAMPLE = """\
package media.encode

workflow VideoEncode {
    fact Request(String source, String recipe, int chunks = 31)
    fact Encoded(int index, String uri)
    function String encode(String uri, String recipe) with [timeout: '2h', retries: 3]

    rule 'encode chunk' with [salience: 10] {
        match {
            c: Chunk(index > 0, uri != null)
            r: Request()
            not Encoded(index == c.index)
            done: collect Encoded()
            when done.size() < r.chunks
        }
        action {
            def parts = done.sort { it.index }*.uri
            if (parts.isEmpty()) { log "none for ${c.index} of $r" } else { parts.each { p -> log p } }
            for (i in 0..<3) { x += i }
            [a: encode(c.uri, r.recipe ?: 'x'), b: start media.W(Request(source: 's'))]
        }
        reaction { v ->
            insert Encoded(index: c.index, uri: v.a)
            modify r { chunks = r.chunks - 1 }
            complete(uri: v?.a)
        }
        error { err -> fail "failed: ${err.message}" }
    }
}
"""


def errors(text: str) -> list[Diagnostic]:
    with pytest.raises(ParseError) as caught:
        parse(Source("f.emx", text))
    diagnostics = caught.value.diagnostics
    assert diagnostics, "a ParseError always carries diagnostics"
    for d in diagnostics:
        assert d.span.file == "f.emx"
        assert d.severity == "error"
    return diagnostics


def one_error(text: str) -> Diagnostic:
    (d,) = errors(text)
    return d


def at(d: Diagnostic) -> tuple[int, int]:
    return d.span.line, d.span.column


def rule(action: str, match: str = "a: A()") -> str:
    """A file whose only rule has `action` as its action body (line 5 holds `action {`)."""
    return (
        "package p\n"
        "workflow W {\n"
        "    rule 'r' {\n"
        f"        match {{ {match} }}\n"
        "        action {\n"
        f"{action}\n"
        "        }\n"
        "    }\n"
        "}\n"
    )


# ── typical mistakes ──────────────────────────────────────────────────────────────────────────


def test_missing_closing_brace_at_the_end_of_the_file():
    d = one_error(
        "package p\n"
        "workflow W {\n"
        "    rule 'r' {\n"
        "        match { a: A() }\n"
        "        action { x = 1 }\n"
    )
    assert at(d) == (5, 25)  # right after the last token
    assert d.message == (
        "missing '}': the 'rule' block opened at 3:14 is still open at the end of the file"
    )


def test_missing_closing_brace_before_the_next_rule_is_one_error_and_parsing_goes_on():
    ds = errors(
        "package p\n"
        "workflow W {\n"
        "    rule 'a' {\n"
        "        match { a: A() }\n"
        "        action {\n"
        "            x = 1\n"
        "    }\n"
        "\n"
        "    rule 'b' {\n"
        "        match { b: B() }\n"
        "        action { y = 2 3 }\n"
        "    }\n"
        "}\n"
    )
    assert [(at(d), d.message) for d in ds] == [
        ((9, 5), "missing '}': the 'rule' block opened at 3:14 is not closed before this 'rule'"),
        ((11, 24), "unexpected number 3, expected '}', an operator or a newline"),
    ]


def test_missing_closing_parenthesis_before_the_next_line():
    d = one_error(rule("            encode(a.uri, a.recipe\n            log 'sent'"))
    assert at(d) == (7, 13)
    assert d.message == "expected ')' to close the '(' opened at 6:19"
    assert d.hint == "found 'log'"


def test_missing_closing_parenthesis_before_a_brace():
    d = one_error(rule("            encode(a.uri }"))
    assert at(d) == (6, 26)
    assert d.message == "expected ')' to close the '(' opened at 6:19"
    assert d.hint == "found '}'"


def test_missing_closing_bracket():
    d = one_error(rule("            x = [1, 2\n"))
    assert at(d) == (8, 9)
    assert d.message == "expected ']' to close the '[' opened at 6:17"


@pytest.mark.parametrize(
    ("line", "column", "message"),
    [
        (
            '            log "started ${a.uri}',
            17,
            "unterminated string: a string ends with '\"' on the line where it starts",
        ),
        (
            "            fail 'no way",
            18,
            "unterminated string: a string ends with \"'\" on the line where it starts",
        ),
    ],
)
def test_unterminated_string(line, column, message):
    d = one_error(rule(line + "\n            x = 1"))
    assert at(d) == (6, column)
    assert d.message == message


def test_unterminated_interpolation():
    d = one_error(rule('            log "size ${a.size(\n            x = 1'))
    assert at(d) == (6, 23)
    assert d.message == "unterminated '${' in a string: close it with '}' before the end of the line"


def test_unterminated_string_at_the_end_of_the_file():
    d = one_error("package p\nworkflow W { rule 'r' { action { log \"oops")
    assert at(d) == (2, 38)
    assert d.message.startswith("unterminated string")


def test_named_arguments_in_a_pattern():
    d = one_error(rule("", match="c: Chunk(index: 3)"))
    assert at(d) == (4, 26)
    assert d.message == "a pattern holds boolean constraints such as `f == v`, not named arguments"
    assert d.hint == "write 'index == ...' instead of 'index: ...'"


@pytest.mark.parametrize("char", ["#", "@", "`", "\\"])
def test_a_character_that_is_not_emirax(char):
    d = one_error(rule(f"            x = 1 {char} 2"))
    assert at(d) == (6, 19)
    assert d.message == f"unexpected character '{char}'"


def test_an_interpolated_rule_name():
    d = one_error(
        'package p\nworkflow W {\n    rule "encode $n" {\n        match { a: A() }\n'
        "        action { }\n    }\n}\n"
    )
    assert at(d) == (3, 10)
    assert d.message == "a rule name is a plain string: it cannot contain '$' interpolation"


def test_a_statement_continued_with_an_operator_on_the_next_line():
    d = one_error(rule("            def total = a.x\n                * a.y"))
    assert at(d) == (7, 17)
    assert d.message == "a line cannot start with '*': the newline before it ends the statement"
    assert d.hint == "to continue the previous line, end it with '*'"


def test_a_line_starting_with_minus_would_silently_be_a_new_statement():
    d = one_error(rule("            def total = a.x\n                - a.y"))
    assert at(d) == (7, 17)
    assert d.message.startswith("a line cannot start with '-': the newline before it ends")
    assert d.hint == "to continue the previous line, end it with '-'"


def test_a_minus_first_in_a_block_is_fine():
    module = parse(Source("f.emx", rule("            xs.sort { a, b ->\n                -a }")))
    assert module.workflows[0].rules[0].action is not None


@pytest.mark.parametrize(
    "text",
    ["", "// only a comment\n", "workflow W {\n    rule 'r' { action { x } }\n}\n"],
)
def test_missing_package(text):
    d = one_error(text)
    assert at(d) == (1, 1)
    assert d.message == "missing package: every .emx file starts with 'package name'"


def test_a_brace_on_the_next_line():
    d = one_error(
        "package p\nworkflow W {\n    rule 'r'\n    {\n        match { a: A() }\n"
        "        action { x }\n    }\n}\n"
    )
    assert at(d) == (3, 13)
    assert d.message == "expected '{' on this line: a '{' stands on the same line as its header"


def test_a_misspelt_section_suggests_the_right_one():
    d = one_error(rule("").replace("action {", "acton {"))
    assert at(d) == (5, 9)
    assert d.message == (
        "unexpected name 'acton', expected '}', 'match', 'action', 'reaction' or 'error'"
    )
    assert d.hint == "did you mean 'action'?"


def test_a_stray_closing_brace():
    d = one_error("package p\nworkflow W {\n}\n}\n")
    assert at(d) == (4, 1)
    assert d.message == "unexpected '}': there is no open '{' to close"


def test_a_brace_too_many_closes_the_rule_early():
    ds = errors(
        "package p\n"
        "workflow W {\n"
        "    rule 'r' {\n"
        "        match { a: A() }\n"
        "        action { x }\n"
        "        }\n"
        "        reaction { y }\n"
        "    }\n"
        "}\n"
    )
    assert at(ds[0]) == (7, 9)
    assert ds[0].message == (
        "'reaction' is outside any rule: the 'rule' block opened at 3:14 was closed by the '}' "
        "at 6:9"
    )
    assert ds[0].hint == "is that '}' one too many?"


def test_a_rule_outside_a_workflow():
    d = one_error("package p\nrule 'r' { }\n")
    assert at(d) == (2, 1)
    assert d.message == "a rule belongs inside a 'workflow' block"


def test_a_reserved_word_used_as_a_name():
    d = one_error(rule("            def match = 1"))
    assert at(d) == (6, 17)
    assert d.message == "'match' is a reserved word and cannot be used as a name"


def test_an_integer_out_of_range():
    d = one_error(rule("            x = 9223372036854775808"))
    assert at(d) == (6, 17)
    assert d.message.startswith("integer 9223372036854775808 is out of range")
    d = one_error(rule("            x = -9223372036854775809"))
    assert at(d) == (6, 18)


@pytest.mark.parametrize(
    ("text", "column", "message"),
    [
        (r"'a\qb'", 19, r"unknown escape '\q'"),
        (r'"a\qb"', 19, r"unknown escape '\q'"),
        (r"'\u12'", 18, r"'\u' needs four hex digits, as in '\u00e9'"),
        ('"costs 5$"', 25, "a '$' in a \"...\" string starts '$name' or '${expr}'"),
        (r"'\uD83D'", 17, r"a '\u' escape gives half a character: write both halves, as in '\uD83D\uDE00'"),
    ],
)
def test_bad_escapes_and_dollars(text, column, message):
    d = one_error(rule(f"            x = {text}"))
    assert at(d) == (6, column)
    assert d.message == message


def test_an_unterminated_block_comment():
    d = one_error("package p\nworkflow W { /* never closed\n}\n")
    assert at(d) == (2, 14)
    assert d.message == "unterminated comment: '/*' has no closing '*/'"


@pytest.mark.parametrize(
    ("match", "column", "message"),
    [
        ("collect A()", 17, "'collect' gives a list that needs a name"),
        ("a: not A()", 20, "a 'not' pattern matches no fact, so it cannot bind a name"),
        ("a: exists A()", 20, "a 'exists' pattern matches no fact, so it cannot bind a name"),
    ],
)
def test_pattern_forms_that_cannot_work(match, column, message):
    d = one_error(rule("", match=match))
    assert at(d) == (4, column)
    assert d.message == message


@pytest.mark.parametrize(
    ("action", "column", "message"),
    [
        ("insert T(1)", 22, "expected a named argument 'name: value' here: insert T(field: value, ...)"),
        ("complete(1)", 22, "expected a named argument 'name: value' here: complete(key: value, ...)"),
        ("xs.each(a: 1)", 21, "'each' takes positional arguments, not 'name: value'"),
        ("x = T(a: 1, 2)", 25, "a fact value takes named arguments only: T(field: value, ...)"),
        ("x = start p.W(1)", 27, "start takes the child workflow's initial facts: start pkg.Workflow(T(field: value), ...)"),
        ("f() = 1", 13, "cannot assign to this: the left side of '=' is a name, a field (a.b) or an index (a[i])"),
    ],
)  # fmt: skip
def test_arguments_of_the_wrong_kind(action, column, message):
    d = one_error(rule(f"            {action}"))
    assert at(d) == (6, column)
    assert d.message == message


# ── several errors, and never anything but ParseError ─────────────────────────────────────────


def test_several_errors_in_one_file_are_reported_together():
    ds = errors(
        "package p\n"
        "workflow W {\n"
        "    rule 'r' {\n"
        "        match { a: A( }\n"
        "        action {\n"
        "            x = [1 2]\n"
        "            y = foo(\n"
        "        }\n"
        "    }\n"
        "    rule 'q' { action { z = 1 @ 2 } }\n"
        "}\n"
    )
    assert [at(d) for d in ds] == [(4, 23), (6, 20), (8, 9), (10, 31)]
    assert ds[1].message == "unexpected number 2, expected ']', ',', ':' or an operator"


def test_the_number_of_errors_is_capped():
    body = "\n".join(f"            x{i} = 1 2" for i in range(60))
    ds = errors(rule(body))
    assert len(ds) == MAX_ERRORS
    assert [d.span.line for d in ds] == list(range(6, 6 + MAX_ERRORS))


_TOKEN_NAMES = re.compile(r"\b(?:__ANON\w*|[A-Z]+_[A-Z_]+|RBRACE|LBRACE|RPAR|LPAR|RSQB|LSQB|NAME|_NL)\b")


def _check(text: str) -> None:
    try:
        module = parse(Source("f.emx", text))
    except ParseError as e:
        assert 0 < len(e.diagnostics) <= MAX_ERRORS
        for d in e.diagnostics:
            words = re.sub(r"'[^']*'", "", d.message)  # what is quoted comes from the source
            assert not _TOKEN_NAMES.search(words), d.message
            assert "Token(" not in d.message, d.message
            assert d.span.line >= 1 and d.span.column >= 1, d
    else:
        assert isinstance(module, nodes.Module)


_PIECES = list("{}()[]\"'$:;,.?*-+/\\\n @#") + [
    "${", "->", "?.", "*.", "?:", "..<", "rule ", "match", "if (", "else", "/*", "//",
    "insert T(a: 1)", "not ", "\n}", '"x $', "'a", " collect ", "9223372036854775808",
]  # fmt: skip


def test_mutated_programs_raise_nothing_but_parse_errors():
    rnd = random.Random(20240602)
    for _ in range(300):
        text = EXAMPLE
        for _ in range(rnd.randint(1, 4)):
            pos = rnd.randrange(len(text))
            if rnd.random() < 0.5:
                text = text[:pos] + text[pos + rnd.randint(1, 6) :]
            else:
                text = text[:pos] + rnd.choice(_PIECES) + text[pos:]
        _check(text)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.sampled_from(_PIECES + ["package p\n", "workflow W ", "x", "1", "'s'"]), max_size=40))
def test_random_token_soup_raises_nothing_but_parse_errors(pieces):
    _check("".join(pieces))


@settings(max_examples=150, deadline=None)
@given(st.text(max_size=80))
def test_random_text_raises_nothing_but_parse_errors(text):
    _check("package p\n" + text)


def test_options_are_a_map():
    d = one_error("package p\nworkflow W {\n    function def f() with [1, 2]\n}\n")
    assert at(d) == (3, 27)
    assert d.message == "options are written as a map: [name: value, ...]"


@pytest.mark.parametrize(
    ("declaration", "column", "message"),
    [
        ("function f(String s)", 14, "a function declares its result type before its name: function Type name(...)"),
        ("fact F(int a, b = 2)", 19, "a field or parameter is declared with its type: Type name"),
        ("function def g(String s, t)", 30, "a field or parameter is declared with its type: Type name"),
    ],
)  # fmt: skip
def test_declarations_without_a_type(declaration, column, message):
    d = one_error(f"package p\nworkflow W {{\n    {declaration}\n}}\n")
    assert at(d) == (3, column)
    assert d.message == message
    assert d.hint == "write 'def' for any value"
