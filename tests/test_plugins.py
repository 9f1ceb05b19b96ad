"""Plugin spaces (server/plugins.py): each tenant's bundles in its own pluggy manager, versions and
the active one, and server-wide plugins found through real entry points."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest

from emirax import pipeline
from emirax.bundle import build_bundle, load_bundle
from server.plugins import LoadedBundle, Principal, TenantSpace, hookimpl, server_plugins

TENANT = Path(__file__).resolve().parent.parent / "tenants" / "media-encoding"
VIDEO = "media.encode.VideoEncode"


@pytest.fixture(scope="module")
def bundles() -> dict[str, object]:
    """The media tenant's bundle at two versions, the second with one more rule."""
    result = pipeline.build(TENANT, cache_dir=False)
    assert result.ir is not None
    v1 = load_bundle(build_bundle(result.ir, version="1.0.0", sources={}))
    ir2 = dict(result.ir)
    workflows = [dict(w) for w in ir2["workflows"]]
    extra = dict(workflows[0]["rules"][-1], name="give up twice", index=len(workflows[0]["rules"]))
    workflows[0]["rules"] = [*workflows[0]["rules"], extra]
    ir2["workflows"] = workflows
    v2 = load_bundle(build_bundle(ir2, version="2.0.0", sources={}))
    return {"1.0.0": v1, "2.0.0": v2}


def test_a_tenant_sees_only_its_own_bundles(bundles: dict[str, object]) -> None:
    acme, other = TenantSpace("acme"), TenantSpace("other")
    acme.load(bundles["1.0.0"], active=True)
    assert acme.workflow(VIDEO) is not None
    assert other.workflow(VIDEO) is None
    assert other.workflow(VIDEO, version="1.0.0") is None
    assert list(other.workflows()) == []
    assert acme.pm is not other.pm


def test_versions_resolve_to_the_active_one_and_can_be_named(bundles: dict[str, object]) -> None:
    space = TenantSpace("acme")
    space.load(bundles["1.0.0"], active=True)
    space.load(bundles["2.0.0"])
    active = space.workflow(VIDEO)
    assert active is not None and active.version == "1.0.0"
    v2 = space.workflow(VIDEO, version="2.0.0")
    assert v2 is not None and "give up twice" in v2.rules_by_name
    space.activate("media.encode", "2.0.0")  # activate, and so roll back by activating 1.0.0
    assert space.workflow(VIDEO).version == "2.0.0"  # type: ignore[union-attr]
    space.activate("media.encode", "1.0.0")
    assert space.workflow(VIDEO).version == "1.0.0"  # type: ignore[union-attr]
    with pytest.raises(KeyError):
        space.activate("media.encode", "9.9.9")


def test_loading_a_version_twice_is_a_no_op_and_unload_removes_it(bundles: dict[str, object]) -> None:
    space = TenantSpace("acme")
    first = space.load(bundles["1.0.0"], active=True)
    assert space.load(bundles["1.0.0"]) is first
    assert [b.version for b in space.bundles()] == ["1.0.0"]
    assert isinstance(space.loaded("media.encode", "1.0.0"), LoadedBundle)
    space.unload("media.encode", "1.0.0")
    assert space.workflow(VIDEO) is None and space.bundles() == []


def test_workflows_lists_every_version_and_workflow(bundles: dict[str, object]) -> None:
    space = TenantSpace("acme")
    space.load(bundles["1.0.0"], active=True)
    space.load(bundles["2.0.0"])
    found = sorted((p, v, wf.name) for p, v, wf in space.workflows())
    assert found == [
        ("media.encode", "1.0.0", "media.encode.Thumbnail"),
        ("media.encode", "1.0.0", VIDEO),
        ("media.encode", "2.0.0", "media.encode.Thumbnail"),
        ("media.encode", "2.0.0", VIDEO),
    ]


def test_server_plugins_come_from_installed_entry_points(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """A distribution on sys.path declaring an `emirax.server` entry point is loaded and called."""
    (tmp_path / "acme_auth.py").write_text(textwrap.dedent("""
        from server.plugins import Principal, hookimpl

        @hookimpl
        def emirax_authenticate(token):
            return Principal(tenant_id=7, name="from-sso") if token == "sso-token" else None
    """))
    dist = tmp_path / "acme_auth-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: acme-auth\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[emirax.server]\nacme = acme_auth\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "acme_auth", raising=False)
    pm = server_plugins()
    assert pm.hook.emirax_authenticate(token="sso-token") == Principal(7, "from-sso")
    assert pm.hook.emirax_authenticate(token="nope") is None
    assert "acme" in dict(pm.list_name_plugin())


def test_extra_plugins_and_firstresult_order() -> None:
    class Deny:
        @hookimpl
        def emirax_authenticate(self, token: str) -> Principal | None:
            return None

    class Admin:
        @hookimpl
        def emirax_authenticate(self, token: str) -> Principal | None:
            return Principal(None, "admin", admin=True) if token == "root" else None

    pm = server_plugins([Admin(), Deny()], entry_points=False)
    assert pm.hook.emirax_authenticate(token="root") == Principal(None, "admin", admin=True)
    assert pm.hook.emirax_authenticate(token="x") is None


def test_the_app_calls_the_dispatch_and_startup_hooks(tmp_path: Path) -> None:
    """A server plugin hears about invocations after the step that queued them commits."""
    from fastapi.testclient import TestClient

    from emirax.bundle import build_bundle
    from server.app import create_app
    from server.store import Store

    heard: list[tuple[str, object]] = []

    class Listener:
        @hookimpl
        def emirax_dispatch(self, tenant_id: int, invocations: list) -> None:
            heard.append(("dispatch", [(i["name"], i["args"]) for i in invocations]))

        @hookimpl
        def emirax_startup(self, settings: object) -> None:
            heard.append(("startup", None))

    store = Store.open(f"sqlite:///{tmp_path / 'db.sqlite'}")
    store.upgrade()
    app = create_app(store, admin_token="root", plugins=server_plugins([Listener()], entry_points=False))
    result = pipeline.build(TENANT, cache_dir=False)
    assert result.ir is not None
    with TestClient(app) as client:
        token = client.post("/v1/tenants", json={"name": "acme"},
                            headers={"Authorization": "Bearer root"}).json()["token"]
        auth = {"Authorization": f"Bearer {token}"}
        client.post("/v1/bundles", content=build_bundle(result.ir, version="1.0.0", sources={}),
                    headers=auth)
        r = client.post("/v1/workflows", headers=auth, json={"workflow": VIDEO, "facts": [
            {"type": "Request", "fields": {"source": "s3://v", "recipe": "h264", "chunks": 2}}]})
        assert r.status_code == 201, r.text
        # ... and after the step a runner's result makes
        [split] = client.post("/v1/runners/lease", headers=auth, json={
            "runner": "r", "functions": ["split"]}).json()["invocations"]
        client.post(f"/v1/invocations/{split['id']}/complete", headers=auth,
                    json={"fence": split["fence"], "result": ["c0", "c1"]})
    assert heard[0] == ("startup", None)
    # the start's commit: its calls, the child it started, and the child's own call
    assert heard[1] == ("dispatch", [("split", ["s3://v", 2]), ("media.encode.Thumbnail", []),
                                     ("grab", ["s3://v", 5])])
    assert heard[2] == ("dispatch", [("encode", ["c0", "h264"]), ("encode", ["c1", "h264"])])
