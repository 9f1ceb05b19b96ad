"""What one reference run gives back to `run.py`: the final facts, the firings, the timed seconds."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass
class Run:
    """One workload run by one engine.

    facts: the working memory at the end, in the shape of `bench/workloads/inputs.py`
    firings: rule firings (see README.md for how each engine counts them)
    seconds: wall time of the rules' work only: from the first initial fact handed to the
        engine to quiescence; building the engine and reading the facts back are not in it
    """

    facts: list[dict[str, Any]]
    firings: int
    seconds: float
