"""What several test modules share: the SPEC's example program, the benchmark generator, and
`Run`, what a command run in a subprocess gave."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from dataclasses import dataclass
from types import ModuleType
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Run:
    """A finished `python -m emirax ...`: its exit code and its two streams."""

    code: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return self.stdout + self.stderr

    @property
    def json(self) -> Any:
        return json.loads(self.stdout)

# The example program of SPEC section 2 (kept here so no test depends on the SPEC file).
SPEC_EXAMPLE = """\
package media.encode                        // bundle name; one per bundle

workflow VideoEncode {

    fact Request(String source, String recipe, int chunks = 31)
    fact Chunk(int index, String uri)
    fact Encoded(int index, String uri)
    fact Assembled(String uri)
    fact Failed(String reason)

    // External functions, run by function runners. Options: timeout, retries, backoff, priority, queue.
    function List split(String source, int chunks)
    function String encode(String uri, String recipe) with [timeout: '2h', retries: 3, priority: 5]
    function String assemble(List parts)

    rule 'split source' {
        match {
            req: Request()
            not Chunk()
        }
        action {
            split(req.source, req.chunks)
        }
        reaction { parts ->
            parts.eachWithIndex { uri, i -> insert Chunk(index: i, uri: uri) }
        }
        error { err ->
            insert Failed(reason: "split: ${err.message}")
        }
    }

    rule 'encode chunk' {
        match {
            c: Chunk()
            r: Request()
            not Encoded(index == c.index)
        }
        action { encode(c.uri, r.recipe) }
        reaction { uri -> insert Encoded(index: c.index, uri: uri) }
    }

    rule 'assemble' with [salience: 10] {
        match {
            r: Request()
            done: collect Encoded()
            when done.size() == r.chunks
            not Assembled()
        }
        action { assemble(done.sort { it.index }*.uri) }
        reaction { uri ->
            insert Assembled(uri: uri)
            complete(uri: uri)
        }
    }
}
"""


def load_gen() -> ModuleType:
    """bench/gen.py as a module (bench/ holds scripts, not a package)."""
    name = "emirax_bench_gen"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, ROOT / "bench" / "gen.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the body runs
    spec.loader.exec_module(module)
    return module
