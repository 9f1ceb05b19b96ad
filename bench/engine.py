"""The engine benchmark (issue 3): Emirax against experta, durable_rules and a hand-written floor.

    .venv/bin/python bench/engine.py [--sizes 1000,10000,100000] [--workloads chain,manners]
                                     [--timeout 120] [--no-refs] [--repeat 1]

Workloads (bench/workloads/, the same logic in every engine, checked at the end by inputs.py):
- chain: K jobs, each a chain of five rules fed by function results, with an equality join and
  a `not`. Emirax runs it as the server will: every function result is one `step` (one event,
  run to quiescence, one delta), with all K jobs in ONE workflow's working memory, so the matcher
  has to find the one job a result belongs to among K. A second line runs one workflow per job
  (the server's usual shape: small memories, many steps).
- manners: Miss Manners in one working memory, started in one step.

Figures per size: facts per second (facts at the end / seconds), firings per second,
microseconds per firing, and, for Emirax, memory per fact (tracemalloc, in a separate pass at
the middle size). The references run in their own virtual environment (bench/refs/setup.sh),
as subprocesses capped at --timeout seconds: a run past it prints "timed out". Ratios are
Emirax's firings per second over each reference's, and the floor's over Emirax's.
"""

from __future__ import annotations

import _stdlib_first  # noqa: F401  (first: bench/queue.py shadows the standard library's queue)

import argparse
import gc
import json
import subprocess
import sys
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench" / "workloads"))

import inputs  # noqa: E402

from emirax import pipeline  # noqa: E402
from emirax.engine.matcher import Matcher  # noqa: E402
from emirax.engine.program import Program, Workflow  # noqa: E402
from emirax.engine.state import WorkflowState  # noqa: E402
from emirax.engine.step import Limits, Result, Start, step  # noqa: E402

REFS_PYTHON = ROOT / "bench" / ".venv-refs" / "bin" / "python"
REFS = ("durable_rules", "experta")
# A benchmark workflow holds up to 100k facts and fires that often in one evaluation.
BIG = Limits(steps=10_000_000, firings=10_000_000, facts=10_000_000)


def load(name: str) -> Workflow:
    """The workload's workflow, with its network layout and match code built (as a host has them
    once a bundle version is loaded), so no timed run pays for them."""
    result = pipeline.build(ROOT / "bench" / "workloads" / f"{name}.emx", cache_dir=False)
    assert result.ir is not None
    wf = next(iter(Program.from_ir(result.ir).workflows.values()))
    Matcher(wf, set())
    return wf


# ── Emirax runs: each returns (the final states, firings, seconds) ─────────────────────────────

Run = tuple[list[WorkflowState], int, float]


def facts_of(states: list[WorkflowState]) -> list[dict[str, Any]]:
    return [f for s in states for f in s.fact_list()]


def chain_one_memory(wf: Workflow, size: int) -> Run:
    state = WorkflowState.new(wf.name)
    initial = inputs.chain_facts(size)
    t0 = time.perf_counter()
    delta = step(wf, state, Start(initial), limits=BIG, trace=False)
    firings, queue = delta.firings, delta.invocations
    while queue:
        inv = queue.pop()
        delta = step(wf, state, Result(inv.id, inputs.work(*inv.args)), limits=BIG, trace=False)
        firings += delta.firings
        queue.extend(delta.invocations)
    seconds = time.perf_counter() - t0
    _ok(state)
    return [state], firings, seconds


def chain_per_workflow(wf: Workflow, size: int) -> Run:
    jobs = inputs.chain_facts(size)
    states = [WorkflowState.new(wf.name) for _ in jobs]
    t0 = time.perf_counter()
    firings = 0
    for state, job in zip(states, jobs):
        delta = step(wf, state, Start([job]), trace=False)
        firings += delta.firings
        while delta.invocations:
            inv = delta.invocations[0]
            delta = step(wf, state, Result(inv.id, inputs.work(*inv.args)), trace=False)
            firings += delta.firings
        state.matcher = None  # as a server evicts a finished workflow's matcher (it keeps the facts)
    seconds = time.perf_counter() - t0
    for state in states:
        _ok(state)
    return states, firings, seconds


def manners(wf: Workflow, size: int) -> Run:
    _, initial = inputs.manners_facts(size)
    state = WorkflowState.new(wf.name)
    t0 = time.perf_counter()
    delta = step(wf, state, Start(initial), limits=BIG, trace=False)
    seconds = time.perf_counter() - t0
    _ok(state)
    return [state], delta.firings, seconds


