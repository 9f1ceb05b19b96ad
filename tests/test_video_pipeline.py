"""The video pipeline end to end: a real server, real `emirax runner` processes, the tenant's real
functions (tenants/media-encoding/functions.py), as a new user would run it.

- One start request: split into 31 chunks, 31 encodes in parallel across runners, assemble once,
  index once, a Thumbnail child workflow, completed with the output.
- Version 2 (tenants/media-encoding/v2) adds the remaster rules; activating it re-encodes the
  completed video with no new workflow started (always on).
- `kill -9` of a runner mid-invocation: the lease expires, another runner retries it, the
  workflow completes.
- `kill -9` of the server mid-run on PostgreSQL, then a restart: every workflow completes, every
  result applied exactly once.
"""

from __future__ import annotations

import secrets
import subprocess
import sys
import time
from collections import Counter
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import pytest

from serverkit import BACKENDS, RunnerProcess, ServerProcess, database

ROOT = Path(__file__).resolve().parent.parent
TENANT = ROOT / "tenants" / "media-encoding"
ADMIN = "admin-" + secrets.token_hex(8)
REQUEST = {"type": "Request", "fields": {"source": "s3://in/movie.mov", "recipe": "h264-720p"}}

# The tenant's functions, with an `encode` that can hang (HANG_ENCODE names a file it touches
# first) or dawdle (SLOW_ENCODE seconds), for the kill tests.
WRAPPED = f"""\
import importlib.util, os, time
from pathlib import Path
from emirax.runner import function

_spec = importlib.util.spec_from_file_location("media_functions", {str(TENANT / "functions.py")!r})
_m = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_m)
for _name in ("split", "assemble", "index", "grab"):
    globals()[_name] = function(_name)(getattr(_m, _name))

@function
def encode(uri, recipe):
    if os.environ.get("HANG_ENCODE"):
        Path(os.environ["HANG_ENCODE"]).touch()
        time.sleep(3600)
    time.sleep(float(os.environ.get("SLOW_ENCODE") or 0))
    return _m.encode(uri, recipe)
"""


