"""The invocation queue and the runner protocol against a real server, on SQLite and PostgreSQL.

A test plays the runner with httpx, exactly as the protocol of docs/queue.md says, so each
assertion is about what a runner relies on: leases in priority order, a result applied once,
refusals with a reason, retries with backoff, expired leases and timeouts retried, per-tenant
limits, long polls woken by new work, child workflows, execution avoidance, and the `waiting`
text of every pending invocation. Real runner processes are tests/test_runners.py.
"""

from __future__ import annotations

import secrets
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from serverkit import BACKENDS, ServerProcess, compile_bundle, running_server

ADMIN = "admin-" + secrets.token_hex(8)
LEASE_SECONDS = 1.5

JOBS = """\
package demo.jobs

workflow Job {
    fact Task(String name, int n)
    fact Done(String name, int value)
    fact Failed(String name, String message, int attempts)

    function int work(String name, int n) with [retries: 2, backoff: '200ms']
    function int slow(String name) with [timeout: '1s']
    function int urgent(String name) with [priority: 10]

    rule 'work' {
        match {
            t: Task(name != 'slow' && name != 'urgent')
            not Done(name == t.name)
        }
        action { work(t.name, t.n) }
        reaction { v -> insert Done(name: t.name, value: v) }
        error { err -> insert Failed(name: t.name, message: err.message, attempts: err.attempts) }
    }
    rule 'slow' {
        match {
            t: Task(name == 'slow')
            not Done(name == t.name)
        }
        action { slow(t.name) }
        reaction { v -> insert Done(name: t.name, value: v) }
        error { err -> insert Failed(name: t.name, message: err.type, attempts: err.attempts) }
    }
    rule 'urgent' with [priority: 45] {
        match {
            t: Task(name == 'urgent')
            not Done(name == t.name)
        }
        action { urgent(t.name) }
        reaction { v -> insert Done(name: t.name, value: v) }
    }
    rule 'finish' {
        match {
            tasks: collect Task()
            done: collect Done()
            when tasks.size() > 0 && done.size() == tasks.size()
        }
        action { complete(total: done.sum { it.value }) }
    }
}

workflow Parent {
    fact Go(String name, int n)
    fact Got(int total)

    rule 'spawn' {
        match {
            g: Go()
            not Got()
        }
        action { start demo.jobs.Job(Task(name: g.name, n: g.n)) }
        reaction { out ->
            insert Got(total: out.total)
            complete(total: out.total)
        }
    }
}
"""

# Version 2 adds a rule that calls `work` again with the arguments of a call that succeeded.
JOBS_V2 = JOBS.replace("""    rule 'finish' {""", """    rule 'again' {
        match {
            d: Done(name == 'a')
            t: Task(name == 'a')
        }
        action { work(t.name, t.n) }
        reaction { v -> modify d { value = v * 10 } }
    }
    rule 'finish' {""")


class Server(ServerProcess):
    def __init__(self, url: str, home: Path) -> None:
        super().__init__(url, home, admin_token=ADMIN,
                         env={"EMIRAX_LEASE_SECONDS": str(LEASE_SECONDS)})


@pytest.fixture(scope="module", params=BACKENDS)
def server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with running_server(request, tmp_path_factory.mktemp("home"), Server) as srv:
        yield srv


@pytest.fixture(scope="module")
def bundles(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    folder = tmp_path_factory.mktemp("b")
    return {"1": compile_bundle(folder, JOBS, "1.0.0"), "2": compile_bundle(folder, JOBS_V2, "2.0.0")}


@contextmanager
def tenant(server: Server, bundles: dict[str, bytes], **options: Any) -> Iterator[httpx.Client]:
    """A client of a new tenant with the jobs bundle uploaded."""
    with server.client(ADMIN) as admin:
        r = admin.post("/v1/tenants", json={"name": f"t-{secrets.token_hex(4)}", **options})
        assert r.status_code == 201, r.text
    with server.client(r.json()["token"]) as client:
        assert client.post("/v1/bundles", content=bundles["1"]).status_code == 201
        yield client


def start(c: httpx.Client, wid: str, *tasks: tuple[str, int], priority: int = 0) -> dict[str, Any]:
    r = c.post("/v1/workflows", json={"workflow": "demo.jobs.Job", "id": wid, "priority": priority,
                                      "facts": [{"type": "Task", "fields": {"name": n, "n": k}}
                                                for n, k in tasks]})
    assert r.status_code == 201, r.text
    return r.json()


def lease(c: httpx.Client, functions: list[str], n: int = 1, wait: float = 0,
          runner: str = "r1") -> list[dict[str, Any]]:
    r = c.post("/v1/runners/lease", json={"runner": runner, "functions": functions, "max": n,
                                          "wait": wait})
    assert r.status_code == 200, r.text
    return r.json()["invocations"]


def complete(c: httpx.Client, inv: dict[str, Any], result: Any) -> httpx.Response:
    return c.post(f"/v1/invocations/{inv['id']}/complete", json={"fence": inv["fence"], "result": result})


def fail(c: httpx.Client, inv: dict[str, Any], message: str = "boom", retry: bool = True) -> httpx.Response:
    return c.post(f"/v1/invocations/{inv['id']}/fail", json={
        "fence": inv["fence"], "error": {"type": "ValueError", "message": message}, "retry": retry})


def refused(r: httpx.Response, reason: str) -> None:
    assert r.status_code == 409, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    assert r.json()["reason"] == reason


def wait_until(predicate: Any, timeout: float = 20.0) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)
    return value


