"""A compact, readable text form of IR for golden tests: `(op field ...)` in schema order.

    (binary == (field index) (attr (var c) index))

Positions (`at`) are left out so goldens say what the code means, not where it sits; the
position tests in test_compiler.py check them separately.
"""

from __future__ import annotations

from typing import Any

from emirax import ir

_SCHEMAS = {**ir.EXPR_OPS, **ir.STMT_OPS}


def show(node: Any) -> str:
    if isinstance(node, list):
        return "[" + " ".join(show(n) for n in node) + "]"
    if isinstance(node, dict) and "op" in node:
        op = node["op"]
        if op == "lit":
            return repr(node["value"]) if node["value"] is not None else "null"
        if op in ("var", "field"):
            return f"{'$' if op == 'field' else ''}{node['name']}"
        parts = [op]
        for key in _SCHEMAS[op]:
            value = node[key]
            if value is False:
                continue
            parts.append(key if value is True else show(value))
        return "(" + " ".join(parts) + ")"
    if isinstance(node, dict):
        return "{" + " ".join(f"{k}={show(v)}" for k, v in node.items() if k != "at") + "}"
    if node is None:
        return "null"
    return str(node) if not isinstance(node, str) else node


def show_rule(rule: dict[str, Any]) -> str:
    lines = [f"rule {rule['name']!r} #{rule['index']} salience={rule['salience']}"
             + ("" if rule["enabled"] else " disabled")]
    for item in rule["match"]:
        if item["kind"] == "guard":
            lines.append(f"  when {show(item['expr'])}")
            continue
        head = f"  {item['kind']} {item['type']}" + (f" as {item['binding']}" if item["binding"] else "")
        for key in ("alpha", "beta"):
            if item[key]:
                head += f" {key}={show(item[key])}"
        for join in item["joins"]:
            head += f" join {join['field']}={show(join['expr'])}"
        lines.append(head)
    for name in ("action", "reaction", "error"):
        section = rule[name]
        if section is not None:
            param = f" {section['param']} ->" if section["param"] else ""
            lines.append(f"  {name}{param}")
            lines.extend(f"    {show(stmt)}" for stmt in section["body"])
    return "\n".join(lines)
