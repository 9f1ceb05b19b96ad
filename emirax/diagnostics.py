"""Rendering diagnostics for people and machines.

One renderer for every host: the CLI prints `render(...)`, the server (later) returns
`as_dicts(...)` inside problem+json. A rendered diagnostic names `file:line:column`, says what is
wrong, shows the source line and puts a caret under the column:

    rules/encode.emx:12:18: error: unknown field 'indx' of Chunk
       12 |         not Encoded(indx == c.index)
          |                     ^^^^
          = hint: did you mean 'index'?
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from emirax.errors import Diagnostic
from emirax.source import Source


def render(diagnostics: Iterable[Diagnostic], sources: Mapping[str, Source] | None = None) -> str:
    """Render diagnostics as text, each with its source line and a caret when the source is known."""
    return "\n".join(render_one(d, (sources or {}).get(d.span.file)) for d in diagnostics)


def render_one(diagnostic: Diagnostic, source: Source | None = None) -> str:
    """Render one diagnostic; `source` is the file it points into, if the caller has it."""
    span = diagnostic.span
    lines = [f"{span}: {diagnostic.severity}: {diagnostic.message}"]
    text = source.line(span.line) if source is not None and span.line > 0 else ""
    if text:
        gutter = " " * len(str(span.line))
        lines.append(f" {span.line} | {text.expandtabs(4)}")
        lines.append(f" {gutter} | {_caret(text, span.column, _width(span, text))}")
    if diagnostic.hint:
        lines.append(f" {' ' * len(str(max(span.line, 0)))} = hint: {diagnostic.hint}")
    return "\n".join(lines)


def as_dicts(diagnostics: Iterable[Diagnostic]) -> list[dict[str, Any]]:
    """JSON-ready diagnostics (for `--json` output and problem+json bodies)."""
    return [
        {
            "file": d.span.file,
            "line": d.span.line,
            "column": d.span.column,
            "severity": d.severity,
            "message": d.message,
            **({"hint": d.hint} if d.hint else {}),
        }
        for d in diagnostics
    ]


def _width(span: Any, text: str) -> int:
    """How many carets: the node's extent on its first line, at least one."""
    if span.end_line == span.line and span.end_column > span.column:
        return span.end_column - span.column
    return 1


def _caret(text: str, column: int, width: int) -> str:
    # Tabs before the column are expanded the same way as the echoed line, so the caret lines up.
    prefix = text[: max(column - 1, 0)].expandtabs(4)
    return " " * len(prefix) + "^" * max(1, min(width, max(len(text) - column + 1, 1)))
