"""Group commit (server/committer.py, Store.group) on both databases.

The steps of a group share one transaction: they are all written or none is, a step sees the
steps before it (the same workflow twice in one group included), a state cached by a group is
used only after its commit, and a step that raises in a group reaches only its own request
while every other step is written exactly once.
"""

from __future__ import annotations

import asyncio
import threading
from collections import Counter
from typing import Any

import psycopg
import pytest
import sqlalchemy as sa

from emirax.engine.program import Workflow
from emirax.engine.state import WorkflowState
from emirax.engine.step import AddFacts, Start, step
from server.committer import Committer
from server.store import NotFound, Store
from tests.test_store import add_bundle, databases, new_tenant, store, tally_wf  # noqa: F401

PACKAGE = "t.tally"


def start_tally(db: Store, tenant_id: int, wf: Workflow) -> str:
    with db.start(tenant_id, wf.name, PACKAGE, "1") as s:
        s.apply(step(wf, s.state, Start([("Counter", {"total": 0})])))
        return s.workflow.id


def add_item(db: Store, tenant_id: int, wid: str, wf: Workflow, n: int) -> int:
    """One step adding Item n; returns the counter's total the step left."""
    with db.step(tenant_id, wid) as s:
        s.apply(step(wf, s.state, AddFacts([("Item", {"n": n})])))
        return _total(s.state)


def _total(state: WorkflowState) -> int:
    return next(f["fields"]["total"] for f in state.fact_list() if f["type"] == "Counter")


def stored_total(db: Store, tenant_id: int, wid: str) -> int:
    loaded = db.load(tenant_id, wid)
    assert loaded is not None
    return _total(loaded)


@pytest.fixture
def tenant(store: Store) -> int:  # noqa: F811 - the fixture imported above
    tenant_id = new_tenant(store)
    add_bundle(store, tenant_id, PACKAGE, "1")
    return tenant_id


def test_a_group_commits_its_steps_together(store: Store, tenant: int, tally_wf: Workflow) -> None:  # noqa: F811
    cached = Store(store.engine, state_cache=8)
    one, two = start_tally(cached, tenant, tally_wf), start_tally(cached, tenant, tally_wf)
    with cached.group():
        assert add_item(cached, tenant, one, tally_wf, 1) == 1
        assert add_item(cached, tenant, two, tally_wf, 2) == 1
        # The same workflow again in the group: it sees the step before it, uncommitted.
        assert add_item(cached, tenant, one, tally_wf, 3) == 2
    assert stored_total(store, tenant, one) == 2 and stored_total(store, tenant, two) == 1
    # The states the group cached are the committed ones: the next steps go on from them.
    assert add_item(cached, tenant, one, tally_wf, 4) == 3
    assert add_item(store, tenant, two, tally_wf, 5) == 2
    assert add_item(cached, tenant, two, tally_wf, 6) == 3  # stepped elsewhere: reloaded


def test_a_group_that_raises_writes_nothing_and_caches_nothing(store: Store, tenant: int,  # noqa: F811
                                                                tally_wf: Workflow) -> None:  # noqa: F811
    cached = Store(store.engine, state_cache=8)
    wid = start_tally(cached, tenant, tally_wf)
    with pytest.raises(RuntimeError, match="crashed"):
        with cached.group():
            assert add_item(cached, tenant, wid, tally_wf, 1) == 1
            raise RuntimeError("crashed before the commit")
    assert stored_total(store, tenant, wid) == 0
    # Another process steps the workflow to the revision the rolled-back group had reached:
    # a state the group had cached would now pass for current; none was kept.
    assert add_item(store, tenant, wid, tally_wf, 7) == 1
    assert add_item(cached, tenant, wid, tally_wf, 8) == 2
    assert stored_total(store, tenant, wid) == 2


def test_groups_do_not_nest(store: Store) -> None:  # noqa: F811
    with store.group():
        with pytest.raises(RuntimeError, match="nest"):
            with store.group():
                pass


