"""The server's commands: `emirax serve`, and the HTTP client commands that talk to it (httpx).

    emirax serve [--host H] [--port P] [--db URL] [--workers N]
    emirax db upgrade [--db URL]
    emirax tenants create NAME                      (the admin token)
    emirax upload FILE.emxb [--activate]
    emirax workflows start WORKFLOW [--id ID] [--facts FILE.json] [--priority N]
    emirax workflows list [--workflow W] [--status S] [--limit N] [--after CURSOR]
    emirax workflows get ID | facts ID FILE.json | trace ID | watch ID

Every client command takes `--server` (default `$EMIRAX_SERVER`, else http://127.0.0.1:8080) and
`--token` (default `$EMIRAX_TOKEN`; `tenants create` uses `$EMIRAX_ADMIN_TOKEN`), prints a table
by default and the server's JSON with `--json`, and turns a problem+json answer into one
`emirax: error:` line and exit 1. `serve` imports the server package only when it runs.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TaskID,
                           TextColumn, TimeElapsedColumn)
from rich.table import Column, Table

from emirax.cli.output import err, fail, out, print_json, print_summary

JsonOption = Annotated[bool, typer.Option("--json", help="Print the server's JSON.")]
Server = Annotated[str, typer.Option("--server", envvar="EMIRAX_SERVER", help="The server's URL.")]
Token = Annotated[str, typer.Option("--token", envvar="EMIRAX_TOKEN", help="Your tenant's token.")]
DEFAULT_SERVER = "http://127.0.0.1:8080"

tenants = typer.Typer(help="Tenants (admin).", no_args_is_help=True)
db = typer.Typer(help="The server's database.", no_args_is_help=True)
workflows = typer.Typer(help="Start, list and inspect workflows.", no_args_is_help=True)


def register(app: typer.Typer) -> None:
    app.command("serve")(serve)
    app.command("upload")(upload)
    app.add_typer(tenants, name="tenants")
    app.add_typer(db, name="db")
    app.add_typer(workflows, name="workflows")


def serve(
    host: Annotated[str, typer.Option(help="The interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535)] = 8080,
    db: Annotated[str | None, typer.Option("--db", help="A database URL (default: $EMIRAX_DATABASE_URL, else embedded SQLite).")] = None,
    workers: Annotated[int, typer.Option(min=1, max=64, help="Server processes sharing the port.")] = 1,
) -> None:
    """Run the rule server (migrations run at start)."""
    from server.main import serve as run  # the server uses emirax, never the other way round

    run(host=host, port=port, db=db, workers=workers)


@db.command("upgrade")
def db_upgrade(
    url: Annotated[str | None, typer.Option("--db", help="A database URL (default: $EMIRAX_DATABASE_URL, else embedded SQLite).")] = None,
) -> None:
    """Apply the database migrations (emirax serve also does at start)."""
    from server.main import database_url
    from server.store import Store

    target = database_url(url)
    try:
        Store.open(target).upgrade()
    except Exception as exc:  # a bad URL or an unreachable database: one line, exit 1
        fail(f"cannot upgrade {target.split('@')[-1]}: {type(exc).__name__}: {str(exc).splitlines()[0]}")
    out.print(f"database {target.split('@')[-1]} is up to date", markup=False)


# ── HTTP ───────────────────────────────────────────────────────────────────────────────────────


def call(method: str, server: str, token: str, path: str, *, token_env: str = "EMIRAX_TOKEN",
         **kwargs: Any) -> Any:
    """One request; a problem answer or a connection error exits 1 with one line."""
    with session(server, token, token_env) as client:
        return request(client, method, path, **kwargs)


def session(server: str, token: str, token_env: str = "EMIRAX_TOKEN") -> httpx.Client:
    """A client for several requests (one connection), with the bearer token."""
    if not token:
        fail(f"no token: pass --token or set {token_env}")
    return httpx.Client(base_url=server or DEFAULT_SERVER, timeout=30.0,
                        headers={"Authorization": f"Bearer {token}"})


def request(client: httpx.Client, method: str, path: str, **kwargs: Any) -> Any:
    """One request on `client`; a problem answer or a connection error exits 1 with one line."""
    try:
        reply = client.request(method, path, **kwargs)
    except httpx.HTTPError as exc:
        fail(f"cannot reach {client.base_url}: {exc}")
    if reply.status_code >= 400:
        try:
            problem = reply.json()
            message = f"{problem.get('title', reply.reason_phrase)}: {problem.get('detail', '')}"
        except ValueError:
            message = f"{reply.status_code} {reply.reason_phrase}"
        fail(f"{reply.status_code} {message.rstrip(': ')}")
    return reply.json()


def _facts(path: Path | None) -> list[Any]:
    if path is None:
        return []
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        fail(f"cannot read {path}: {exc.strerror or exc}")
    except ValueError as exc:
        fail(f"{path}: not JSON: {exc}")
    if not isinstance(doc, list):
        fail(f'{path}: expected a JSON list of {{"type": ..., "fields": {{...}}}}')
    return doc


# ── commands ───────────────────────────────────────────────────────────────────────────────────


@tenants.command("create")
def create_tenant(
    name: Annotated[str, typer.Argument(help="The tenant's name (lowercase, digits, -).")],
    server: Server = DEFAULT_SERVER,
    token: Annotated[str, typer.Option("--token", envvar="EMIRAX_ADMIN_TOKEN", help="The admin token.")] = "",
    max_in_flight: Annotated[int | None, typer.Option("--max-in-flight", min=1, help="Its invocations leased at once (default: the server's).")] = None,
    as_json: JsonOption = False,
) -> None:
    """Create a tenant; prints its token (shown once)."""
    body: dict[str, Any] = {"name": name}
    if max_in_flight is not None:
        body["max_in_flight"] = max_in_flight
    doc = call("POST", server, token, "/v1/tenants", json=body, token_env="EMIRAX_ADMIN_TOKEN")
    if as_json:
        print_json(doc)
    else:
        print_summary(f"tenant {doc['name']} created", [
            ("id", str(doc["id"])), ("token", doc["token"]),
            ("max in flight", str(doc.get("max_in_flight", "")))])


def upload(
    bundle: Annotated[Path, typer.Argument(help="A compiled .emxb file.")],
    activate: Annotated[bool, typer.Option("--activate", help="Make this version active.")] = False,
    preview: Annotated[bool, typer.Option("--preview", help="Show which workflows this version would change (a dry run), without activating.")] = False,
    server: Server = DEFAULT_SERVER,
    token: Token = "",
    as_json: JsonOption = False,
) -> None:
    """Upload a bundle (the same digest again is a no-op)."""
    if activate and preview:
        fail("--preview shows what activating would do: use it without --activate")
    try:
        data = bundle.read_bytes()
    except OSError as exc:
        fail(f"cannot read {bundle}: {exc.strerror or exc}")
    doc = call("POST", server, token, "/v1/bundles", content=data)
    if preview:
        _preview(call("POST", server, token,
                      f"/v1/bundles/{doc['package']}/versions/{doc['version']}/preview"), as_json)
        return
    if activate and not doc["active"]:
        call("POST", server, token, f"/v1/bundles/{doc['package']}/versions/{doc['version']}/activate")
        doc["active"] = True
    if as_json:
        print_json(doc)
        return
    print_summary(f"bundle {doc['package']} {doc['version']} {doc['outcome']}", [
        ("digest", doc["digest"]), ("active", "yes" if doc["active"] else "no")])


def _preview(doc: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print_json(doc)
        return
    out.print(f"{doc['package']} {doc['version']}: {len(doc['changed'])} of {doc['examined']} "
              "waiting or completed workflows would change", markup=False)
    table = Table("workflow", "rules that would fire", "calls", "facts +/~/-", "status after")
    for w in doc["changed"]:
        table.add_row(w["id"], ", ".join(w["fired"]) or "-", ", ".join(w["invocations"]) or "-",
                      f"{w['inserted']}/{w['modified']}/{w['retracted']}", w["status"])
    out.print(table)


@workflows.command("start")
def start(
    workflow: Annotated[str, typer.Argument(help="package.Workflow")],
    facts: Annotated[Path | None, typer.Option("--facts", help='A JSON list of {"type", "fields"}.')] = None,
    id_: Annotated[str | None, typer.Option("--id", help="Your id for it: starting twice is a no-op.")] = None,
    priority: int = 0,
    server: Server = DEFAULT_SERVER,
    token: Token = "",
    as_json: JsonOption = False,
) -> None:
    """Start a workflow."""
    body: dict[str, Any] = {"workflow": workflow, "facts": _facts(facts), "priority": priority}
    if id_:
        body["id"] = id_
    _show(call("POST", server, token, "/v1/workflows", json=body), as_json)


@workflows.command("list")
def list_(
    workflow: Annotated[str | None, typer.Option("--workflow", help="Only this workflow.")] = None,
    status: Annotated[str | None, typer.Option("--status", help="Only this status.")] = None,
    limit: Annotated[int, typer.Option(min=1, max=500)] = 50,
    after: Annotated[str | None, typer.Option("--after", help="The cursor of the previous page.")] = None,
    server: Server = DEFAULT_SERVER,
    token: Token = "",
    as_json: JsonOption = False,
) -> None:
    """List workflows, newest pages by cursor."""
    params = {k: v for k, v in {"workflow": workflow, "status": status, "limit": limit,
                                "after": after}.items() if v is not None}
    doc = call("GET", server, token, "/v1/workflows", params=params)
    if as_json:
        print_json(doc)
        return
    # Ids are what people copy into `workflows get`: never shortened, whatever the width.
    longest = max((len(row["id"]) for row in doc["workflows"]), default=2)
    table = Table(Column("id", no_wrap=True, min_width=longest), Column("workflow", overflow="fold"),
                  "status", "version", "updated")
    for row in doc["workflows"]:
        table.add_row(row["id"], row["workflow"], row["status"], row.get("version") or "",
                      str(row.get("updated_at", "")))
    out.print(table)
    if doc.get("next"):
        out.print(f"next page: --after {doc['next']}", markup=False)


@workflows.command("get")
def get(workflow_id: str, server: Server = DEFAULT_SERVER, token: Token = "",
        as_json: JsonOption = False) -> None:
    """A workflow: status, output, error, facts, pending invocations."""
    _show(call("GET", server, token, f"/v1/workflows/{workflow_id}"), as_json)


@workflows.command("facts")
def add_facts(workflow_id: str, facts: Annotated[Path, typer.Argument(help="A JSON list of facts.")],
              server: Server = DEFAULT_SERVER, token: Token = "", as_json: JsonOption = False) -> None:
    """Add facts to a workflow (it is evaluated again)."""
    _show(call("POST", server, token, f"/v1/workflows/{workflow_id}/facts",
               json={"facts": _facts(facts)}), as_json)


@workflows.command("trace")
def trace(workflow_id: str, server: Server = DEFAULT_SERVER, token: Token = "",
          as_json: JsonOption = False) -> None:
    """Every firing, invocation and status change, timed."""
    doc = call("GET", server, token, f"/v1/workflows/{workflow_id}/trace")
    if as_json:
        print_json(doc)
        return
    table = Table("seq", "at", "event", "detail")
    for ev in doc["events"]:
        detail = {k: v for k, v in ev["event"].items() if k != "event"}
        table.add_row(str(ev["seq"]), str(ev["at"]), ev["event"]["event"],
                      json.dumps(detail, ensure_ascii=False))
    out.print(table)


def _show(doc: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print_json(doc)
        return
    rows = [("id", doc["id"]), ("workflow", doc["workflow"]), ("status", doc["status"]),
            ("version", str(doc.get("version")))]
    if doc.get("output") is not None:
        rows.append(("output", json.dumps(doc["output"], ensure_ascii=False)))
    if doc.get("error") is not None:
        rows.append(("error", json.dumps(doc["error"], ensure_ascii=False)))
    pending = doc.get("pending", [])
    rows += [("facts", str(len(doc.get("facts", [])))), ("pending", str(len(pending)))]
    print_summary(f"workflow {doc['id']}", rows)
    if pending:
        table = Table("call", "function", "status", "attempt", Column("why it waits", overflow="fold"))
        for inv in pending:
            table.add_row(str(inv["call_id"]), inv["name"], inv["status"], str(inv.get("attempt", "")),
                          inv.get("waiting", ""))
        out.print(table)


@workflows.command("watch")
def watch(workflow_id: str, server: Server = DEFAULT_SERVER, token: Token = "",
          timeout: Annotated[float, typer.Option(min=0, help="Give up after this many seconds.")] = 3600.0,
          as_json: JsonOption = False) -> None:
    """Follow a workflow until it is done: its invocations per function as they return, then
    the workflow. Exit 1 when it fails."""
    view = _follow(workflow_id, server, token, timeout)
    _show(view, as_json)
    if view["status"] == "failed":
        raise typer.Exit(1)


def _follow(workflow_id: str, server: str, token: str, timeout: float) -> dict[str, Any]:
    """Poll the trace and the workflow (a few times a second) with a progress bar per function,
    until the workflow completed, failed, or waits with nothing pending."""
    calls: dict[int, str] = {}
    after, deadline = 0, time.monotonic() + timeout
    columns = (SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn())
    with session(server, token) as client, Progress(*columns, console=err, transient=False) as bar:
        tasks: dict[str, TaskID] = {}
        status = bar.add_task(f"{workflow_id}: starting", total=None)
        while True:
            events = request(client, "GET", f"/v1/workflows/{workflow_id}/trace",
                             params={"after": after, "limit": 10_000})["events"]
            for entry in events:
                after = entry["seq"]
                _progress(entry["event"], calls, tasks, bar)
            view = request(client, "GET", f"/v1/workflows/{workflow_id}")
            bar.update(status, description=f"{workflow_id}: {view['status']}")
            if view["status"] in ("completed", "failed") or (view["status"] == "waiting" and not view["pending"]):
                bar.update(status, total=1, completed=1)
                return view
            if time.monotonic() > deadline:
                fail(f"{workflow_id} is still {view['status']} after {timeout:g} s")
            time.sleep(0.25)


def _progress(event: dict[str, Any], calls: dict[int, str], tasks: dict[str, TaskID],
              bar: Progress) -> None:
    kind = event.get("event")
    if kind == "invoke":
        name = calls[event["call"]] = event["name"]
        if name not in tasks:
            tasks[name] = bar.add_task(name, total=0)
        bar.update(tasks[name], total=bar.tasks[tasks[name]].total + 1)
    elif kind in ("result", "failure", "cancel") and event.get("call") in calls:
        bar.advance(tasks[calls.pop(event["call"])])

