"""`emirax run` as users run it: the real command in a subprocess, real threads, real functions.

What people rely on: the exact `--json` document of SPEC section 6; the 31 encodes of the media
tenant really running at the same time; retries, backoff and timeouts from the function options;
exit 1 and one readable line (never a traceback) for a failed workflow or bad input; the same
result from a project folder, an .emx file and a compiled .emxb.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TENANT = ROOT / "tenants" / "media-encoding"
TIMEOUT = 60

# Functions that record how many encodes run at once: the parallelism a user relies on.
MEDIA_FUNCTIONS = """\
import threading, time
_lock = threading.Lock()
_now = 0
peak = 0

def split(source, chunks):
    return [f"{source}/{i}" for i in range(chunks)]

def encode(uri, recipe):
    global _now, peak
    with _lock:
        _now += 1
        peak = max(peak, _now)
    time.sleep(0.15)
    with _lock:
        _now -= 1
    return uri + "." + recipe

def assemble(parts):
    return f"assembled:{len(parts)}:{parts[0]}..{parts[-1]}"

def index(uri):
    import threading
    return {"peak": peak}

def grab(source, second):
    return f"{source}@{second}s"
"""

FLAKY = """\
package demo.flaky

workflow Flaky {
    fact Go(String name)
    fact Done(String value)
    fact Broke(String why, int attempts)

    function String wobbly(String name) with [retries: 2, backoff: '10ms']
    function String slow(String name) with [timeout: '200ms']

    rule 'call wobbly' {
        match { g: Go(name == 'wobbly') }
        action { wobbly(g.name) }
        reaction { v -> insert Done(value: v) }
        error { err -> insert Broke(why: err.message, attempts: err.attempts) }
    }
    rule 'call slow' {
        match { g: Go(name == 'slow') }
        action { slow(g.name) }
        reaction { v -> insert Done(value: v) }
    }
    rule 'finish' {
        match { d: Done() }
        action { complete(value: d.value) }
    }
}
"""

FLAKY_FUNCTIONS = """\
import time
calls = {"wobbly": 0}

def wobbly(name):
    calls["wobbly"] += 1
    if calls["wobbly"] < 3:
        raise ConnectionError(f"attempt {calls['wobbly']} refused")
    return f"ok after {calls['wobbly']}"

def slow(name):
    time.sleep(2)
    return "too late"
