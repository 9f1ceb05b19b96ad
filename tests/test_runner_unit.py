"""The runner SDK without a real server: what a runner sends for each outcome, how it waits for a
server that went away, how it stops, and `emirax runner`'s own errors.

The protocol's server side is played by `FakeServer` behind `httpx.MockTransport` (in memory, no
sockets), which records every request the runner makes, so the tests assert the exact bodies of
docs/queue.md: `complete {fence, result}`, `fail {fence, error: {type, message}, retry}`,
heartbeats and releases. The command's tests run `python -m emirax runner` in a subprocess, the
way users run it: exit 1 with one `emirax: error:` line and no traceback, and a clean exit 0 on
SIGTERM. The integration tests against the real server live elsewhere (the lead's).
"""

from __future__ import annotations

import json
import logging
import math
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from emirax.runner import Answer, Backoff, Outcome, Permanent, Runner, call, current

TIMEOUT = 30
ROOT = Path(__file__).resolve().parents[1]


# ── outcomes ───────────────────────────────────────────────────────────────────────────────────


class BadInput(Permanent):
    pass


def _raise(exc: BaseException) -> Callable[..., Any]:
    def fn(*args: Any) -> Any:
        raise exc
    return fn


@pytest.mark.parametrize("fn, route, body", [
    (lambda a, b: [a, b], "complete", {"fence": 7, "result": [1, "x"]}),
    (lambda a, b: None, "complete", {"fence": 7, "result": None}),
    (_raise(ValueError("boom")), "fail",
     {"fence": 7, "error": {"type": "ValueError", "message": "boom"}, "retry": True}),
    (_raise(KeyError()), "fail",  # no message: the class name says what happened
     {"fence": 7, "error": {"type": "KeyError", "message": "KeyError"}, "retry": True}),
    (_raise(Permanent("no such file")), "fail",
     {"fence": 7, "error": {"type": "Permanent", "message": "no such file"}, "retry": False}),
    (_raise(BadInput("bad recipe")), "fail",
     {"fence": 7, "error": {"type": "BadInput", "message": "bad recipe"}, "retry": False}),
    (_raise(SystemExit(3)), "fail",
     {"fence": 7, "error": {"type": "SystemExit", "message": "3"}, "retry": True}),
])
def test_an_outcome_is_the_body_of_complete_or_fail(fn: Callable[..., Any], route: str,
                                                      body: dict[str, Any]) -> None:
    assert call(fn, "f", [1, "x"]).request(7) == (route, body)


@pytest.mark.parametrize("value", [{1, 2}, math.nan, {"a": math.inf}, object(), b"bytes"])
def test_a_result_that_is_not_json_fails_with_result_error(value: Any) -> None:
    route, body = call(lambda: value, "encode", []).request(3)
    assert route == "fail"
    assert body["error"]["type"] == "ResultError"
    assert body["error"]["message"].startswith("the result of encode is not JSON data")
    assert body["retry"] is True


def test_an_unknown_function_fails_and_a_huge_message_is_cut() -> None:
    assert call(None, "nope", []).error == {"type": "NotFound",
                                            "message": "this runner has no function 'nope'"}
    assert len(call(_raise(ValueError("x" * 100_000)), "f", []).error["message"]) == 4000


def test_log_texts_of_outcomes() -> None:
    assert Outcome(True, 1).describe(12.34) == "ok in 12.3 ms"
    assert Outcome.failure("ValueError", "boom").describe(1) == "failed: ValueError: boom"
    assert Outcome.failure("E", "two\n  lines").describe(1) == "failed: E: two lines"
    assert Outcome.failure("E", "x" * 1000).describe(1) == "failed: E: " + "x" * 300 + "..."


def test_backoff_doubles_from_a_fifth_of_a_second_up_to_five() -> None:
    b = Backoff()
    assert [b.next() for _ in range(8)] == [0.2, 0.4, 0.8, 1.6, 3.2, 5.0, 5.0, 5.0]
    b.reset()
    assert b.next() == 0.2


