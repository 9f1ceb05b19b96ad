"""Plugin spaces: each tenant's loaded bundles in its own pluggy PluginManager, and the
server-wide extension points, discoverable through entry points.

    space = TenantSpace("acme")
    space.load(bundle)                       # a verified emirax.bundle.Bundle: compiled once
    space.workflow("media.encode.VideoEncode", version="1.0.0")  -> emirax Workflow
    space.unload("media.encode", "1.0.0")

    server = server_plugins()                # a PluginManager with ServerSpec, entry points loaded
    server.hook.emirax_authenticate(token=...)

Why one PluginManager per tenant: a tenant's bundles are plugins registered under names that
include the package and the version, and the hooks a bundle implements (`emirax_workflow`,
`emirax_workflows`) are only ever called on that tenant's manager, so no call can reach another
tenant's rules, facts or functions: isolation is structural, not a filter someone must remember.
What a loaded bundle provides is data compiled from its IR (emirax.engine.program.Program);
nothing a tenant uploads is imported as Python.

Hooks (docs/plugins.md lists them with their contracts):
- per tenant (`BundleSpec`): `emirax_workflow(name, version)` (firstresult) and
  `emirax_workflows()`;
- server-wide (`ServerSpec`, entry point group `emirax.server`): `emirax_authenticate(token)`
  (firstresult: who a bearer token is, or None to pass), `emirax_dispatch(tenant, invocations)`
  (told about invocations a step queued, e.g. to wake runners), `emirax_startup(settings)`.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import pluggy

from emirax.bundle import load_bundle
from emirax.engine.program import Program, Workflow

__all__ = [
    "BundleSpec", "LoadedBundle", "NAME", "Principal", "ServerSpec", "Spaces", "TenantSpace", "hookimpl",
    "hookspec", "server_plugins",
]

NAME = "emirax"
ENTRY_POINTS = "emirax.server"
hookspec = pluggy.HookspecMarker(NAME)
hookimpl = pluggy.HookimplMarker(NAME)


@dataclass(frozen=True)
class Principal:
    """Who made a request: a tenant (by id and name), or the admin (`tenant_id` None)."""

    tenant_id: int | None
    name: str
    admin: bool = False


class BundleSpec:
    """What a loaded bundle version provides to its tenant's plugin space."""

    @hookspec(firstresult=True)
    def emirax_workflow(self, name: str, version: str | None) -> Workflow | None:
        """The compiled workflow `name` (full name) of bundle version `version` (None: the
        one this space calls active), or None when this bundle does not have it."""

    @hookspec
    def emirax_workflows(self) -> list[tuple[str, str, Workflow]]:
        """Every workflow this bundle provides, as (package, version, workflow)."""


class ServerSpec:
    """Server-wide extension points; plugins come from the `emirax.server` entry points."""

    @hookspec(firstresult=True)
    def emirax_authenticate(self, token: str) -> Principal | None:
        """Who `token` belongs to, or None to let the next plugin (and finally the built-in
        token table) decide."""

    @hookspec
    def emirax_dispatch(self, tenant_id: int, invocations: list[Mapping[str, Any]]) -> None:
        """Invocations a committed step queued (after the commit): wake or notify runners."""

    @hookspec
    def emirax_startup(self, settings: Mapping[str, Any]) -> None:
        """The server is starting with these settings."""


class LoadedBundle:
    """One verified bundle version as a plugin: its Program, compiled once at load."""

    def __init__(self, program: Program, package: str, version: str, digest: str) -> None:
        self.program = program
        self.package = package
        self.version = version
        self.digest = digest
        self.active = False

    @property
    def plugin_name(self) -> str:
        return plugin_name(self.package, self.version)

    @hookimpl
    def emirax_workflow(self, name: str, version: str | None) -> Workflow | None:
        if version is None and not self.active or version is not None and version != self.version:
            return None
        return self.program.workflows.get(name)

    @hookimpl
    def emirax_workflows(self) -> list[tuple[str, str, Workflow]]:
        return [(self.package, self.version, wf) for wf in self.program.workflows.values()]


def plugin_name(package: str, version: str) -> str:
    return f"bundle:{package}@{version}"


class TenantSpace:
    """One tenant's plugin space: its loaded bundle versions and which one of each is active."""

    def __init__(self, tenant: str) -> None:
        self.tenant = tenant
        self.pm = pluggy.PluginManager(NAME)
        self.pm.add_hookspecs(BundleSpec)

    def load(self, bundle: Any, *, active: bool = False) -> LoadedBundle:
        """Register a verified `emirax.bundle.Bundle` (loading a version twice is a no-op)."""
        manifest = bundle.manifest
        package, version = manifest["package"], manifest["version"]
        existing = self.pm.get_plugin(plugin_name(package, version))
        if existing is None:
            existing = LoadedBundle(Program.from_bundle(bundle), package, version, bundle.digest)
            self.pm.register(existing, name=existing.plugin_name)
        if active:
            self.activate(package, version)
        return existing

    def unload(self, package: str, version: str) -> None:
        plugin = self.pm.get_plugin(plugin_name(package, version))
        if plugin is not None:
            self.pm.unregister(plugin)

    def activate(self, package: str, version: str) -> None:
        """Make `version` the active one of `package` (the others of the package stop being)."""
        target = self.pm.get_plugin(plugin_name(package, version))
        if target is None:
            raise KeyError(f"{package} {version} is not loaded")
        for plugin in self.bundles():
            if plugin.package == package:
                plugin.active = plugin is target

    def bundles(self) -> list[LoadedBundle]:
        return [p for p in self.pm.get_plugins() if isinstance(p, LoadedBundle)]

    def loaded(self, package: str, version: str) -> LoadedBundle | None:
        plugin = self.pm.get_plugin(plugin_name(package, version))
        return plugin if isinstance(plugin, LoadedBundle) else None

    def workflow(self, name: str, version: str | None = None) -> Workflow | None:
        """The workflow `name` of bundle version `version`, or of the active version."""
        return self.pm.hook.emirax_workflow(name=name, version=version)

    def workflows(self) -> Iterable[tuple[str, str, Workflow]]:
        for provided in self.pm.hook.emirax_workflows():
            yield from provided


class Spaces:
    """Every tenant's plugin space in this process, filled from the store on first use: a
    bundle version is loaded (verified, compiled) the first time a workflow needs it."""

    def __init__(self, store: Any) -> None:
        self.store = store
        self.spaces: dict[int, TenantSpace] = {}
        self.lock = threading.Lock()

    def workflow(self, tenant_id: int, name: str, version: str) -> Workflow | None:
        package = name.rpartition(".")[0]
        with self.lock:
            space = self.spaces.get(tenant_id)
            if space is None:
                space = self.spaces[tenant_id] = TenantSpace(str(tenant_id))
            if space.loaded(package, version) is None:
                found = self.store.bundle(tenant_id, package, version)
                if found is None:
                    return None
                space.load(load_bundle(found[0]))
            return space.workflow(name, version)


def server_plugins(extra: Iterable[object] = (), entry_points: bool = True) -> pluggy.PluginManager:
    """The server-wide plugin manager: ServerSpec, the `emirax.server` entry points (plugins
    installed in the environment), and `extra` plugin objects."""
    pm = pluggy.PluginManager(NAME)
    pm.add_hookspecs(ServerSpec)
    if entry_points:
        pm.load_setuptools_entrypoints(ENTRY_POINTS)
    for plugin in extra:
        pm.register(plugin)
    return pm
