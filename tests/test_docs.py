"""The examples of docs/language.md are valid Emirax: every ```groovy block parses, checks and
compiles. Fragments (a few statements, a section, a declaration) are wrapped in a workflow that
declares the facts and functions the reference's examples share."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from emirax.checker import check
from emirax.compiler import compile_modules
from emirax.diagnostics import render
from emirax.errors import SourceError
from emirax.parser import parse
from emirax.source import Source

LANGUAGE = Path(__file__).resolve().parents[1] / "docs" / "language.md"

FACTS = {
    'Request': 'fact Request(String source, String recipe, int chunks = 31)',
    'Chunk': 'fact Chunk(int index, String uri)',
    'Encoded': 'fact Encoded(int index, String uri)',
    'Assembled': 'fact Assembled(String uri)',
    'Failed': 'fact Failed(String reason)',
}
FUNCS = {
    'split': 'function List split(String source, int chunks)',
    'encode': 'function String encode(String uri, String recipe)',
    'assemble': 'function String assemble(List parts)',
}
MATCH = "match {\n req: Request()\n c: Chunk()\n done: collect Encoded()\n}\n"

def first_word(code):
    for line in code.splitlines():
        s = line.strip()
        if not s or s.startswith('//') or s.startswith('/*') or s.startswith('*'):
            continue
        return s.split()[0].split('(')[0].split('{')[0]
    return ''

def prelude(code):
    declared_f = set(re.findall(r'^\s*fact\s+(\w+)', code, re.M))
    declared_fn = set(re.findall(r'^\s*function\s+\w+\s+(\w+)', code, re.M))
    out = [v for k, v in FACTS.items() if k not in declared_f]
    out += [v for k, v in FUNCS.items() if k not in declared_fn]
    return '\n'.join(out) + '\n'

def wrap(code):
    if re.search(r'^\s*package\s', code, re.M):
        return code, 'module'
    w = first_word(code)
    if w == 'workflow':
        return 'package doc.examples\n' + code, 'workflows'
    if w in ('fact', 'function', 'rule'):
        return 'package doc.examples\nworkflow Docs {\n' + prelude(code) + code + '\n}\n', 'decls'
    if w in ('match', 'action', 'reaction', 'error'):
        body = code
        if not re.search(r'^\s*action\b', code, re.M) and w != 'match':
            body = 'action { encode(c.uri, req.recipe) }\n' + body
        if w != 'match':
            body = MATCH + body
        return ('package doc.examples\nworkflow Docs {\n' + prelude(code) +
                "rule 'doc' {\n" + body + '\n}\n}\n'), 'sections'
    return ('package doc.examples\nworkflow Docs {\n' + prelude(code) +
            "rule 'doc' {\n" + MATCH + 'action {\n' + code + '\n}\n}\n}\n'), 'statements'



def _blocks() -> list[tuple[int, str]]:
    text = LANGUAGE.read_text()
    return [
        (text.count("\n", 0, m.start()) + 1, m.group(1))
        for m in re.finditer(r"^```groovy\n(.*?)^```", text, re.M | re.S)
    ]


def test_the_reference_has_examples() -> None:
    assert len(_blocks()) >= 20


@pytest.mark.parametrize("line,code", _blocks(), ids=[f"line{line}" for line, _ in _blocks()])
def test_example_compiles(line: int, code: str) -> None:
    wrapped, _ = wrap(code)
    source = Source(name=f"language.md@{line}", text=wrapped)
    try:
        modules = [parse(source)]
        check(modules)
        compile_modules(modules)
    except SourceError as exc:
        pytest.fail(render(exc.diagnostics, {source.name: source}))
