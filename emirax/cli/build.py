"""`emirax check` and `emirax compile`: the front end from the command line.

    emirax check PATH... [--json]
    emirax compile PATH [-o FILE.emxb] [--version V] [--json] [--no-cache]

PATH is an `.emx` file or a project folder with `emirax.toml`. Errors print as
`file:line:column: error: ...` with the source line and a caret, every one of them, then a count;
`--json` prints the same diagnostics as data on stdout. Exit 1 when any path has an error.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Annotated, Any

import typer

from emirax import diagnostics, pipeline
from emirax.cli.output import (
    count_diagnostics,
    err,
    error_message,
    fail,
    out,
    print_diagnostics,
    print_error,
    print_json,
    source_errors,
    print_summary,
)
from emirax.errors import Diagnostic, EmiraxError, SourceError

JsonOption = Annotated[bool, typer.Option("--json", help="Print the result as JSON on stdout.")]
NoCacheOption = Annotated[
    bool, typer.Option("--no-cache", help="Ignore and do not write the compile cache.")
]


def register(app: typer.Typer) -> None:
    app.command("check")(check)
    app.command("compile")(compile_)


def check(
    paths: Annotated[list[Path], typer.Argument(help="`.emx` files or project folders.")],
    as_json: JsonOption = False,
    no_cache: NoCacheOption = False,
) -> None:
    """Check rules without compiling them: syntax, names, arity and types."""
    reports = [_check_one(path, as_json, no_cache) for path in paths]
    if as_json:
        print_json(reports)
    if any(not r["ok"] for r in reports):
        raise typer.Exit(1)


def compile_(
    path: Annotated[Path, typer.Argument(help="An `.emx` file or a project folder.")],
    output: Annotated[
        Path | None,
        typer.Option("-o", "--output", help="The bundle to write (default: build/PACKAGE-VERSION.emxb)."),
    ] = None,
    version: Annotated[
        str | None, typer.Option("--version", help="The bundle version (default: emirax.toml's).")
    ] = None,
    as_json: JsonOption = False,
    no_cache: NoCacheOption = False,
) -> None:
    """Compile rules into a bundle (.emxb) ready to upload."""
    try:
        result, diags, sources = _build(path, version, no_cache, compile_ir=True)
    except EmiraxError as exc:
        if as_json:
            print_json({"ok": False, "path": str(path), "error": error_message(exc),
                        "diagnostics": []})
            raise typer.Exit(1) from None
        fail(error_message(exc))
    if result is None or result.ir is None:
        _report_failure(path, diags, sources, as_json)
        raise typer.Exit(1)
    target = output or Path("build") / f"{result.ir['package']}-{result.project.version}.emxb"
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        manifest = pipeline.write(result, target)
    except OSError as exc:
        fail(f"cannot write {target}: {exc.strerror or exc}")
    except EmiraxError as exc:
        fail(error_message(exc))
    size = target.stat().st_size
    if as_json:
        print_json({"ok": True, "bundle": str(target), "size": size, "manifest": manifest,
                    "warnings": diagnostics.as_dicts(diags)})
        return
    print_diagnostics(diags, pipeline.render_sources(sources))
    rules = sum(len(wf["rules"]) for wf in result.ir["workflows"])
    print_summary(f"compiled {target}", [
        ("package", manifest["package"]),
        ("version", manifest["version"]),
        ("digest", manifest["digest"]),
        ("workflows", ", ".join(w["name"] for w in manifest["workflows"])),
        ("rules", str(rules)),
        ("size", f"{size:,} bytes"),
        ("files", f"{len(result.sources)} ({result.cache_hits} from cache)"),
    ])


# ── helpers ────────────────────────────────────────────────────────────────────────────────────


def _build(
    path: Path, version: str | None, no_cache: bool, *, compile_ir: bool
) -> tuple[pipeline.Build | None, list[Diagnostic], dict[str, str]]:
    """Run the front end; on a source error, return its diagnostics (errors and warnings) and
    the sources they point into. Other Emirax errors (a missing path, a bad emirax.toml) raise."""
    cache: bool | None = False if no_cache else None
    try:
        if compile_ir:
            result = pipeline.build(path, version=version, cache_dir=cache)
        else:
            result = pipeline.check_only(path, cache_dir=cache)
    except SourceError as exc:
        return None, *_relocate(path, source_errors(exc), exc.sources)
    return result, *_relocate(path, list(result.warnings), result.sources)


def _relocate(
    path: Path, diags: list[Diagnostic], sources: dict[str, str]
) -> tuple[list[Diagnostic], dict[str, str]]:
    """Name files as the user can open them from here: the IR keeps names relative to the
    project root (so it does not depend on the checkout's place), the terminal wants a path."""
    root = path if path.is_dir() else path.parent

    def shown(name: str) -> str:
        return str(root / name) if name in sources else name

    moved = [replace(d, span=replace(d.span, file=shown(d.span.file))) for d in diags]
    return moved, {shown(name): text for name, text in sources.items()}


def _report_failure(
    path: Path, diags: list[Diagnostic], sources: dict[str, str], as_json: bool
) -> None:
    errors, warnings = count_diagnostics(diags)
    if as_json:
        print_json({"ok": False, "path": str(path), "diagnostics": diagnostics.as_dicts(diags)})
        return
    print_diagnostics(diags, pipeline.render_sources(sources))
    err.print(f"{path}: {_plural(errors, 'error')}, {_plural(warnings, 'warning')}",
              style="bold red", markup=False)


def _check_one(path: Path, as_json: bool, no_cache: bool) -> dict[str, Any]:
    try:
        result, diags, sources = _build(path, None, no_cache, compile_ir=False)
    except EmiraxError as exc:  # reported, and the next path is still checked
        if not as_json:
            print_error(error_message(exc))
        return {"path": str(path), "ok": False, "error": error_message(exc), "errors": 1,
                "warnings": 0, "diagnostics": []}
    errors, warnings = count_diagnostics(diags)
    report = {"path": str(path), "ok": result is not None, "errors": errors,
              "warnings": warnings, "diagnostics": diagnostics.as_dicts(diags)}
    if as_json:
        return report
    if result is None:
        _report_failure(path, diags, sources, as_json=False)
        return report
    print_diagnostics(diags, pipeline.render_sources(sources))
    rules = result.rule_count
    out.print(f"{path}: ok ({_plural(len(result.sources), 'file')}, {_plural(rules, 'rule')}"
              f"{', ' + _plural(warnings, 'warning') if warnings else ''})", markup=False)
    return report


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"