def test_which_answers_are_worth_retrying() -> None:
    assert [Answer(s).retryable for s in (0, 500, 502, 503, 429, 200, 400, 401, 404, 409)] == \
        [True] * 5 + [False] * 5
    assert Answer(409, {"reason": "stale"}).reason == "stale"
    assert Answer(401, {"title": "Unauthorized", "detail": "bad token"}).reason == \
        "401 Unauthorized: bad token"
    assert Answer(0, error="ConnectError: refused").reason == "ConnectError: refused"


@pytest.mark.parametrize("kwargs, message", [
    ({"functions": {}}, "no functions"),
    ({"server": "127.0.0.1:8080"}, "not an http"),
    ({"token": ""}, "no token"),
    ({"batch": 101}, "batch"),
    ({"wait": 61}, "wait"),
    ({"concurrency": 0}, "concurrency"),
])
def test_a_runner_checks_its_settings(kwargs: dict[str, Any], message: str) -> None:
    args = {"functions": {"f": len}, "server": "http://x", "token": "t"} | kwargs
    with pytest.raises(ValueError, match=message):
        Runner(args.pop("functions"), args.pop("server"), args.pop("token"), **args)


# ── a runner against the protocol, in memory ───────────────────────────────────────────────────


def inv(id_: int, function: str, args: list[Any], fence: int | None = None,
        attempt: int = 1) -> dict[str, Any]:
    return {"id": id_, "key": f"wf-{id_}:3", "fence": fence or 100 + id_, "workflow": f"wf-{id_}",
            "function": function, "args": args, "attempt": attempt, "options": {},
            "deadline": "2999-01-01T00:00:00+00:00"}


class FakeServer:
    """The server side of docs/queue.md, in memory. `plan[path]` answers first, in order (an
    `httpx.Response`, or an exception to raise as a connection error)."""

    def __init__(self, *invocations: dict[str, Any], heartbeat: float = 10.0) -> None:
        self.queue = list(invocations)
        self.heartbeat = heartbeat
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.plan: dict[str, list[Any]] = {}
        self.on_lease: Callable[[], None] | None = None
        self.down_until = 0.0  # until then every request finds no server
        self.batches: list[list[int]] = []  # the ids of each batch of results
        self.lock = threading.Lock()

    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self.handle)

    def sent(self, suffix: str) -> list[tuple[str, dict[str, Any]]]:
        with self.lock:
            return [(p, b) for p, b in self.calls if p.endswith(suffix)]

    def handle(self, request: httpx.Request) -> httpx.Response:
        assert request.headers["authorization"] == "Bearer tok"
        path, body = request.url.path, json.loads(request.content)
        if time.monotonic() < self.down_until:
            time.sleep(0.01)
            raise httpx.ConnectError("Connection refused")
        if path == "/v1/invocations/complete":
            return self.complete_batch(body)
        with self.lock:
            self.calls.append((path, body))
            planned = self.plan.get(path)
            step = planned.pop(0) if planned else None
        if isinstance(step, Exception):
            raise step
        if step is not None:
            return step
        if path == "/v1/runners/lease":
            return self.lease(body)
        if path.endswith("/fail"):
            return httpx.Response(200, json={"applied": True, "retry_at": "2999-01-01T00:00:00Z"
                                             if body["retry"] else None})
        if path.endswith("/heartbeat"):
            return httpx.Response(200, json={"deadline": "2999-01-01T00:00:00+00:00"})
        if path.endswith("/release"):
            return httpx.Response(200, json={"released": True})
        return httpx.Response(200, json={"applied": True, "workflow": "wf", "status": "running"})

    def complete_batch(self, body: dict[str, Any]) -> httpx.Response:
        """A batch of results: each recorded and answered as its own `complete` would be (a
        planned batch answer, under the batch path, comes first)."""
        with self.lock:
            self.batches.append([item["id"] for item in body["results"]])
            planned = self.plan.get("/v1/invocations/complete")
            step = planned.pop(0) if planned else None
        if step is not None:
            return step
        answers = []
        for item in body["results"]:
            path = f"/v1/invocations/{item['id']}/complete"
            with self.lock:
                self.calls.append((path, {k: v for k, v in item.items() if k != "id"}))
                planned = self.plan.get(path)
                one = planned.pop(0) if planned else httpx.Response(200, json={"applied": True})
            doc = one.json()
            if one.status_code == 409:
                doc = {"applied": False, "reason": doc.get("reason")}
            answers.append({"id": item["id"], **doc})
        return httpx.Response(200, json={"results": answers})

    def lease(self, body: dict[str, Any]) -> httpx.Response:
        assert 1 <= body["max"] <= 100 and body["functions"] and body["runner"]
        if self.on_lease is not None:
            self.on_lease()
        with self.lock:
            batch, self.queue = self.queue[:body["max"]], self.queue[body["max"]:]
        if not batch:
            time.sleep(min(body["wait"], 0.02))  # the long poll, shortened
        return httpx.Response(200, json={"invocations": batch, "heartbeat": self.heartbeat})