def test_the_committer_groups_steps_and_keeps_each_error_to_its_own(
        store: Store, tenant: int, tally_wf: Workflow) -> None:  # noqa: F811
    """Eleven steps wait while the worker is busy: they run as one group. One of them names a
    missing workflow: it gets NotFound, alone; the other ten are each written exactly once."""
    sizes: list[int] = []
    committer = Committer(store, threads=1, on_group=sizes.append)
    wids = [start_tally(store, tenant, tally_wf) for _ in range(10)]
    commits: list[int] = []

    def count(_conn: Any) -> None:
        commits.append(1)

    sa.event.listen(store.engine, "commit", count)
    release = threading.Event()
    after: Counter[str] = Counter()

    def job(wid: str, n: int) -> Any:
        return committer.submit(wid, lambda: add_item(store, tenant, wid, tally_wf, n),
                                lambda _answer: after.update([wid]), lock=(tenant, wid))

    async def scenario() -> list[Any]:
        busy = asyncio.ensure_future(committer.submit("", lambda: release.wait(10),
                                                      lambda _answer: None))
        await asyncio.sleep(0.05)  # the worker holds the first job: the rest queue behind it
        rest = [job(wid, n) for n, wid in enumerate(wids)] + [job("missing", 99)]
        tasks = [busy, *(asyncio.ensure_future(c) for c in rest)]
        await asyncio.sleep(0.05)
        release.set()
        return await asyncio.gather(*tasks, return_exceptions=True)

    try:
        answers = asyncio.run(scenario())
    finally:
        sa.event.remove(store.engine, "commit", count)
        committer.stop()
    assert answers[1:-1] == [1] * 10  # each counter went from 0 to 1: applied once
    assert isinstance(answers[-1], NotFound)
    assert all(stored_total(store, tenant, wid) == 1 for wid in wids)
    assert after == Counter(wids)  # post-commit work ran once for each committed step
    assert len(commits) == 1  # the ten in one transaction (the failed attempt rolled back)
    assert sorted(sizes) == [1, 10]  # the metric: the busy step alone, then the group of ten


def test_a_group_on_postgresql_costs_two_round_trips(
        store: Store, tenant: int, tally_wf: Workflow, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    """Six steps on six workflows in one group: the BEGIN and the lock of their six rows are one
    query, their six writes and the COMMIT another (store/deferred.py), and psycopg sends no
    BEGIN or COMMIT of its own; each step is written once, and each saw its row."""
    cached = Store(store.engine, state_cache=16)  # as the server's: states kept between steps
    committer = Committer(cached, threads=1)
    wids = [start_tally(cached, tenant, tally_wf) for _ in range(6)]
    queries: list[str] = []
    watching = threading.Event()
    execute, command = psycopg.Cursor.execute, psycopg.Connection._exec_command

    def spy_execute(cursor: Any, query: Any, *args: Any, **kwargs: Any) -> Any:
        if watching.is_set():
            queries.append(str(query))
        return execute(cursor, query, *args, **kwargs)

    def spy_command(conn: Any, text: Any, *args: Any, **kwargs: Any) -> Any:
        if watching.is_set():
            queries.append(f"psycopg: {text!r}")
        return command(conn, text, *args, **kwargs)

    monkeypatch.setattr(psycopg.Cursor, "execute", spy_execute)
    monkeypatch.setattr(psycopg.Connection, "_exec_command", spy_command)
    release = threading.Event()

    async def scenario() -> list[Any]:
        busy = asyncio.ensure_future(committer.submit("", lambda: release.wait(10), lambda _: None))
        await asyncio.sleep(0.05)
        steps = [asyncio.ensure_future(committer.submit(
            wid, lambda wid=wid: add_item(cached, tenant, wid, tally_wf, 1), lambda _: None,
            lock=(tenant, wid))) for wid in wids]
        await asyncio.sleep(0.05)
        watching.set()
        release.set()
        return await asyncio.gather(busy, *steps)

    try:
        answers = asyncio.run(scenario())
    finally:
        watching.clear()
        committer.stop()
    assert answers[1:] == [1] * 6
    assert all(stored_total(store, tenant, wid) == 1 for wid in wids)
    if store.dialect == "postgresql":
        assert len(queries) == 2, queries
        lock, writes = queries
        assert lock.startswith("BEGIN") and lock.endswith("FOR NO KEY UPDATE"), lock
        assert all(wid in lock for wid in wids), lock
        assert writes.count("UPDATE workflows SET") == 6 and writes.endswith(";\nCOMMIT"), writes