# ── the protocol ───────────────────────────────────────────────────────────────────────────────


def test_a_result_is_applied_exactly_once(server: Server, bundles: dict[str, bytes]) -> None:
    with tenant(server, bundles) as c:
        start(c, "w1", ("a", 2))
        [inv] = lease(c, ["work"])
        assert (inv["function"], inv["args"], inv["attempt"], inv["workflow"]) == ("work", ["a", 2], 1, "w1")
        assert inv["key"] == "w1:1"  # the workflow and its call: the same for every attempt
        assert lease(c, ["work"]) == []  # leased: nobody else gets it
        assert c.get("/v1/workflows/w1").json()["pending"][0]["waiting"].startswith("leased by r1 since")

        r = complete(c, inv, 7)
        assert r.status_code == 200 and r.json()["applied"] is True, r.text
        view = c.get("/v1/workflows/w1").json()
        assert view["status"] == "completed" and view["output"] == {"total": 7}

        refused(complete(c, inv, 8), "done")  # a duplicate changes nothing
        refused(complete(c, {**inv, "fence": inv["fence"] - 1}, 8), "done")
        assert c.get("/v1/workflows/w1").json() == view
        fires = [e["event"]["rule"] for e in c.get("/v1/workflows/w1/trace").json()["events"]
                 if e["event"]["event"] == "fire"]
        assert fires == ["work", "finish"]


def test_a_stale_lease_cannot_settle(server: Server, bundles: dict[str, bytes]) -> None:
    with tenant(server, bundles) as c:
        start(c, "w1", ("a", 1))
        [first] = lease(c, ["work"], runner="old")
        assert c.post(f"/v1/invocations/{first['id']}/release", json={"fence": first["fence"]}).json() == {"released": True}
        [second] = lease(c, ["work"], runner="new")
        assert second["id"] == first["id"] and second["fence"] > first["fence"]
        assert second["attempt"] == 1  # a release does not count as an attempt
        refused(complete(c, first, 1), "stale")
        refused(c.post(f"/v1/invocations/{first['id']}/heartbeat", json={"fence": first["fence"]}), "stale")
        assert complete(c, second, 5).json()["applied"] is True
        assert c.get("/v1/workflows/w1").json()["output"] == {"total": 5}


def test_failures_are_retried_with_backoff_then_the_error_section_runs(
        server: Server, bundles: dict[str, bytes]) -> None:
    with tenant(server, bundles) as c:
        start(c, "w1", ("a", 1))
        attempts = []
        for attempt in (1, 2, 3):
            [inv] = wait_until(lambda: lease(c, ["work"], wait=2))
            attempts.append(inv["attempt"])
            r = fail(c, inv, f"boom {attempt}")
            assert r.status_code == 200, r.text
            if attempt < 3:
                retry_at = r.json()["retry_at"]
                assert retry_at is not None
                pending = c.get("/v1/workflows/w1").json()["pending"][0]
                assert pending["waiting"].startswith("backing off until") and "boom" in pending["waiting"]
            else:
                assert r.json()["retry_at"] is None
        assert attempts == [1, 2, 3]
        view = c.get("/v1/workflows/w1").json()
        assert {"type": "Failed", "fields": {"name": "a", "message": "boom 3", "attempts": 3}} in view["facts"]
        assert view["pending"] == []
        raised = [e["event"] for e in c.get("/v1/workflows/w1/trace").json()["events"]
                  if e["event"]["event"] == "raised"]
        assert [e["attempt"] for e in raised] == [1, 2]


