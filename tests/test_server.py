"""The HTTP API against a real server (`emirax serve` in a subprocess), on SQLite and PostgreSQL.

Each database gets its own server process, started once per module with a fresh database; the
tests talk to it over HTTP with httpx, as clients and the CLI do, and assert what clients rely on:
status codes, problem+json, the tenant coming from the token, another tenant's data answering
404 like missing data, bad input changing nothing, and workflows evaluated durably.
"""

from __future__ import annotations

import json
import secrets
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from serverkit import BACKENDS, ORDERS, ServerProcess, compile_bundle, running_server

ADMIN = "admin-" + secrets.token_hex(8)
class Server(ServerProcess):
    def __init__(self, url: str, home: Path) -> None:
        super().__init__(url, home, admin_token=ADMIN)


@pytest.fixture(scope="module", params=BACKENDS)
def server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with running_server(request, tmp_path_factory.mktemp("home"), Server) as srv:
        yield srv


@pytest.fixture(scope="module")
def tenants(server: Server) -> dict[str, str]:
    with server.client(ADMIN) as admin:
        tokens = {}
        for name in ("acme", "globex"):
            r = admin.post("/v1/tenants", json={"name": f"{name}-{secrets.token_hex(3)}"})
            assert r.status_code == 201, r.text
            tokens[name] = r.json()["token"]
    return tokens


