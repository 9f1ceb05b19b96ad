"""`emirax run`: a workflow run to quiescence on this machine, no server (SPEC section 6).

    emirax run PATH --workflow NAME --facts FILE.json --functions MODULE.py [--json]
               [--concurrency N] [--quiet]

PATH is an `.emx` file, a project folder or an `.emxb` bundle. The trace is printed as it happens
(stderr), then the outcome (stdout): a summary table, or with `--json` exactly
`{"status", "output", "error", "facts"}`. Exit 1 when the workflow ends `failed`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from emirax import bundle as bundlemod
from emirax.cli.build import JsonOption, _build, _report_failure
from emirax.cli.output import err, error_message, fail, print_json, print_summary
from emirax.engine.program import EngineError, Program
from emirax.errors import EmiraxError, IRError
from emirax.local import LocalRun, load_functions

__all__ = ["format_event", "load_program", "register"]


def register(app: typer.Typer) -> None:
    app.command("run")(run)


def run(
    path: Annotated[Path, typer.Argument(help="An .emx file, a project folder, or an .emxb bundle.")],
    workflow: Annotated[str, typer.Option("--workflow", "-w", help="The workflow: full or short name.")],
    facts: Annotated[Path, typer.Option("--facts", help='A JSON list of {"type": ..., "fields": {...}}.')],
    functions: Annotated[Path, typer.Option("--functions", help="The Python module with the functions.")],
    as_json: JsonOption = False,
    concurrency: Annotated[int, typer.Option(min=1, max=1024, help="Invocations run at once.")] = 32,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Do not print the trace.")] = False,
) -> None:
    """Run a workflow to quiescence here, calling the functions of a local module."""
    program = load_program(path, as_json)
    initial = _read_facts(facts)
    try:
        fns = load_functions(functions)
        wf = program.workflow(workflow)
    except EmiraxError as exc:
        fail(error_message(exc))
    missing = sorted(set(wf.functions) - set(fns))
    if missing and not quiet:
        err.print(f"emirax: warning: {functions} defines no {', '.join(missing)}; "
                  "calls to them will fail", style="yellow", markup=False)
    show = None if quiet or as_json else (lambda ev: err.print(format_event(ev), markup=False, highlight=False))
    try:
        outcome = LocalRun(program, fns, concurrency=concurrency, on_event=show).run(wf.name, initial)
    except EngineError as exc:
        fail(error_message(exc))
    if as_json:
        print_json(outcome.to_json())
    else:
        _summary(outcome)
    if outcome.status == "failed":
        raise typer.Exit(1)


def load_program(path: Path, as_json: bool = False) -> Program:
    """The program at `path` (source or bundle); exits 1 with the diagnostics when it has errors."""
    try:
        if path.suffix == ".emxb" and path.is_file():
            return Program.from_bundle(bundlemod.load_bundle(path))
        result, diags, sources = _build(path, None, False, compile_ir=True)
        if result is None or result.ir is None:
            _report_failure(path, diags, sources, as_json)
            raise typer.Exit(1)
        return Program.from_ir(result.ir, version=result.project.version)
    except (EmiraxError, IRError) as exc:
        fail(error_message(exc))


def _read_facts(path: Path) -> list[Any]:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        fail(f"cannot read {path}: {exc.strerror or exc}")
    except (ValueError, UnicodeDecodeError) as exc:
        fail(f"{path}: not JSON: {exc}")
    if not isinstance(doc, list):
        fail(f'{path}: expected a JSON list of {{"type": ..., "fields": {{...}}}}')
    return doc


def _summary(outcome: Any) -> None:
    rows = [("status", outcome.status)]
    if outcome.output is not None:
        rows.append(("output", json.dumps(outcome.output, ensure_ascii=False)))
    if outcome.error is not None:
        e = outcome.error
        where = f" ({e['file']}:{e['line']}:{e['column']}, rule '{e['rule']}')" if e.get("rule") else ""
        rows.append(("error", f"{e['type']}: {e['message']}{where}"))
    rows += [("facts", str(len(outcome.facts))), ("firings", str(len(outcome.fired))),
             ("calls", str(outcome.calls))]
    print_summary(f"workflow {outcome.status}", rows)


_LABELS = {
    "fire": lambda e: f"fire      '{e['rule']}' facts {e['facts']}",
    "invoke": lambda e: f"invoke    #{e['call']} {e['name']}" + (" (child)" if e["kind"] == "start" else ""),
    "returned": lambda e: f"returned  #{e['call']} {e['function']} (attempt {e['attempt']})",
    "raised": lambda e: f"raised    #{e['call']} {e['function']} (attempt {e['attempt']}): {e['type']}: {e['message']}",
    "result": lambda e: f"result    #{e['call']}",
    "failure": lambda e: f"failure   #{e['call']}: {e['message']} after {e['attempts']} attempt(s)",
    "insert": lambda e: f"insert    {e['type']} #{e['fact']}",
    "modify": lambda e: f"modify    #{e['fact']} -> version {e['version']}",
    "retract": lambda e: f"retract   #{e['fact']}",
    "log": lambda e: f"log       {e['message']}",
    "complete": lambda e: f"complete  {json.dumps(e['output'], ensure_ascii=False)}",
    "status": lambda e: f"status    {e['from']} -> {e['to']}",
    "fail": lambda e: f"FAIL      {e['type']}: {e['message']}",
    "error": lambda e: f"error     '{e['rule']}' {e['section']}: {e['message']}",
    "start": lambda e: f"start     {e['count']} fact(s)",
    "facts": lambda e: f"facts     {e['count']} added",
}


def format_event(ev: dict[str, Any]) -> str:
    """One trace event as one readable line: time, workflow, what happened."""
    label = _LABELS.get(ev["event"])
    what = label(ev) if label else f"{ev['event']:<9} " + json.dumps(
        {k: v for k, v in ev.items() if k not in ("t", "workflow", "event")}, ensure_ascii=False)
    return f"{ev['t']:9.3f}s  {ev['workflow']:<16} {what}"