def test_a_permanent_failure_skips_the_retries(server: Server, bundles: dict[str, bytes]) -> None:
    with tenant(server, bundles) as c:
        start(c, "w1", ("a", 1))
        [inv] = lease(c, ["work"])
        assert fail(c, inv, "bad input", retry=False).json()["retry_at"] is None
        facts = c.get("/v1/workflows/w1").json()["facts"]
        assert {"type": "Failed", "fields": {"name": "a", "message": "bad input", "attempts": 1}} in facts


def test_an_expired_lease_is_retried_and_heartbeats_keep_it(server: Server, bundles: dict[str, bytes]) -> None:
    with tenant(server, bundles) as c:
        start(c, "w1", ("a", 1), ("b", 2))
        held, lost = lease(c, ["work"], n=2, runner="dying")
        for _ in range(4):  # past two lease lifetimes: renewed, so kept
            time.sleep(LEASE_SECONDS / 2)
            r = c.post(f"/v1/invocations/{held['id']}/heartbeat", json={"fence": held["fence"]})
            assert r.status_code == 200, r.text
        [again] = wait_until(lambda: lease(c, ["work"], runner="healthy", wait=1))
        assert again["id"] == lost["id"] and again["attempt"] == 2
        refused(complete(c, lost, 1), "stale")
        assert complete(c, again, 2).json()["applied"] is True
        assert complete(c, held, 1).json()["applied"] is True
        assert c.get("/v1/workflows/w1").json()["output"] == {"total": 3}
        raised = [e["event"] for e in c.get("/v1/workflows/w1/trace").json()["events"]
                  if e["event"]["event"] == "raised"]
        assert [(e["type"], e["runner"]) for e in raised] == [("LeaseExpired", "dying")]


def test_a_timed_out_attempt_fails_even_with_heartbeats(server: Server, bundles: dict[str, bytes]) -> None:
    with tenant(server, bundles) as c:
        start(c, "w1", ("slow", 1))
        [inv] = lease(c, ["slow"])
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            r = c.post(f"/v1/invocations/{inv['id']}/heartbeat", json={"fence": inv["fence"]})
            if r.status_code == 409:
                break
            time.sleep(0.2)
        facts = wait_until(lambda: [f for f in c.get("/v1/workflows/w1").json()["facts"] if f["type"] == "Failed"])
        assert facts == [{"type": "Failed", "fields": {"name": "slow", "message": "Timeout", "attempts": 1}}]
        refused(complete(c, inv, 1), "failed")


def test_priority_overtakes_a_backlog(server: Server, bundles: dict[str, bytes]) -> None:
    with tenant(server, bundles) as c:
        start(c, "backlog", *((f"t{i}", i) for i in range(20)))
        start(c, "vip", ("v", 1), priority=50)
        start(c, "urgent", ("urgent", 1))
        got = lease(c, ["work", "urgent"], n=3)
        # urgent: its function's 10 and its rule's 45; vip: its start request's 50
        assert [(i["workflow"], i["function"]) for i in got] == [
            ("urgent", "urgent"), ("vip", "work"), ("backlog", "work")]
        assert got[2]["args"] == ["t0", 0]  # then the oldest


def test_a_tenant_at_its_limit_waits_while_another_goes_on(server: Server, bundles: dict[str, bytes]) -> None:
    with tenant(server, bundles, max_in_flight=2) as small, tenant(server, bundles) as other:
        start(small, "w1", *((f"t{i}", i) for i in range(5)))
        start(other, "w1", *((f"t{i}", i) for i in range(5)))
        held = lease(small, ["work"], n=5)
        assert len(held) == 2
        assert lease(small, ["work"], n=5, wait=0.3) == []
        waiting = {p["waiting"] for p in small.get("/v1/workflows/w1").json()["pending"] if p["status"] == "queued"}
        assert waiting == {"tenant at its limit of 2 invocations in flight"}
        assert len(lease(other, ["work"], n=5)) == 5  # the other tenant is not held back

        # a long poll held back by the limit is woken when room is made
        got: list[Any] = []
        poll = threading.Thread(target=lambda: got.extend(lease(small, ["work"], n=5, wait=10)))
        poll.start()
        time.sleep(0.3)
        began = time.monotonic()
        assert complete(small, held[0], 1).status_code == 200
        poll.join(timeout=10)
        assert len(got) == 1 and time.monotonic() - began < 2