def refused(status: int, reason: str) -> httpx.Response:
    return httpx.Response(status, json={"title": "Conflict", "status": status, "reason": reason})


class Running:
    """A Runner on a thread, against a FakeServer."""

    def __init__(self, server: FakeServer, functions: dict[str, Callable[..., Any]],
                 **kwargs: Any) -> None:
        self.runner = Runner(functions, "http://emirax.test", "tok", wait=0.05,
                             transport=server.transport(), **kwargs)
        self.code: int | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        if server.on_lease is None:
            self.thread.start()

    def _run(self) -> None:
        self.code = self.runner.run()

    def until(self, condition: Callable[[], Any], timeout: float = 10.0) -> None:
        end = time.monotonic() + timeout
        while not condition():
            assert time.monotonic() < end, "timed out"
            time.sleep(0.01)

    def stop(self, **kwargs: Any) -> int | None:
        self.runner.stop(**kwargs)
        self.thread.join(TIMEOUT)
        assert not self.thread.is_alive()
        return self.code


@pytest.fixture
def logs(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.INFO, logger="emirax.runner")
    return caplog


def lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "emirax.runner"]


def test_results_and_failures_are_reported_with_the_lease_fence(logs: Any) -> None:
    seen: list[Any] = []

    def encode(uri: str, recipe: str) -> str:
        seen.append(current())
        return f"{uri}.{recipe}"

    def split(source: str) -> list[str]:
        raise ValueError("boom")

    server = FakeServer(inv(1, "encode", ["a", "h264"], fence=42), inv(2, "split", ["s"]))
    run = Running(server, {"encode": encode, "split": split})
    run.until(lambda: server.sent("/complete") and server.sent("/fail"))
    assert run.stop() == 0
    assert server.sent("/complete") == [("/v1/invocations/1/complete", {"fence": 42, "result": "a.h264"})]
    assert server.sent("/fail") == [("/v1/invocations/2/fail", {
        "fence": 102, "error": {"type": "ValueError", "message": "boom"}, "retry": True})]
    # The function saw its invocation; outside one there is none.
    assert [(i.id, i.key, i.workflow, i.function, i.attempt) for i in seen] == \
        [(1, "wf-1:3", "wf-1", "encode", 1)]
    assert current() is None
    text = lines(logs)
    assert any(line.startswith("invocation 1 encode (workflow wf-1, attempt 1): ok in ")
               for line in text)
    assert "invocation 2 split (workflow wf-2, attempt 1): failed: ValueError: boom (will retry)" in text
    lease = server.sent("/lease")[0][1]
    assert lease["functions"] == ["encode", "split"] and lease["wait"] == 0.05


