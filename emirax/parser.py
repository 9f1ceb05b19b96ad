"""The Emirax parser: `.emx` source text to the AST of `emirax.nodes`.

Owns the Lark parser (built once per process from `grammar/emirax.lark`), the postlexer that turns
newlines into statement ends, the callbacks that build AST nodes (with their spans) during the
LALR parse itself, and the translation of Lark's errors into `ParseError` diagnostics worded for
rule authors. This is the only module that imports Lark; no Lark exception leaves it.

    parse(source) -> nodes.Module        raises emirax.errors.ParseError (all syntax errors found)

Several mistakes in one file are reported together (at most `MAX_ERRORS`). After a syntax error
the parser first tries a repair: going on as if a token or a few were missing (a ')', a '{', a
newline, the '}'s missing before a `rule` or a section). Failing that, it drops tokens (whole
bracketed groups at a time) until the next statement end (a newline, `;` or `}`), pops its stack
to a state that accepts it, and goes on. Errors that follow from one already reported are not
reported again.

Parsing holds a process-wide lock: the Lark parser and its callbacks are built once and carry the
state of the parse in progress. Parsing is CPU-bound, so the lock costs no throughput.
"""

from __future__ import annotations

import copy
import difflib
import hashlib
import importlib.resources
import math
import os
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lark
from lark import Lark, Token
from lark.exceptions import LarkError, UnexpectedCharacters, UnexpectedInput, UnexpectedToken
from lark.lark import PostLex

from emirax import nodes
from emirax.errors import Diagnostic, ParseError
from emirax.source import Source, Span

MAX_ERRORS = 20
INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1

RESERVED = frozenset(
    """package workflow fact function rule with match action reaction error not exists collect
    when def if else for in return insert modify retract complete fail log start true false
    null""".split()
)

# ── token classes ─────────────────────────────────────────────────────────────────────────────

_BINARY_OPS = frozenset(
    "OR AND EQ NE LT LE GT GE IN RANGE RANGE_EXCL PLUS MINUS STAR SLASH PERCENT QMARK ELVIS".split()
)
_POSTFIX_OPS = frozenset("DOT SAFE_DOT SPREAD_DOT LSQB LPAR LBRACE".split())
_ASSIGN_OPS = frozenset("ASSIGN PLUS_ASSIGN MINUS_ASSIGN".split())
_EXPR_STARTS = frozenset(
    "NAME NUMBER SQ_STRING DQUOTE TRUE FALSE NULL START LSQB LBRACE LPAR BANG MINUS PLUS".split()
)
# A newline right after one of these never ends a statement (the statement obviously goes on).
_NO_END_BEFORE_NL = (
    _BINARY_OPS
    | _ASSIGN_OPS
    | frozenset(
        "DOT SAFE_DOT SPREAD_DOT BANG COLON COMMA ARROW LPAR LSQB LBRACE INTERP_OPEN SEMI ELSE "
        "PACKAGE WORKFLOW FACT FUNCTION RULE WITH NOT EXISTS COLLECT WHEN DEF IF FOR INSERT "
        "MODIFY RETRACT COMPLETE FAIL LOG START _NL".split()
    )
)
# Keywords that open a block; they name the block in "missing '}'" messages.
_BLOCK_HEADERS = frozenset("WORKFLOW RULE MATCH ACTION REACTION ERROR IF ELSE FOR MODIFY".split())
_DECLARATION_WORDS = frozenset("workflow fact function rule match action reaction error".split())
_SYNC = frozenset(("_NL", "SEMI", "RBRACE"))
_STRING_PARTS = frozenset(("STR_TEXT", "STR_ESC", "STR_VAR", "STR_DOLLAR"))
_OPENERS = {"LPAR": "(", "LSQB": "[", "LBRACE": "{", "INTERP_OPEN": "${"}
_CLOSERS = {"RPAR": ("(",), "RSQB": ("[",), "RBRACE": ("{", "${")}
_TRACKED = (
    frozenset(_OPENERS) | frozenset(_CLOSERS) | _BLOCK_HEADERS | frozenset(("DQUOTE", "SEMI"))
)
_CLOSER_TEXT = {"(": ")", "[": "]", "{": "}", "${": "}", '"': '"'}
_CLOSER_TYPE = {"(": "RPAR", "[": "RSQB", "{": "RBRACE", "${": "RBRACE", '"': "DQUOTE"}

# How terminals read in messages.
_WORDS = {
    "NAME": "a name",
    "NUMBER": "a number",
    "SQ_STRING": "a string",
    "DQUOTE": "a string",
    "STR_TEXT": "string text",
    "STR_ESC": "an escape",
    "STR_VAR": "'$name'",
    "STR_DOLLAR": "'$'",
    "INTERP_OPEN": "'${'",
    "SLASH": "'/'",
    "_NL": "a newline",
    "_NLC": "a newline",
    "$END": "the end of the file",
}
_EXPECTED_ORDER = (
    "RPAR RSQB RBRACE COMMA COLON ARROW LBRACE LPAR ASSIGN IN DQUOTE ELSE "
    "MATCH ACTION REACTION ERROR WORKFLOW FACT FUNCTION RULE WITH NOT EXISTS COLLECT WHEN "
    "PACKAGE NAME".split()
)

_ESCAPES = {"n": "\n", "t": "\t", "\\": "\\", "'": "'", '"': '"', "$": "$"}
_ESCAPE_RE = re.compile(r"\\(u[0-9A-Fa-f]{4}|.?)")


# ── the per-parse state ───────────────────────────────────────────────────────────────────────


@dataclass(slots=True)
class _Open:
    """An open bracket or string: `kind` is one of `( [ { ${ "`; `label` names a `{` block."""

    kind: str
    token: Token
    label: str = ""


