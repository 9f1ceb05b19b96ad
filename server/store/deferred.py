"""Writes sent with the commit (PostgreSQL): write-behind inside one transaction.

A step's writes (a new workflow's row, the one statement of its delta) return nothing the step
reads. Sent at once, each would cost a round trip of its own before the COMMIT costs another;
kept here, they go out together with the COMMIT, one round trip in all. Any other statement the
transaction executes first sends them before it (a SQLAlchemy `before_cursor_execute` hook), so
every statement still sees the writes made before it, in order, and a transaction that rolls
back discards what it had not sent.

`fetch` runs a query whose rows the step needs (its workflow's row lock, or a group's) in the
same way: the BEGIN, the writes waiting and the query in one round trip.

How they travel: as ONE simple-protocol query, the statements joined by semicolons, each
statement's parameters bound client-side by psycopg (`ClientCursor.mogrify`, the driver's own
quoting). psycopg's pipeline mode would send them as one round trip too, but its
generator-driven loop cost 0.4-0.6 ms of CPU more per step than the one query
(docs/store.md has the measurement). psycopg opens a transaction with a BEGIN of its own, a
round trip by itself, so a transaction that starts here sends the BEGIN in the same query, with
the connection switched to autocommit (psycopg then adds nothing) until the transaction ends
(`end`).

Kept per thread and per connection: a transaction runs on one thread, so a statement the same
thread runs on another connection meanwhile neither sends nor sees them.
"""

from __future__ import annotations

import threading
import weakref
from typing import Any

import psycopg
import sqlalchemy as sa
from psycopg.pq import TransactionStatus

__all__ = ["end", "fetch", "install", "later", "send"]

_local = threading.local()  # .writes: {connection: [(sql, params), ...]}; .begun: {connection}
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
    _writes().setdefault(conn, []).append((sql, params))


def send(conn: sa.Connection, *, commit: bool) -> bool:
    """Send `conn`'s waiting writes, with the COMMIT when `commit`, in one round trip; False
    when there was nothing waiting (and so nothing was committed here)."""
    writes = _writes().pop(conn, None)
    if not writes:
        return False
    _query(conn, writes, commit=commit)
    return True


def fetch(conn: sa.Connection, sql: str, params: dict[str, Any]) -> list[tuple[Any, ...]]:
    """The rows of a query (psycopg style) on `conn`, in ONE round trip together with the
    BEGIN (when the transaction starts here) and the writes waiting before it."""
    cursor = _query(conn, [*(_writes().pop(conn, None) or ()), (sql, params)], commit=False)
    while cursor.nextset():  # the BEGIN's and the writes' results come first
        pass
    return cursor.fetchall()


def end(conn: sa.Connection) -> None:
    """`conn`'s transaction has ended: forget its waiting writes, and give psycopg back its own
    BEGIN. A connection that cannot take it back (still in a transaction: broken) is
    invalidated, so it never returns to the pool in autocommit."""
    _writes().pop(conn, None)
    begun = _begun()
    if conn not in begun:
        return
    begun.discard(conn)
    if conn.invalidated:
        return
    driver = _driver(conn)
    if driver.pgconn.transaction_status == TransactionStatus.IDLE:  # not so when closed
        driver.autocommit = False
    else:
        conn.invalidate()


def _query(conn: sa.Connection, statements: list[tuple[str, dict[str, Any]]], *,
           commit: bool) -> psycopg.Cursor[Any]:
    """`statements` as one simple-protocol query, BEGIN first when no transaction is open."""
    driver = _driver(conn)
    literal = psycopg.ClientCursor(driver).mogrify
    parts = [literal(sql, params) for sql, params in statements]
    if driver.pgconn.transaction_status == TransactionStatus.IDLE and not driver.autocommit:
        parts.insert(0, _begin(driver))
        driver.autocommit = True  # so psycopg does not send a BEGIN of its own first
        _begun().add(conn)
    if commit:
        parts.append("COMMIT")
    cursor = driver.cursor()
    # No parameters: psycopg sends the simple query protocol, which takes many statements
    # (and must not prepare a statement of this text, which embeds its values).
    cursor.execute(";\n".join(parts), prepare=False)
    return cursor


def _begin(driver: psycopg.Connection[Any]) -> str:
    """The BEGIN psycopg would send for this connection's settings."""
    words = ["BEGIN"]
    if driver.isolation_level is not None:
        words.append("ISOLATION LEVEL " + driver.isolation_level.name.replace("_", " "))
    if driver.read_only is not None:
        words.append("READ ONLY" if driver.read_only else "READ WRITE")
    if driver.deferrable is not None:
        words.append("DEFERRABLE" if driver.deferrable else "NOT DEFERRABLE")
    return " ".join(words)


def _driver(conn: sa.Connection) -> psycopg.Connection[Any]:
    driver = conn.connection.driver_connection
    assert driver is not None
    return driver


def _before(conn: sa.Connection, *_: Any) -> None:
    if _writes().get(conn):
        send(conn, commit=False)


def _writes() -> dict[sa.Connection, list[tuple[str, dict[str, Any]]]]:
    table = getattr(_local, "writes", None)
    if table is None:
        table = _local.writes = {}
    return table


def _begun() -> set[sa.Connection]:
    begun = getattr(_local, "begun", None)
    if begun is None:
        begun = _local.begun = set()
    return begun
