"""The front end as one call: a project on disk -> checked, compiled IR (and a bundle).

    build(path, version=None, cache_dir=None) -> Build     parse, check, compile; raises
                                                            SourceError/ProjectError/IRError
    check_only(path) -> Build                               the same, without compiling
    write(build, out) -> dict                               the .emxb file; returns its manifest

Every host goes through here (the CLI, rule tests, the benchmarks), so every host sees the same
errors and the same IR. File names in spans and in the IR are relative to the project root, so
the IR (and the bundle digest) never depends on where the checkout lies.

The compile cache works as Python's __pycache__ does: each file's AST is stored under the sha256 of
the toolchain and the file's name and text, and the whole project's IR under the digest of all
its files. An unchanged project is answered from the cache without parsing; a changed file is
re-parsed alone, then the project is checked and compiled again (checking is cross-file). Cache
entries are local files written atomically; an unreadable or corrupt entry is ignored and rebuilt.
The cache lives in $EMIRAX_CACHE_DIR/compile (default ~/.cache/emirax/compile); `cache_dir=False`
turns it off. It is a local build artefact like __pycache__: the server never reads it.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import metadata
from pathlib import Path
from typing import Any, TypeVar

from emirax import bundle, checker, compiler, ir, parser
from emirax.errors import CheckError, Diagnostic, ParseError, SourceError
from emirax.nodes import Module
from emirax.project import Project, load_project, read_sources
from emirax.source import Source, Span

_T = TypeVar("_T")

# The modules whose code decides what a source compiles to: any change to them invalidates the
# cache, as would a new Emirax version.
_TOOLCHAIN = ("parser.py", "nodes.py", "checker.py", "types.py", "compiler.py", "ir.py")


@dataclass
class Build:
    """The result of one front-end run over a project."""

    project: Project
    sources: dict[str, str]
    ir: dict[str, Any] | None = None
    warnings: list[Diagnostic] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    cache_hits: int = 0
    modules: list[Module] = field(default_factory=list)
    # Where the compile cache keeps this project's entries (None when the cache is off).
    cache: _Cache | None = field(default=None, repr=False)
    cache_key: str = ""

    @property
    def rule_count(self) -> int:
        if self.ir is not None:
            return sum(len(wf["rules"]) for wf in self.ir["workflows"])
        return sum(len(wf.rules) for m in self.modules for wf in m.workflows)


def build(
    path: Path | str, *, version: str | None = None, cache_dir: Path | str | None | bool = None
) -> Build:
    """Parse, check and compile the project at `path` (an .emx file or a project folder)."""
    return _run(path, version=version, cache_dir=cache_dir, compile_ir=True)


def check_only(path: Path | str, *, cache_dir: Path | str | None | bool = None) -> Build:
    """Parse and check the project at `path`; its `ir` stays None."""
    return _run(path, version=None, cache_dir=cache_dir, compile_ir=False)


def write(result: Build, out: Path | str) -> dict[str, Any]:
    """Write the bundle of a finished build to `out`; returns the manifest.

    The bundle's bytes are cached with the project's IR, so recompiling an unchanged project
    copies them instead of verifying and zipping the IR again."""
    assert result.ir is not None, "write() needs a build() result"
    version = result.project.version
    key = f"bundle-{result.cache_key}-{_digest(version)}"
    cached = result.cache.get_json(key) if result.cache else None
    if (
        isinstance(cached, dict) and isinstance(cached.get("manifest"), dict)
        and isinstance(cached.get("file"), str)
        and (data := result.cache.read_bytes(cached["file"]))
    ):
        bundle.save(out, data)
        return cached["manifest"]
    data, manifest = bundle.build_with_manifest(result.ir, version=version, sources=result.sources)
    bundle.save(out, data)
    if result.cache:
        result.cache.put_bytes(f"{key}.emxb", data)
        result.cache.put_json(key, {"file": f"{key}.emxb", "manifest": manifest})
    return manifest


def render_sources(sources: dict[str, str]) -> dict[str, Source]:
    """The sources of a build as `diagnostics.render` wants them."""
    return {name: Source(name, text) for name, text in sources.items()}


# ── the run ────────────────────────────────────────────────────────────────────────────────────


def _run(
    path: Path | str, *, version: str | None, cache_dir: Path | str | None | bool, compile_ir: bool
) -> Build:
    started = time.perf_counter()
    project = load_project(path, version=version)
    result = Build(project, read_sources(project))
    result.timings["load"] = time.perf_counter() - started
    try:
        return _front_end(result, started, cache_dir=cache_dir, compile_ir=compile_ir)
    except SourceError as exc:
        exc.sources = result.sources
        raise


def _front_end(
    result: Build, started: float, *, cache_dir: Path | str | None | bool, compile_ir: bool
) -> Build:
    project = result.project
    cache = _Cache.open(cache_dir)
    keys = {name: _file_key(name, text) for name, text in result.sources.items()}
    # The package of emirax.toml is checked against the files, so it is part of the key.
    project_key = _digest(json.dumps([project.package, sorted(keys.items())]))
    result.cache, result.cache_key = cache, project_key
    if compile_ir and cache and _from_cache(result, cache.get_json(f"ir-{project_key}")):
        result.cache_hits = len(keys)
        result.timings["total"] = time.perf_counter() - started
        return result
    modules = result.modules = _timed(result, "parse", lambda: _parse_all(result, keys, cache))
    _check_package(project, modules)
    result.warnings = _timed(result, "check", lambda: checker.check(modules))
    if compile_ir:
        result.ir = _timed(result, "compile", lambda: compiler.compile_modules(modules))
        if cache:
            cache.put_json(f"ir-{project_key}", {
                "ir": result.ir, "warnings": [_diagnostic_dict(d) for d in result.warnings],
            })
    result.timings["total"] = time.perf_counter() - started
    return result


def _from_cache(result: Build, hit: Any) -> bool:
    """Fill `result` from a cached project entry; False (a miss) for anything malformed."""
    if not (isinstance(hit, dict) and isinstance(hit.get("ir"), dict)
            and isinstance(hit.get("warnings"), list)):
        return False
    try:
        warnings = [_diagnostic(d) for d in hit["warnings"]]
    except (KeyError, TypeError, ValueError):
        return False
    result.ir, result.warnings = hit["ir"], warnings
    return True


def _timed(result: Build, stage: str, fn: Callable[[], _T]) -> _T:
    started = time.perf_counter()
    try:
        return fn()
    finally:
        result.timings[stage] = time.perf_counter() - started


def _parse_all(result: Build, keys: dict[str, str], cache: _Cache | None) -> list[Module]:
    """Every file's AST, from the cache when its digest is known; all syntax errors together."""
    modules: list[Module] = []
    errors: list[Diagnostic] = []
    for name, text in sorted(result.sources.items()):
        cached = cache.get_pickle(f"ast-{keys[name]}") if cache else None
        if isinstance(cached, Module):
            result.cache_hits += 1
            modules.append(cached)
            continue
        try:
            module = parser.parse(Source(name, text))
        except SourceError as exc:
            errors.extend(exc.diagnostics)
            continue
        if cache:
            cache.put_pickle(f"ast-{keys[name]}", module)
        modules.append(module)
    if errors:
        raise ParseError(errors)
    return modules