class _Context:
    """Everything one parse needs besides Lark: diagnostics, the bracket stack, recovery state."""

    def __init__(self, source: Source) -> None:
        self.file = source.name
        self.text = source.text
        self.diagnostics: list[Diagnostic] = []
        self._reported: set[tuple[int, int]] = set()
        self.stack: list[_Open] = []
        self.prev_type: str | None = None  # the last token handed to the parser
        self.handed: list[Token] = []  # the last tokens handed to the parser (a few are kept)
        self.header: Token | None = None  # the last block keyword of the current statement
        self.last_seen: Token | None = None  # the last token the postlexer saw
        self.last_code: Token | None = None  # ... that is not a newline
        self.recovering = False
        self.recovering_since = 0  # the line of the error that started the recovery
        self.skip_depth: int | None = None  # drop tokens until the stack is back to this depth
        self.error_calls = 0
        self.pending_min: list[nodes.Literal] = []  # 9223372036854775808 awaiting a unary minus
        self.pending: list[Token] = []  # tokens the postlexer made up (closing a broken string)
        self.unclosed: tuple[Token, list[_Open]] | None = None
        self.unmatched: Token | None = None  # the last closer that closed nothing
        # 'rule' or 'workflow' -> the last such block closed, and the '}' that closed it
        self.closed: dict[str, tuple[_Open, Token]] = {}
        self.quiet = 0  # tokens to take after a repair before reporting another error
        self.package_missing = False

    # reporting

    def span_of(self, tok: Token) -> Span:
        return Span(self.file, tok.line, tok.column, tok.end_line, tok.end_column)

    def report(self, span: Span, message: str, hint: str | None = None) -> None:
        key = (span.line, span.column)
        if key in self._reported or len(self.diagnostics) >= MAX_ERRORS:
            return
        self._reported.add(key)
        self.diagnostics.append(Diagnostic(span, message, "error", hint))

    def end_span(self) -> Span:
        """Where the file ends: right after its last token (or 1:1 for an empty file)."""
        tok = self.last_code
        if tok is None:
            return Span(self.file, 1, 1, 1, 1)
        return Span(self.file, tok.end_line, tok.end_column, tok.end_line, tok.end_column)

    # brackets

    def track(self, tok: Token) -> None:
        """Keep the stack of open brackets and strings up to date with `tok`."""
        t = tok.type
        stack = self.stack
        if t in _OPENERS:
            kind = _OPENERS[t]
            label = ""
            if kind == "{":
                inner = stack[-1].kind if stack else "{"
                if inner in ("(", "[") or self.header is None:
                    label = "closure"
                else:
                    label = self.header.value
                self.header = None
            stack.append(_Open(kind, tok, label))
        elif t == "DQUOTE":
            if stack and stack[-1].kind == '"':
                stack.pop()
            else:
                stack.append(_Open('"', tok))
        elif t in _CLOSERS:
            kinds = _CLOSERS[t]
            self.unmatched = tok
            for i in range(len(stack) - 1, -1, -1):
                if stack[i].kind in kinds:
                    if i < len(stack) - 1:
                        # `[1, 2 }`: what this closer skips over stays unclosed; keep it for the
                        # message about this token.
                        self.unclosed = (tok, stack[i:])
                    if stack[i].label in ("rule", "workflow"):
                        self.closed[stack[i].label] = (stack[i], tok)
                    del stack[i:]
                    self.unmatched = None
                    break
            if t == "RBRACE":
                self.header = None
        elif t in _BLOCK_HEADERS:
            self.header = tok
        elif t == "SEMI":
            self.header = None

    def string_depth(self) -> int:
        """Index of the outermost open string in the stack, or -1."""
        for i, item in enumerate(self.stack):
            if item.kind == '"':
                return i
        return -1

    def close_strings(self, at: Token) -> list[Token]:
        """A newline (or the end of the file) inside a string: report it once and return the
        tokens that close everything opened since the string began, so that parsing goes on."""
        outer = self.string_depth()
        if outer < 0:
            return []
        inner = next(o for o in reversed(self.stack) if o.kind in ('"', "${"))
        if inner.kind == '"':
            self.report(
                self.span_of(inner.token),
                "unterminated string: a string ends with '\"' on the line where it starts",
            )
        else:
            self.report(
                self.span_of(inner.token),
                "unterminated '${' in a string: close it with '}' before the end of the line",
            )
        self.start_recovery(inner.token.line)
        return [
            Token.new_borrow_pos(_CLOSER_TYPE[o.kind], _CLOSER_TEXT[o.kind], at)
            for o in reversed(self.stack[outer:])
        ]

    def start_recovery(self, line: int) -> None:
        self.recovering = True
        self.recovering_since = line

    def hand(self, tok: Token) -> Token:
        """Note `tok` as handed to the parser (the newline rules look at the previous token)."""
        handed = self.handed
        handed.append(tok)
        if len(handed) > 32:
            del handed[:-3]
        self.prev_type = tok.type
        return tok

    # error recovery (Lark's on_error)

    def on_error(self, e: UnexpectedInput) -> bool:
        self.error_calls += 1
        if self.error_calls > 10_000 or len(self.diagnostics) >= MAX_ERRORS:
            return False
        if isinstance(e, UnexpectedCharacters):
            return self._bad_character(e, e.pos_in_stream)
        if isinstance(e, UnexpectedToken):
            return self._bad_token(e)
        return False

    def _advance_to(self, e: UnexpectedInput, pos: int, end: int) -> None:
        """Move the lexer from `pos` to `end` (rewinding first when it already went further)."""
        line_ctr = e.interactive_parser.lexer_thread.state.line_ctr
        if line_ctr.char_pos != pos:
            line_start = self.text.rfind("\n", 0, pos) + 1
            line_ctr.char_pos = pos
            line_ctr.line = self.text.count("\n", 0, pos) + 1
            line_ctr.line_start_pos = line_start
            line_ctr.column = pos - line_start + 1
        line_ctr.feed(self.text[pos:end])

    def _bad_character(self, e: UnexpectedInput, pos: int) -> bool:
        text = self.text
        line = text.count("\n", 0, pos) + 1
        column = pos - (text.rfind("\n", 0, pos) + 1) + 1
        span = Span(self.file, line, column, line, column + 1)
        eol = text.find("\n", pos)
        eol = len(text) if eol < 0 else eol
        char = text[pos] if pos < len(text) else ""
        if self.string_depth() >= 0:
            # A backslash at the end of a line or file: the postlexer reports the string.
            self._advance_to(e, pos, pos + 1)
            return True
        self.start_recovery(line)
        if char == "'":
            self.report(
                span, "unterminated string: a string ends with \"'\" on the line where it starts"
            )
            self._advance_to(e, pos, eol)
        elif text.startswith("/*", pos):
            self.report(span, "unterminated comment: '/*' has no closing '*/'")
            self._advance_to(e, pos, len(text))
        else:
            shown = char if char.isprintable() else repr(char)[1:-1]
            self.report(span, f"unexpected character '{shown}'")
            self._advance_to(e, pos, pos + 1)
        return True

    def _bad_token(self, e: UnexpectedToken) -> bool:
        tok = e.token
        if tok.type in _STRING_PARTS and self.string_depth() < 0:
            # The lexer of the whole language read string text where code was expected: a
            # character no code terminal matches.
            return self._bad_character(e, tok.start_pos)
        if tok.type != "$END" and not (self.handed and self.handed[-1] is tok):
            # A token the contextual lexer could only read in another state: the postlexer
            # never saw it, so account for it here.
            self.track(tok)
            self.last_seen = self.last_code = tok
            self.hand(tok)
            if self.skip_depth is not None:
                if len(self.stack) <= self.skip_depth:
                    self.skip_depth = None
                return True
        parser = e.interactive_parser
        quiet = self.recovering or self.quiet > 0
        if quiet and _declaration_at_line_start(self, tok) is None:
            # Already reported: drop tokens cheaply until a statement end (or a `rule`, ...).
            return self._recover(tok, parser, set(), None)
        # The parse table's row merges every context of an LALR state; `accepts` simulates each
        # candidate on this very stack, so only what can really come next is named.
        expected = set(parser.accepts())
        repair = self._find_repair(tok, parser, expected)
        if not quiet:
            if not (self.package_missing and "PACKAGE" in expected):
                span, message, hint = _describe(tok, expected, self, repair)
                self.report(span, message, hint)
                self.package_missing = self.package_missing or "PACKAGE" in expected
        return self._recover(tok, parser, expected, repair)

    def view(self, tok: Token) -> list[_Open]:
        """The open brackets as they were before `tok` (a closer may have popped some)."""
        if self.unclosed is not None and self.unclosed[0] is tok:
            return self.stack + self.unclosed[1]
        return self.stack

    def _recover(self, tok: Token, parser: Any, expected: set[str], repair: _Repair | None) -> bool:
        if tok.type == "$END":
            # Close what can be closed: pop to a state that accepts the end of the file, and let
            # Lark feed the end again.
            return _pop_until_accepted(parser, tok)
        if tok.type == "_NL" and "LBRACE" in expected:
            # `if (x)` with its `{` on the next line: read on as if it were on this one.
            self.recovering = False
            self.quiet = 2
            return True
        if repair is not None:
            self._apply(repair, tok, parser)
            self.recovering = False
            self.quiet = 3
            return True
        if tok.type == "RBRACE" and self.unclosed is not None and self.unclosed[0] is tok:
            # A '}' while a '(' or '[' is open, that nothing explains: drop it as a stray one,
            # and keep open what it seemed to close.
            self.stack.extend(self.unclosed[1])
            self.unclosed = None
            return True
        if not self.recovering:
            self.start_recovery(tok.line)
        if tok.type in _SYNC:
            # A statement end: pop to a state that takes it, and go on from there.
            if _pop_until_accepted(parser, tok):
                parser.feed_token(tok)
                self.recovering = False
            return True
        opens_string = tok.type == "DQUOTE" and bool(self.stack) and self.stack[-1].token is tok
        if tok.type in _OPENERS or opens_string:
            # Skip the whole bracketed (or quoted) part that the parser cannot take.
            self.skip_depth = len(self.stack) - 1
        return True

    def _find_repair(self, tok: Token, parser: Any, expected: set[str]) -> _Repair | None:
        """A way to go on as if a token or a few were missing before `tok` (a ')', a '{', a
        newline, the '}'s before a `rule` ...) that makes the parser take `tok`, if any."""

        if tok.type == "$END":
            return None

        def made(type_: str, value: str) -> Token:
            return Token.new_borrow_pos(type_, value, tok)

        view = self.view(tok)
        then = [tok]
        pre_pop = 0
        candidates: list[list[Token]] = []
        decl = _declaration_at_line_start(self, tok)
        if decl is tok and tok.type == "NAME":
            then = [Token.new_borrow_pos(tok.value.upper(), tok.value, tok)]
        elif decl is not None and decl is not tok:
            # `rule` was read as a name (a statement may start with one): take it back.
            values = parser.parser_state.value_stack
            if values and values[-1] is decl:
                pre_pop = 1
                then = [Token.new_borrow_pos(decl.value.upper(), decl.value, decl), tok]
            else:
                decl = None
        if decl is not None:
            seq: list[Token] = []
            for item in reversed(view):
                if item.kind == "{":
                    seq.append(made("RBRACE", "}"))
                    candidates.append(seq + [made("_NL", "\n")])
                elif item.kind in ("(", "["):
                    seq.append(made(_CLOSER_TYPE[item.kind], _CLOSER_TEXT[item.kind]))
        inner = view[-1].kind if view else None
        if inner in ("(", "["):
            closer = made(_CLOSER_TYPE[inner], _CLOSER_TEXT[inner])
            candidates += [[closer], [closer, made("_NL", "\n")]]
        if "PACKAGE" in expected:
            candidates.append([made("PACKAGE", "package"), made("NAME", "_"), made("_NL", "\n")])
        for type_, value in (("LBRACE", "{"), ("_NL", "\n"), ("COMMA", ",")):
            if type_ in expected:
                candidates.append([made(type_, value)])

        quiet = copy.copy(parser.parser_state.parse_conf)
        quiet.callbacks = {}
        for seq in candidates:
            trial = parser.copy(deepcopy_values=False)
            trial.parser_state.parse_conf = quiet
            if pre_pop:
                del trial.parser_state.state_stack[-pre_pop:]
                del trial.parser_state.value_stack[-pre_pop:]
            try:
                for t in seq + then:
                    trial.feed_token(t)
            except UnexpectedToken:
                continue
            return _Repair(pre_pop, seq, then)
        return None

    def _apply(self, repair: _Repair, tok: Token, parser: Any) -> None:
        state = parser.parser_state
        if repair.pre_pop:
            del state.state_stack[-repair.pre_pop :]
            del state.value_stack[-repair.pre_pop :]
        for t in repair.inserted:
            self.track(t)
            self.hand(t)
            parser.feed_token(t)
        for t in repair.then:
            parser.feed_token(t)
        self.prev_type = tok.type


