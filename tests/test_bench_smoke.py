"""The compile benchmark runs and reports what it claims, and its generator writes valid Emirax.

bench/compile.py is run as users run it (a subprocess on a small project) and must print its
ratio to the bare Lark parse and the warm recompile. bench/gen.py must give projects that parse
and check without errors, of the requested size, the same for the same seed.
"""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

from emirax.checker import check
from emirax.errors import SourceError
from emirax.parser import parse
from emirax.source import Source
from support import load_gen

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"


gen = load_gen()


def test_compile_benchmark_prints_its_ratio_and_warm_recompile(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, str(BENCH / "compile.py"), "--lines", "500", "--repeat", "1"],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert re.search(r"^whole compile / bare Lark parse = \d+\.\d\dx \(target <= 2x\)$", out, re.M), out
    assert re.search(r"^warm recompile to bundle = \d+\.\d{3} s \(target < 0\.1 s\)$", out, re.M), out
    assert re.search(r"^warm recompile \(pipeline\.build\) .* cache hits: \d+$", out, re.M), out
    assert "bare Lark parse (reference)" in out
    assert re.search(r"^reference: Lark LALR", out, re.M), out


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_generated_project_parses_and_checks_cleanly(seed: int) -> None:
    project = gen.generate(2000, seed=seed)
    assert abs(gen.count_lines(project) - 2000) <= 2000 * 0.02
    assert sum(len(text.splitlines()) for text in project.values()) == gen.count_lines(project)
    try:
        modules = [parse(Source(name, text)) for name, text in project.items()]
        check(modules)
    except SourceError as e:
        pytest.fail(f"generated project (seed {seed}) does not check:\n{e}")
    assert {m.package for m in modules} == {gen.PACKAGE}
    names = [wf.name for m in modules for wf in m.workflows]
    assert len(names) == len(set(names)) > 5


def test_generator_is_deterministic_and_seeded() -> None:
    assert gen.generate(800, seed=7) == gen.generate(800, seed=7)
    assert gen.generate(800, seed=7) != gen.generate(800, seed=8)


@pytest.mark.parametrize("lines", [gen.MIN_LINES, 137, 999])
def test_generator_hits_small_line_counts(lines: int) -> None:
    project = gen.generate(lines, seed=lines)
    assert gen.count_lines(project) == lines
    check([parse(Source(name, text)) for name, text in project.items()])


def test_write_project_writes_a_loadable_project(tmp_path: Path) -> None:
    root = gen.write_project(tmp_path / "p", 300, seed=3, files=2)
    assert (root / "emirax.toml").read_text(encoding="utf-8").startswith("[bundle]")
    files = sorted(p.relative_to(root).as_posix() for p in (root / "rules").glob("*.emx"))
    assert files == sorted(gen.generate(300, seed=3, files=2))
    project_mod = pytest.importorskip("emirax.project")
    project = project_mod.load_project(root)
    assert project.package == gen.PACKAGE and project.version == gen.VERSION


def test_engine_benchmark_runs_both_workloads_and_prints_the_floor_ratio(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, str(BENCH / "engine.py"), "--sizes", "300,600", "--no-refs"],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    for workload in ("chain", "manners"):
        assert re.search(rf"^{workload} at about 300 facts$", out, re.M), out
        assert re.search(rf"^{workload}: memory per fact at \d[\d,]* facts: \d[\d,]* bytes", out, re.M), out
    assert re.search(r"^  emirax \(one workflow\) +\d[\d,]* facts +\d[\d,]* firings .* us/firing", out, re.M), out
    assert re.search(r"^  floor .* floor/emirax +\d+\.\dx$", out, re.M), out


@pytest.mark.parametrize("workload", ["chain", "manners"])
def test_workload_checkers_catch_a_wrong_end_state(workload: str) -> None:
    """The benchmark trusts these checkers to say a run computed the right thing."""
    sys.path.insert(0, str(BENCH / "workloads"))
    import inputs

    sys.path.insert(0, str(BENCH / "refs"))
    import floor_ref

    initial = inputs.chain_facts(300) if workload == "chain" else inputs.manners_facts(300)[1]
    facts = getattr(floor_ref, workload)(initial).facts
    check = getattr(inputs, f"check_{workload}")
    check(facts)  # the floor is right
    wrong = [dict(f, fields=dict(f["fields"])) for f in facts]
    victim = next(f for f in reversed(wrong) if f["type"] in ("Step", "Seating", "Path"))
    key = next(k for k, v in victim["fields"].items() if isinstance(v, (int, str)) and not isinstance(v, bool))
    victim["fields"][key] = victim["fields"][key] + (1 if isinstance(victim["fields"][key], int) else "x")
    with pytest.raises(AssertionError):
        check(wrong)


