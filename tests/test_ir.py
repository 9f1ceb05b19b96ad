"""IR verification: what a server relies on before it turns a tenant's IR into running code.

Every refusal names the JSON path of the problem, so a hand-made or tampered document is
explained, not just rejected.
"""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from emirax import ir
from emirax.errors import IRError
from test_compiler import compile_source

SOURCE = """\
package demo.ir

workflow W {
    fact A(int x, List tags = [])
    fact B(int x)
    function String f(int n) with [timeout: '30s', retries: 2]

    rule 'join' with [salience: 5] {
        match {
            a: A(x > 0)
            not B(x == a.x)
        }
        action { f(a.x) }
        reaction { v -> insert B(x: a.x) }
    }
}
"""


@pytest.fixture
def doc() -> dict[str, Any]:
    return compile_source(SOURCE)


def _refused(doc: dict[str, Any], match: str) -> None:
    with pytest.raises(IRError, match=match):
        ir.validate(doc)


def _action(doc: dict[str, Any]) -> list[dict[str, Any]]:
    return doc["workflows"][0]["rules"][0]["action"]["body"]


def test_compiled_ir_is_valid_and_round_trips_through_json(doc: dict[str, Any]) -> None:
    ir.validate(doc)
    again = json.loads(ir.dumps(doc))
    assert again == doc
    assert ir.dumps(again) == ir.dumps(doc)


def test_digest_is_sha256_of_the_canonical_bytes(doc: dict[str, Any]) -> None:
    import hashlib

    assert ir.digest(doc) == "sha256:" + hashlib.sha256(ir.dumps(doc)).hexdigest()
    reordered = dict(reversed(list(doc.items())))
    assert ir.digest(reordered) == ir.digest(doc)


def test_unknown_statement_operator(doc: dict[str, Any]) -> None:
    _action(doc)[0]["op"] = "exec"
    _refused(doc, r"workflows\[0\]\.rules\[0\]\.action\.body\[0\]\.op: unknown statement operator 'exec'")


def test_unknown_expression_operator(doc: dict[str, Any]) -> None:
    _action(doc)[0]["expr"]["args"][0] = {"op": "python", "at": [1, 1], "code": "import os"}
    _refused(doc, r"args\[0\]\.op: unknown expression operator 'python'")


def test_extra_keys_are_refused(doc: dict[str, Any]) -> None:
    _action(doc)[0]["expr"]["code"] = "__import__('os')"
    _refused(doc, r"body\[0\]\.expr: unexpected 'code'")


def test_missing_keys_are_refused(doc: dict[str, Any]) -> None:
    del doc["workflows"][0]["rules"][0]["salience"]
    _refused(doc, r"rules\[0\]: missing 'salience'")


def test_unknown_method(doc: dict[str, Any]) -> None:
    _action(doc)[0]["expr"]["args"][0] = {
        "op": "method", "at": [1, 1], "obj": {"op": "lit", "at": [1, 1], "value": "x"},
        "name": "__class__", "args": [], "safe": False, "spread": False,
    }
    _refused(doc, r"\.name: unknown method '__class__'")


def test_unknown_binary_operator(doc: dict[str, Any]) -> None:
    alpha = doc["workflows"][0]["rules"][0]["match"][0]["alpha"][0]
    alpha["operator"] = "**"
    _refused(doc, r"match\[0\]\.alpha\[0\]\.operator: unknown operator '\*\*'")


def test_names_must_be_identifiers(doc: dict[str, Any]) -> None:
    doc["workflows"][0]["rules"][0]["match"][0]["binding"] = "a; import os"
    _refused(doc, r"match\[0\]\.binding: 'a; import os' is not a name")


def test_invoke_of_an_undeclared_function(doc: dict[str, Any]) -> None:
    _action(doc)[0]["expr"]["function"] = "system"
    _refused(doc, r"\.function: unknown function 'system'")


def test_invoke_with_the_wrong_arity(doc: dict[str, Any]) -> None:
    _action(doc)[0]["expr"]["args"].append({"op": "lit", "at": [1, 1], "value": 1})
    _refused(doc, r"wrong number of arguments for 'f'")