def test_a_permanent_error_is_sent_without_retry(logs: Any) -> None:
    server = FakeServer(inv(1, "f", []))
    run = Running(server, {"f": _raise(BadInput("no"))})
    run.until(lambda: server.sent("/fail"))
    run.stop()
    assert server.sent("/fail")[0][1]["retry"] is False
    assert "invocation 1 f (workflow wf-1, attempt 1): failed: BadInput: no (permanent, no retry)" \
        in lines(logs)


def test_it_leases_only_for_free_slots() -> None:
    gate = threading.Event()
    server = FakeServer(*[inv(i, "f", []) for i in range(1, 8)])
    run = Running(server, {"f": lambda: gate.wait(10)}, concurrency=3, batch=2)
    run.until(lambda: run.runner.running == 3)
    time.sleep(0.1)  # every slot is taken: no more leases go out meanwhile
    assert [b["max"] for _, b in server.sent("/lease")] == [2, 1]
    gate.set()
    run.until(lambda: len(server.sent("/complete")) == 7)
    run.stop()
    assert all(b["max"] <= 2 for _, b in server.sent("/lease"))


def test_results_that_finish_together_are_reported_together(logs: Any) -> None:
    gate = threading.Event()
    server = FakeServer(*[inv(i, "f", []) for i in range(1, 9)])
    server.plan["/v1/invocations/5/complete"] = [refused(409, "stale")]
    run = Running(server, {"f": lambda: gate.wait(10) and "r"}, concurrency=8, batch=8)
    run.until(lambda: run.runner.running == 8)
    gate.set()
    run.until(lambda: len(server.sent("/complete")) == 8)
    run.stop()
    batched = [i for b in server.batches for i in b]
    assert server.batches and len(batched) == len(set(batched))  # batched, never twice
    assert sorted(p for p, _ in server.sent("/complete")) == sorted(
        f"/v1/invocations/{i}/complete" for i in range(1, 9))  # each result reported once
    text = lines(logs)
    assert any("invocation 5 f" in line and line.endswith("result not applied: stale") for line in text)
    assert sum(line.endswith(" ms") and "ok in" in line for line in text) == 7


def test_a_batch_the_server_does_not_take_is_sent_one_by_one() -> None:
    gate = threading.Event()
    server = FakeServer(*[inv(i, "f", []) for i in range(1, 5)])
    server.plan["/v1/invocations/complete"] = [httpx.Response(503)] * 10
    run = Running(server, {"f": lambda: gate.wait(10) and "r"}, concurrency=4, batch=4)
    run.until(lambda: run.runner.running == 4)
    gate.set()
    run.until(lambda: len(server.sent("/complete")) == 4)
    run.stop()
    assert sorted(p for p, _ in server.sent("/complete")) == [
        f"/v1/invocations/{i}/complete" for i in range(1, 5)]


def test_a_result_over_the_size_limit_fails_the_invocation_for_good(logs: Any) -> None:
    server = FakeServer(inv(1, "f", []))
    server.plan["/v1/invocations/1/complete"] = [httpx.Response(413, json={
        "title": "Payload Too Large", "detail": "the body is over 1048576 bytes"})]
    run = Running(server, {"f": lambda: "x" * 10})
    run.until(lambda: server.sent("/fail"))
    run.stop()
    [(_, body)] = server.sent("/fail")
    assert body["retry"] is False and body["error"]["type"] == "ResultTooLarge"
    assert "size limit" in body["error"]["message"]


def test_a_refused_result_is_logged_and_dropped(logs: Any) -> None:
    server = FakeServer(inv(1, "f", [], fence=5))
    server.plan["/v1/invocations/1/complete"] = [refused(409, "stale")]
    run = Running(server, {"f": lambda: 1})
    run.until(lambda: server.sent("/complete"))
    run.stop()
    assert len(server.sent("/complete")) == 1
    assert any(line.startswith("invocation 1 f (workflow wf-1, attempt 1): ok in ")
               and line.endswith("; result not applied: stale") for line in lines(logs))


