"""`emirax test`: run a project's rule tests, the scenario files in PROJECT/tests/*.yaml.

    emirax test PROJECT [--json] [-k TEXT] [-v]

The project is compiled first (exit 1 with the diagnostics when its rules do not compile), every
scenario file is validated (exit 1 with one `file:line: ...` message per bad file, before anything
runs), then every scenario runs on the local host, one after the other, and prints one line: PASS
or FAIL, its name, its time. A failure says which expectations failed, expected against actual,
and prints the run's trace. A table sums up each file, and the last line is `N passed, M failed`.
Exit 1 when any scenario fails. `--json` prints one report document instead. The format of the
files and what each expectation means: docs/testing.md; the machinery: emirax/testing.py.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich.table import Table

from emirax.cli.build import JsonOption
from emirax.cli.output import out, print_error, print_json
from emirax.cli.run import format_event, load_program
from emirax.errors import EmiraxError
from emirax.testing import Rules, Scenario, ScenarioFile, ScenarioResult


def register(app: typer.Typer) -> None:
    app.command("test")(test)


def test(
    project: Annotated[Path, typer.Argument(help="A project folder (emirax.toml, rules/, tests/*.yaml).")],
    as_json: JsonOption = False,
    keyword: Annotated[str | None, typer.Option(
        "-k", "--keyword", help="Run only the scenarios whose name (or file::name) contains this text.")] = None,
    verbose: Annotated[bool, typer.Option(
        "--verbose", "-v", help="Print the trace of every scenario, passed ones too.")] = False,
) -> None:
    """Run the rule tests of a project: the scenarios of tests/*.yaml."""
    if not (project / "emirax.toml").is_file():
        _fail_load(as_json, [f"{project}: not a project folder (no emirax.toml); emirax test "
                             "takes the folder that holds emirax.toml, rules/ and tests/"])
    rules = Rules(project, load_program(project, as_json))
    files = _load(rules, as_json)
    chosen = _select(files, keyword, as_json)
    started = time.perf_counter()
    results = [_run_one(rules, sc, as_json, verbose) for f in chosen for sc in f.scenarios]
    total = time.perf_counter() - started
    if as_json:
        print_json(_report(project, results, total, verbose))
    else:
        _summary(chosen, results)
    if any(not r.passed for r in results):
        raise typer.Exit(1)


def _load(rules: Rules, as_json: bool) -> list[ScenarioFile]:
    """Every scenario file, validated; all bad files are reported, then exit 1."""
    paths = rules.scenario_files()
    if not paths:
        _fail_load(as_json, [f"{rules.path / 'tests'}: no scenario files (*.yaml)"])
    files, problems = [], []
    for path in paths:
        try:
            files.append(rules.load_file(path))
        except EmiraxError as exc:
            problems.append(str(exc))
    if problems:
        _fail_load(as_json, problems)
    return files


def _fail_load(as_json: bool, problems: list[str]) -> NoReturn:
    if as_json:
        print_json({"ok": False, "errors": problems})
    else:
        for message in problems:
            print_error(message)
    raise typer.Exit(1)


def _select(files: list[ScenarioFile], keyword: str | None, as_json: bool) -> list[ScenarioFile]:
    if keyword is None:
        return files
    needle = keyword.lower()
    chosen = []
    for f in files:
        kept = [sc for sc in f.scenarios if needle in sc.id.lower()]
        if kept:
            chosen.append(ScenarioFile(f.path, f.label, f.workflow, kept))
    if not chosen:
        _fail_load(as_json, [f"no scenario matches -k '{keyword}'"])
    return chosen


def _run_one(rules: Rules, sc: Scenario, as_json: bool, verbose: bool) -> ScenarioResult:
    result = rules.run_scenario(sc)
    if not as_json:
        _print_result(result, verbose)
    return result


def _print_result(result: ScenarioResult, verbose: bool) -> None:
    sc = result.scenario
    mark, style = ("PASS", "bold green") if result.passed else ("FAIL", "bold red")
    out.print(f"{mark} ", style=style, end="", markup=False)
    out.print(f" {sc.file}::{sc.name}", end="", markup=False)
    out.print(f"  {result.seconds * 1000:.0f} ms", style="dim", markup=False)
    for m in result.mismatches:
        out.print(f"    {m.title}", style="red", markup=False)
        out.print(f"      expected: {_short(m.expected)}", markup=False)
        out.print(f"      actual:   {_short(m.actual)}", markup=False)
    if result.run is not None and (verbose or not result.passed):
        out.print(f"    trace ({len(result.run.trace)} events):", style="dim", markup=False)
        for ev in result.run.trace:
            out.print("      " + format_event(ev), markup=False, highlight=False)


def _short(value: Any, limit: int = 300) -> str:
    import json

    text = json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _summary(files: list[ScenarioFile], results: list[ScenarioResult]) -> None:
    table = Table(title="rule tests", title_justify="left", show_edge=False)
    for name, justify in (("file", "left"), ("workflow", "left"), ("passed", "right"),
                          ("failed", "right"), ("time", "right")):
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    for f in files:
        mine = [r for r in results if r.scenario.file == f.label]
        failed = sum(1 for r in mine if not r.passed)
        table.add_row(f"tests/{f.path.name}", f.workflow.rsplit(".", 1)[-1], str(len(mine) - failed),
                      str(failed) if failed else "0", f"{sum(r.seconds for r in mine):.3f} s",
                      style="red" if failed else None)
    out.print()
    out.print(table)
    passed = sum(1 for r in results if r.passed)
    failed = len(results) - passed
    for r in results:
        if not r.passed:
            out.print(f"failed: {r.scenario.id}", style="red", markup=False)
    # Last, alone on its line: the count CI logs and people look for.
    out.print(f"{passed} passed, {failed} failed", style="bold red" if failed else "bold green",
              markup=False)


def _report(project: Path, results: list[ScenarioResult], total: float,
            verbose: bool) -> dict[str, Any]:
    passed = sum(1 for r in results if r.passed)
    return {
        "ok": passed == len(results),
        "project": str(project),
        "passed": passed,
        "failed": len(results) - passed,
        "seconds": round(total, 6),
        "scenarios": [r.to_json(with_trace=verbose or not r.passed) for r in results],
    }
