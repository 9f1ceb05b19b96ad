"""The invocation queue's side of the store: leases, heartbeats, releases, expired leases, the
runners seen, and why a pending invocation waits (docs/queue.md).

    leased = store.lease(tenant_id, "host-1", ["encode"], 8, lease_seconds=30)
    store.heartbeat(tenant_id, invocation_id, fence, lease_seconds=30)   # the new deadline
    store.release(tenant_id, invocation_id, fence)
    store.expired_leases(limit=100)                                      # for the sweeper

Settling an invocation (a result, a failure, an expired lease) changes its workflow, so it
happens in a step transaction (`Store.step_invocation`, `StepHandle.invocation`), not here.

Leasing follows PgQueuer and procrastinate: one `UPDATE ... WHERE id IN (SELECT ... ORDER BY
priority DESC, workflow_pk, call_id LIMIT n FOR UPDATE SKIP LOCKED) RETURNING`, the order
inside the locking subquery, so concurrent runners take disjoint rows without waiting for each other. A tenant's
in-flight limit is checked under a transaction-scoped advisory lock per tenant (SQLite's writer
lock serialises leases anyway), so concurrent leases never exceed it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa

from server.store.models import INVOCATIONS, RUNNERS, TENANTS, WORKFLOWS, utcnow

__all__ = ["Leased", "OPEN", "QueueStore", "Refused", "attempt_deadline", "waiting_reasons"]


OPEN = ("queued", "leased")
# pg_advisory_xact_lock(QUEUE_LOCK, tenant id): one tenant's leases, one at a time.
QUEUE_LOCK = 0x656D78  # "emx"
# A runner that has not asked for work for this long no longer counts as serving its functions.
RUNNER_SEEN = timedelta(seconds=90)


class Refused(Exception):
    """A runner's call about an invocation it no longer holds: `reason` is one of stale, done,
    failed, cancelled, expired (docs/queue.md). The API answers 409."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


@dataclass(frozen=True)
class Leased:
    """One leased invocation, as the runner receives it."""

    id: int
    key: str  # the idempotency key: the same for every attempt
    fence: int
    workflow: str
    function: str
    args: list[Any]
    attempt: int
    options: dict[str, Any]
    deadline: datetime
    created_at: datetime

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "key": self.key, "fence": self.fence, "workflow": self.workflow,
                "function": self.function, "args": self.args, "attempt": self.attempt,
                "options": self.options, "deadline": self.deadline.isoformat(),
                "created_at": self.created_at.isoformat()}


def attempt_deadline(leased_at: datetime, options: dict[str, Any]) -> datetime | None:
    """When an attempt leased at `leased_at` times out: the function's `timeout` option."""
    timeout = (options or {}).get("timeout")
    return leased_at + timedelta(seconds=float(timeout)) if timeout else None


def _lease_deadline(now: datetime, leased_at: datetime, options: dict[str, Any],
                    lease_seconds: float) -> datetime:
    deadline = now + timedelta(seconds=lease_seconds)
    timeout = attempt_deadline(leased_at, options)
    return min(deadline, timeout) if timeout is not None else deadline


def refusal(row: Any, fence: int) -> Refused | None:
    """Why a call carrying `fence` may not settle or renew the invocation `row`, or None."""
    if row.status in ("done", "failed", "cancelled"):
        what = {"done": "completed already", "failed": "failed already",
                "cancelled": "cancelled: the workflow no longer needs it"}[row.status]
        return Refused(row.status, f"invocation {row.id} was {what}")
    if row.fence != fence:
        return Refused("stale", f"invocation {row.id} is no longer under lease {fence} "
                                f"(its lease is {row.fence} now)")
    if row.status != "leased":
        return Refused("expired", f"invocation {row.id}'s lease {fence} ended; it is queued again")
    return None


