#!/usr/bin/env python3
"""Runs one workload of the engine benchmark on one reference engine and prints one JSON line.

    bench/.venv-refs/bin/python bench/refs/run.py ENGINE WORKLOAD FACTS
    python3 bench/refs/run.py floor WORKLOAD FACTS          # the floor needs no package

ENGINE is experta, durable_rules or floor; WORKLOAD is chain or manners; FACTS is the size
(facts at the end, about). The line is
{"engine", "workload", "facts" (at the end), "firings", "seconds" (the rules' work only),
"ok": true} (manners adds "guests"), printed after `bench/workloads/inputs.py` checked the
final facts; on any error it is {"engine", "workload", "ok": false, "error"} and the exit code 1.
Timeouts are the caller's.
"""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "workloads"))

import inputs  # noqa: E402  (needs the path above)

ENGINES = {"experta": "experta_ref", "durable_rules": "durable_ref", "floor": "floor_ref"}
WORKLOADS = ("chain", "manners")
ERROR_CHARS = 400  # an error line stays readable in the driver's table
USAGE = "usage: run.py {experta|durable_rules|floor} {chain|manners} FACTS"


def run(engine: str, workload: str, size: int) -> dict[str, Any]:
    """Make the inputs, run them on the engine, check the end; the JSON line's fields."""
    if engine not in ENGINES or workload not in WORKLOADS or size < 1:
        raise ValueError(USAGE)
    module = importlib.import_module(ENGINES[engine])  # only the engine asked for is imported
    extra: dict[str, Any] = {}
    if workload == "chain":
        initial = inputs.chain_facts(size)
        if not initial:
            raise ValueError(f"chain needs at least 6 facts, not {size}")
    else:
        extra["guests"], initial = inputs.manners_facts(size)
    result = getattr(module, workload)(initial)
    getattr(inputs, f"check_{workload}")(result.facts)
    return {
        "engine": engine,
        "workload": workload,
        "facts": len(result.facts),
        "firings": result.firings,
        "seconds": round(result.seconds, 6),
        **extra,
        "ok": True,
    }


def main(argv: list[str]) -> int:
    engine, workload = (argv + ["", ""])[1:3]
    try:
        if len(argv) != 4:
            raise ValueError(USAGE)
        line = run(engine, workload, int(argv[3]))
    except Exception as e:  # any failure is one JSON line: the caller parses every run's output
        error = f"{type(e).__name__}: {e}".splitlines()[0][:ERROR_CHARS]
        print(json.dumps({"engine": engine, "workload": workload, "ok": False, "error": error}))
        return 1
    print(json.dumps(line))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