def test_a_result_the_engine_refuses_is_logged_as_a_failed_attempt(logs: Any) -> None:
    server = FakeServer(inv(1, "f", []))
    server.plan["/v1/invocations/1/complete"] = [httpx.Response(200, json={
        "applied": False, "error": {"type": "ResultError", "message": "not a String"},
        "retry_at": "2999-01-01T00:00:00Z"})]
    run = Running(server, {"f": lambda: 1})
    run.until(lambda: any("refused" in line for line in lines(logs)))
    run.stop()
    assert [line.split(": ", 1)[1].split(" in ")[0] for line in lines(logs) if "refused" in line] \
        == ["returned"]
    assert any(line.endswith("but the result was refused: ResultError: not a String (will retry)")
               for line in lines(logs))


def test_a_result_survives_a_server_restart(logs: Any) -> None:
    server = FakeServer(inv(1, "f", []))

    def f() -> str:  # the server goes away while the function runs, for 0.5 s
        server.down_until = time.monotonic() + 0.5
        return "r"

    server.plan["/v1/invocations/1/complete"] = [httpx.Response(503)]
    run = Running(server, {"f": f})
    run.until(lambda: server.sent("/complete") and lines(logs)[-1].endswith(" ms"))
    run.stop()
    # The 503, then tries that found no server (not recorded), then the one that got through.
    assert [b for _, b in server.sent("/complete")] == [{"fence": 101, "result": "r"}] * 2
    text = lines(logs)
    assert [line for line in text if "reach" in line] == [
        "server unreachable, retrying (http://emirax.test: ConnectError: Connection refused)",
        "server reachable again (http://emirax.test)"]
    assert any(line.startswith("invocation 1 f (workflow wf-1, attempt 1): ok in ") for line in text)


def test_a_lost_answer_then_done_counts_as_applied(logs: Any) -> None:
    server = FakeServer(inv(1, "f", []))
    server.plan["/v1/invocations/1/complete"] = [httpx.ReadTimeout("slow"), refused(409, "done")]
    run = Running(server, {"f": lambda: "r"})
    run.until(lambda: len(server.sent("/complete")) == 2)
    run.stop()
    assert not any("not applied" in line for line in lines(logs))


def test_lease_errors_are_one_line_and_retried_with_backoff(logs: Any) -> None:
    down = httpx.ConnectError("Connection refused")
    server = FakeServer(inv(1, "f", []))
    server.plan["/v1/runners/lease"] = [down, httpx.Response(502), down]
    run = Running(server, {"f": lambda: 1})
    run.until(lambda: server.sent("/complete"))
    run.stop()
    text = lines(logs)
    assert [line for line in text if "unreachable" in line] == [
        "server unreachable, retrying (http://emirax.test: ConnectError: Connection refused)"]
    assert "server reachable again (http://emirax.test)" in text
    assert not any(r.exc_info for r in logs.records)


@pytest.mark.parametrize("status", [401, 403])
def test_a_refused_token_stops_the_runner_with_exit_1(status: int, logs: Any) -> None:
    server = FakeServer()
    server.plan["/v1/runners/lease"] = [httpx.Response(status, json={"title": "Unauthorized"})]
    run = Running(server, {"f": lambda: 1})
    run.thread.join(TIMEOUT)
    assert run.code == 1
    assert [line for line in lines(logs) if "token" in line] == [
        f"the server refused the token ({status} Unauthorized): check --token or $EMIRAX_TOKEN; "
        "stopping"]
    assert len(server.sent("/lease")) == 1


@pytest.mark.parametrize("answer", [httpx.Response(404, json={"title": "Not Found"}),
                                    httpx.Response(200, text="<html>a proxy</html>")])
def test_a_server_without_the_protocol_stops_the_runner(answer: httpx.Response, logs: Any) -> None:
    server = FakeServer()
    server.plan["/v1/runners/lease"] = [answer]
    run = Running(server, {"f": lambda: 1})
    run.thread.join(TIMEOUT)
    assert run.code == 1
    assert any(line.startswith("http://emirax.test does not answer the runner protocol")
               for line in lines(logs))