@dataclass(slots=True)
class _Repair:
    """Tokens to feed before the one in error (after popping `pre_pop` states), and the
    token(s) to feed then: the error token, maybe preceded by a keyword read as a name."""

    pre_pop: int
    inserted: list[Token]
    then: list[Token]

    @property
    def closed_blocks(self) -> int:
        return sum(1 for t in self.inserted if t.type == "RBRACE")


def _declaration_at_line_start(ctx: _Context, tok: Token) -> Token | None:
    """The `rule`/`fact`/`match`/... word at the start of a line that `tok` is or follows."""
    if tok.type.lower() in _DECLARATION_WORDS and _line_starts_with(ctx, tok):
        return tok
    if tok.type == "NAME" and tok.value in _DECLARATION_WORDS and _line_starts_with(ctx, tok):
        return tok
    before = ctx.handed[:-1] if ctx.handed and ctx.handed[-1] is tok else ctx.handed
    prev = before[-1] if before else None
    if (
        prev is not None
        and prev.type == "NAME"
        and prev.value in _DECLARATION_WORDS
        and _line_starts_with(ctx, prev)
    ):
        return prev
    return None


def _pop_until_accepted(parser: Any, tok: Token) -> bool:
    """Pop the parser's stacks to the deepest-nested state that accepts `tok` (tried on a copy,
    without callbacks); leave them alone and return False when no state does."""
    state = parser.parser_state
    stack = state.state_stack
    table = state.parse_conf.states
    quiet = copy.copy(state.parse_conf)
    quiet.callbacks = {}
    for depth in range(len(stack), 0, -1):
        if tok.type not in table[stack[depth - 1]]:
            continue
        trial = parser.copy(deepcopy_values=False)
        trial.parser_state.parse_conf = quiet
        del trial.parser_state.state_stack[depth:]
        del trial.parser_state.value_stack[depth - 1 :]
        try:
            trial.feed_token(tok)
        except UnexpectedToken:
            continue
        del stack[depth:]
        del state.value_stack[depth - 1 :]
        return True
    return False


