"""Writes sent with the commit (PostgreSQL): write-behind inside one transaction.

A step's writes (a new workflow's row, the one statement of its delta) return nothing the step
reads. Sent at once, each would cost a round trip of its own before the COMMIT costs another;
kept here, they go out together with the COMMIT in one psycopg pipeline, one round trip in all.
Any other statement the transaction executes first sends them before it (a SQLAlchemy
`before_cursor_execute` hook), so every statement still sees the writes made before it, in
order, and a transaction that rolls back discards what it had not sent.

`fetch_one` runs a query whose row the step needs (its workflow's row lock) in the same way: the
writes waiting, the BEGIN and the query in one pipeline.

Kept per thread and per connection: a transaction runs on one thread, so a statement the same
thread runs on another connection meanwhile neither sends nor sees them.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable
from typing import Any

import sqlalchemy as sa

__all__ = ["discard", "fetch_one", "install", "later", "send"]

_pending = threading.local()  # .by_conn: {connection: [(sql, params), ...]} of this thread
_installed: weakref.WeakSet[sa.Engine] = weakref.WeakSet()
_lock = threading.Lock()


def install(engine: sa.Engine) -> None:
    """Make `engine`'s connections send their waiting writes before any other statement."""
    with _lock:
        if engine not in _installed:
            sa.event.listen(engine, "before_cursor_execute", _before)
            _installed.add(engine)


def later(conn: sa.Connection, sql: str, params: dict[str, Any]) -> None:
    """Send `sql` (psycopg's `%(name)s` style) on `conn` with the commit, or before the next
    statement on `conn`, whichever comes first."""
    _table().setdefault(conn, []).append((sql, params))


def send(conn: sa.Connection, *, commit: bool) -> bool:
    """Send `conn`'s waiting writes, with the COMMIT when `commit`, in one pipeline; False
    when there was nothing waiting (and so nothing was committed here)."""
    if not _table().get(conn):
        return False
    _pipeline(conn, lambda driver: driver.commit() if commit else None)
    return True


def fetch_one(conn: sa.Connection, sql: str, params: dict[str, Any]) -> tuple[Any, ...] | None:
    """The first row of a query (psycopg style) on `conn`, in ONE round trip together with the
    writes waiting before it and the BEGIN psycopg sends to open the transaction (outside a
    pipeline the BEGIN alone costs a round trip)."""
    return _pipeline(conn, lambda driver: driver.execute(sql, params)).fetchone()


def _pipeline(conn: sa.Connection, last: Callable[[Any], Any]) -> Any:
    """`conn`'s waiting writes, then `last(driver)`, in one psycopg pipeline; what `last` gave."""
    writes = _table().pop(conn, None) or []
    driver = conn.connection.driver_connection
    assert driver is not None
    with driver.pipeline():
        for sql, params in writes:
            driver.execute(sql, params)
        result = last(driver)
    return result


def discard(conn: sa.Connection) -> None:
    """Forget `conn`'s waiting writes (its transaction has ended)."""
    _table().pop(conn, None)


def _before(conn: sa.Connection, *_: Any) -> None:
    if _table().get(conn):
        send(conn, commit=False)


def _table() -> dict[sa.Connection, list[tuple[str, dict[str, Any]]]]:
    table = getattr(_pending, "by_conn", None)
    if table is None:
        table = _pending.by_conn = {}
    return table
