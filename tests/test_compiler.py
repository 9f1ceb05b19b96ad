"""The compiler: every construct's IR (golden file), pattern analysis, positions, determinism.

tests/golden/compiler.txt holds one case per construct: source, then the expected IR in the
compact form of tests/irshow.py. `pytest tests/test_compiler.py --update-golden` rewrites the
expectations from the current compiler; the diff is then the change to the IR, to be read.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from emirax import ir
from emirax.checker import check
from emirax.compiler import compile_modules, duration_seconds
from emirax.errors import IRError
from emirax.parser import parse
from emirax.source import Source
from irshow import show, show_rule

GOLDEN = Path(__file__).parent / "golden" / "compiler.txt"
_CASE = re.compile(r"^### (.+)$", re.M)


def _cases() -> list[tuple[str, str, str]]:
    text = GOLDEN.read_text()
    heads = list(_CASE.finditer(text))
    cases = []
    for i, head in enumerate(heads):
        end = heads[i + 1].start() if i + 1 < len(heads) else len(text)
        body, _, expected = text[head.end() + 1:end].partition("\n---\n")
        cases.append((head.group(1), body, expected.strip("\n")))
    return cases


def compile_source(text: str, name: str = "golden.emx") -> dict[str, Any]:
    module = parse(Source(name, text))
    check([module])
    doc = compile_modules([module])
    ir.validate(doc)  # the compiler's output is always valid IR
    return doc


def _wrap(body: str) -> str:
    if body.lstrip().startswith("workflow"):
        return f"package golden\n\n{body}"
    indented = "\n".join("    " + line if line else line for line in body.splitlines())
    return f"package golden\n\nworkflow G {{\n{indented}\n}}\n"


def _show_decls(wf: dict[str, Any]) -> list[str]:
    lines = []
    for fact in wf["facts"]:
        fields = ", ".join(
            f"{f['type']} {f['name']}" + ("" if f["required"] else f" = {show(f['default'])}")
            for f in fact["fields"]
        )
        lines.append(f"fact {fact['name']}({fields})")
    for fn in wf["functions"]:
        params = ", ".join(f"{p['type']} {p['name']}" for p in fn["params"])
        opts = " ".join(f"{k}={v}" for k, v in sorted(fn["options"].items()))
        lines.append(f"function {fn['returns']} {fn['name']}({params}) {opts}")
    return lines


def render(doc: dict[str, Any]) -> str:
    out = []
    for wf in doc["workflows"]:
        out.append(f"workflow {wf['name']}")
        out.extend(_show_decls(wf))
        out.extend(show_rule(rule) for rule in wf["rules"])
    return "\n".join(out)


@pytest.mark.parametrize("name,body,expected", _cases(), ids=[c[0] for c in _cases()])
def test_golden(name: str, body: str, expected: str, request: pytest.FixtureRequest) -> None:
    actual = render(compile_source(_wrap(body)))
    if request.config.getoption("--update-golden"):
        text = GOLDEN.read_text()
        start = text.index(f"### {name}\n")
        sep = text.index("\n---\n", start) + len("\n---\n")
        nxt = text.find("\n### ", sep)
        end = nxt + 1 if nxt != -1 else len(text)
        GOLDEN.write_text(text[:sep] + actual + "\n\n" + text[end:].lstrip("\n") if nxt != -1
                          else text[:sep] + actual + "\n")
        return
    assert actual == expected


def test_every_operator_is_covered_by_a_golden_case() -> None:
    seen: set[str] = set()
    for _, body, _ in _cases():
        doc = compile_source(_wrap(body))
        seen |= {node["op"] for node in _nodes(doc) if "op" in node}
    assert ir.OPS - seen == set()


def _nodes(node: Any) -> list[dict[str, Any]]:
    found = []
    stack = [node]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            found.append(item)
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return found


SPEC = """\
package media.encode

workflow VideoEncode {
    fact Chunk(int index, String uri)
    fact Encoded(int index, String uri)

    rule 'encode chunk' {
        match {
            c: Chunk()
            not Encoded(index == c.index)
        }
        action { log "encode ${c.uri}" }
    }
}
"""


def test_positions_point_at_the_source() -> None:
    rule = compile_source(SPEC, "rules/video.emx")["workflows"][0]["rules"][0]
    assert rule["file"] == "rules/video.emx"
    assert rule["at"] == [7, 5]
    assert rule["match"][1]["at"] == [10, 13]
    log = rule["action"]["body"][0]
    assert log["at"] == [12, 18]
    assert log["message"]["parts"][1]["at"][0] == 12


def test_the_same_source_gives_byte_identical_ir() -> None:
    first = ir.dumps(compile_source(SPEC))
    second = ir.dumps(compile_source(SPEC))
    assert first == second
    assert ir.digest(json.loads(first)) == ir.digest(compile_source(SPEC))


def test_an_edit_changes_the_digest() -> None:
    edited = SPEC.replace("encode ${c.uri}", "encode ${c.index}")
    assert ir.digest(compile_source(SPEC)) != ir.digest(compile_source(edited))


def test_rules_keep_source_order_across_files() -> None:
    def rule(name: str) -> str:
        return f" rule '{name}' {{\n  match {{ F() }}\n  action {{ log '{name}' }}\n }}\n"

    a = parse(Source("rules/b.emx", "package p\nworkflow B {\n fact F(int x)\n"
                                    + rule("z") + rule("a") + "}\n"))
    b = parse(Source("rules/a.emx", "package p\nworkflow A {\n fact F(int x)\n"
                                    + rule("only") + "}\n"))
    check([a, b])
    doc = compile_modules([a, b])
    assert [w["name"] for w in doc["workflows"]] == ["A", "B"]  # files in name order
    assert [(r["name"], r["index"]) for r in doc["workflows"][1]["rules"]] == [("z", 0), ("a", 1)]


@pytest.mark.parametrize("text,seconds", [
    ("30s", 30), ("5m", 300), ("2h", 7200), ("100ms", 0.1), ("1500ms", 1.5),
])
def test_durations_become_seconds(text: str, seconds: float) -> None:
    assert duration_seconds(text) == seconds


def test_a_tampered_compiler_output_is_refused() -> None:
    doc = compile_source(SPEC)
    doc["workflows"][0]["rules"][0]["action"]["body"][0]["op"] = "exec"
    with pytest.raises(IRError, match=r"rules\[0\]\.action\.body\[0\]\.op: unknown statement"):
        ir.validate(doc)