def test_pattern_of_an_undeclared_fact(doc: dict[str, Any]) -> None:
    doc["workflows"][0]["rules"][0]["match"][1]["type"] = "Nope"
    _refused(doc, r"match\[1\]\.type: unknown fact type 'Nope'")


def test_join_on_an_unknown_field(doc: dict[str, Any]) -> None:
    doc["workflows"][0]["rules"][0]["match"][1]["joins"][0]["field"] = "y"
    _refused(doc, r"joins\[0\]\.field: B has no field 'y'")


def test_insert_of_an_undeclared_fact(doc: dict[str, Any]) -> None:
    reaction = doc["workflows"][0]["rules"][0]["reaction"]["body"]
    reaction[0]["fact"]["type"] = "Ghost"
    _refused(doc, r"reaction\.body\[0\]\.fact\.type: unknown fact type 'Ghost'")


def test_wrong_ir_version(doc: dict[str, Any]) -> None:
    doc["ir_version"] = 99
    _refused(doc, r"ir_version: this Emirax reads IR version 1, not 99")


def test_booleans_are_not_integers(doc: dict[str, Any]) -> None:
    doc["workflows"][0]["rules"][0]["salience"] = True
    _refused(doc, r"salience: expected a 64-bit integer")


def test_integers_beyond_64_bits(doc: dict[str, Any]) -> None:
    doc["workflows"][0]["rules"][0]["salience"] = 2**64
    _refused(doc, r"salience: expected a 64-bit integer")


def test_non_finite_numbers(doc: dict[str, Any]) -> None:
    doc["workflows"][0]["rules"][0]["match"][0]["alpha"][0]["right"]["value"] = float("nan")
    _refused(doc, r"numbers must be finite")


def test_defaults_are_constants(doc: dict[str, Any]) -> None:
    field = doc["workflows"][0]["facts"][0]["fields"][1]
    field["default"] = {"op": "invoke", "at": [1, 1], "function": "f", "args": []}
    _refused(doc, r"fields\[1\]\.default")


def test_duplicate_rule_names(doc: dict[str, Any]) -> None:
    rules = doc["workflows"][0]["rules"]
    twin = copy.deepcopy(rules[0])
    twin["index"] = 1
    rules.append(twin)
    _refused(doc, r"rules\[1\]\.name: rule 'join' is declared twice")


def test_deep_nesting_is_refused(doc: dict[str, Any]) -> None:
    node: dict[str, Any] = {"op": "lit", "at": [1, 1], "value": 1}
    for _ in range(ir.MAX_DEPTH + 5):
        node = {"op": "unary", "at": [1, 1], "operator": "-", "operand": node}
    _action(doc)[0]["expr"]["args"][0] = node
    _refused(doc, r"nested deeper than")


def test_node_count_limit(doc: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ir, "MAX_NODES", 5)
    _refused(doc, r"more than 5 nodes")


def test_bad_option_values(doc: dict[str, Any]) -> None:
    doc["workflows"][0]["functions"][0]["options"]["timeout"] = -1
    _refused(doc, r"options\.timeout: expected a positive number of seconds")


def test_not_a_document() -> None:
    with pytest.raises(IRError, match="document: expected an object"):
        ir.validate([])


def test_signatures_name_workflows_facts_and_functions(doc: dict[str, Any]) -> None:
    (sig,) = ir.signatures(doc)
    assert sig["name"] == "demo.ir.W"
    assert sig["facts"]["A"] == {"x": "int", "tags": "List"}
    assert sig["functions"]["f"]["params"] == [["n", "int"]]
    assert sig["functions"]["f"]["options"]["timeout"] == 30
    assert sig["rules"] == ["join"]


def test_a_rule_priority_is_in_the_ir_only_when_set(doc: dict[str, Any]) -> None:
    rule = doc["workflows"][0]["rules"][0]
    assert "priority" not in rule  # rules without it keep the IR (and digest) they had
    rule["priority"] = 7
    ir.validate(doc)
    rule["priority"] = "high"
    _refused(doc, r"rules\[0\]\.priority: expected a 64-bit integer")
    prioritised = compile_source(SOURCE.replace("[salience: 5]", "[salience: 5, priority: 3]"))
    assert [r.get("priority") for r in prioritised["workflows"][0]["rules"]] == [3]