def test_a_long_poll_is_woken_by_new_work(server: Server, bundles: dict[str, bytes]) -> None:
    with tenant(server, bundles) as c:
        got: list[Any] = []
        poll = threading.Thread(target=lambda: got.extend(lease(c, ["work"], wait=20)))
        poll.start()
        time.sleep(0.5)
        began = time.monotonic()
        start(c, "w1", ("a", 1))
        poll.join(timeout=20)
        assert len(got) == 1 and time.monotonic() - began < 1.0


def test_why_an_invocation_waits(server: Server, bundles: dict[str, bytes]) -> None:
    with tenant(server, bundles) as c:
        start(c, "w1", ("a", 1))
        [pending] = c.get("/v1/workflows/w1").json()["pending"]
        assert pending["waiting"] == "no runner serves work"
        lease(c, ["slow"], runner="other")  # a runner of something else
        assert c.get("/v1/workflows/w1").json()["pending"][0]["waiting"] == "no runner serves work"
        [inv] = lease(c, ["work"], runner="r9")
        assert c.post(f"/v1/invocations/{inv['id']}/release", json={"fence": inv["fence"]}).status_code == 200
        assert c.get("/v1/workflows/w1").json()["pending"][0]["waiting"] == "queued for a runner of work"


def test_runners_see_only_their_tenant(server: Server, bundles: dict[str, bytes]) -> None:
    with tenant(server, bundles) as mine, tenant(server, bundles) as theirs:
        start(mine, "w1", ("a", 1))
        assert lease(theirs, ["work"]) == []
        [inv] = lease(mine, ["work"])
        for path in ("complete", "fail", "heartbeat", "release"):
            r = theirs.post(f"/v1/invocations/{inv['id']}/{path}", json={"fence": inv["fence"], "result": 1})
            assert r.status_code == 404, r.text
        assert mine.get("/v1/workflows/w1").json()["pending"][0]["status"] == "leased"


def test_bad_runner_requests_are_refused(server: Server, bundles: dict[str, bytes]) -> None:
    with tenant(server, bundles) as c:
        for body in ({"runner": "r", "functions": []}, {"runner": "", "functions": ["work"]},
                     {"runner": "r", "functions": ["work"], "max": 0},
                     {"runner": "r", "functions": ["work"], "wait": 600}):
            r = c.post("/v1/runners/lease", json=body)
            assert r.status_code == 422 and r.headers["content-type"].startswith("application/problem+json")
        assert c.post("/v1/invocations/999999/complete", json={"fence": 1, "result": 1}).status_code == 404
        assert c.post("/v1/invocations/1/complete", json={"result": 1}).status_code == 422
    with server.client("nobody") as anon:
        assert anon.post("/v1/runners/lease", json={"runner": "r", "functions": ["w"]}).status_code == 401


# ── child workflows and execution avoidance ────────────────────────────────────────────────────


def test_a_child_workflow_completes_its_parents_call(server: Server, bundles: dict[str, bytes]) -> None:
    with tenant(server, bundles) as c:
        r = c.post("/v1/workflows", json={"workflow": "demo.jobs.Parent", "id": "p1",
                                          "facts": [{"type": "Go", "fields": {"name": "a", "n": 4}}]})
        assert r.status_code == 201, r.text
        [pending] = r.json()["pending"]
        assert pending["kind"] == "start" and pending["waiting"] == "child workflow p1:1 is running"
        assert c.get("/v1/workflows/p1:1").json()["workflow"] == "demo.jobs.Job"
        [inv] = lease(c, ["work"])
        assert inv["workflow"] == "p1:1"
        assert complete(c, inv, 9).json()["applied"] is True
        parent = c.get("/v1/workflows/p1").json()
        assert parent["status"] == "completed" and parent["output"] == {"total": 9}
        assert parent["pending"] == []