class QueueStore:
    """Mixed into Store: the queue's transactions (see the module docstring)."""

    dialect: str
    max_in_flight: int  # a tenant's limit unless its row sets one
    _ids: dict[int, str]  # workflow pk -> public id (see _workflow_ids)

    def _tx(self, *, write: bool, snapshot: bool = False) -> Any:  # provided by Store
        raise NotImplementedError

    def _insert(self, table: sa.Table) -> Any:  # provided by Store
        raise NotImplementedError

    def lease(self, tenant_id: int, runner: str, functions: Sequence[str], count: int, *,
              lease_seconds: float) -> tuple[list[Leased], bool, datetime | None]:
        """Lease up to `count` of the tenant's queued calls of `functions`, highest priority
        first, then the oldest workflow's, in call order. Returns them, whether the tenant is
        at its in-flight limit, and (when nothing was leased) when the earliest backing-off one
        becomes available: read in the same transaction, at the same `now`, so no invocation
        can become available unseen between the two."""
        now = utcnow()
        i = INVOCATIONS.c
        with self._tx(write=True) as conn:
            if self.dialect == "postgresql":
                conn.execute(sa.text("SELECT pg_advisory_xact_lock(:c, :t)"),
                             {"c": QUEUE_LOCK, "t": tenant_id})
            cap, in_flight = _in_flight(conn, tenant_id, self.max_in_flight)
            room = cap - in_flight
            if room <= 0:
                return [], True, None
            picked = (sa.select(i.id)
                      .where(i.tenant_id == tenant_id, i.status == "queued", i.kind == "call",
                             i.name.in_(list(functions)),
                             sa.or_(i.available_at.is_(None), i.available_at <= now))
                      .order_by(i.priority.desc(), i.workflow_pk, i.call_id)
                      .limit(min(count, room))
                      .with_for_update(skip_locked=True))
            rows = conn.execute(
                INVOCATIONS.update().where(i.id.in_(picked.scalar_subquery()))
                .values(status="leased", fence=i.fence + 1, runner=runner, leased_at=now,
                        lease_expires=now + timedelta(seconds=lease_seconds), available_at=None)
                .returning(i.id, i.workflow_pk, i.call_id, i.name, i.args, i.options, i.attempt,
                           i.fence, i.lease_expires, i.priority, i.created_at)).all()
            if not rows:
                later = conn.execute(sa.select(sa.func.min(i.available_at)).where(
                    i.tenant_id == tenant_id, i.status == "queued", i.name.in_(list(functions)),
                    i.available_at > now)).scalar()
                return [], False, later
            full = now + timedelta(seconds=lease_seconds)
            short = [(r.id, d) for r in rows
                     if (d := _lease_deadline(now, now, r.options, lease_seconds)) < full]
            if short:  # a timeout shorter than the lease bounds it
                conn.execute(INVOCATIONS.update().where(i.id == sa.bindparam("b_id"))
                             .values(lease_expires=sa.bindparam("b_expires")),
                             [{"b_id": rid, "b_expires": d} for rid, d in short])
            deadlines = dict(short)
            ids = self._workflow_ids(conn, {r.workflow_pk for r in rows})
        leased = [Leased(r.id, f"{ids[r.workflow_pk]}:{r.call_id}", r.fence, ids[r.workflow_pk],
                         r.name, r.args, r.attempt, r.options,
                         deadlines.get(r.id, r.lease_expires), r.created_at)
                  for r in sorted(rows, key=lambda r: (-r.priority, r.workflow_pk, r.call_id))]
        return leased, len(rows) >= room, None

    def _workflow_ids(self, conn: sa.Connection, pks: set[int]) -> dict[int, str]:
        """Public ids of workflows by pk. A workflow's id never changes, so they are kept (a
        bounded map) and only unknown ones are read."""
        known = self._ids
        found = {pk: wid for pk in pks if (wid := known.get(pk)) is not None}
        missing = pks - found.keys()
        if missing:
            read = dict(conn.execute(sa.select(WORKFLOWS.c.pk, WORKFLOWS.c.id).where(
                WORKFLOWS.c.pk.in_(missing))).all())
            if len(known) > 100_000:
                known.clear()  # another thread's lookup never reads it: it keeps `found`
            known.update(read)
            found.update(read)
        return found

    def heartbeat(self, tenant_id: int, invocation_id: int, fence: int, *,
                  lease_seconds: float) -> datetime:
        """Renew a lease; returns its new deadline (never past the attempt's timeout)."""
        now = utcnow()
        with self._tx(write=True) as conn:
            row = _locked_invocation(conn, tenant_id, invocation_id)
            refused = refusal(row, fence)
            if refused is not None:
                raise refused
            deadline = _lease_deadline(now, row.leased_at, row.options, lease_seconds)
            deadline = max(deadline, row.lease_expires)  # a renewal never shortens a lease
            conn.execute(INVOCATIONS.update().where(INVOCATIONS.c.id == row.id)
                         .values(lease_expires=deadline))
        return deadline

    def release(self, tenant_id: int, invocation_id: int, fence: int) -> str:
        """Give a leased invocation back to the queue, the attempt not counted; returns its
        function (whose waiting runners may take it)."""
        with self._tx(write=True) as conn:
            row = _locked_invocation(conn, tenant_id, invocation_id)
            refused = refusal(row, fence)
            if refused is not None:
                raise refused
            conn.execute(INVOCATIONS.update().where(INVOCATIONS.c.id == row.id)
                         .values(status="queued", runner=None, leased_at=None, lease_expires=None))
        return str(row.name)

    def expired_leases(self, limit: int = 100) -> list[tuple[int, int, int]]:
        """Leases past their deadline, oldest first, as (tenant id, invocation id, fence): what
        the sweeper settles."""
        i = INVOCATIONS.c
        with self._tx(write=False) as conn:
            rows = conn.execute(sa.select(i.tenant_id, i.id, i.fence)
                                .where(i.status == "leased", i.lease_expires < utcnow())
                                .order_by(i.lease_expires).limit(limit)).all()
        return [tuple(r) for r in rows]  # type: ignore[misc]

    def next_lease_deadline(self) -> datetime | None:
        """The earliest deadline of a lease held now (when the sweeper must look next)."""
        i = INVOCATIONS.c
        with self._tx(write=False) as conn:
            return conn.execute(sa.select(sa.func.min(i.lease_expires))
                                .where(i.status == "leased")).scalar()

    def seen_runner(self, tenant_id: int, name: str, functions: Sequence[str]) -> None:
        """Record that runner `name` asked for work for `functions` just now."""
        now = utcnow()
        with self._tx(write=True) as conn:
            conn.execute(self._insert(RUNNERS).values(tenant_id=tenant_id, name=name, functions=list(functions),
                                       last_seen=now)
                         .on_conflict_do_update(index_elements=["tenant_id", "name"],
                                                set_={"functions": list(functions), "last_seen": now}))


    def forget_runners(self, unseen_for: timedelta = timedelta(days=1)) -> int:
        """Drop the runners not seen for `unseen_for` (a runner's name holds its pid, so every
        restart leaves one behind); returns how many."""
        with self._tx(write=True) as conn:
            return conn.execute(RUNNERS.delete().where(
                RUNNERS.c.last_seen < utcnow() - unseen_for)).rowcount or 0