def test_a_lost_lease_is_never_reported(logs: Any) -> None:
    gate = threading.Event()
    server = FakeServer(inv(1, "f", []), heartbeat=0.05)
    server.plan["/v1/invocations/1/heartbeat"] = [refused(409, "expired")]
    run = Running(server, {"f": lambda: gate.wait(10) and "late"})
    run.until(lambda: server.sent("/heartbeat"))
    gate.set()
    run.until(lambda: run.runner.running == 0 and any("not reported" in line for line in lines(logs)))
    run.stop()
    assert server.sent("/complete") == []
    text = lines(logs)
    assert "invocation 1 f (workflow wf-1, attempt 1): lease lost (expired); its result will not be " \
        "reported" in text
    assert len(server.sent("/heartbeat")) == 1  # not renewed any more


def test_heartbeats_renew_running_invocations() -> None:
    gate = threading.Event()
    server = FakeServer(inv(1, "f", [], fence=9), heartbeat=0.05)
    run = Running(server, {"f": lambda: gate.wait(10)})
    run.until(lambda: len(server.sent("/heartbeat")) >= 3)
    gate.set()
    run.until(lambda: server.sent("/complete"))
    run.stop()
    assert {(p, b["fence"]) for p, b in server.sent("/heartbeat")} == {("/v1/invocations/1/heartbeat", 9)}


def test_stopping_waits_for_running_work_then_releases_the_rest(logs: Any) -> None:
    gate = threading.Event()
    slow = threading.Event()
    server = FakeServer(inv(1, "quick", []), inv(2, "slow", []))

    def quick() -> str:
        gate.wait(10)
        time.sleep(0.1)  # still running when stop() comes: it gets to finish
        return "q"

    run = Running(server, {"quick": quick, "slow": lambda: slow.wait(10) and "s"}, grace=0.5)
    run.until(lambda: run.runner.running == 2)
    gate.set()
    assert run.stop() == 0
    assert [p for p, _ in server.sent("/complete")] == ["/v1/invocations/1/complete"]
    assert server.sent("/release") == [("/v1/invocations/2/release", {"fence": 102})]
    assert run.runner.running == 1  # the slow function still runs; its result is never sent
    slow.set()
    run.until(lambda: run.runner.running == 0)
    assert len(server.sent("/complete")) == 1
    text = lines(logs)
    assert "invocation 2 slow (workflow wf-2, attempt 1): released (still running after 0.5 s)" in text
    assert text[-1] .startswith("invocation 2 slow") and "not reported" in text[-1]


def test_a_lease_answer_after_stop_is_released_at_once(logs: Any) -> None:
    server = FakeServer(inv(1, "f", []), inv(2, "f", []))
    called: list[int] = []
    server.on_lease = lambda: run.runner.stop()  # the stop comes while the long poll is out
    run = Running(server, {"f": lambda: called.append(1)})
    run.thread.start()
    run.thread.join(TIMEOUT)
    assert run.code == 0
    run.until(lambda: len(server.sent("/release")) == 2)  # run() does not wait for the poll
    assert called == []
    assert [p for p, _ in server.sent("/release")] == ["/v1/invocations/1/release",
                                                       "/v1/invocations/2/release"]
    assert "invocation 1 f (workflow wf-1, attempt 1): released (leased while stopping)" in lines(logs)


def test_a_second_stop_does_not_wait_for_the_grace_period() -> None:
    gate = threading.Event()
    server = FakeServer(inv(1, "f", []))
    run = Running(server, {"f": lambda: gate.wait(10)}, grace=30)
    run.until(lambda: run.runner.running == 1)
    run.runner.stop()
    started = time.monotonic()
    assert run.stop(now=True) == 0
    assert time.monotonic() - started < 5
    assert [p for p, _ in server.sent("/release")] == ["/v1/invocations/1/release"]
    gate.set()


