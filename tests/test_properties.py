"""Properties of the front end over arbitrary text: it fails only with its own errors, it points
every diagnostic inside the text, and it compiles the same source to the same bytes.

- Random programs are built from the language's pieces (declarations, patterns, statements,
  expressions of every kind), most of them wrong in some way; mutated programs start from real
  rules (the SPEC example, the media tenant, bench/gen.py projects) and delete, duplicate, swap or
  insert tokens and characters (unicode included) or cut the text short.
- For each: `parse`, then `check`, then `compile_modules` raise nothing but ParseError and
  CheckError (compiling a checked program raises nothing at all); every diagnostic names the file,
  a line and a column inside the text, and renders with the line it names.
- Compiling the same source twice (a fresh parse each time), or in two processes with different
  hash seeds, gives byte-identical IR and the same digest; renaming the files changes nothing
  but the IR's "file" fields.

The default run is short (about 150 examples per property); `--run-slow` (or EMIRAX_SLOW=1)
adds a long fuzz of 5000 examples per property.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from emirax.checker import check
from emirax.diagnostics import render
from emirax.errors import CheckError, Diagnostic, ParseError
from emirax.parser import parse
from emirax.source import Source
from support import SPEC_EXAMPLE, load_gen

ROOT = Path(__file__).resolve().parent.parent

from emirax import compiler as _compiler
from emirax import ir as _ir


gen = load_gen()

FAST, LONG = 150, 5000


def fuzz(examples: int) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    return settings(
        max_examples=examples,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


# ── what every run must satisfy ──────────────────────────────────────────────────────────────


def assert_diagnostics_inside(diags: list[Diagnostic], sources: dict[str, str]) -> None:
    """Each diagnostic names one of the files, a line and column inside it, and renders the
    line it names."""
    for d in diags:
        span = d.span
        assert span.file in sources, d
        text = sources[span.file]
        lines = text.split("\n")
        assert 1 <= span.line <= len(lines) + 1, d
        assert span.column >= 1, d
        if span.line <= len(lines):
            assert span.column <= len(lines[span.line - 1]) + 2, d
            shown = Source(span.file, text).line(span.line)
            assert shown == lines[span.line - 1].removesuffix("\r"), (d, shown)
        assert render([d], {n: Source(n, t) for n, t in sources.items()})


def front_end(sources: dict[str, str]) -> dict[str, Any] | None:
    """Parse, check and compile `sources` (one project); return the IR, or None when the text is
    rejected. Any exception other than ParseError / CheckError fails the calling test."""
    modules = []
    parse_errors: list[Diagnostic] = []
    for name, text in sources.items():
        try:
            modules.append(parse(Source(name, text)))
        except ParseError as e:
            assert e.diagnostics, "a ParseError without diagnostics"
            assert all(d.span.file == name for d in e.diagnostics)
            parse_errors += e.diagnostics
    if parse_errors:
        assert_diagnostics_inside(parse_errors, sources)
        return None
    try:
        warnings = check(modules)
    except CheckError as e:
        assert e.diagnostics and all(d.severity == "error" for d in e.diagnostics)
        assert_diagnostics_inside([*e.diagnostics, *getattr(e, "warnings", [])], sources)
        return None
    assert_diagnostics_inside(warnings, sources)
    doc = _compiler.compile_modules(modules)  # a checked program compiles: no error at all
    _ir.validate(doc)  # into valid IR
    return doc


def fresh_compile(sources: dict[str, str]) -> dict[str, Any]:
    return _compiler.compile_modules([parse(Source(n, t)) for n, t in sources.items()])


def assert_same_ir_twice(sources: dict[str, str], doc: dict[str, Any]) -> None:
    again = fresh_compile(sources)
    assert _ir.dumps(again) == _ir.dumps(doc)
    assert _ir.digest(again) == _ir.digest(doc)


def run_one(text: str, name: str = "fuzz.emx") -> None:
    doc = front_end({name: text})
    if doc is not None:
        assert_same_ir_twice({name: text}, doc)


def test_rendered_line_is_the_line_of_the_span() -> None:
    text = "package p\nworkflow W {\n    fact F(String s = 'a\rb')\n    fact F(int x)\n}\n"
    with pytest.raises(CheckError) as info:
        check([parse(Source("f.emx", text))])
    (d,) = info.value.diagnostics
    assert d.span.line == 4
    assert "fact F(int x)" in render([d], {"f.emx": Source("f.emx", text)})


def test_project_without_workflows_is_a_check_error() -> None:
    modules = [parse(Source("empty.emx", "package media\n"))]
    with pytest.raises(CheckError) as info:
        check(modules)
    assert info.value.diagnostics[0].span.file == "empty.emx"


# ── random programs from the language's pieces ───────────────────────────────────────────────

FACTS = {
    "Request": [("String", "source", None), ("int", "chunks", "3"), ("boolean", "urgent", "false")],
    "Chunk": [("int", "index", None), ("String", "uri", None), ("double", "weight", "1.0")],
    "Done": [("int", "index", None), ("String", "uri", None), ("List", "tags", "[]")],
}
FUNCTIONS = [("String", "encode", "String uri, String recipe"), ("List", "split", "String source, int n")]
NAMES = ["r", "c", "d", "x", "y", "it", "parts", "err", "acc", "done", "index", "uri", "source",
         "chunks", "weight", "tags", "urgent", "total", "n", "value"]
RESERVED = ["package", "workflow", "fact", "function", "rule", "with", "match", "action",
            "reaction", "error", "not", "exists", "collect", "when", "def", "if", "else", "for",
            "in", "return", "insert", "modify", "retract", "complete", "fail", "log", "start"]
METHODS = ["size", "isEmpty", "contains", "each", "eachWithIndex", "collect", "findAll", "find",
           "any", "every", "sum", "min", "max", "sort", "groupBy", "join", "keySet", "values",
           "toUpperCase", "startsWith", "inject", "count", "bogus"]
TYPES = ["String", "int", "long", "double", "boolean", "List", "Map", "def", "Chunk", "Nope"]
BINOPS = ["+", "-", "*", "/", "%", "==", "!=", "<", "<=", ">", ">=", "&&", "||", "in", "?:"]



def rarely(usual: st.SearchStrategy[str], odd: st.SearchStrategy[str], one_in: int = 40) -> st.SearchStrategy[str]:
    """`usual`, and `odd` about once in `one_in` draws: a few mistakes per program, not one per
    token, so that most programs get past the parser and reach the checker."""
    return st.integers(0, one_in - 1).flatmap(lambda i: odd if i == one_in - 1 else usual)


# Plain names; now and then a reserved word where a name should be.
names = rarely(st.sampled_from(NAMES), st.sampled_from(RESERVED))
plain_names = st.sampled_from(NAMES)
fact_names = st.sampled_from([*FACTS, "Nope"])
field_names = st.sampled_from(["source", "chunks", "urgent", "index", "uri", "weight", "tags", "zzz"])
text_chars = st.characters(blacklist_categories=("Cs",), blacklist_characters="\n")


def sq_string(s: str) -> str:
    return "'" + s.replace("\\", "\\\\").replace("'", "\\'") + "'"


@st.composite
def dq_strings(draw: st.DrawFn, exprs: st.SearchStrategy[str]) -> str:
    parts = draw(st.lists(
        st.one_of(
            st.text(text_chars, max_size=6).map(lambda s: s.replace("\\", "\\\\").replace('"', '\\"').replace("$", "\\$")),
            plain_names.map(lambda n: "$" + n),
            exprs.map(lambda e: "${" + e + "}"),
            rarely(
                st.sampled_from(["\\n", "\\t", "\\u00e9", "\\uD83D\\uDE00", "\\$", "\\'"]),
                st.sampled_from(["\\q", "$", "\\u12", "\\uD83D"]),
                one_in=10,
            ),
        ),
        max_size=4,
    ))
    return '"' + "".join(parts) + '"'


numbers = st.one_of(
    st.integers(-100, 100).map(str),
    rarely(st.integers(-(2**63), 2**63 - 1), st.integers(-(2**70), 2**70), one_in=10).map(str),
    st.tuples(st.integers(0, 999), st.integers(0, 99)).map(lambda t: f"{t[0]}.{t[1]}"),
)
literals = st.one_of(
    numbers,
    st.text(text_chars, max_size=8).map(sq_string),
    st.sampled_from(["true", "false", "null", "[]", "[:]"]),
)


def _extend(children: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    args = st.lists(children, max_size=3).map(", ".join)
    named = st.lists(st.tuples(field_names, children), max_size=3).map(
        lambda kv: ", ".join(f"{k}: {v}" for k, v in kv)
    )
    closure = st.one_of(
        children.map(lambda e: "{ " + e + " }"),
        st.tuples(st.lists(plain_names, min_size=1, max_size=2), children).map(
            lambda t: "{ " + ", ".join(t[0]) + " -> " + t[1] + " }"
        ),
        children.map(lambda e: "{ -> " + e + " }"),
    )
    return st.one_of(
        st.tuples(children, st.sampled_from(BINOPS), children).map(" ".join),
        st.tuples(st.sampled_from(["!", "-", "+"]), children).map("".join),
        st.tuples(children, children, children).map(lambda t: f"{t[0]} ? {t[1]} : {t[2]}"),
        st.tuples(children, st.sampled_from([".", "?.", "*."]), field_names).map("".join),
        st.tuples(children, st.sampled_from([".", "?.", "*."]), st.sampled_from(METHODS), args).map(
            lambda t: f"{t[0]}{t[1]}{t[2]}({t[3]})"
        ),
        st.tuples(children, st.sampled_from(METHODS), closure).map(lambda t: f"{t[0]}.{t[1]} {t[2]}"),
        st.tuples(children, children).map(lambda t: f"{t[0]}[{t[1]}]"),
        st.tuples(st.sampled_from(["encode", "split", "nope"]), args).map(lambda t: f"{t[0]}({t[1]})"),
        st.tuples(fact_names, named).map(lambda t: f"{t[0]}({t[1]})"),
        args.map(lambda a: f"[{a}]"),
        named.map(lambda a: f"[{a}]" if a else "[:]"),
        st.tuples(children, st.sampled_from(["..", "..<"]), children).map(lambda t: f"({t[0]}{t[1]}{t[2]})"),
        children.map(lambda e: f"({e})"),
        closure,
        st.tuples(fact_names, named).map(lambda t: f"start fz.W({t[0]}({t[1]}))"),
        dq_strings(children),
    )


exprs = st.recursive(st.one_of(names, literals), _extend, max_leaves=10)

simple_stmts = st.one_of(
    exprs,
    st.tuples(plain_names, exprs).map(lambda t: f"def {t[0]} = {t[1]}"),
    plain_names.map(lambda n: f"def {n}"),
    st.tuples(names, st.sampled_from(["=", "+=", "-="]), exprs).map(" ".join),
    st.tuples(fact_names, st.lists(st.tuples(field_names, exprs), max_size=3)).map(
        lambda t: f"insert {t[0]}(" + ", ".join(f"{k}: {v}" for k, v in t[1]) + ")"
    ),
    st.tuples(plain_names, st.lists(st.tuples(field_names, exprs), max_size=2)).map(
        lambda t: f"modify {t[0]} {{ " + "; ".join(f"{k} = {v}" for k, v in t[1]) + " }"
    ),
    plain_names.map(lambda n: f"retract {n}"),
    st.lists(st.tuples(plain_names, exprs), max_size=2).map(
        lambda kv: "complete(" + ", ".join(f"{k}: {v}" for k, v in kv) + ")"
    ),
    exprs.map(lambda e: f"fail {e}"),
    exprs.map(lambda e: f"log {e}"),
    st.one_of(st.just("return"), exprs.map(lambda e: f"return {e}")),
)


def _block(stmts: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    return st.tuples(st.lists(stmts, max_size=3), st.sampled_from(["\n", "; ", "\n\n"])).map(
        lambda t: t[1].join(t[0])
    )


stmts = st.deferred(
    lambda: st.one_of(
        simple_stmts,
        simple_stmts,
        st.tuples(exprs, _block(stmts), st.none() | _block(stmts)).map(
            lambda t: f"if ({t[0]}) {{\n{t[1]}\n}}" + ("" if t[2] is None else f" else {{\n{t[2]}\n}}")
        ),
        st.tuples(plain_names, exprs, _block(stmts)).map(lambda t: f"for ({t[0]} in {t[1]}) {{\n{t[2]}\n}}"),
    )
)
blocks = _block(stmts)

# `b: T(...)`, `T(...)`, `not T(...)`, `exists T(...)`, `b: collect T(...)`; rarely a binding on
# `not`/`exists` or a `collect` without one (syntax errors).
_HEADS = rarely(
    st.one_of(
        plain_names.map(lambda b: f"{b}: "),
        st.sampled_from(["", "not ", "exists "]),
        plain_names.map(lambda b: f"{b}: collect "),
    ),
    st.one_of(plain_names.map(lambda b: f"{b}: not "), st.just("collect ")),
    one_in=100,
)
patterns = st.one_of(
    st.tuples(_HEADS, fact_names, st.lists(exprs, max_size=2)).map(
        lambda t: f"{t[0]}{t[1]}(" + ", ".join(t[2]) + ")"
    ),
    exprs.map(lambda e: f"when {e}"),
)

OPTION_NAMES = ["salience", "enabled", "timeout", "retries", "backoff", "priority", "queue",
                "cache", "bogus"]
options = st.lists(
    st.tuples(
        st.sampled_from(OPTION_NAMES),
        st.one_of(literals, st.sampled_from(["'30s'", "'2h'", "'exponential'", "'5x'", "3"])),
    ),
    max_size=3,
).map(lambda kv: " with [" + ", ".join(f"{k}: {v}" for k, v in kv) + "]" if kv else "")


@st.composite
def rules(draw: st.DrawFn) -> str:
    name = draw(rarely(st.text(text_chars, max_size=10).map(sq_string), st.just('"r $x"'), 100))
    reaction_param = draw(st.sampled_from(["", "v -> ", "a, b -> ", "-> "]))
    error_param = draw(st.sampled_from(["", "err -> "]))
    sections = [
        ("match", "match {\n" + "\n".join(draw(st.lists(patterns, max_size=4))) + "\n}"),
        ("action", "action {\n" + draw(blocks) + "\n}"),
        ("reaction", "reaction { " + reaction_param + "\n" + draw(blocks) + "\n}"),
        ("error", "error { " + error_param + "\n" + draw(blocks) + "\n}"),
    ]
    # match and action are nearly always there, reaction and error half the time; now and then
    # the sections come in another order.
    keep = []
    for section in sections:
        required = section[0] in ("match", "action")
        if (draw(st.integers(0, 9)) < 9) if required else draw(st.booleans()):
            keep.append(section)
    if draw(st.integers(0, 9)) == 9:
        keep = draw(st.permutations(keep))
    return f"rule {name}{draw(options)} {{\n" + "\n".join(text for _, text in keep) + "\n}"


@st.composite
def declarations(draw: st.DrawFn) -> list[str]:
    out = []
    for fact, fields in FACTS.items():
        if draw(st.integers(0, 9)) > 0:
            out.append(f"fact {fact}(" + ", ".join(
                f"{t} {n}" + (f" = {d}" if d else "") for t, n, d in fields) + ")")
    if draw(st.booleans()):
        fields = draw(st.lists(st.tuples(st.sampled_from(TYPES), field_names, st.none() | literals), max_size=3))
        out.append(f"fact {draw(fact_names)}(" + ", ".join(
            f"{t} {n}" + (f" = {d}" if d is not None else "") for t, n, d in fields) + ")")
    for ret, name, params in FUNCTIONS:
        if draw(st.integers(0, 9)) > 0:
            out.append(f"function {ret} {name}({params}){draw(options)}")
    return out


@st.composite
def programs(draw: st.DrawFn) -> str:
    workflows = []
    for i in range(draw(st.integers(1, 2))):
        items = [*draw(declarations()), *draw(st.lists(rules(), min_size=1, max_size=3))]
        workflows.append(f"workflow W{i if draw(st.integers(0, 9)) else 0} {{\n" + "\n".join(items) + "\n}")
    package = draw(st.sampled_from(["fz", "fz.sub", "start", "a.b.c"]))
    return f"package {package}\n\n" + "\n\n".join(workflows) + "\n"


@fuzz(FAST)
@given(programs())
def test_random_programs_fail_only_with_emirax_errors(src: str) -> None:
    run_one(src)


@pytest.mark.slow
@fuzz(LONG)
@given(programs())
def test_random_programs_long_fuzz(src: str) -> None:
    run_one(src)


# ── mutated real programs ────────────────────────────────────────────────────────────────────



def _bases() -> list[dict[str, str]]:
    """Real projects to mutate: each a {name: text} that checks cleanly."""
    out = [{"spec.emx": SPEC_EXAMPLE}]
    tenant = ROOT / "tenants" / "media-encoding" / "rules"
    if tenant.is_dir():
        files = {f"rules/{p.name}": p.read_text(encoding="utf-8") for p in sorted(tenant.glob("*.emx"))}
        if files:
            out.append(files)
    out += [gen.generate(240, seed=seed, files=2) for seed in range(3)]
    return out


BASES = _bases()
TOKEN = re.compile(r"[A-Za-z_0-9]+|\s+|\S")
INSERTS = st.one_of(
    st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=4),
    st.sampled_from([
        "{", "}", "(", ")", "[", "]", "'", '"', "${", "$", "\\", "->", "?.", "*.", "..<", ":", ",",
        ";", "\n", "\r", "\t", "\x00", "\ufeff", "\u2028", "é", "😀", "/*", "*/", "//", "9" * 25,
        *RESERVED, "it", "null",
    ]),
)


@st.composite
def mutated(draw: st.DrawFn) -> dict[str, str]:
    project = dict(draw(st.sampled_from(BASES)))
    name = draw(st.sampled_from(sorted(project)))
    tokens = TOKEN.findall(project[name])
    for _ in range(draw(st.integers(1, 4))):
        if not tokens:
            break
        i = draw(st.integers(0, len(tokens) - 1))
        op = draw(st.sampled_from(["delete", "duplicate", "swap", "insert", "replace", "chars", "truncate"]))
        if op == "delete":
            del tokens[i : i + draw(st.integers(1, 3))]
        elif op == "duplicate":
            tokens[i:i] = tokens[i : i + draw(st.integers(1, 3))]
        elif op == "swap":
            j = draw(st.integers(0, len(tokens) - 1))
            tokens[i], tokens[j] = tokens[j], tokens[i]
        elif op == "insert":
            tokens.insert(i, draw(INSERTS))
        elif op == "replace":
            tokens[i] = draw(INSERTS)
        elif op == "chars":  # break a token inside: delete or insert characters in it
            tok = tokens[i]
            k = draw(st.integers(0, len(tok)))
            tokens[i] = tok[:k] + draw(st.sampled_from(["", draw(INSERTS)])) + tok[k + 1 :]
        else:
            tokens = tokens[:i]
    project[name] = "".join(tokens)
    return project


def test_bases_are_valid_programs() -> None:
    for project in BASES:
        modules = [parse(Source(n, t)) for n, t in project.items()]
        check(modules)


def run_project(project: dict[str, str]) -> None:
    doc = front_end(project)
    if doc is not None:
        assert_same_ir_twice(project, doc)


@fuzz(FAST)
@given(mutated())
def test_mutated_programs_fail_only_with_emirax_errors(project: dict[str, str]) -> None:
    run_project(project)


@pytest.mark.slow
@fuzz(LONG)
@given(mutated())
def test_mutated_programs_long_fuzz(project: dict[str, str]) -> None:
    run_project(project)


# ── determinism of the compiled form ─────────────────────────────────────────────────────────


def _without_files(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: ("<file>" if k == "file" else _without_files(v)) for k, v in value.items()}
    if isinstance(value, list):
        return [_without_files(v) for v in value]
    return value


@fuzz(15)
@given(st.integers(0, 10**6))
def test_same_source_compiles_to_the_same_bytes(seed: int) -> None:
    project = gen.generate(300, seed=seed, files=2)
    first = fresh_compile(project)
    assert_same_ir_twice(project, first)


@fuzz(10)
@given(st.integers(0, 10**6))
def test_renaming_files_changes_only_file_fields(seed: int) -> None:
    project = gen.generate(300, seed=seed, files=2)
    # Renamed in the same order, so that the compiler sees the files in the same order.
    renamed = {f"other/place/{i:02d}_{n.rsplit('/', 1)[-1]}": t for i, (n, t) in enumerate(sorted(project.items()))}
    a, b = fresh_compile(project), fresh_compile(renamed)
    assert _without_files(a) == _without_files(b)
    # The file names reach the IR only as "file" fields (if at all).
    dumped = _ir.dumps(b).decode("utf-8")
    assert "rules/part_" not in dumped


def test_single_file_renamed_changes_only_file_fields() -> None:
    a = fresh_compile({"spec.emx": SPEC_EXAMPLE})
    b = fresh_compile({"rules/video/encode.emx": SPEC_EXAMPLE})
    assert _without_files(a) == _without_files(b)


_DIGEST_SCRIPT = """
import importlib.util, sys
spec = importlib.util.spec_from_file_location("g", sys.argv[1])
gen = importlib.util.module_from_spec(spec); sys.modules["g"] = gen; spec.loader.exec_module(gen)
from emirax import compiler, ir
from emirax.parser import parse
from emirax.source import Source
project = gen.generate(600, seed=11, files=3)
doc = compiler.compile_modules([parse(Source(n, t)) for n, t in project.items()])
print(ir.digest(doc))
"""


def test_digest_does_not_depend_on_the_process_hash_seed() -> None:
    digests = set()
    for hash_seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": hash_seed}
        proc = subprocess.run(
            [sys.executable, "-c", _DIGEST_SCRIPT, str(ROOT / "bench" / "gen.py")],
            capture_output=True, text=True, env=env, timeout=120, check=False,
        )
        assert proc.returncode == 0, proc.stderr
        digests.add(proc.stdout.strip())
    assert len(digests) == 1 and next(iter(digests)).startswith("sha256:")


def test_ir_dumps_is_canonical_json() -> None:
    doc = fresh_compile({"spec.emx": SPEC_EXAMPLE})
    data = _ir.dumps(doc)
    assert json.loads(data) == doc
    assert _ir.dumps(json.loads(data)) == data