# ── messages ──────────────────────────────────────────────────────────────────────────────────


def _terminal_text(name: str) -> str:
    if name in _WORDS:
        return _WORDS[name]
    pattern = _terminal_patterns().get(name)
    if pattern is None:
        return name.lower()
    return f"'{pattern}'"


_PATTERNS: dict[str, str] = {}


def _terminal_patterns() -> dict[str, str]:
    """Terminal name -> its source text, from the grammar's own terminal table."""
    if not _PATTERNS:
        for term in _machinery().lark.terminals:
            value = term.pattern.value
            if term.pattern.type == "re":
                value = value.replace("\\b", "")
                if not re.fullmatch(r"[a-z]+", value):
                    continue
            _PATTERNS[term.name] = value
    return _PATTERNS


def _token_text(tok: Token) -> str:
    t = tok.type
    if t == "$END":
        return "end of file"
    if t in ("_NL", "_NLC"):
        return "end of line"
    if t == "NAME":
        return f"name '{tok.value}'"
    if t == "NUMBER":
        return f"number {tok.value}"
    if t == "SQ_STRING":
        value = tok.value if len(tok.value) <= 30 else tok.value[:27] + "...'"
        return f"string {value}"
    if t == "DQUOTE":
        return "string"
    return _terminal_text(t)


def _expected_words(expected: set[str]) -> list[str]:
    expected = set(expected) - {"_NLC"}
    words: list[str] = []
    tail: list[str] = []
    if len(expected & _BINARY_OPS) >= 3:
        expected -= _BINARY_OPS | _POSTFIX_OPS | _ASSIGN_OPS
        tail.append("an operator")
    if len(expected & _EXPR_STARTS) >= 4:
        expected -= _EXPR_STARTS
        tail.append("an expression")
    if "_NL" in expected or "SEMI" in expected:
        expected -= {"_NL", "SEMI"}
        tail.append("a newline")
    if "$END" in expected:
        expected.discard("$END")
        tail.append("the end of the file")
    order = {name: i for i, name in enumerate(_EXPECTED_ORDER)}
    for name in sorted(expected, key=lambda n: (order.get(n, len(order)), n)):
        word = _terminal_text(name)
        if word not in words:
            words.append(word)
    return words + tail


def _join(words: list[str]) -> str:
    if len(words) <= 1:
        return "".join(words)
    return ", ".join(words[:-1]) + " or " + words[-1]


def _line_starts_with(ctx: _Context, tok: Token) -> bool:
    start = ctx.text.rfind("\n", 0, tok.start_pos) + 1
    return not ctx.text[start : tok.start_pos].strip()


def _describe(
    tok: Token, expected: set[str], ctx: _Context, repair: _Repair | None
) -> tuple[Span, str, str | None]:
    """Say what went wrong at `tok` in words a rule author knows; `expected` is what the
    parser could have taken instead."""
    span = ctx.span_of(tok) if tok.type != "$END" else ctx.end_span()
    stack = ctx.view(tok)
    blocks = [o for o in stack if o.kind == "{"]
    innermost = stack[-1] if stack else None

    if "PACKAGE" in expected:
        return span, "missing package: every .emx file starts with 'package name'", None

    if tok.type == "$END":
        if innermost is not None and innermost.kind in ("(", "[", "{"):
            close = _CLOSER_TEXT[innermost.kind]
            what = _opened(innermost)
            return span, f"missing '{close}': {what} is still open at the end of the file", None
        words = _expected_words(expected)
        message = "unexpected end of file"
        return span, message + (f", expected {_join(words)}" if words else ""), None

    before = ctx.handed[:-1] if ctx.handed and ctx.handed[-1] is tok else ctx.handed
    prev_type = before[-1].type if before else None

    if innermost is not None and innermost.kind in ("(", "["):
        close = _CLOSER_TEXT[innermost.kind]
        closer_type = _CLOSER_TYPE[innermost.kind]
        if closer_type in expected and (
            tok.type in ("RPAR", "RSQB", "RBRACE")
            or (tok.line > innermost.token.line and _line_starts_with(ctx, tok))
        ):
            opened = innermost.token
            message = (
                f"expected '{close}' to close the '{innermost.kind}' opened at "
                f"{opened.line}:{opened.column}"
            )
            return span, message, f"found {_token_text(tok)}"

    # `rule 'x' {` where statements are expected: a '}' is missing above it.
    decl = _declaration_at_line_start(ctx, tok)
    if decl is not None and repair is not None and repair.closed_blocks:
        return (
            ctx.span_of(decl),
            f"missing '}}': {_opened(blocks[-1])} is not closed before this '{decl.value}'",
            None,
        )

    if tok.type == "_NL" and "LBRACE" in expected:
        return span, "expected '{' on this line: a '{' stands on the same line as its header", None

    if tok.type in _BINARY_OPS and _line_starts_with(ctx, tok) and prev_type == "_NL":
        op = tok.value
        return (
            span,
            f"a line cannot start with '{op}': the newline before it ends the statement",
            f"to continue the previous line, end it with '{op}'",
        )

    if len(before) >= 2 and before[-1].type == "NAME" and expected == {"NAME"}:
        if before[-2].type == "FUNCTION" and tok.type == "LPAR":
            return (
                ctx.span_of(before[-1]),
                "a function declares its result type before its name: function Type name(...)",
                "write 'def' for any value",
            )
        if before[-2].type in ("LPAR", "COMMA") and tok.type in ("RPAR", "COMMA", "ASSIGN"):
            return (
                ctx.span_of(before[-1]),
                "a field or parameter is declared with its type: Type name",
                "write 'def' for any value",
            )

    word = tok.type.lower()
    if word in ("rule", "fact", "function") and "WORKFLOW" in expected:
        return _outside(span, word, "workflow", ctx)
    if word in ("match", "action", "reaction", "error") and "RULE" in expected:
        return _outside(span, word, "rule", ctx)

    message = f"unexpected {_token_text(tok)}"
    if tok.type == "RBRACE" and tok is ctx.unmatched:
        return span, message + ": there is no open '{' to close", None
    words = _expected_words(expected)
    hint = None
    if tok.type == "NAME":
        keywords = [w.strip("'") for w in words if w.startswith("'") and w[1:-1].isalpha()]
        close = difflib.get_close_matches(tok.value, keywords, n=1)
        if close:
            hint = f"did you mean '{close[0]}'?"
    if words and len(words) <= 6:
        message += f", expected {_join(words)}"
    return span, message, hint


def _outside(span: Span, word: str, container: str, ctx: _Context) -> tuple[Span, str, str | None]:
    """`rule` at the top level, `action` directly in a workflow: say where the container ended."""
    what = "a section" if container == "rule" else f"a {word}"
    closed = ctx.closed.get(container)
    if closed is None:
        return span, f"{what} belongs inside a '{container}' block", None
    item, closer = closed
    return (
        span,
        f"'{word}' is outside any {container}: {_opened(item)} was closed by the '}}' at "
        f"{closer.line}:{closer.column}",
        "is that '}' one too many?",
    )


