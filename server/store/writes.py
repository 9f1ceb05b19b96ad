"""What one applied delta writes, and the two ways to write it.

    writes = Writes(...)                 # built by StepHandle.apply from the engine's delta
    write_rows(conn, pk, writes)         # any database: a statement per table and kind
    postgres_statement(conn, pk, writes) # PostgreSQL: ONE statement (writable CTEs), which
                                         # the store sends with the COMMIT (deferred.py)

A step changes up to a dozen kinds of rows (facts inserted, modified and retracted, refraction
keys, pending activations, invocations queued and settled, trace events, the workflow row).
Written one statement each, that is a dozen round trips inside the step's transaction, and on a
busy server the round trips are most of a step's time. PostgreSQL runs data-modifying
statements inside `WITH`, all against one snapshot, so the whole delta goes in one statement:
every part touches rows no other part touches (the engine's delta is net), and the rows travel
as JSON documents unpacked by `json_to_recordset`. Plain `json` keeps each value's text as it
was sent (key order, `1e20`), which is why the tables use it (models.py). SQLite has no
writable CTEs and no round trips to save: it gets the plain statements.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from functools import partial
from typing import Any

import sqlalchemy as sa

from server.store import models as m
from server.store.models import FACTS, FIRED, INVOCATIONS, PENDING, TRACE, WORKFLOWS

__all__ = ["Writes", "postgres_statement", "write_rows"]

OPEN = ("queued", "leased")

_json = partial(json.dumps, separators=(",", ":"), allow_nan=False)


@dataclass
class Writes:
    """The rows one delta writes for one workflow (each list's rows are dicts of columns)."""

    now: datetime
    facts_new: list[dict[str, Any]] = field(default_factory=list)  # fact_id version type fields
    facts_changed: list[dict[str, Any]] = field(default_factory=list)  # fact_id version fields
    facts_gone: list[int] = field(default_factory=list)
    fired: list[dict[str, Any]] = field(default_factory=list)  # key_hash key
    pending_new: list[dict[str, Any]] = field(default_factory=list)  # pending_id doc
    pending_changed: list[dict[str, Any]] = field(default_factory=list)  # pending_id doc
    pending_gone: list[int] = field(default_factory=list)
    calls_new: list[dict[str, Any]] = field(default_factory=list)  # invocation rows
    calls_done_with_result: list[dict[str, Any]] = field(default_factory=list)  # call_id result
    calls_closed: dict[str, list[int]] = field(default_factory=dict)  # status -> call ids
    trace: list[dict[str, Any]] = field(default_factory=list)  # seq event
    workflow: dict[str, Any] = field(default_factory=dict)  # the row's new values


# ── any database ───────────────────────────────────────────────────────────────────────────────


def write_rows(conn: sa.Connection, pk: int, w: Writes) -> None:
    """A statement per table and kind of change (and none for an empty one)."""
    if w.facts_new:
        conn.execute(FACTS.insert(), [{"workflow_pk": pk, **r} for r in w.facts_new])
    if w.facts_changed:
        conn.execute(
            FACTS.update()
            .where(FACTS.c.workflow_pk == pk, FACTS.c.fact_id == sa.bindparam("b_id"))
            .values(version=sa.bindparam("b_version"), fields=sa.bindparam("b_fields")),
            [{"b_id": r["fact_id"], "b_version": r["version"], "b_fields": r["fields"]}
             for r in w.facts_changed])
    if w.facts_gone:
        conn.execute(FACTS.delete().where(FACTS.c.workflow_pk == pk,
                                          FACTS.c.fact_id.in_(w.facts_gone)))
    if w.fired:
        conn.execute(FIRED.insert(), [{"workflow_pk": pk, **r} for r in w.fired])
    if w.pending_new:
        conn.execute(PENDING.insert(), [{"workflow_pk": pk, **r} for r in w.pending_new])
    if w.pending_changed:
        conn.execute(
            PENDING.update()
            .where(PENDING.c.workflow_pk == pk, PENDING.c.pending_id == sa.bindparam("b_id"))
            .values(doc=sa.bindparam("b_doc")),
            [{"b_id": r["pending_id"], "b_doc": r["doc"]} for r in w.pending_changed])
    if w.pending_gone:
        conn.execute(PENDING.delete().where(PENDING.c.workflow_pk == pk,
                                            PENDING.c.pending_id.in_(w.pending_gone)))
    if w.calls_new:
        conn.execute(INVOCATIONS.insert(), [{"workflow_pk": pk, **r} for r in w.calls_new])
    if w.calls_done_with_result:
        conn.execute(_DONE_WITH_RESULT, [
            {"b_pk": pk, "b_call": r["call_id"], "b_result": r["result"], "b_now": w.now}
            for r in w.calls_done_with_result])
    for status, calls in w.calls_closed.items():
        conn.execute(INVOCATIONS.update()
                     .where(INVOCATIONS.c.workflow_pk == pk, INVOCATIONS.c.call_id.in_(calls),
                            INVOCATIONS.c.status.in_(OPEN))
                     .values(status=status, finished_at=w.now))
    if w.trace:
        conn.execute(TRACE.insert(), [{"workflow_pk": pk, "at": w.now, **r} for r in w.trace])
    conn.execute(WORKFLOWS.update().where(WORKFLOWS.c.pk == pk).values(**w.workflow))


# A call closed by a runner's result: done, the result kept, in one statement per row.
_DONE_WITH_RESULT = (
    INVOCATIONS.update()
    .where(INVOCATIONS.c.workflow_pk == sa.bindparam("b_pk"),
           INVOCATIONS.c.call_id == sa.bindparam("b_call"),
           sa.or_(*(INVOCATIONS.c.status == s for s in OPEN)))  # no IN with executemany
    .values(status="done", result=sa.bindparam("b_result", type_=m.JSONDoc),
            finished_at=sa.bindparam("b_now"), lease_expires=None))


# ── PostgreSQL: one statement ──────────────────────────────────────────────────────────────────


def _IN(param: str) -> str:  # noqa: N802 (reads as SQL)
    """`IN` the integers of the JSON list bound to `param`."""
    return f"IN (SELECT value::int FROM json_array_elements_text(CAST(%({param})s AS json)))"


def postgres_statement(conn: sa.Connection, pk: int, w: Writes) -> tuple[str, dict[str, Any]] | None:
    """The whole delta as one statement, to be sent (psycopg style, with its parameters): a
    data-modifying CTE per non-empty part, then the workflow row's UPDATE. None when a string
    holds U+0000: such a delta is written row by row here instead (see below)."""
    parts: list[str] = []
    params: dict[str, Any] = {"pk": pk, "now": w.now}

    def part(name: str, sql: str, rows: Any) -> None:
        parts.append(f"{name} AS ({sql})")
        params[name] = rows if isinstance(rows, str) else _json(rows)

    if w.facts_new:
        part("fi", "INSERT INTO facts (workflow_pk, fact_id, version, type, fields) "
             "SELECT %(pk)s, x.fact_id, x.version, x.type, x.fields FROM json_to_recordset("
             "CAST(%(fi)s AS json)) AS x(fact_id int, version int, type text, fields json)",
             w.facts_new)
    if w.facts_changed:
        part("fc", "UPDATE facts AS f SET version = x.version, fields = x.fields FROM "
             "json_to_recordset(CAST(%(fc)s AS json)) AS x(fact_id int, version int, fields json) "
             "WHERE f.workflow_pk = %(pk)s AND f.fact_id = x.fact_id", w.facts_changed)
    if w.facts_gone:
        part("fg", f"DELETE FROM facts WHERE workflow_pk = %(pk)s AND fact_id {_IN('fg')}",
             w.facts_gone)
    if w.fired:
        part("ki", "INSERT INTO fired (workflow_pk, key_hash, key) SELECT %(pk)s, x.key_hash, "
             "x.key FROM json_to_recordset(CAST(%(ki)s AS json)) AS x(key_hash text, key text)",
             w.fired)
    if w.pending_new:
        part("pi", "INSERT INTO pending (workflow_pk, pending_id, doc) SELECT %(pk)s, "
             "x.pending_id, x.doc FROM json_to_recordset(CAST(%(pi)s AS json)) AS "
             "x(pending_id int, doc json)",
             w.pending_new)
    if w.pending_changed:
        part("pc", "UPDATE pending AS p SET doc = x.doc FROM json_to_recordset("
             "CAST(%(pc)s AS json)) AS x(pending_id int, doc json) WHERE "
             "p.workflow_pk = %(pk)s AND p.pending_id = x.pending_id", w.pending_changed)
    if w.pending_gone:
        part("pg", f"DELETE FROM pending WHERE workflow_pk = %(pk)s AND pending_id {_IN('pg')}",
             w.pending_gone)
    if w.calls_new:
        part("ci", "INSERT INTO invocations (tenant_id, workflow_pk, call_id, kind, name, args, "
             "facts, options, rule, priority, status, cache_key, created_at) SELECT x.tenant_id, "
             "%(pk)s, x.call_id, x.kind, x.name, x.args, x.facts, x.options, x.rule, x.priority, "
             "x.status, x.cache_key, %(now)s FROM json_to_recordset(CAST(%(ci)s AS json)) AS "
             "x(tenant_id int, call_id int, kind text, name text, args json, facts json, "
             "options json, rule text, priority int, status text, cache_key text)",
             [{k: v for k, v in r.items() if k != "created_at"} for r in w.calls_new])
    if w.calls_done_with_result:
        part("cr", "UPDATE invocations AS i SET status = 'done', result = x.result, "
             "finished_at = %(now)s, lease_expires = NULL FROM json_to_recordset("
             "CAST(%(cr)s AS json)) AS x(call_id int, result json) WHERE i.workflow_pk = %(pk)s "
             "AND i.call_id = x.call_id AND i.status IN ('queued', 'leased')",
             w.calls_done_with_result)
    for n, (status, calls) in enumerate(w.calls_closed.items()):
        name = f"cs{n}"
        params[f"{name}_status"] = status
        part(name, f"UPDATE invocations SET status = %({name}_status)s, finished_at = %(now)s "
             f"WHERE workflow_pk = %(pk)s AND status IN ('queued', 'leased') "
             f"AND call_id {_IN(name)}",
             calls)
    if w.trace:
        part("tr", "INSERT INTO trace (workflow_pk, seq, at, event) SELECT %(pk)s, x.seq, "
             "%(now)s, x.event FROM json_to_recordset(CAST(%(tr)s AS json)) AS "
             "x(seq int, event json)", w.trace)
    sets = []
    for column, value in w.workflow.items():
        params[f"w_{column}"] = _json(value) if column in ("output", "error") and value is not None else value
        cast = "CAST(%(w_{0})s AS json)" if column in ("output", "error") else "%(w_{0})s"
        sets.append(f"{column} = {cast.format(column)}")
    if any(isinstance(v, str) and "\\u0000" in v for v in params.values()):
        # json_to_recordset refuses a NUL in any string it unpacks; `json` columns keep one
        # as its escape, so such a (rare) delta goes row by row.
        write_rows(conn, pk, w)
        return None
    head = f"WITH {', '.join(parts)} " if parts else ""
    # For the driver itself: a text() clause with this many parameters costs more to build and
    # key in SQLAlchemy than PostgreSQL takes to run it.
    return f"{head}UPDATE workflows SET {', '.join(sets)} WHERE pk = %(pk)s", params