def _check_package(project: Project, modules: list[Module]) -> None:
    """emirax.toml's package, when it names one, is every file's package."""
    if project.package is None:
        return
    wrong = [
        Diagnostic(
            m.package_span if m.package_span.line else Span(m.file, 1, 1),
            f"this file declares package '{m.package}', but emirax.toml says "
            f"'{project.package}'",
            hint=f"write: package {project.package}",
        )
        for m in modules
        if m.package != project.package
    ]
    if wrong:
        raise CheckError(wrong)


def _diagnostic_dict(d: Diagnostic) -> dict[str, Any]:
    s = d.span
    return {"span": [s.file, s.line, s.column, s.end_line, s.end_column], "message": d.message,
            "severity": d.severity, "hint": d.hint}


def _diagnostic(d: dict[str, Any]) -> Diagnostic:
    return Diagnostic(Span(*d["span"]), d["message"], d["severity"], d["hint"])


# ── the cache ──────────────────────────────────────────────────────────────────────────────────


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


@lru_cache(maxsize=1)
def _toolchain_key() -> str:
    """What the compiled output depends on besides the sources: Emirax's version and code."""
    h = hashlib.sha256()
    try:
        h.update(metadata.version("emirax").encode())
    except metadata.PackageNotFoundError:
        pass
    here = Path(__file__).parent
    for name in _TOOLCHAIN:
        h.update((here / name).read_bytes())
    h.update(parser.grammar_path().read_bytes())
    return h.hexdigest()


def _file_key(name: str, text: str) -> str:
    return _digest(f"{_toolchain_key()}\0{name}\0{text}")


class _Cache:
    """A folder of entries named by digest; misses and damage are never errors."""

    def __init__(self, root: Path) -> None:
        self.root = root

    @classmethod
    def open(cls, cache_dir: Path | str | None | bool) -> _Cache | None:
        if cache_dir is False:
            return None
        if cache_dir is None or cache_dir is True:
            base = os.environ.get("EMIRAX_CACHE_DIR") or Path.home() / ".cache" / "emirax"
            root = Path(base) / "compile"
        else:
            root = Path(cache_dir)
        try:
            root.mkdir(parents=True, exist_ok=True)
        except OSError:
            return None
        return cls(root)

    def read_bytes(self, key: str) -> bytes | None:
        return self._read(key) if key and "/" not in key else None

    def put_bytes(self, key: str, data: bytes) -> None:
        self._write(key, data)

    def _read(self, key: str) -> bytes | None:
        try:
            return (self.root / key).read_bytes()
        except OSError:
            return None

    def _write(self, key: str, data: bytes) -> None:
        try:
            fd, tmp = tempfile.mkstemp(dir=self.root, prefix=".tmp-")
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, self.root / key)
        except OSError:
            pass  # a read-only or full disk only costs the next run its cache

    def get_pickle(self, key: str) -> Any:
        data = self._read(key)
        try:
            return pickle.loads(data) if data else None
        except Exception:  # a damaged entry is a miss
            return None

    def put_pickle(self, key: str, value: Any) -> None:
        self._write(key, pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL))

    def get_json(self, key: str) -> Any:
        data = self._read(key)
        try:
            return json.loads(data) if data else None
        except ValueError:
            return None

    def put_json(self, key: str, value: Any) -> None:
        self._write(key, ir.dumps(value))