def test_a_recorded_result_is_reused_on_re_evaluation(server: Server, bundles: dict[str, bytes]) -> None:
    with tenant(server, bundles) as c:
        start(c, "w1", ("a", 3))
        [inv] = lease(c, ["work"])
        complete(c, inv, 4)
        assert c.post("/v1/bundles", content=bundles["2"]).status_code == 201
        assert c.post("/v1/bundles/demo.jobs/versions/2.0.0/activate").status_code == 200
        view = wait_until(lambda: (v := c.get("/v1/workflows/w1").json())["version"] == "2.0.0" and v)
        assert {"type": "Done", "fields": {"name": "a", "value": 40}} in view["facts"]
        assert view["pending"] == [] and lease(c, ["work"]) == []  # no runner was asked again
        events = [e["event"] for e in c.get("/v1/workflows/w1/trace").json()["events"]]
        assert {"event": "reused", "call": 2, "function": "work"} in events


def test_a_batch_of_results_is_applied_with_an_answer_each(server: Server, bundles: dict[str, bytes]) -> None:
    with tenant(server, bundles) as c, tenant(server, bundles) as other:
        start(c, "w1", ("a", 1), ("b", 2), ("c", 3))
        start(c, "w2", ("d", 4))
        start(other, "x", ("e", 5))
        held = lease(c, ["work"], n=4)
        [foreign] = lease(other, ["work"])
        by_args = {inv["args"][0]: inv for inv in held}
        stale = {**by_args["c"], "fence": by_args["c"]["fence"] + 7}
        batch = [by_args["a"], by_args["d"], by_args["b"], stale, foreign]
        r = c.post("/v1/invocations/complete", json={"results": [
            {"id": i["id"], "fence": i["fence"], "result": 10} for i in batch]})
        assert r.status_code == 200, r.text
        answers = r.json()["results"]
        assert [a["id"] for a in answers] == [i["id"] for i in batch]
        assert [a["applied"] for a in answers] == [True, True, True, False, False]
        assert answers[3]["reason"] == "stale" and answers[4]["reason"] == "not_found"
        assert c.get("/v1/workflows/w2").json()["output"] == {"total": 10}
        w1 = c.get("/v1/workflows/w1").json()
        assert w1["status"] == "running" and [p["name"] for p in w1["pending"]] == ["work"]
        fires = [e["event"] for e in c.get("/v1/workflows/w1/trace").json()["events"]]
        assert sum(e["event"] == "result" for e in fires) == 2
        assert complete(c, by_args["c"], 10).json()["applied"] is True
        assert c.get("/v1/workflows/w1").json()["output"] == {"total": 30}
        assert other.get("/v1/workflows/x").json()["pending"][0]["status"] == "leased"  # untouched
        dup = c.post("/v1/invocations/complete", json={"results": [
            {"id": 1, "fence": 1, "result": 1}, {"id": 1, "fence": 1, "result": 1}]})
        assert dup.status_code == 422


def test_a_stopping_server_answers_its_long_polls_at_once(tmp_path: Path, bundles: dict[str, bytes]) -> None:
    srv = Server(f"sqlite:///{tmp_path / 'emirax.db'}", tmp_path)
    try:
        with tenant(srv, bundles) as c:
            got: list[Any] = []
            poll = threading.Thread(target=lambda: got.append(
                c.post("/v1/runners/lease", json={"runner": "r", "functions": ["work"], "wait": 30})))
            poll.start()
            time.sleep(0.5)
            began = time.monotonic()
            srv.proc.terminate()
            # uvicorn shuts down gracefully, then re-raises the signal it caught: -SIGTERM
            assert srv.proc.wait(timeout=10) in (0, -signal.SIGTERM)
            poll.join(timeout=10)
            assert time.monotonic() - began < 5  # not the poll's 30 s
            assert got and got[0].status_code == 200 and got[0].json()["invocations"] == []
    finally:
        srv.stop()


def test_a_workflow_running_when_a_version_is_activated_moves_to_it_when_it_rests(
        server: Server, bundles: dict[str, bytes]) -> None:
    with tenant(server, bundles) as c:
        start(c, "w1", ("a", 3))
        [inv] = lease(c, ["work"])
        assert c.post("/v1/bundles", content=bundles["2"]).status_code == 201
        assert c.post("/v1/bundles/demo.jobs/versions/2.0.0/activate").status_code == 200
        time.sleep(0.3)  # the activation's re-evaluation finds w1 running: nothing owed yet
        assert c.get("/v1/workflows/w1").json()["version"] == "1.0.0"
        assert complete(c, inv, 4).json()["applied"] is True  # completes under 1.0.0 ...
        view = wait_until(lambda: (v := c.get("/v1/workflows/w1").json())["version"] == "2.0.0" and v)
        assert {"type": "Done", "fields": {"name": "a", "value": 40}} in view["facts"]  # ... then 2.0.0
