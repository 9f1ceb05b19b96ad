"""Starting the server: settings, migrations, the admin token, uvicorn (`emirax serve`).

    serve(host="127.0.0.1", port=8080, db=None, workers=1)

The database is `db`, else `EMIRAX_DATABASE_URL`, else the embedded default: a SQLite file in
`$EMIRAX_HOME` (default `~/.local/share/emirax`). Migrations run at start. The admin token is
`EMIRAX_ADMIN_TOKEN`; when it is not set, one is made once, kept in `$EMIRAX_HOME/admin-token`
(mode 0600), and the path is printed, never the token.
"""

from __future__ import annotations

import gc
import logging
import os
import secrets
import sys
from pathlib import Path
from typing import Any

__all__ = ["admin_token", "database_url", "home", "serve"]


def home() -> Path:
    return Path(os.environ.get("EMIRAX_HOME") or Path.home() / ".local" / "share" / "emirax")


def database_url(db: str | None) -> str:
    url = db or os.environ.get("EMIRAX_DATABASE_URL")
    if url:
        return url
    folder = home()
    folder.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{folder / 'emirax.db'}"


def admin_token() -> tuple[str, Path | None]:
    """The admin token, and the file it was read from or written to (None: from the env)."""
    token = os.environ.get("EMIRAX_ADMIN_TOKEN")
    if token:
        return token, None
    path = home() / "admin-token"
    if path.is_file():
        return path.read_text(encoding="utf-8").strip(), path
    path.parent.mkdir(parents=True, exist_ok=True)
    token = secrets.token_urlsafe(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(token + "\n")
    return token, path


def serve(host: str = "127.0.0.1", port: int = 8080, db: str | None = None, workers: int = 1) -> None:
    """Migrate, then run uvicorn; with `workers` > 1, that many processes share the port (each
    with its own store connection pool; the database serialises their steps per workflow)."""
    import uvicorn

    from server.store import Store

    _logging()
    url = database_url(db)
    Store.open(url).upgrade()
    token, where = admin_token()
    shown = url if "@" not in url else url.split("@")[-1]
    print(f"emirax serve: database {shown}, {workers} worker(s)", file=sys.stderr)
    if where is not None:
        print(f"emirax serve: the admin token is in {where}", file=sys.stderr)
    # The workers build the app from these (uvicorn starts them with an import string).
    os.environ["EMIRAX_DATABASE_URL"] = url
    os.environ["EMIRAX_ADMIN_TOKEN"] = token
    os.environ["EMIRAX_WORKERS"] = str(workers)
    if workers > 1:
        uvicorn.run("server.main:app_from_env", factory=True, host=host, port=port,
                    workers=workers, log_level="warning")
    else:
        uvicorn.run(app_from_env(), host=host, port=port, log_level="warning")


def app_from_env() -> Any:
    """The app of one server process, from EMIRAX_DATABASE_URL and EMIRAX_ADMIN_TOKEN, and the
    queue's settings EMIRAX_LEASE_SECONDS (a lease's life without a heartbeat, default 30) and
    EMIRAX_MAX_IN_FLIGHT (a tenant's invocations leased at once, unless set for the tenant;
    default 256)."""
    from server.app import create_app
    from server.store import Store

    _logging()
    store = Store.open(os.environ["EMIRAX_DATABASE_URL"], state_cache=10_000,  # revision-checked
                       max_in_flight=_setting("EMIRAX_MAX_IN_FLIGHT", 256, int))
    # Worker processes on one SQLite file cannot wake each other's long polls (PostgreSQL's
    # NOTIFY does): theirs look again every second.
    shared_sqlite = store.dialect == "sqlite" and _setting("EMIRAX_WORKERS", 1, int) > 1
    app = create_app(store, admin_token=os.environ["EMIRAX_ADMIN_TOKEN"],
                     lease_seconds=_setting("EMIRAX_LEASE_SECONDS", 30.0, float),
                     poll_cap=1.0 if shared_sqlite else None,
                     step_threads=_setting("EMIRAX_STEP_THREADS",
                                           2 if store.dialect == "postgresql" else 1, int))
    # What is loaded by now (modules, the app, the store's metadata) lives as long as the
    # process: frozen out of the collector's full passes, which would otherwise rescan it each
    # time (gc.freeze, as large CPython servers do).
    gc.freeze()
    return app


def _setting(name: str, default: Any, kind: type) -> Any:
    raw = os.environ.get(name)
    if not raw:
        return default
    try:
        value = kind(raw)
    except ValueError:
        raise SystemExit(f"emirax serve: {name}={raw!r} is not a number") from None
    if value <= 0:
        raise SystemExit(f"emirax serve: {name} must be more than 0")
    return value


def _logging() -> None:
    from server.observe import JsonFormatter

    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter())
    logging.basicConfig(level=logging.INFO, handlers=[handler], force=True)
    # The JSON lines carry none of the caller's file and line, thread or process: not looked up
    # for each record (the logging HOWTO's "Optimization"; a request's line cost twice as much).
    logging._srcfile = None  # type: ignore[attr-defined]
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
