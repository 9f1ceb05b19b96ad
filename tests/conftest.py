"""Suite-wide test options and fixtures.

Owns three things every test module may rely on:

- the `slow` marker's gate: slow tests (long fuzzing, soak) run only with `--run-slow` or
  `EMIRAX_SLOW=1`, so `make test` stays inside its time budget;
- the `postgres_url` / `postgres_dsn` fixtures: the test database on the machine's real
  PostgreSQL. When it cannot be reached the test is skipped with the reason, except under
  `CI=true`, where it fails: CI must never pass by silently skipping the database;
- Hypothesis profiles: no per-example deadline (2 shared cores make timings noisy), and under CI
  a derandomized run so a red build can be replayed.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, settings

DEFAULT_PG_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/emirax_test"


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in {"1", "true", "yes"}


settings.register_profile("dev", deadline=None)
settings.register_profile(
    "ci", deadline=None, derandomize=True, print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci" if in_ci() else "dev"))


# -- slow tests ---------------------------------------------------------------------------------


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--run-slow", action="store_true", default=False,
        help="also run tests marked slow (long fuzzing and soak); same as EMIRAX_SLOW=1",
    )
    parser.addoption(
        "--update-golden", action="store_true", default=False,
        help="rewrite the expected output of golden files (tests/golden/) from the compiler",
    )


def slow_enabled(config: pytest.Config) -> bool:
    return bool(config.getoption("--run-slow")) or os.environ.get("EMIRAX_SLOW", "") not in {"", "0"}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # A test that takes the database is a postgres test, so `-m "not postgres"` deselects it.
    for item in items:
        if "postgres_url" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.postgres)
    if slow_enabled(config):
        return
    skip = pytest.mark.skip(reason="slow test: run with --run-slow or EMIRAX_SLOW=1 (make test-slow)")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


# -- PostgreSQL ---------------------------------------------------------------------------------


def libpq_dsn(url: str) -> str:
    """Turn a SQLAlchemy URL (`postgresql+psycopg://...`) into the libpq URI psycopg takes."""
    scheme, sep, rest = url.partition("://")
    if not sep or not scheme.startswith("postgresql"):
        raise ValueError(f"not a PostgreSQL URL: {url!r}")
    return f"postgresql://{rest}"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _unreachable(url: str, why: str) -> None:
    message = f"PostgreSQL not reachable at {url}: start it or set EMIRAX_TEST_PG_URL ({why})"
    if in_ci():
        pytest.fail(message + "; under CI=true this is a failure, not a skip", pytrace=False)
    pytest.skip(message)


def _create_database(dsn: str) -> None:
    """Create the test database when the server answers but the database is missing."""
    import psycopg
    from psycopg import sql

    info = psycopg.conninfo.conninfo_to_dict(dsn)
    name = info.get("dbname")
    if not name:
        raise ValueError("the test URL names no database")
    admin = psycopg.conninfo.make_conninfo(dsn, dbname="postgres")
    with psycopg.connect(admin, autocommit=True, connect_timeout=5) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """The SQLAlchemy URL of a reachable, existing test database (skips or fails otherwise)."""
    import psycopg

    url = os.environ.get("EMIRAX_TEST_PG_URL") or DEFAULT_PG_URL
    dsn = libpq_dsn(url)
    try:
        with psycopg.connect(dsn, connect_timeout=5) as conn:
            conn.execute("select 1")
    except psycopg.OperationalError as exc:
        if "does not exist" not in str(exc):
            _unreachable(url, _first_line(exc))
        try:
            _create_database(dsn)
        except (psycopg.Error, ValueError) as create_exc:
            _unreachable(url, f"database missing and could not be created: {_first_line(create_exc)}")
    yield url


@pytest.fixture(scope="session")
def postgres_dsn(postgres_url: str) -> str:
    """The same database as `postgres_url`, as a libpq URI for `psycopg.connect`."""
    return libpq_dsn(postgres_url)