"""


def emirax(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "EMIRAX_CACHE_DIR": str(cwd / ".cache")}
    return subprocess.run([sys.executable, "-m", "emirax", *args], capture_output=True, text=True,
                           timeout=TIMEOUT, cwd=cwd, env=env)


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def facts_file(tmp_path: Path, facts: list[dict]) -> Path:
    return write(tmp_path / "facts.json", json.dumps(facts))


def no_traceback(proc: subprocess.CompletedProcess[str]) -> None:
    assert "Traceback" not in proc.stderr + proc.stdout


def test_media_pipeline_runs_31_encodes_in_parallel_and_prints_the_spec_document(tmp_path: Path) -> None:
    fns = write(tmp_path / "functions.py", MEDIA_FUNCTIONS)
    facts = facts_file(tmp_path, [{"type": "Request", "fields": {"source": "s3://v.mov", "recipe": "h264"}}])
    proc = emirax("run", str(TENANT), "--workflow", "VideoEncode", "--facts", str(facts),
                  "--functions", str(fns), "--json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert list(doc) == ["status", "output", "error", "facts"]
    assert doc["status"] == "completed" and doc["error"] is None
    assert doc["output"]["uri"] == "assembled:31:s3://v.mov/0.h264..s3://v.mov/30.h264"
    # every encode was in flight at once (32 threads by default), not one after another
    assert doc["output"]["index"]["peak"] == 31
    types = [f["type"] for f in doc["facts"]]
    assert types.count("Chunk") == 31 and types.count("Encoded") == 31
    assert {"type": "Thumbnailed", "fields": {"uri": "s3://v.mov@5s"}} in doc["facts"]


def test_concurrency_option_bounds_parallel_calls_and_trace_is_readable(tmp_path: Path) -> None:
    fns = write(tmp_path / "functions.py", MEDIA_FUNCTIONS)
    facts = facts_file(tmp_path, [{"type": "Request", "fields": {"source": "s", "recipe": "r", "chunks": 6}}])
    proc = emirax("run", str(TENANT), "-w", "media.encode.VideoEncode", "--facts", str(facts),
                  "--functions", str(fns), "--concurrency", "2", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "status" in proc.stdout and "completed" in proc.stdout
    trace = proc.stderr
    assert "fire      'split source' facts [1]" in trace
    assert trace.count("invoke    #") >= 6 + 4  # split, thumbnail, 6 encodes, assemble, index
    assert "Thumbnail#2" in trace and "(child)" in trace
    assert "status    running -> completed" in trace
    # with two threads, the thumbnail grab and encodes share them: never more than 2 encodes at once
    out = json.loads(emirax("run", str(TENANT), "-w", "VideoEncode", "--facts", str(facts),
                            "--functions", str(fns), "--concurrency", "2", "--json",
                            cwd=tmp_path).stdout)
    assert 1 <= out["output"]["index"]["peak"] <= 2


def test_retries_then_success_and_timeout_failure(tmp_path: Path) -> None:
    rules = write(tmp_path / "flaky.emx", FLAKY)
    fns = write(tmp_path / "fns.py", FLAKY_FUNCTIONS)
    ok = emirax("run", str(rules), "-w", "Flaky", "--facts",
                str(facts_file(tmp_path, [{"type": "Go", "fields": {"name": "wobbly"}}])),
                "--functions", str(fns), "--json", cwd=tmp_path)
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["output"] == {"value": "ok after 3"}

    slow = emirax("run", str(rules), "-w", "Flaky", "--facts",
                  str(facts_file(tmp_path, [{"type": "Go", "fields": {"name": "slow"}}])),
                  "--functions", str(fns), cwd=tmp_path)
    assert slow.returncode == 1, slow.stdout + slow.stderr
    no_traceback(slow)
    assert "failed" in slow.stdout
    assert "Timeout" in slow.stdout and "call slow" in slow.stdout
    assert "raised    #1 slow (attempt 1): Timeout: timed out after 0.2 s" in slow.stderr


def test_error_section_gets_attempts_after_the_last_retry(tmp_path: Path) -> None:
    rules = write(tmp_path / "flaky.emx", FLAKY)
    fns = write(tmp_path / "fns.py", "def wobbly(name):\n    raise RuntimeError('down')\n"
                                     "def slow(name):\n    return 'x'\n")
    proc = emirax("run", str(rules), "-w", "Flaky", "--facts",
                  str(facts_file(tmp_path, [{"type": "Go", "fields": {"name": "wobbly"}}])),
                  "--functions", str(fns), "--json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["status"] == "waiting"
    assert {"type": "Broke", "fields": {"why": "down", "attempts": 3}} in doc["facts"]


def test_a_permanent_error_skips_the_retries_and_current_names_the_invocation(tmp_path: Path) -> None:
    """`emirax run` calls functions as a runner does: `Permanent` is not retried, and
    `emirax.runner.current()` gives the invocation's key and attempt."""
    rules = write(tmp_path / "flaky.emx", FLAKY)
    fns = write(tmp_path / "fns.py", (
        "from emirax.runner import Permanent, current\n"
        "def wobbly(name):\n"
        "    inv = current()\n"
        "    raise Permanent(f'{inv.key} attempt {inv.attempt}')\n"
        "def slow(name):\n    return 'x'\n"))
    proc = emirax("run", str(rules), "-w", "Flaky", "--facts",
                  str(facts_file(tmp_path, [{"type": "Go", "fields": {"name": "wobbly"}}])),
                  "--functions", str(fns), "--json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    broke = [f for f in json.loads(proc.stdout)["facts"] if f["type"] == "Broke"]
    assert broke == [{"type": "Broke", "fields": {"why": "Flaky#1:1 attempt 1", "attempts": 1}}]


def test_a_failed_workflow_exits_1_with_the_rule_and_position(tmp_path: Path) -> None:
    fns = write(tmp_path / "functions.py", MEDIA_FUNCTIONS.replace(
        'def split(source, chunks):\n    return', 'def split(source, chunks):\n    return []\n    return'))
    facts = facts_file(tmp_path, [{"type": "Request", "fields": {"source": "s", "recipe": "r"}}])
    proc = emirax("run", str(TENANT), "-w", "VideoEncode", "--facts", str(facts),
                  "--functions", str(fns), "--json", cwd=tmp_path)
    assert proc.returncode == 1
    doc = json.loads(proc.stdout)
    assert doc["status"] == "failed"
    assert doc["error"]["rule"] == "give up" and doc["error"]["type"] == "Failed"
    assert doc["error"]["message"] == "split failed: split gave 0 chunks, expected 31"
    assert doc["error"]["file"] == "rules/video_encode.emx" and doc["error"]["line"] > 0


def test_a_compiled_bundle_runs_like_its_source(tmp_path: Path) -> None:
    fns = write(tmp_path / "functions.py", MEDIA_FUNCTIONS)
    facts = facts_file(tmp_path, [{"type": "Request", "fields": {"source": "s", "recipe": "r", "chunks": 3}}])
    assert emirax("compile", str(TENANT), "-o", "media.emxb", cwd=tmp_path).returncode == 0
    runs = [json.loads(emirax("run", path, "-w", "VideoEncode", "--facts", str(facts),
                              "--functions", str(fns), "--json", cwd=tmp_path).stdout)
            for path in ("media.emxb", str(TENANT))]
    for run in runs:  # the peak and the order of parallel results depend on timing
        run["output"]["index"] = None
        run["facts"] = sorted(json.dumps(f, sort_keys=True) for f in run["facts"] if f["type"] != "Indexed")
    assert runs[0] == runs[1]
    assert runs[0]["status"] == "completed" and len(runs[0]["facts"]) == 1 + 3 + 3 + 2


@pytest.mark.parametrize(("facts_text", "functions_text", "workflow", "message"), [
    ("[{", None, "VideoEncode", "not JSON"),
    ('{"type": "Request"}', None, "VideoEncode", "expected a JSON list"),
    ('[{"type": "Nope", "fields": {}}]', None, "VideoEncode", "has no fact type 'Nope'"),
    ('[{"type": "Request", "fields": {"source": 1, "recipe": "r"}}]', None, "VideoEncode",
     "Request.source is String, not int"),
    ('[{"type": "Request", "fields": {"recipe": "r"}}]', None, "VideoEncode", "needs field(s) source"),
    ("[]", "raise SystemError('boom')", "VideoEncode", "importing it raised SystemError: boom"),
    ("[]", None, "Nope", "no workflow 'Nope'"),
])
def test_bad_input_is_one_readable_line(tmp_path: Path, facts_text: str, functions_text: str | None,
                                        workflow: str, message: str) -> None:
    facts = write(tmp_path / "facts.json", facts_text)
    fns = write(tmp_path / "functions.py", functions_text or MEDIA_FUNCTIONS)
    proc = emirax("run", str(TENANT), "-w", workflow, "--facts", str(facts), "--functions", str(fns),
                  cwd=tmp_path)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    no_traceback(proc)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("emirax: error: "), proc.stderr
    assert message in lines[0]


def test_bad_rules_print_diagnostics_and_exit_1(tmp_path: Path) -> None:
    rules = write(tmp_path / "bad.emx", "package p\nworkflow W {\n  fact A(int x)\n  rule 'r' {\n"
                                        "    match { a: B() }\n    action { }\n  }\n}\n")
    proc = emirax("run", str(rules), "-w", "W", "--facts", str(facts_file(tmp_path, [])),
                  "--functions", str(write(tmp_path / "f.py", "")), cwd=tmp_path)
    assert proc.returncode == 1
    no_traceback(proc)
    assert "bad.emx:5:" in proc.stderr and "B" in proc.stderr


def test_a_function_error_and_a_non_json_result_are_told_apart(tmp_path: Path) -> None:
    """A ValueError the function raises is its own failure (type ValueError), whatever its text;
    only a result that cannot be JSON is a ResultError."""
    from emirax.engine.program import Program
    from emirax.local import LocalRun
    from emirax.pipeline import build

    result = build(write(tmp_path / "flaky.emx", FLAKY), cache_dir=False)
    program = Program.from_ir(result.ir)
    go = [{"type": "Go", "fields": {"name": "wobbly"}}]

    def raises(name: str) -> str:
        raise ValueError("Out of range float values are not JSON compliant")  # a JSON-ish text

    broke = LocalRun(program, {"wobbly": raises}, sequential=True).run("Flaky", go)
    assert {"type": "Broke", "fields": {"why": "Out of range float values are not JSON compliant",
                                        "attempts": 3}} in broke.facts
    assert [e["type"] for e in broke.trace if e["event"] == "raised"] == ["ValueError"] * 3

    odd = LocalRun(program, {"wobbly": lambda name: {1, 2}}, sequential=True).run("Flaky", go)
    assert [e["type"] for e in odd.trace if e["event"] == "raised"] == ["ResultError"] * 3
