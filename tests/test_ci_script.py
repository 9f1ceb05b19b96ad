"""The CI entry point and the README's test command fail where a silent pass would hide a problem:
an unreachable PostgreSQL under CI=true, and a pytest run that collected no test."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _fake_tool(bin_dir: Path, name: str, exit_code: int) -> None:
    tool = bin_dir / name
    tool.write_text(f"#!/bin/sh\necho fake {name} >&2\nexit {exit_code}\n")
    tool.chmod(0o755)


def test_ci_run_fails_fast_when_postgres_is_unreachable_under_ci(tmp_path: Path) -> None:
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    # A PostgreSQL that never answers and cannot be started.
    _fake_tool(fake_bin, "pg_isready", 2)
    _fake_tool(fake_bin, "pg_ctlcluster", 1)
    env = {**os.environ, "PATH": f"{fake_bin}{os.pathsep}{os.environ['PATH']}", "CI": "true",
           "EMIRAX_CI_PG_WAIT": "1", "TMPDIR": str(tmp_path)}
    result = subprocess.run(["bash", str(ROOT / ".ci" / "run")], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=60)
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert "FATAL: PostgreSQL is not reachable" in output
    # It stopped before installing anything.
    assert not list(tmp_path.glob("emirax-ci-venv.*")), output


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_make_test_fails_when_pytest_collects_nothing(tmp_path: Path) -> None:
    empty = tmp_path / "no_tests_here"
    empty.mkdir()
    venv_dir = Path(sys.prefix)
    stamp = venv_dir / ".emirax-installed"
    # -o: treat the install stamp as up to date, so this never reinstalls into the running venv.
    result = subprocess.run(
        ["make", "--no-print-directory", "-o", str(stamp), "test", f"VENV={venv_dir}",
         f"PYTEST_ARGS={empty} -p no:cacheprovider"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert "pytest ran no test" in output