@pytest.fixture(scope="module")
def orders_v1(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    return compile_bundle(tmp_path_factory.mktemp("b"), ORDERS, "1.0.0")


def _problem(r: httpx.Response, status: int) -> dict:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    body = r.json()
    assert body["status"] == status and body["title"]
    return body


def test_health_and_tokens(server: Server, tenants: dict[str, str]) -> None:
    assert server.client(None).get("/healthz").json() == {"status": "ok"}
    _problem(server.client(None).get("/v1/workflows"), 401)
    _problem(server.client("wrong").get("/v1/workflows"), 401)
    _problem(server.client(tenants["acme"]).post("/v1/tenants", json={"name": "x"}), 403)
    _problem(server.client(ADMIN).get("/v1/workflows"), 403)


def test_upload_is_verified_and_idempotent(server: Server, tenants: dict[str, str],
                                           orders_v1: bytes) -> None:
    with server.client(tenants["acme"]) as c:
        first = c.post("/v1/bundles", content=orders_v1)
        assert first.status_code in (200, 201), first.text
        again = c.post("/v1/bundles", content=orders_v1)
        assert again.status_code == 200 and again.json()["outcome"] == "same"
        assert again.json()["active"] is True  # the first version of a package is active at once
        _problem(c.post("/v1/bundles", content=b"PK\x03\x04 not a zip at all"), 422)
        _problem(c.post("/v1/bundles", content=b"x" * (65 << 20)), 413)
        listed = c.get("/v1/bundles/demo.orders").json()["versions"]
        assert [v["version"] for v in listed] == ["1.0.0"]
    with server.client(tenants["globex"]) as other:
        _problem(other.get("/v1/bundles/demo.orders"), 404)


def test_a_workflow_runs_durably_and_is_idempotent_by_id(server: Server, tenants: dict[str, str],
                                                         orders_v1: bytes) -> None:
    with server.client(tenants["acme"]) as c:
        c.post("/v1/bundles", content=orders_v1)
        body = {"workflow": "demo.orders.Order", "id": "order-1",
                "facts": [{"type": "Item", "fields": {"sku": "a", "qty": 2}},
                          {"type": "Item", "fields": {"sku": "b", "qty": 3}}]}
        r = c.post("/v1/workflows", json=body)
        assert r.status_code == 201, r.text
        doc = r.json()
        assert doc["status"] == "waiting" and doc["version"] == "1.0.0"
        assert {"type": "Total", "fields": {"items": 5}} in doc["facts"]
        again = c.post("/v1/workflows", json=body)
        assert again.status_code == 200 and again.json()["facts"] == doc["facts"]
        r = c.post("/v1/workflows/order-1/facts",
                   json={"facts": [{"type": "Shipped", "fields": {"carrier": "ups"}}]})
        assert r.status_code == 200, r.text
        assert r.json()["status"] == "completed"
        assert r.json()["output"] == {"items": 5, "carrier": "ups"}
        events = c.get("/v1/workflows/order-1/trace").json()["events"]
        fired = [e["event"]["rule"] for e in events if e["event"]["event"] == "fire"]
        assert fired == ["count", "ship"]
        listed = c.get("/v1/workflows", params={"status": "completed"}).json()["workflows"]
        assert "order-1" in [w["id"] for w in listed]


def test_bad_input_is_refused_and_changes_nothing(server: Server, tenants: dict[str, str],
                                                  orders_v1: bytes) -> None:
    with server.client(tenants["acme"]) as c:
        c.post("/v1/bundles", content=orders_v1)
        c.post("/v1/workflows", json={"workflow": "demo.orders.Order", "id": "order-2", "facts": []})
        before = c.get("/v1/workflows/order-2").json()
        _problem(c.post("/v1/workflows/order-2/facts", content=b"{not json",
                        headers={"content-type": "application/json"}), 422)
        _problem(c.post("/v1/workflows/order-2/facts",
                        json={"facts": [{"type": "Nope", "fields": {}}]}), 422)
        _problem(c.post("/v1/workflows/order-2/facts",
                        json={"facts": [{"type": "Item", "fields": {"sku": 1, "qty": 1}}]}), 422)
        _problem(c.post("/v1/workflows/order-2/facts",
                        json={"facts": [{"type": "Item", "fields": {"sku": "x" * (2 << 20), "qty": 1}}]}), 413)
        _problem(c.post("/v1/workflows", json={"workflow": "demo.orders.Nope"}), 404)
        assert c.get("/v1/workflows/order-2").json() == before


def test_the_step_routes_answer_alike_on_the_fast_path_and_through_fastapi(
        server: Server, tenants: dict[str, str], orders_v1: bytes) -> None:
    """server/fastpath.py answers ordinary start and add-facts requests itself; a JSON body
    with another content type (`+json`) takes FastAPI's route. Both must give the same answers,
    refusals included."""
    fast = {"content-type": "application/json"}
    slow = {"content-type": "application/vnd.emirax+json"}

    def same(doc: dict) -> dict:
        return {k: v for k, v in doc.items() if k not in ("id", "created_at", "updated_at")}

    with server.client(tenants["acme"]) as c:
        c.post("/v1/bundles", content=orders_v1)
        answers = []
        for headers in (fast, slow):
            body = {"workflow": "demo.orders.Order",
                    "facts": [{"type": "Item", "fields": {"sku": "a", "qty": 2}}]}
            started = c.post("/v1/workflows", content=json.dumps(body), headers=headers)
            wid = started.json()["id"]
            added = c.post(f"/v1/workflows/{wid}/facts", headers=headers, content=json.dumps(
                {"facts": [{"type": "Shipped", "fields": {"carrier": "ups"}}]}))
            refusals = [c.post(path, content=content, headers=headers) for path, content in (
                ("/v1/workflows", b'{"workflow": "demo.orders.Order", "priority": "high"}'),
                (f"/v1/workflows/{wid}/facts", b'{"facts": []}'),
                (f"/v1/workflows/{wid}/facts", b'{"facts": [{"type": "Nope"}]}'),
                ("/v1/workflows/no-such-workflow/facts", b'{"facts": [{"type": "Shipped"}]}'))]
            answers.append(([started.status_code, added.status_code] + [r.status_code for r in refusals],
                            same(started.json()), same(added.json()), [r.json() for r in refusals]))
        assert answers[0] == answers[1]
        assert answers[0][0] == [201, 200, 422, 422, 422, 404]


def test_another_tenant_sees_nothing(server: Server, tenants: dict[str, str], orders_v1: bytes) -> None:
    with server.client(tenants["acme"]) as c:
        c.post("/v1/bundles", content=orders_v1)
        c.post("/v1/workflows", json={"workflow": "demo.orders.Order", "id": "secret-1", "facts": []})
    with server.client(tenants["globex"]) as other:
        missing = _problem(other.get("/v1/workflows/never-existed"), 404)
        theirs = _problem(other.get("/v1/workflows/secret-1"), 404)
        assert missing["title"] == theirs["title"]
        _problem(other.get("/v1/workflows/secret-1/trace"), 404)
        _problem(other.post("/v1/workflows/secret-1/facts",
                            json={"facts": [{"type": "Item", "fields": {"sku": "a", "qty": 1}}]}), 404)
        assert "secret-1" not in [w["id"] for w in other.get("/v1/workflows").json()["workflows"]]
        _problem(other.post("/v1/workflows", json={"workflow": "demo.orders.Order", "facts": []}), 404)
    with server.client(tenants["acme"]) as c:
        assert c.get("/v1/workflows/secret-1").json()["facts"] == []


def test_the_openapi_document_lists_the_routes(server: Server) -> None:
    doc = server.client(None).get("/openapi.json").json()
    for path in ("/v1/tenants", "/v1/bundles", "/v1/workflows", "/v1/workflows/{workflow_id}",
                 "/v1/workflows/{workflow_id}/facts", "/v1/workflows/{workflow_id}/trace",
                 "/v1/runners/lease", "/v1/invocations/complete",
                 "/v1/invocations/{invocation_id}/complete", "/v1/invocations/{invocation_id}/fail",
                 "/v1/invocations/{invocation_id}/heartbeat", "/v1/invocations/{invocation_id}/release"):
        assert path in doc["paths"]
    lease = doc["paths"]["/v1/runners/lease"]["post"]["requestBody"]["content"]["application/json"]
    schema = doc["components"]["schemas"][lease["schema"]["$ref"].rsplit("/", 1)[1]]
    assert {"runner", "functions", "max", "wait"} <= set(schema["properties"])


ORDERS_V2 = ORDERS.replace("    fact Shipped(String carrier)\n", "    fact Shipped(String carrier)\n    fact Audited(int items)\n").replace(
    "    rule 'ship' {", """    rule 'audit' {
        match {
            t: Total()
            not Audited()
        }
        action { insert Audited(items: t.items) }
    }
    rule 'ship' {""")


def _fresh_tenant(server: Server) -> str:
    with server.client(ADMIN) as admin:
        r = admin.post("/v1/tenants", json={"name": f"t-{secrets.token_hex(4)}"})
        assert r.status_code == 201
        return r.json()["token"]


def _wait(predicate, timeout: float = 20.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out waiting for the server"
        time.sleep(0.05)


def test_activating_a_version_re_evaluates_existing_workflows(
        server: Server, orders_v1: bytes, tmp_path: Path) -> None:
    token = _fresh_tenant(server)
    v2 = compile_bundle(tmp_path, ORDERS_V2, "2.0.0")
    item = {"type": "Item", "fields": {"sku": "a", "qty": 4}}
    with server.client(token) as c:
        c.post("/v1/bundles", content=orders_v1)
        c.post("/v1/workflows", json={"workflow": "demo.orders.Order", "id": "done", "facts": [item]})
        c.post("/v1/workflows/done/facts", json={"facts": [{"type": "Shipped", "fields": {"carrier": "dhl"}}]})
        c.post("/v1/workflows", json={"workflow": "demo.orders.Order", "id": "open", "facts": [item]})
        before = {w: c.get(f"/v1/workflows/{w}").json() for w in ("done", "open")}
        assert before["done"]["status"] == "completed"
        assert c.post("/v1/bundles", content=v2).json()["active"] is False

        preview = c.post("/v1/bundles/demo.orders/versions/2.0.0/preview").json()
        assert preview["examined"] == 2
        assert sorted((w["id"], w["fired"]) for w in preview["changed"]) == [
            ("done", ["audit"]), ("open", ["audit"])]
        assert {w: c.get(f"/v1/workflows/{w}").json() for w in ("done", "open")} == before  # a dry run

        assert c.post("/v1/bundles/demo.orders/versions/2.0.0/activate").status_code == 200
        audited = {"type": "Audited", "fields": {"items": 4}}
        _wait(lambda: all(audited in c.get(f"/v1/workflows/{w}").json()["facts"] for w in ("done", "open")))
        done = c.get("/v1/workflows/done").json()
        assert done["status"] == "completed" and done["output"] == before["done"]["output"]
        assert done["version"] == "2.0.0"
        events = [e["event"] for e in c.get("/v1/workflows/done/trace").json()["events"]]
        assert [e["rule"] for e in events if e["event"] == "fire"] == ["count", "ship", "audit"]
        assert {"event": "version", "from": "1.0.0", "to": "2.0.0"} in events
        assert len(c.get("/v1/workflows").json()["workflows"]) == 2  # no workflow started

        # rolling back re-evaluates under 1.0.0: nothing fires again
        c.post("/v1/bundles/demo.orders/versions/1.0.0/activate")
        _wait(lambda: c.get("/v1/workflows/done").json()["version"] == "1.0.0")
        events = [e["event"] for e in c.get("/v1/workflows/done/trace").json()["events"]]
        assert [e["rule"] for e in events if e["event"] == "fire"] == ["count", "ship", "audit"]


def test_idempotency_keys_replay_the_first_answer(server: Server, orders_v1: bytes) -> None:
    token = _fresh_tenant(server)
    with server.client(token) as c:
        c.post("/v1/bundles", content=orders_v1)
        start = {"workflow": "demo.orders.Order", "facts": []}  # no id: each start is new...
        first = c.post("/v1/workflows", json=start, headers={"Idempotency-Key": "k1"})
        again = c.post("/v1/workflows", json=start, headers={"Idempotency-Key": "k1"})
        assert first.status_code == 201 and again.status_code == 201
        assert again.json() == first.json() and again.headers["idempotent-replayed"] == "true"
        assert len(c.get("/v1/workflows").json()["workflows"]) == 1  # ...but not under one key
        other = c.post("/v1/workflows", json={**start, "priority": 5}, headers={"Idempotency-Key": "k1"})
        _problem(other, 422)
        wid = first.json()["id"]
        add = {"facts": [{"type": "Item", "fields": {"sku": "z", "qty": 1}}]}
        one = c.post(f"/v1/workflows/{wid}/facts", json=add, headers={"Idempotency-Key": "k2"})
        two = c.post(f"/v1/workflows/{wid}/facts", json=add, headers={"Idempotency-Key": "k2"})
        assert one.json() == two.json()
        events = c.get(f"/v1/workflows/{wid}/trace").json()["events"]
        assert sum(e["event"]["event"] == "facts" for e in events) == 1  # applied once
    other_tenant = _fresh_tenant(server)
    with server.client(other_tenant) as o:  # keys are per tenant: k1 is free here
        o.post("/v1/bundles", content=orders_v1)
        assert o.post("/v1/workflows", json=start, headers={"Idempotency-Key": "k1"}).status_code == 201


def test_requests_racing_with_one_idempotency_key_run_once(server: Server, orders_v1: bytes) -> None:
    token = _fresh_tenant(server)
    start = {"workflow": "demo.orders.Order", "facts": [{"type": "Item", "fields": {"sku": "a", "qty": 1}}]}
    with server.client(token) as c:
        c.post("/v1/bundles", content=orders_v1)
    answers: list[httpx.Response] = []
    gate = threading.Barrier(8)

    def one() -> None:
        with server.client(token) as c:
            gate.wait()
            answers.append(c.post("/v1/workflows", json=start, headers={"Idempotency-Key": "race"}))

    threads = [threading.Thread(target=one) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    created = [r for r in answers if r.status_code == 201]
    busy = [r for r in answers if r.status_code == 409]
    assert len(created) + len(busy) == 8 and created, [r.text for r in answers]
    assert all(r.json() == created[0].json() for r in created)  # the one answer, replayed
    assert all(r.headers["retry-after"] == "1" for r in busy)
    with server.client(token) as c:
        assert len(c.get("/v1/workflows").json()["workflows"]) == 1  # ran once
        again = c.post("/v1/workflows", json=start, headers={"Idempotency-Key": "race"})
        assert again.status_code == 201 and again.json() == created[0].json()
        # an error answer frees the key: the retry runs (and fails again the same way)
        bad = {"workflow": "demo.orders.Nope", "facts": []}
        assert c.post("/v1/workflows", json=bad, headers={"Idempotency-Key": "bad"}).status_code == 404
        assert c.post("/v1/workflows", json=bad, headers={"Idempotency-Key": "bad"}).status_code == 404


def test_metrics_count_requests_and_steps(server: Server, orders_v1: bytes) -> None:
    token = _fresh_tenant(server)
    with server.client(token) as c:
        c.post("/v1/bundles", content=orders_v1)
        c.post("/v1/workflows", json={"workflow": "demo.orders.Order", "facts": []})
    text = server.client(None).get("/metrics").text
    assert 'emirax_requests_total{method="POST",route="/v1/workflows",status="201"}' in text
    assert "emirax_steps_total{" in text and "emirax_step_seconds_bucket" in text
    assert "emirax_queue_depth" in text
    assert 'emirax_commit_group_steps_bucket{le="1.0"}' in text
    assert "/v1/workflows/" not in text.replace("/v1/workflows/{workflow_id}", "")  # templates only


def test_list_filters_are_checked(server: Server) -> None:
    token = _fresh_tenant(server)
    with server.client(token) as c:
        _problem(c.get("/v1/workflows", params={"status": "nope"}), 422)
        _problem(c.get("/v1/workflows", params={"limit": 0}), 422)
        assert c.get("/v1/workflows", params={"status": "failed"}).json() == {"workflows": [], "next": None}


def test_hostile_bundles_are_refused_and_nothing_is_stored(server: Server) -> None:
    import io
    import zipfile

    def zipped(members: list[tuple[str, bytes]]) -> bytes:
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
            for name, data in members:
                z.writestr(name, data)
        return buf.getvalue()

    token = _fresh_tenant(server)
    hostile = {
        "zip bomb": zipped([("manifest.json", b"{}"), ("ir.json", b"\0" * (50 << 20))]),
        "zip slip": zipped([("../../etc/passwd", b"x"), ("manifest.json", b"{}")]),
        "not a zip": b"\x00" * 1024,
    }
    with server.client(token) as c:
        for name, data in hostile.items():
            r = c.post("/v1/bundles", content=data)
            assert r.status_code == 422, (name, r.text)
            assert r.headers["content-type"].startswith("application/problem+json")
        assert c.get("/v1/bundles").json() == []


def test_a_restarted_server_finishes_the_re_evaluation_it_owed(
        tmp_path: Path, orders_v1: bytes) -> None:
    """Activation recorded, the server gone before re-evaluating: the next start does it."""
    from server.store import Store

    url = f"sqlite:///{tmp_path / 'emirax.db'}"
    first = Server(url, tmp_path)
    with first.client(ADMIN) as admin:
        token = admin.post("/v1/tenants", json={"name": "acme"}).json()["token"]
    with first.client(token) as c:
        c.post("/v1/bundles", content=orders_v1)
        c.post("/v1/workflows", json={"workflow": "demo.orders.Order", "id": "w",
                                      "facts": [{"type": "Item", "fields": {"sku": "a", "qty": 1}}]})
    first.stop()
    v2 = compile_bundle(tmp_path, ORDERS_V2, "2.0.0")
    store = Store.open(url)  # as if the server had crashed right after the activation committed
    tenant = store.tenant_by_token(token)
    assert tenant is not None
    from emirax.bundle import load_bundle

    b = load_bundle(v2)
    store.put_bundle(tenant.id, "demo.orders", "2.0.0", b.digest, v2, b.manifest)
    store.activate(tenant.id, "demo.orders", "2.0.0")
    assert store.stale_workflows() == [(tenant.id, "w", "2.0.0")]
    second = Server(url, tmp_path)
    try:
        with second.client(token) as c:
            _wait(lambda: c.get("/v1/workflows/w").json()["version"] == "2.0.0")
            assert {"type": "Audited", "fields": {"items": 1}} in c.get("/v1/workflows/w").json()["facts"]
    finally:
        second.stop()