def _opened(item: _Open) -> str:
    tok = item.token
    where = f"{tok.line}:{tok.column}"
    if item.kind == "{":
        if item.label == "closure":
            return f"the closure opened at {where}"
        return f"the '{item.label}' block opened at {where}"
    return f"the '{item.kind}' opened at {where}"


# ── the postlexer ─────────────────────────────────────────────────────────────────────────────


class _Newlines(PostLex):
    """Turns newlines into statement ends (`_NL`) or drops them; see the grammar's header.

    Its state lives in the parse's `_Context`, because Lark restarts `process` after every
    error it recovers from."""

    always_accept = ("_NL", "_NLC")

    def __init__(self) -> None:
        self.ctx: _Context | None = None

    def process(self, stream: Iterator[Token]) -> Iterator[Token]:
        ctx = self.ctx
        assert ctx is not None
        stack = ctx.stack
        for tok in self._tokens(ctx, stream):
            t = tok.type
            if t == "_NL" or t == "_NLC":
                if ctx.string_depth() >= 0:
                    # Strings are single-line: close it (and what it holds), then this newline.
                    ctx.pending.extend(ctx.close_strings(tok))
                    ctx.pending.append(tok)
                    continue
                if t == "_NLC" or ctx.skip_depth is not None:
                    continue
                if ctx.recovering:
                    # The statement is already wrong; brackets opened on its line are left
                    # open by the mistake, so let this newline end it anyway.
                    while stack and stack[-1].kind in ("(", "[") and (
                        stack[-1].token.line >= ctx.recovering_since
                    ):
                        stack.pop()
                if stack and stack[-1].kind in ("(", "["):
                    continue
                if ctx.prev_type is None or ctx.prev_type in _NO_END_BEFORE_NL:
                    continue
                ctx.header = None
                yield ctx.hand(tok)
                ctx.recovering = False  # the parser took the statement end
                continue
            if t in _TRACKED:
                ctx.track(tok)
            if ctx.skip_depth is not None:
                if len(stack) <= ctx.skip_depth:
                    ctx.skip_depth = None
                ctx.prev_type = t  # so that a newline after the skipped part can end it
                continue
            if (t == "MINUS" or t == "PLUS") and ctx.prev_type == "_NL":
                ctx.report(
                    ctx.span_of(tok),
                    f"a line cannot start with '{tok.value}': the newline before it ends the "
                    "statement, and this line would be a new one",
                    f"to continue the previous line, end it with '{tok.value}'",
                )
            yield ctx.hand(tok)
            # Back here: the parser took the token.
            if ctx.quiet:
                ctx.quiet -= 1
            if t in _SYNC:
                ctx.recovering = False

    @staticmethod
    def _tokens(ctx: _Context, stream: Iterator[Token]) -> Iterator[Token]:
        """The lexer's tokens, after the ones the postlexer queued; at the end of the file, the
        closers of a string left open."""
        while True:
            if ctx.pending:
                yield ctx.pending.pop(0)
                continue
            tok = next(stream, None)
            if tok is None:
                if ctx.string_depth() >= 0 and ctx.last_seen is not None:
                    ctx.pending.extend(ctx.close_strings(ctx.last_seen))
                    continue
                return
            ctx.last_seen = tok
            if tok.type != "_NL" and tok.type != "_NLC":
                ctx.last_code = tok
            yield tok




# ── the AST builder (Lark callbacks, one per rule or alias of the grammar) ────────────────────


@dataclass(slots=True)
class _Dotted:
    name: str
    span: Span


@dataclass(slots=True)
class _Args:
    items: list[Any]  # expressions and nodes.FieldArg, in source order
    end: Token


@dataclass(slots=True)
class _Params:
    names: list[str]


@dataclass(slots=True)
class _MapKey:
    key: str | Any
    span: Span


@dataclass(slots=True)
class _MatchSection:
    items: list[nodes.MatchItem]
    keyword: Token