def emirax(*args: str) -> str:
    proc = subprocess.run([sys.executable, "-m", "emirax", *args], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


@pytest.fixture(scope="module")
def bundles(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("bundles")
    emirax("compile", str(TENANT), "-o", str(out / "v1.emxb"))
    emirax("compile", str(TENANT / "v2"), "-o", str(out / "v2.emxb"))
    return {"1": out / "v1.emxb", "2": out / "v2.emxb"}


def new_tenant(srv: ServerProcess, bundle: Path) -> str:
    with srv.client(ADMIN) as admin:
        r = admin.post("/v1/tenants", json={"name": f"media-{secrets.token_hex(3)}"})
        assert r.status_code == 201, r.text
    token = r.json()["token"]
    emirax("upload", str(bundle), "--server", srv.base, "--token", token)
    return token


def wait_for(c: httpx.Client, wid: str, check: Any, timeout: float = 90.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        try:
            view = c.get(f"/v1/workflows/{wid}").json()
            if check(view):
                return view
        except httpx.HTTPError:
            pass  # the server is restarting
        assert time.monotonic() < deadline, f"{wid} never got there: {view}"
        time.sleep(0.1)


def trace(c: httpx.Client, wid: str) -> list[dict[str, Any]]:
    return [e["event"] for e in c.get(f"/v1/workflows/{wid}/trace", params={"limit": 10000}).json()["events"]]


def encodes_by_runner(runners: list[RunnerProcess]) -> dict[str, int]:
    return {r.name: sum(" encode " in line and ": ok" in line for line in r.lines()) for r in runners}


@pytest.mark.parametrize("kind", BACKENDS)
def test_the_video_pipeline_end_to_end_then_remastered_by_version_2(
        kind: str, request: pytest.FixtureRequest, tmp_path: Path, bundles: dict[str, Path]) -> None:
    with ExitStack() as stack:
        srv = ServerProcess(database(request, stack, tmp_path, kind), tmp_path, admin_token=ADMIN)
        stack.callback(srv.stop)
        token = new_tenant(srv, bundles["1"])
        env = {"MEDIA_ENCODING_STORE": str(tmp_path / "cas")}
        runners = [RunnerProcess(TENANT / "functions.py", srv.base, token, tmp_path, f"r{i}",
                                 concurrency=8, env=env) for i in range(3)]
        for r in runners:
            stack.callback(r.stop)
        c = stack.enter_context(srv.client(token))
        r = c.post("/v1/workflows", json={"workflow": "media.encode.VideoEncode", "id": "movie",
                                          "facts": [REQUEST]})
        assert r.status_code == 201, r.text
        view = wait_for(c, "movie", lambda v: v["status"] in ("completed", "failed"))
        assert view["status"] == "completed", view["error"]
        assert view["output"]["uri"].startswith("cas://")
        assert view["output"]["index"]["chunks"] == 31
        invoked = Counter(e["name"] for e in trace(c, "movie") if e["event"] == "invoke")
        assert invoked == {"split": 1, "encode": 31, "assemble": 1, "index": 1,
                           "media.encode.Thumbnail": 1}
        by_runner = encodes_by_runner(runners)
        assert sum(by_runner.values()) == 31
        assert sum(n > 0 for n in by_runner.values()) >= 2, by_runner  # in parallel, across runners
        workflows = c.get("/v1/workflows").json()["workflows"]
        assert sorted(w["workflow"] for w in workflows) == ["media.encode.Thumbnail", "media.encode.VideoEncode"]

        # version 2: the completed video is remastered, and nothing new is started
        emirax("upload", str(bundles["2"]), "--activate", "--server", srv.base, "--token", token)
        remastered = wait_for(c, "movie", lambda v: v["status"] == "completed"
                              and (v["output"] or {}).get("recipe") == "archive")
        assert remastered["version"] == "2.0.0"
        assert remastered["output"]["uri"] != view["output"]["uri"]
        assert remastered["output"]["index"] == view["output"]["index"]
        fired = Counter(e["rule"] for e in trace(c, "movie") if e["event"] == "fire")
        assert fired["remaster chunk"] == 31 and fired["remaster assemble"] == 1
        assert fired["encode chunk"] == 31 and fired["split source"] == 1  # nothing ran again
        assert len(c.get("/v1/workflows").json()["workflows"]) == 2


def test_a_runner_killed_mid_invocation_is_retried_elsewhere(
        request: pytest.FixtureRequest, tmp_path: Path, bundles: dict[str, Path]) -> None:
    module = tmp_path / "functions.py"
    module.write_text(WRAPPED)
    hung = tmp_path / "hung"
    with ExitStack() as stack:
        srv = ServerProcess(f"sqlite:///{tmp_path / 'emirax.db'}", tmp_path, admin_token=ADMIN,
                            env={"EMIRAX_LEASE_SECONDS": "2"})
        stack.callback(srv.stop)
        token = new_tenant(srv, bundles["1"])
        env = {"MEDIA_ENCODING_STORE": str(tmp_path / "cas")}
        doomed = RunnerProcess(module, srv.base, token, tmp_path, "doomed",
                               env={**env, "HANG_ENCODE": str(hung)})
        stack.callback(doomed.stop)
        c = stack.enter_context(srv.client(token))
        c.post("/v1/workflows", json={"workflow": "media.encode.VideoEncode", "id": "movie",
                                      "facts": [REQUEST]})
        deadline = time.monotonic() + 30
        while not hung.exists():
            assert time.monotonic() < deadline, doomed.lines()
            time.sleep(0.05)
        leased = [p for p in c.get("/v1/workflows/movie").json()["pending"] if p["status"] == "leased"]
        assert leased and all("leased by doomed" in p["waiting"] for p in leased)
        doomed.kill()

        healthy = RunnerProcess(module, srv.base, token, tmp_path, "healthy", concurrency=8, env=env)
        stack.callback(healthy.stop)
        view = wait_for(c, "movie", lambda v: v["status"] in ("completed", "failed"))
        assert view["status"] == "completed", view["error"]
        raised = [e for e in trace(c, "movie") if e["event"] == "raised"]
        assert raised and {(e["type"], e["runner"]) for e in raised} == {("LeaseExpired", "doomed")}
        assert encodes_by_runner([doomed, healthy]) == {"doomed": 0, "healthy": 31}


@pytest.mark.postgres
def test_the_server_killed_mid_run_loses_nothing_and_applies_nothing_twice(
        request: pytest.FixtureRequest, tmp_path: Path, bundles: dict[str, Path]) -> None:
    module = tmp_path / "functions.py"
    module.write_text(WRAPPED)
    ids = [f"movie-{i}" for i in range(4)]
    with ExitStack() as stack:
        url = database(request, stack, tmp_path, "postgres")
        env = {"EMIRAX_LEASE_SECONDS": "3"}
        srv = ServerProcess(url, tmp_path, admin_token=ADMIN, env=env)
        stack.callback(lambda: srv.stop())
        token = new_tenant(srv, bundles["1"])
        runner_env = {"MEDIA_ENCODING_STORE": str(tmp_path / "cas"), "SLOW_ENCODE": "0.05"}
        runners = [RunnerProcess(module, srv.base, token, tmp_path, f"r{i}", concurrency=4,
                                 env=runner_env) for i in range(2)]
        for r in runners:
            stack.callback(r.stop)
        with srv.client(token) as c:
            for wid in ids:
                c.post("/v1/workflows", json={"workflow": "media.encode.VideoEncode", "id": wid,
                                              "facts": [REQUEST]})
            encoded = lambda: sum(sum(f["type"] == "Encoded" for f in c.get(f"/v1/workflows/{w}").json()["facts"])
                                  for w in ids)
            deadline = time.monotonic() + 60
            while encoded() < 20:
                assert time.monotonic() < deadline
                time.sleep(0.05)
        srv.kill()  # mid-run: encodes leased, results on their way
        srv = ServerProcess(url, tmp_path, admin_token=ADMIN, env=env, port=srv.port)
        with srv.client(token) as c:
            for wid in ids:
                view = wait_for(c, wid, lambda v: v["status"] in ("completed", "failed"), timeout=120)
                assert view["status"] == "completed", view["error"]
                events = trace(c, wid)
                results = Counter(e["call"] for e in events if e["event"] == "result")
                invoked = {e["call"] for e in events if e["event"] == "invoke"}
                assert set(results) == invoked and set(results.values()) == {1}  # each once
                fired = Counter(e["rule"] for e in events if e["event"] == "fire")
                assert fired["encode chunk"] == 31 and fired["assemble"] == 1 and fired["index"] == 1
                encoded_facts = [f for f in view["facts"] if f["type"] == "Encoded"]
                assert sorted(f["fields"]["index"] for f in encoded_facts) == list(range(31))


def test_version_2_is_version_1_plus_the_remaster_rules() -> None:
    """tenants/media-encoding/v2 keeps a copy of version 1's rules (a project's rules folders
    cannot leave it): the copy must not drift. Its own rule tests pass."""
    v1 = (TENANT / "rules" / "video_encode.emx").read_text(encoding="utf-8")
    v2 = (TENANT / "v2" / "rules" / "video_encode.emx").read_text(encoding="utf-8")
    start = v2.index("    // ── version 2: remaster")
    end = v2.index("    // Before anything else: the first Failed fact fails the workflow")
    assert v2[:start] + v2[end:] == v1
    assert "rule 'remaster chunk'" in v2[start:end]
    assert "passed, 0 failed" in emirax("test", str(TENANT / "v2"))
