"""Imported first by every benchmark script: moves this folder to the end of `sys.path`.

A script run as `python bench/X.py` has bench/ first on its path, and `bench/queue.py` (the
name issue 5 gives the queue benchmark) would then shadow the standard library's `queue`, which
psycopg, concurrent.futures and logging import. Last on the path, this folder's own modules
(gen.py, workloads/) still import, after the standard library's.
"""

import sys
from pathlib import Path

_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE] + [str(_HERE)]