# ── emirax runner ──────────────────────────────────────────────────────────────────────────────

FUNCTIONS = """\
from emirax.runner import function

@function("encode")
def encode_it(uri, recipe):
    return uri + "." + recipe

def split(source):
    return [source]
"""


def emirax(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if not k.startswith("EMIRAX_")} | (env or {})
    return subprocess.run([sys.executable, "-m", "emirax", "runner", *args], cwd=cwd, env=full,
                          capture_output=True, text=True, timeout=TIMEOUT)


@pytest.mark.parametrize("module, extra, needle", [
    ("missing.py", [], "missing.py: no such file"),
    ("empty.py", [], "empty.py defines no functions"),
    ("broken.py", [], "broken.py: importing it raised ZeroDivisionError"),
    ("fns.py", ["--function", "encode", "--function", "assemble"],
     "fns.py defines no function 'assemble' (it defines encode, split)"),
    ("fns.py", ["--server", "localhost:8080"], "is not an http:// or https:// URL"),
])
def test_runner_errors_are_one_line_and_exit_1(tmp_path: Path, module: str, extra: list[str],
                                                needle: str) -> None:
    (tmp_path / "empty.py").write_text("X = 1\n")
    (tmp_path / "broken.py").write_text("1 / 0\n")
    (tmp_path / "fns.py").write_text(FUNCTIONS)
    run = emirax(module, "--token", "t", *extra, cwd=tmp_path)
    assert run.returncode == 1, run.stderr
    assert run.stderr.startswith("emirax: error: ") and needle in run.stderr, run.stderr
    assert run.stderr.count("\n") == 1 and "Traceback" not in run.stderr
    assert run.stdout == ""


def test_runner_without_a_token_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "fns.py").write_text(FUNCTIONS)
    run = emirax("fns.py", cwd=tmp_path)
    assert run.returncode == 1
    assert run.stderr == "emirax: error: no token: pass --token or set EMIRAX_TOKEN\n"


class _Stub(BaseHTTPRequestHandler):
    """A server that refuses one token and has no work for the other."""

    def do_POST(self) -> None:  # noqa: N802 (the standard library's name)
        self.rfile.read(int(self.headers["Content-Length"]))
        if self.headers["Authorization"] != "Bearer good":
            status, doc = 401, {"title": "Unauthorized", "detail": "unknown token"}
        else:
            time.sleep(0.05)
            status, doc = 200, {"invocations": [], "heartbeat": 10.0}
        data = json.dumps(doc).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def stub() -> Any:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Stub)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def test_runner_with_a_refused_token_exits_1(tmp_path: Path, stub: str) -> None:
    (tmp_path / "fns.py").write_text(FUNCTIONS)
    run = emirax("fns.py", "--concurrency", "2", cwd=tmp_path,
                 env={"EMIRAX_SERVER": stub, "EMIRAX_TOKEN": "bad"})
    assert run.returncode == 1, run.stderr
    first, *rest = run.stderr.splitlines()
    assert first.endswith(f"serving encode, split from {stub}, concurrency 2")
    assert any("the server refused the token (401 Unauthorized: unknown token)" in line
               for line in rest)
    assert "Traceback" not in run.stderr


def test_runner_stops_gracefully_on_sigterm(tmp_path: Path, stub: str) -> None:
    (tmp_path / "fns.py").write_text(FUNCTIONS)
    env = {k: v for k, v in os.environ.items() if not k.startswith("EMIRAX_")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "emirax", "runner", "fns.py", "--server", stub, "--token", "good",
         "--function", "split", "--wait", "1"],
        cwd=tmp_path, env=env, stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    first = proc.stderr.readline()  # the start line: the runner is up
    assert "serving split from" in first
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=TIMEOUT)
    assert proc.returncode == 0, err
    assert "stopping: 0 running invocation(s) get up to 30 s to finish" in err
    assert err.rstrip().endswith("stopped") and "Traceback" not in err