class _Builder:
    """Builds `emirax.nodes` from the children Lark hands each rule. Named terminals (keywords,
    closing brackets) are kept so that spans run from the first token to the last."""

    def __init__(self) -> None:
        self.ctx: _Context | None = None
        self.file = "<unknown>"

    def begin(self, ctx: _Context | None) -> None:
        self.ctx = ctx
        self.file = ctx.file if ctx else "<unknown>"

    # spans

    def _span(self, first: Any, last: Any) -> Span:
        if isinstance(first, Token):
            line, column = first.line, first.column
        else:
            s = first.span
            line, column = s.line, s.column
        if isinstance(last, Token):
            return Span(self.file, line, column, last.end_line, last.end_column)
        s = last.span
        return Span(self.file, line, column, s.end_line, s.end_column)

    def _tok_span(self, tok: Token) -> Span:
        return Span(self.file, tok.line, tok.column, tok.end_line, tok.end_column)

    def _error(self, span: Span, message: str, hint: str | None = None) -> None:
        assert self.ctx is not None
        self.ctx.report(span, message, hint)

    def _ident(self, tok: Token) -> str:
        """A name the author declares or uses; reserved words are refused."""
        value = tok.value
        if value in RESERVED:
            self._error(
                self._tok_span(tok), f"'{value}' is a reserved word and cannot be used as a name"
            )
        return value

    # module and declarations

    def module(self, c: list) -> nodes.Module:
        package: _Dotted = c[0]
        workflows = c[1:]
        end = workflows[-1].span if workflows else package.span
        span = Span(self.file, 1, 1, end.end_line, end.end_column)
        return nodes.Module(package.name, workflows, self.file, span, package.span)

    def package_decl(self, c: list) -> _Dotted:
        return c[1]

    def dotted_name(self, c: list) -> _Dotted:
        return _Dotted(".".join(t.value for t in c), self._span(c[0], c[-1]))

    def workflow(self, c: list) -> nodes.Workflow:
        facts, functions, rules = [], [], []
        for item in c[3:-1]:
            if isinstance(item, nodes.FactDecl):
                facts.append(item)
            elif isinstance(item, nodes.FunctionDecl):
                functions.append(item)
            else:
                rules.append(item)
        return nodes.Workflow(self._ident(c[1]), facts, functions, rules, self._span(c[0], c[-1]))

    def fact_decl(self, c: list) -> nodes.FactDecl:
        return nodes.FactDecl(self._ident(c[1]), c[2:-1], self._span(c[0], c[-1]))

    def field_decl(self, c: list) -> nodes.FieldDecl:
        default = c[3] if len(c) > 3 else None
        return nodes.FieldDecl(c[0], self._ident(c[1]), default, self._span(c[0], c[-1]))

    def type_ref(self, c: list) -> nodes.TypeRef:
        return nodes.TypeRef(c[0].value, self._tok_span(c[0]))

    def function_decl(self, c: list) -> nodes.FunctionDecl:
        options = c[-1] if isinstance(c[-1], nodes.MapLit) else None
        end = -2 if options is not None else -1
        params = c[3:end]
        return nodes.FunctionDecl(c[1], self._ident(c[2]), params, options, self._span(c[0], c[-1]))

    def param(self, c: list) -> nodes.Param:
        return nodes.Param(c[0], self._ident(c[1]), self._span(c[0], c[1]))

    def with_options(self, c: list) -> nodes.MapLit:
        lit = c[1]
        if isinstance(lit, nodes.MapLit):
            return lit
        if lit.items:
            self._error(lit.span, "options are written as a map: [name: value, ...]")
        return nodes.MapLit([], lit.span)

    def rule(self, c: list) -> nodes.Rule:
        name_node = c[1]
        if isinstance(name_node, nodes.Literal):
            name = name_node.value
        else:
            self._error(
                name_node.span,
                "a rule name is a plain string: it cannot contain '$' interpolation",
                "write the name in single quotes, e.g. rule 'encode chunk'",
            )
            name = "".join(p for p in name_node.parts if isinstance(p, str))
        i = 2
        options = None
        if isinstance(c[i], nodes.MapLit):
            options = c[i]
            i += 1
        rule = nodes.Rule(name, options, [], None, span=self._span(c[0], c[-1]))
        seen: set[str] = set()
        for section in c[i + 1 : -1]:
            if isinstance(section, _MatchSection):
                name, span = "match", self._tok_span(section.keyword)
            else:
                name, span = section.name, section.span
                span = Span(self.file, span.line, span.column, span.line, span.column + len(name))
            rule.section_order.append((name, span))
            if name in seen:
                continue
            seen.add(name)
            if isinstance(section, _MatchSection):
                rule.match = section.items
            else:
                setattr(rule, name, section)
        return rule

    def rule_name(self, c: list) -> Any:
        tok = c[0]
        if isinstance(tok, Token):
            return self.sq_string(c)
        return tok

    def match_section(self, c: list) -> _MatchSection:
        return _MatchSection(c[2:-1], c[0])

    def code_section(self, c: list) -> nodes.Section:
        params: list[str] = []
        stmts = c[2:-1]
        if stmts and isinstance(stmts[0], _Params):
            params = stmts[0].names
            stmts = stmts[1:]
        body = nodes.Block(stmts, self._span(c[1], c[-1]))
        return nodes.Section(c[0].value, params, body, self._span(c[0], c[-1]))

    # match

    def pattern(self, c: list) -> nodes.Pattern:
        i = 0
        while isinstance(c[i], Token) and c[i].type != "RPAR":
            i += 1
        heads: list[Token] = c[:i]
        constraints = c[i:-1]
        type_tok = heads[-1]
        binding_tok = heads[0] if len(heads) > 1 and heads[0].type == "NAME" else None
        kw = heads[-2] if len(heads) > 1 and heads[-2].type != "NAME" else None
        kind = "fact" if kw is None else kw.value
        span = self._span(c[0], c[-1])
        binding = self._ident(binding_tok) if binding_tok is not None else None
        if binding is not None and kind in ("not", "exists"):
            self._error(
                self._tok_span(kw),
                f"a '{kind}' pattern matches no fact, so it cannot bind a name",
                f"write '{kind} {type_tok.value}(...)' without '{binding}:'",
            )
        if binding is None and kind == "collect":
            self._error(
                self._tok_span(kw),
                "'collect' gives a list that needs a name",
                f"write 'name: collect {type_tok.value}(...)'",
            )
        return nodes.Pattern(kind, self._ident(type_tok), constraints, binding, span)

    def named_constraint(self, c: list) -> Any:
        name = c[0].value
        self._error(
            self._span(c[0], c[1]),
            "a pattern holds boolean constraints such as `f == v`, not named arguments",
            f"write '{name} == ...' instead of '{name}: ...'",
        )
        return c[1]

    def guard(self, c: list) -> nodes.Guard:
        return nodes.Guard(c[1], self._span(c[0], c[1]))

    # statements

    def block(self, c: list) -> nodes.Block:
        return nodes.Block(c[1:-1], self._span(c[0], c[-1]))

    def expr_stmt(self, c: list) -> nodes.ExprStmt:
        return nodes.ExprStmt(c[0], c[0].span)

    def assign(self, c: list) -> nodes.Assign:
        target, op, value = c
        if not isinstance(target, (nodes.Name, nodes.Attr, nodes.Index)):
            self._error(
                target.span,
                f"cannot assign to this: the left side of '{op.value}' is a name, a field "
                "(a.b) or an index (a[i])",
            )
        elif isinstance(target, nodes.Attr) and (target.safe or target.spread):
            self._error(target.span, "cannot assign through '?.' or '*.'")
        return nodes.Assign(target, op.value, value, self._span(target, value))

    def def_stmt(self, c: list) -> nodes.Def:
        value = c[3] if len(c) > 3 else None
        return nodes.Def(self._ident(c[1]), value, self._span(c[0], c[-1]))

    def if_stmt(self, c: list) -> nodes.If:
        other = c[4] if len(c) > 4 else None
        return nodes.If(c[1], c[2], other, self._span(c[0], c[-1]))

    def for_stmt(self, c: list) -> nodes.For:
        return nodes.For(self._ident(c[1]), c[3], c[4], self._span(c[0], c[-1]))

    def return_stmt(self, c: list) -> nodes.Return:
        value = c[1] if len(c) > 1 else None
        return nodes.Return(value, self._span(c[0], c[-1]))

    def insert_stmt(self, c: list) -> nodes.Insert:
        args: _Args = c[2]
        fields = self._named_only(args, "insert T(field: value, ...)")
        fact = nodes.FactCtor(c[1].value, fields, self._span(c[1], args.end))
        return nodes.Insert(fact, self._span(c[0], args.end))

    def modify_stmt(self, c: list) -> nodes.Modify:
        return nodes.Modify(self._ident(c[1]), c[3:-1], self._span(c[0], c[-1]))

    def field_assign(self, c: list) -> nodes.FieldArg:
        return nodes.FieldArg(c[0].value, c[2], self._span(c[0], c[2]))

    def retract_stmt(self, c: list) -> nodes.Retract:
        return nodes.Retract(self._ident(c[1]), self._span(c[0], c[1]))

    def complete_stmt(self, c: list) -> nodes.Complete:
        args: _Args = c[1]
        fields = self._named_only(args, "complete(key: value, ...)")
        return nodes.Complete(fields, self._span(c[0], args.end))

    def fail_stmt(self, c: list) -> nodes.Fail:
        return nodes.Fail(c[1], self._span(c[0], c[1]))

    def log_stmt(self, c: list) -> nodes.Log:
        return nodes.Log(c[1], self._span(c[0], c[1]))

    def _named_only(self, args: _Args, form: str) -> list[nodes.FieldArg]:
        fields = []
        for item in args.items:
            if isinstance(item, nodes.FieldArg):
                fields.append(item)
            else:
                self._error(item.span, f"expected a named argument 'name: value' here: {form}")
        return fields

    # expressions

    def ternary(self, c: list) -> nodes.Ternary:
        return nodes.Ternary(c[0], c[1], c[2], self._span(c[0], c[2]))

    def elvis(self, c: list) -> nodes.Elvis:
        return nodes.Elvis(c[0], c[2], self._span(c[0], c[2]))

    def binary(self, c: list) -> nodes.Binary:
        left, op, right = c
        return nodes.Binary(op.value, left, right, self._span(left, right))

    def range(self, c: list) -> nodes.Range:
        left, op, right = c
        return nodes.Range(left, right, op.type == "RANGE_EXCL", self._span(left, right))

    def unary(self, c: list) -> Any:
        op, operand = c
        if op.type == "MINUS" and isinstance(operand, nodes.Literal):
            value = operand.value
            if type(value) is int or type(value) is float:
                # A negative number is a literal (option values and defaults must be literals).
                pending = self.ctx.pending_min if self.ctx else []
                if pending and operand is pending[-1]:
                    # -9223372036854775808: the one literal that only fits once negated.
                    pending.pop()
                return nodes.Literal(-value, self._span(op, operand))
        return nodes.Unary(op.value, operand, self._span(op, operand))

    def attr(self, c: list) -> nodes.Attr:
        obj, dot, name = c
        t = dot.type
        span = self._span(obj, name)
        return nodes.Attr(obj, name.value, t == "SAFE_DOT", t == "SPREAD_DOT", span)

    def method_call(self, c: list) -> nodes.MethodCall:
        obj, dot, name = c[0], c[1], c[2]
        args: list = []
        last: Any = name
        for extra in c[3:]:
            if isinstance(extra, _Args):
                args.extend(self._positional(extra, name.value))
                last = extra.end
            else:
                args.append(extra)
                last = extra
        t = dot.type
        return nodes.MethodCall(
            obj, name.value, args, t == "SAFE_DOT", t == "SPREAD_DOT", self._span(obj, last)
        )

    def _positional(self, args: _Args, callee: str) -> list:
        out = []
        for item in args.items:
            if isinstance(item, nodes.FieldArg):
                self._error(
                    item.span,
                    f"'{callee}' takes positional arguments, not 'name: value'",
                    "named arguments are for facts, T(field: value), and complete(key: value)",
                )
                out.append(item.value)
            else:
                out.append(item)
        return out

    def index(self, c: list) -> nodes.Index:
        return nodes.Index(c[0], c[1], self._span(c[0], c[2]))

    def name(self, c: list) -> nodes.Name:
        tok = c[0]
        return nodes.Name(self._ident(tok), self._tok_span(tok))

    def number(self, c: list) -> nodes.Literal:
        tok = c[0]
        text = tok.value
        span = self._tok_span(tok)
        if "." in text:
            value: int | float = float(text)
            if math.isinf(value):
                self._error(span, f"number {text} is too large")
            return nodes.Literal(value, span)
        value = int(text)
        if value > INT64_MAX:
            lit = nodes.Literal(value, span)
            if value == INT64_MAX + 1 and self.ctx is not None:
                self.ctx.pending_min.append(lit)
            else:
                self._error(span, _out_of_range(text))
            return lit
        return nodes.Literal(value, span)

    def sq_string(self, c: list) -> nodes.Literal:
        tok = c[0]
        body = tok.value[1:-1]
        span = self._tok_span(tok)
        if "\\" in body:
            body = self._unescape(body, tok, 1)
            if "\\u" in tok.value:
                body = self._pair_surrogates(body, span)
        return nodes.Literal(body, span)

    def true(self, c: list) -> nodes.Literal:
        return nodes.Literal(True, self._tok_span(c[0]))

    def false(self, c: list) -> nodes.Literal:
        return nodes.Literal(False, self._tok_span(c[0]))

    def null(self, c: list) -> nodes.Literal:
        return nodes.Literal(None, self._tok_span(c[0]))

    def dq_string(self, c: list) -> nodes.Literal | nodes.Interp:
        parts: list = []
        text: list[str] = []
        unicode_escapes = False
        for part in c[1:-1]:
            if isinstance(part, Token):
                t = part.type
                if t == "STR_TEXT":
                    text.append(part.value)
                elif t == "STR_ESC":
                    text.append(self._unescape(part.value, part, 0))
                    unicode_escapes = unicode_escapes or part.value[1] == "u"
                elif t == "STR_VAR":
                    if text:
                        parts.append("".join(text))
                        text = []
                    span = self._tok_span(part)
                    parts.append(nodes.Name(self._ident_text(part.value[1:], span), span))
                else:  # STR_DOLLAR
                    self._error(
                        self._tok_span(part),
                        "a '$' in a \"...\" string starts '$name' or '${expr}'",
                        "write '\\$' for a dollar sign, or use a '...' string",
                    )
                    text.append("$")
            else:
                if text:
                    parts.append("".join(text))
                    text = []
                parts.append(part)
        span = self._span(c[0], c[-1])
        if text:
            parts.append("".join(text))
        if unicode_escapes:
            parts = [self._pair_surrogates(p, span) if isinstance(p, str) else p for p in parts]
        if len(parts) <= 1 and not (parts and not isinstance(parts[0], str)):
            return nodes.Literal(parts[0] if parts else "", span)
        return nodes.Interp(parts, span)

    def _pair_surrogates(self, text: str, span: Span) -> str:
        """`\uD83D\uDE00` escapes one character in two halves (as in Java and Groovy)."""
        if not any("\ud800" <= ch <= "\udfff" for ch in text):
            return text
        data = text.encode("utf-16-le", "surrogatepass")
        try:
            return data.decode("utf-16-le")
        except UnicodeDecodeError:
            self._error(
                span,
                "a '\\u' escape gives half a character: write both halves, as in '\\uD83D\\uDE00'",
            )
            return data.decode("utf-16-le", "replace")

    def _ident_text(self, value: str, span: Span) -> str:
        if value in RESERVED:
            self._error(span, f"'{value}' is a reserved word and cannot be used as a name")
        return value

    def _unescape(self, text: str, tok: Token, offset: int) -> str:
        """Decode the escapes of `text`, which starts `offset` characters into `tok`."""

        def one(m: re.Match[str]) -> str:
            code = m.group(1)
            if code.startswith("u") and len(code) == 5:
                return chr(int(code[1:], 16))
            if code in _ESCAPES:
                return _ESCAPES[code]
            column = tok.column + offset + m.start()
            span = Span(self.file, tok.line, column, tok.line, column + 1 + len(code))
            if code == "u":
                self._error(span, "'\\u' needs four hex digits, as in '\\u00e9'")
            else:
                self._error(
                    span,
                    f"unknown escape '\\{code}'",
                    "escapes are \\n \\t \\\\ \\' \\\" \\$ and \\uXXXX",
                )
            return code

        return _ESCAPE_RE.sub(one, text)

    def call(self, c: list) -> Any:
        name_tok: Token = c[0]
        args: _Args = c[1]
        closure = c[2] if len(c) > 2 else None
        name = name_tok.value
        end = closure if closure is not None else args.end
        span = self._span(name_tok, end)
        named = [a for a in args.items if isinstance(a, nodes.FieldArg)]
        positional = [a for a in args.items if not isinstance(a, nodes.FieldArg)]
        if name[0].isupper() and (named or not positional):
            if positional:
                self._error(
                    positional[0].span,
                    f"a fact value takes named arguments only: {name}(field: value, ...)",
                )
            if closure is not None:
                self._error(
                    closure.span, f"a fact value {name}(field: value, ...) takes no closure"
                )
            return nodes.FactCtor(name, named, span)
        call_args = self._positional(args, self._ident_text(name, self._tok_span(name_tok)))
        if closure is not None:
            call_args.append(closure)
        return nodes.Call(name, call_args, span)

    def start_expr(self, c: list) -> nodes.Start:
        workflow: _Dotted = c[1]
        args: _Args = c[2]
        facts = []
        for item in args.items:
            if isinstance(item, nodes.FactCtor):
                facts.append(item)
            else:
                self._error(
                    item.span,
                    "start takes the child workflow's initial facts: "
                    "start pkg.Workflow(T(field: value), ...)",
                )
        return nodes.Start(workflow.name, facts, self._span(c[0], args.end))

    def call_args(self, c: list) -> _Args:
        return _Args(c[:-1], c[-1])

    def named_arg(self, c: list) -> nodes.FieldArg:
        return nodes.FieldArg(c[0].value, c[1], self._span(c[0], c[1]))

    def closure(self, c: list) -> nodes.Closure:
        stmts = c[1:-1]
        params: list[str] = []
        explicit = False
        if stmts and isinstance(stmts[0], _Params):
            params = stmts[0].names
            explicit = True
            stmts = stmts[1:]
        span = self._span(c[0], c[-1])
        return nodes.Closure(params, nodes.Block(stmts, span), explicit, span)

    def closure_params(self, c: list) -> _Params:
        return _Params([self._ident(t) for t in c[:-1]])

    def list_lit(self, c: list) -> nodes.ListLit:
        return nodes.ListLit(c[1:-1], self._span(c[0], c[-1]))

    def map_lit(self, c: list) -> nodes.MapLit:
        return nodes.MapLit(c[1:-1], self._span(c[0], c[-1]))

    def map_entry(self, c: list) -> nodes.MapEntry:
        key: _MapKey = c[0]
        value = c[1]
        end = value.span
        span = Span(self.file, key.span.line, key.span.column, end.end_line, end.end_column)
        return nodes.MapEntry(key.key, value, span)

    def map_key(self, c: list) -> _MapKey:
        item = c[0]
        if not isinstance(item, Token):  # a "..." string
            key = item.value if isinstance(item, nodes.Literal) else item
            return _MapKey(key, item.span)
        span = self._tok_span(item)
        if item.type == "SQ_STRING":
            return _MapKey(self.sq_string(c).value, span)
        return _MapKey(item.value, span)

    def computed_key(self, c: list) -> _MapKey:
        return _MapKey(c[0], c[0].span)