def test_server_benchmark_prints_its_table_on_sqlite(tmp_path: Path) -> None:
    """bench/server.py end to end on the embedded SQLite: a real `emirax serve`, one client,
    about a second; every answer checked by the script itself (a wrong one exits 1)."""
    proc = subprocess.run(
        [sys.executable, str(BENCH / "server.py"), "--sqlite", "--clients", "1", "--seconds", "1",
         "--warmup", "0.3"],
        capture_output=True, text=True, timeout=120, cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert "--workers 1" in out and "no pgbench ratio" in out, out
    assert re.search(r"^clients +steps/s +workflows/s +start p50 +start p99 +add p50 +add p99 "
                     r"+pgbench tps +ratio", out, re.M), out
    found = re.search(r"^ +1 +(\d[\d,]*) +(\d[\d,]*) +(\d+\.\d)( +\d+\.\d){3} +- +- ", out, re.M)
    assert found, out
    steps, workflows = (int(found.group(i).replace(",", "")) for i in (1, 2))
    assert steps > 0 and workflows > 0, out
    assert "ERRORS" not in out, out
    assert re.search(r"^add-facts p99 at 4 clients: not measured", out, re.M), out


def test_the_server_benchmark_says_what_the_cores_could_carry(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each ratio line is followed by the CPU ceiling measured in the same run: the server's,
    PostgreSQL's and the load's CPU per step against the cores."""
    # bench/ last on the path: its _stdlib_first is found, and its queue.py never shadows queue.
    monkeypatch.setattr(sys, "path", [*sys.path, str(BENCH)])
    spec = importlib.util.spec_from_file_location("bench_server_ceiling", BENCH / "server.py")
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = bench  # its dataclasses look their module up
    spec.loader.exec_module(bench)
    r = bench.HttpResult(clients=16, seconds=2.0, steps=2000, workflows=1000, start_ms=[1.0],
                         add_ms=[1.0], errors=[], server_cpu=0.8, client_cpu=0.2, db_cpu=0.4)
    line = bench.ceiling(r, 12_000.0, cores=2)
    # 1,000 steps/s: 1.4 ms of CPU a step in all, so 2 cores carry at most 1,429 steps/s.
    assert line == ("  cpu at 16 clients: 1.40 ms a step in all (server 0.80, database 0.40, "
                    "load 0.20): 2 cores carry at most 1,429 steps/s; 1/6 of pgbench is 2,000")
    lines, ok = bench.verdicts([(r, 12_000.0)])
    assert not ok and any(text.startswith("  cpu at 16 clients") for text in lines)


@pytest.mark.postgres
def test_queue_benchmark_prints_its_figures_on_postgres(postgres_url: str, tmp_path: Path) -> None:
    """bench/queue.py end to end at its smallest: a real `emirax serve` on a fresh PostgreSQL
    database, runner processes, pgbench's floors and two video workflows; every answer, lease
    and workflow is checked by the script itself (a wrong one exits 1)."""
    proc = subprocess.run(
        [sys.executable, str(BENCH / "queue.py"), "--db-url", postgres_url, "--runners", "1",
         "--seconds", "1", "--warmup", "0.3", "--samples", "10", "--pace", "0.05", "--wait", "1",
         "--backlog", "300", "--latency-runners", "1", "--video", "2", "--video-runners", "2",
         "--pgbench-seconds", "1", "--floor-jobs", "5000"],
        capture_output=True, text=True, timeout=120, cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert re.search(r"^commit: \S+", out, re.M) and "--workers 1" in out, out
    for label in ("start answered -> lease received", "created_at -> lease received"):
        assert re.search(rf"^  {label} +p50 +-?\d+\.\d ms +p99 +-?\d+\.\d ms", out, re.M), out
    assert re.search(r"^runners +batch +invocations/s +complete p50 +complete p99 +server cpu "
                     r"+runner cpu +db cpu +claim tps +ours/claim +cycle tps +ours/cycle$", out, re.M), out
    found = re.search(r"^ +1 +16 +(\d[\d,]*)\*? +\d+\.\d +\d+\.\d( +\d+\.\d\d){3} +(\d[\d,]*) "
                      r"+\d+\.\d{3} +(\d[\d,]*) +\d+\.\d{3}$", out, re.M)
    assert found, out
    assert all(int(found.group(i).replace(",", "")) > 0 for i in (1, 3, 4)), out
    assert re.search(r"^lease query plan \(\d[\d,]* queued\): .*Index", out, re.M), out
    assert re.search(r"^  2 completed; children \{'completed': 2\}; 70 invocations", out, re.M), out
    assert re.search(r"^  end to end: \d[\d,]* workflows/min .* duration mean \d+\.\d s, p99 \d+\.\d s",
                     out, re.M), out
    assert "ERRORS" not in out, out
    assert re.search(r"^invocations/cycle floor at 1 runners = \d+\.\d{3} \(target >= 0\.5: (met|MISSED)\)$",
                     out, re.M), out
    assert re.search(r"^dispatch p99 = -?\d+\.\d ms from the start's answer \(target < 20 ms: (met|MISSED)\)",
                     out, re.M), out


@pytest.mark.parametrize("script", ["compile.py", "engine.py", "server.py", "queue.py"])
def test_bench_scripts_import_the_standard_librarys_queue(script: str, tmp_path: Path) -> None:
    """bench/queue.py must not shadow the standard library's `queue` for the scripts next to it
    (psycopg imports it): each script, run as users run it, gets the real one."""
    # As `python bench/X.py` runs it: bench/ first on the path, the script's top level run.
    probe = (f"import runpy, sys; sys.path.insert(0, {str(BENCH)!r}); "
             f"runpy.run_path({str(BENCH / script)!r}, run_name='probe'); "
             "import queue; print(queue.__file__)")
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          timeout=60, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "bench" not in proc.stdout and proc.stdout.strip().endswith("queue.py"), proc.stdout
