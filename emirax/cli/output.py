"""What every command prints: diagnostics, errors, tables and JSON, on the right stream.

Data goes to stdout (tables, `--json` documents); diagnostics and errors go to stderr. Rich never
interprets markup in text that comes from users (source lines hold `[a: 1]`), so every user string
is printed with markup and highlighting off.
"""

from __future__ import annotations

import json
import sys
from typing import Any, NoReturn

import typer
from rich.console import Console

from emirax import diagnostics
from emirax.errors import Diagnostic, EmiraxError, SourceError
from emirax.source import Source

out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)


def print_json(value: Any) -> None:
    """One JSON document on stdout (never through rich, so it stays exactly JSON)."""
    sys.stdout.write(json.dumps(value, indent=2, ensure_ascii=False, sort_keys=False) + "\n")


def print_diagnostics(diags: list[Diagnostic], sources: dict[str, Source]) -> None:
    for d in diags:
        style = "red" if d.severity == "error" else "yellow"
        text = diagnostics.render_one(d, sources.get(d.span.file))
        head, _, rest = text.partition("\n")
        err.print(head, style=f"bold {style}", markup=False)
        if rest:
            err.print(rest, markup=False)


def error_message(exc: EmiraxError) -> str:
    """One readable line for an error that carries no source position."""
    return str(exc) or type(exc).__name__


def print_error(message: str) -> None:
    err.print(f"emirax: error: {message}", style="bold red", markup=False)


def fail(message: str) -> NoReturn:
    """Print `emirax: error: message` and exit 1 (a user error)."""
    print_error(message)
    raise typer.Exit(1)


def fail_unexpected(exc: BaseException) -> None:
    err.print(
        f"emirax: internal error: {type(exc).__name__}: {exc}\n"
        "This is a bug in Emirax; run again with EMIRAX_DEBUG=1 for the traceback and report it.",
        style="bold red", markup=False,
    )


def print_summary(title: str, rows: list[tuple[str, str]]) -> None:
    """`key  value` lines under a title; plain text, so a digest is never folded or cut."""
    out.print(title, style="bold", markup=False)
    width = max(len(key) for key, _ in rows)
    for key, value in rows:
        out.print(f"  {key:<{width}}  {value}", markup=False)


def count_diagnostics(diags: list[Diagnostic]) -> tuple[int, int]:
    errors = sum(1 for d in diags if d.severity == "error")
    return errors, len(diags) - errors


def source_errors(exc: SourceError) -> list[Diagnostic]:
    return list(exc.diagnostics) + list(getattr(exc, "warnings", []))