def _out_of_range(text: str) -> str:
    return (
        f"integer {text} is out of range: integers are 64-bit, "
        f"from {INT64_MIN} to {INT64_MAX}"
    )


# ── the Lark parser, built once per process ──────────────────────────────────────────────────


@dataclass(slots=True)
class _Machinery:
    lark: Lark
    builder: _Builder
    newlines: _Newlines


_LOCK = threading.RLock()
_MACHINERY: _Machinery | None = None


def grammar_path() -> Path:
    """The grammar file: the copy inside the installed package, else the one in the checkout."""
    try:
        packaged = importlib.resources.files("emirax") / "grammar" / "emirax.lark"
        if packaged.is_file():
            return Path(str(packaged))
    except (ModuleNotFoundError, OSError):
        pass
    return Path(__file__).resolve().parent.parent / "grammar" / "emirax.lark"


def _cache_file(grammar: str) -> str | bool:
    """Where Lark keeps its analysis of the grammar (about 15x faster to load than to build):
    a per-user cache directory, never a shared temporary one, since the file is a pickle.
    Lark checks the grammar's digest stored inside and rebuilds when it does not match."""
    root = os.environ.get("EMIRAX_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"),
        "emirax",
    )
    digest = hashlib.sha256(grammar.encode("utf-8")).hexdigest()[:16]
    try:
        os.makedirs(root, mode=0o700, exist_ok=True)
    except OSError:
        return False
    return os.path.join(root, f"grammar-{digest}-lark{lark.__version__}.cache")