def _ok(state: WorkflowState) -> None:
    if state.status == "failed":
        raise SystemExit(f"the benchmark workflow failed: {state.error}")


def memory_per_fact(run: Callable[[Workflow, int], Run], wf: Workflow, size: int) -> float:
    """What the final workflow states hold (facts, set index, matcher with its memories, indexes
    and conflict set, refraction keys), per fact, measured while they are alive."""
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    states, _, _ = run(wf, size)
    gc.collect()
    used = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    return used / max(1, sum(len(s.facts) for s in states))


# ── references ─────────────────────────────────────────────────────────────────────────────────


def reference(engine: str, workload: str, size: int, timeout: float) -> dict[str, Any]:
    python = sys.executable if engine == "floor" else str(REFS_PYTHON)
    if engine != "floor" and not REFS_PYTHON.exists():
        return {"error": "not installed (run bench/refs/setup.sh)"}
    try:
        proc = subprocess.run(
            [python, str(ROOT / "bench" / "refs" / "run.py"), engine, workload, str(size)],
            capture_output=True, text=True, timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        return {"error": f"timed out (> {timeout:g} s)"}
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if not lines:
        return {"error": (proc.stderr.strip().splitlines() or ["no output"])[-1][:120]}
    doc = json.loads(lines[-1])
    return doc if doc.get("ok") else {"error": str(doc.get("error"))[:120]}


# ── report ─────────────────────────────────────────────────────────────────────────────────────


def row(name: str, facts: int, firings: int, seconds: float) -> dict[str, Any]:
    return {"engine": name, "facts": facts, "firings": firings, "seconds": seconds,
            "fps": firings / seconds if seconds else float("inf"),
            "us": seconds / firings * 1e6 if firings else 0.0,
            "facts_s": facts / seconds if seconds else float("inf")}


def show(r: dict[str, Any], emirax_fps: float | None) -> None:
    if "error" in r:
        print(f"  {r['engine']:<26} {r['error']}")
        return
    ratio = ""
    if emirax_fps and r["engine"] == "floor":
        ratio = f"floor/emirax {r['fps'] / emirax_fps:6.1f}x"
    elif emirax_fps and not r["engine"].startswith("emirax"):
        ratio = f"emirax/{r['engine']} {emirax_fps / r['fps']:6.1f}x"
    print(f"  {r['engine']:<26} {r['facts']:>8,} facts {r['firings']:>8,} firings "
          f"{r['seconds']:8.3f} s {r['fps']:>11,.0f} firings/s {r['us']:7.1f} us/firing "
          f"{r['facts_s']:>11,.0f} facts/s  {ratio}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="1000,10000,100000")
    ap.add_argument("--workloads", default="chain,manners")
    ap.add_argument("--timeout", type=float, default=120.0)
    ap.add_argument("--no-refs", action="store_true", help="Emirax and the floor only.")
    ap.add_argument("--repeat", type=int, default=1, help="Emirax runs per size; the best is kept.")
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    runs: dict[str, list[tuple[str, Callable[[Workflow, int], Any]]]] = {
        "chain": [("emirax (one workflow)", chain_one_memory),
                  ("emirax (workflow per job)", chain_per_workflow)],
        "manners": [("emirax", manners)],
    }
    print(f"python {sys.version.split()[0]}; references capped at {args.timeout:g} s each")
    for workload in args.workloads.split(","):
        wf = load(workload)
        check = getattr(inputs, f"check_{workload}")
        for size in sizes:
            print(f"\n{workload} at about {size:,} facts")
            main_fps = None
            for name, run in runs[workload]:
                best = None
                for _ in range(args.repeat):
                    states, firings, seconds = run(wf, size)
                    facts = facts_of(states)
                    check(facts)
                    if best is None or seconds < best[2]:
                        best = (len(facts), firings, seconds)
                assert best is not None
                r = row(name, *best)
                main_fps = main_fps or r["fps"]
                show(r, None)
            engines = ["floor"] + ([] if args.no_refs else list(REFS))
            for engine in engines:
                ref = reference(engine, workload, size, args.timeout)
                if "error" in ref:
                    show({"engine": engine, "error": ref["error"]}, None)
                else:
                    show(row(engine, ref["facts"], ref["firings"], ref["seconds"]), main_fps)
        middle = sizes[len(sizes) // 2]
        per_fact = memory_per_fact(runs[workload][0][1], wf, middle)
        print(f"\n{workload}: memory per fact at {middle:,} facts: {per_fact:,.0f} bytes "
              "(facts, set index, matcher memories and indexes, refraction keys)")


if __name__ == "__main__":
    main()