def _locked_invocation(conn: sa.Connection, tenant_id: int, invocation_id: int) -> Any:
    from server.store.store import NotFound  # store.py imports this module: import at use

    row = conn.execute(sa.select(INVOCATIONS).where(
        INVOCATIONS.c.id == invocation_id, INVOCATIONS.c.tenant_id == tenant_id)
        .with_for_update()).first()
    if row is None:
        raise NotFound(f"no invocation {invocation_id}")
    return row


def waiting_reasons(conn: sa.Connection, tenant_id: int, rows: list[Any],
                    default_limit: int) -> dict[int, str]:
    """Why each open invocation of `rows` (one workflow's) waits, in words."""
    now = utcnow()
    reasons: dict[int, str] = {}
    queued_calls = [r for r in rows if r.status == "queued" and r.kind == "call"]
    served: set[str] = set()
    at_limit = ""
    if queued_calls:
        for (functions,) in conn.execute(sa.select(RUNNERS.c.functions).where(
                RUNNERS.c.tenant_id == tenant_id, RUNNERS.c.last_seen > now - RUNNER_SEEN)):
            served.update(functions)
        cap, in_flight = _in_flight(conn, tenant_id, default_limit)
        if in_flight >= cap:
            at_limit = f"tenant at its limit of {cap} invocations in flight"
    children = _children(conn, [r for r in rows if r.kind == "start"])
    for r in rows:
        if r.kind == "start":
            child = children.get(r.call_id)
            reasons[r.id] = (f"child workflow {child[0]} is {child[1]}" if child
                             else f"child workflow {r.name} is starting")
        elif r.status == "leased":
            reasons[r.id] = (f"leased by {r.runner} since {r.leased_at.isoformat()} "
                             f"(attempt {r.attempt}, lease until {r.lease_expires.isoformat()})")
        elif r.available_at is not None and r.available_at > now:
            last = (r.error or {}).get("message", "")
            reasons[r.id] = (f"backing off until {r.available_at.isoformat()} before attempt "
                             f"{r.attempt}" + (f" (last: {last})" if last else ""))
        elif r.name not in served:
            reasons[r.id] = f"no runner serves {r.name}"
        elif at_limit:
            reasons[r.id] = at_limit
        else:
            reasons[r.id] = f"queued for a runner of {r.name}"
    return reasons


def _in_flight(conn: sa.Connection, tenant_id: int, default_limit: int) -> tuple[int, int]:
    """(the tenant's in-flight limit, its invocations leased now)."""
    i = INVOCATIONS.c
    cap, in_flight = conn.execute(sa.select(
        sa.select(TENANTS.c.max_in_flight).where(TENANTS.c.id == tenant_id).scalar_subquery(),
        sa.select(sa.func.count()).select_from(INVOCATIONS)
        .where(i.tenant_id == tenant_id, i.status == "leased").scalar_subquery())).one()
    return (cap if cap is not None else default_limit), int(in_flight)


def _children(conn: sa.Connection, starts: list[Any]) -> dict[int, tuple[str, str]]:
    if not starts:
        return {}
    w = WORKFLOWS.c
    rows = conn.execute(sa.select(w.parent_call, w.id, w.status).where(
        w.parent_pk == starts[0].workflow_pk,
        w.parent_call.in_([r.call_id for r in starts]))).all()
    return {r.parent_call: (r.id, r.status) for r in rows}