def build_lark(*, cached: bool = False, **options: Any) -> Lark:
    """A Lark parser for the Emirax grammar (tests pass `debug=True` to see conflicts)."""
    grammar = grammar_path().read_text(encoding="utf-8")
    return Lark(
        grammar,
        cache=_cache_file(grammar) if cached else False,
        parser="lalr",
        lexer="contextual",
        start="module",
        maybe_placeholders=False,
        **options,
    )


def _machinery() -> _Machinery:
    global _MACHINERY
    with _LOCK:
        if _MACHINERY is None:
            builder = _Builder()
            newlines = _Newlines()
            parser = build_lark(cached=True, transformer=builder, postlex=newlines)
            _MACHINERY = _Machinery(parser, builder, newlines)
        return _MACHINERY


def parse(source: Source) -> nodes.Module:
    """Parse one `.emx` file. Raises ParseError with every syntax error found (up to 20)."""
    machinery = _machinery()
    text = source.text
    if text.startswith("\ufeff"):
        text = text[1:]
    with _LOCK:
        ctx = _Context(Source(source.name, text))
        machinery.builder.begin(ctx)
        machinery.newlines.ctx = ctx
        module = None
        try:
            module = machinery.lark.parse(text, on_error=ctx.on_error)
        except UnexpectedInput as e:
            if not ctx.diagnostics:
                ctx.report(ctx.end_span(), "the file could not be parsed")
            del e
        except LarkError as e:  # a Lark failure that is not about the text: still ours to word
            ctx.report(ctx.end_span(), f"the file could not be parsed: {type(e).__name__}")
        finally:
            machinery.builder.begin(None)
            machinery.newlines.ctx = None
    for lit in ctx.pending_min:
        ctx.report(lit.span, _out_of_range(str(lit.value)))
    if ctx.diagnostics or not isinstance(module, nodes.Module):
        if not ctx.diagnostics:
            ctx.report(ctx.end_span(), "the file could not be parsed")
        raise ParseError(ctx.diagnostics)
    return module
