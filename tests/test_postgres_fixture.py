"""The test database is really there: CI fails here (not skips) when PostgreSQL is down."""

from __future__ import annotations

from pathlib import Path

import psycopg
import pytest


@pytest.mark.postgres
def test_postgres_answers_select_1(postgres_dsn: str) -> None:
    with psycopg.connect(postgres_dsn, connect_timeout=5) as conn:
        assert conn.execute("select 1").fetchone() == (1,)
        name = conn.execute("select current_database()").fetchone()
    assert name is not None and name[0] == psycopg.conninfo.conninfo_to_dict(postgres_dsn)["dbname"]


UNREACHABLE = "postgresql+psycopg://postgres@127.0.0.1:1/emirax_test"
PROBE = """
def test_needs_db(postgres_url):
    pass
"""


def _run_with_unreachable_db(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch,
                             ci: str | None) -> pytest.RunResult:
    conftest = (Path(__file__).parent / "conftest.py").read_text()
    pytester.makeconftest(conftest)
    pytester.makepyfile(test_probe=PROBE)
    monkeypatch.setenv("EMIRAX_TEST_PG_URL", UNREACHABLE)
    if ci is None:
        monkeypatch.delenv("CI", raising=False)
    else:
        monkeypatch.setenv("CI", ci)
    return pytester.runpytest_subprocess("-rs")


def test_unreachable_database_skips_with_reason_outside_ci(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    result = _run_with_unreachable_db(pytester, monkeypatch, ci=None)
    result.assert_outcomes(skipped=1)
    result.stdout.fnmatch_lines(["*PostgreSQL not reachable at *127.0.0.1:1*start it or set EMIRAX_TEST_PG_URL*"])


def test_unreachable_database_fails_under_ci(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    result = _run_with_unreachable_db(pytester, monkeypatch, ci="true")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*PostgreSQL not reachable at *127.0.0.1:1*"])
