"""emirax.pipeline in-process: a project on disk -> IR, the same wherever it lies, and the cache.

What hosts rely on: file names in the IR and in diagnostics are relative to the project root (so
the digest never depends on the checkout's location); every file's errors are reported together,
with the texts needed to render them; the compile cache answers an unchanged project without
parsing, re-parses only what changed, and never turns damage or a read-only folder into an error.
Every test passes its own `cache_dir` (or False), so nothing here touches ~/.cache.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest

from emirax import diagnostics, ir, pipeline
from emirax.bundle import load_bundle
from emirax.errors import CheckError, ParseError, SourceError
from support import load_gen



def rules(package: str, workflow: str, rule: str = "r", fact: str = "X") -> str:
    """A small valid file: one workflow, one fact, one rule named `rule`."""
    return (
        f"package {package}\n"
        "\n"
        f"workflow {workflow} {{\n"
        f"    fact {fact}(int n)\n"
        f"    rule '{rule}' {{\n"
        f"        match {{ x: {fact}() }}\n"
        '        action { log "n is ${x.n}" }\n'
        "    }\n"
        "}\n"
    )


def write_project(root: Path, files: dict[str, str], package: str = "demo.app") -> Path:
    """emirax.toml naming `package` plus `files` (relative name -> text) under `root`."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "emirax.toml").write_text(
        f'[bundle]\npackage = "{package}"\nversion = "1.0.0"\n', encoding="utf-8"
    )
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text, encoding="utf-8")
    return root


def three_files(root: Path) -> Path:
    return write_project(root, {
        "rules/a.emx": rules("demo.app", "A"),
        "rules/b.emx": rules("demo.app", "B"),
        "rules/c.emx": rules("demo.app", "C"),
    })


def strings(value: Any) -> list[str]:
    """Every string (keys and values) anywhere in a JSON-like document."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for k, v in value.items() for s in [k, *strings(v)]]
    if isinstance(value, list):
        return [s for v in value for s in strings(v)]
    return []


def rule_files(doc: dict[str, Any]) -> set[str]:
    return {r["file"] for wf in doc["workflows"] for r in wf["rules"]}


def rule_names(doc: dict[str, Any]) -> set[str]:
    return {r["name"] for wf in doc["workflows"] for r in wf["rules"]}


# ── names and places ───────────────────────────────────────────────────────────────────────────


def test_a_one_file_project_names_its_file_relative_to_its_folder(tmp_path: Path) -> None:
    file = tmp_path / "deep" / "down" / "encode.emx"
    file.parent.mkdir(parents=True)
    file.write_text(rules("demo.one", "W"), encoding="utf-8")
    result = pipeline.build(file, cache_dir=False)
    assert result.ir is not None
    assert result.ir["package"] == "demo.one"
    assert rule_files(result.ir) == {"encode.emx"}
    assert list(result.sources) == ["encode.emx"]
    assert result.project.version == "0.0.0"
    assert not any(str(tmp_path) in s for s in strings(result.ir))


def test_a_folder_project_names_files_relative_to_the_root_and_its_ir_moves_with_it(
    tmp_path: Path,
) -> None:
    root = write_project(tmp_path / "here", {
        "rules/a.emx": rules("demo.app", "A", rule="first"),
        "rules/b.emx": rules("demo.app", "B", rule="second"),
    })
    result = pipeline.build(root, cache_dir=False)
    assert result.ir is not None
    assert rule_files(result.ir) == {"rules/a.emx", "rules/b.emx"}
    assert sorted(result.sources) == ["rules/a.emx", "rules/b.emx"]
    assert [wf["name"] for wf in result.ir["workflows"]] == ["A", "B"]
    assert not any(str(tmp_path) in s for s in strings(result.ir))

    moved = shutil.copytree(root, tmp_path / "elsewhere" / "checkout")
    again = pipeline.build(moved, cache_dir=False)
    assert again.ir == result.ir
    assert ir.digest(again.ir) == ir.digest(result.ir)


def test_check_only_checks_without_compiling(tmp_path: Path) -> None:
    root = three_files(tmp_path / "p")
    result = pipeline.check_only(root, cache_dir=False)
    assert result.ir is None
    assert result.rule_count == 3
    assert result.warnings == []


# ── errors ─────────────────────────────────────────────────────────────────────────────────────


def test_a_file_whose_package_differs_from_emirax_toml_is_blamed_at_its_package_line(
    tmp_path: Path,
) -> None:
    wrong = "// the billing rules\n\npackage demo.billing\n" + rules("x", "B").split("\n", 1)[1]
    root = write_project(tmp_path / "p", {"rules/a.emx": rules("demo.app", "A"), "rules/b.emx": wrong})
    with pytest.raises(CheckError) as caught:
        pipeline.build(root, cache_dir=False)
    (d,) = caught.value.diagnostics
    assert (d.span.file, d.span.line) == ("rules/b.emx", 3)
    assert "demo.billing" in d.message and "demo.app" in d.message
    # It can be rendered: the raised error carries the texts of the project.
    assert set(caught.value.sources) == {"rules/a.emx", "rules/b.emx"}
    text = diagnostics.render(caught.value.diagnostics, pipeline.render_sources(caught.value.sources))
    assert "package demo.billing" in text


def test_syntax_errors_in_two_files_are_reported_together_with_their_sources(tmp_path: Path) -> None:
    unclosed = rules("demo.app", "A").rstrip().removesuffix("}")  # the workflow is never closed
    stray = rules("demo.app", "B").replace("fact X(int n)", "fact X(int n))")
    root = write_project(tmp_path / "p", {
        "rules/a.emx": unclosed,
        "rules/b.emx": stray,
        "rules/c.emx": rules("demo.app", "C"),
    })
    with pytest.raises(ParseError) as caught:
        pipeline.build(root, cache_dir=False)
    error = caught.value
    assert isinstance(error, SourceError)
    assert {d.span.file for d in error.diagnostics} == {"rules/a.emx", "rules/b.emx"}
    assert all(d.severity == "error" for d in error.diagnostics)
    assert set(error.sources) == {"rules/a.emx", "rules/b.emx", "rules/c.emx"}
    assert error.sources["rules/b.emx"] == stray
    text = diagnostics.render(error.diagnostics, pipeline.render_sources(error.sources))
    assert "fact X(int n))" in text and "^" in text


def test_a_check_error_carries_the_sources_too(tmp_path: Path) -> None:
    file = tmp_path / "w.emx"
    file.write_text(rules("demo.one", "W").replace("x: X()", "x: Y()"), encoding="utf-8")
    with pytest.raises(CheckError) as caught:
        pipeline.check_only(file, cache_dir=False)
    assert caught.value.sources == {"w.emx": file.read_text(encoding="utf-8")}
    assert caught.value.diagnostics[0].span.file == "w.emx"


# ── the cache ──────────────────────────────────────────────────────────────────────────────────


def test_a_warm_build_of_a_2000_line_project_comes_from_the_cache(tmp_path: Path) -> None:
    gen = load_gen()
    root = gen.write_project(tmp_path / "p", 2000, seed=3)
    files = len(list((root / "rules").glob("*.emx")))
    assert files > 1
    cache = tmp_path / "cache"

    cold = pipeline.build(root, cache_dir=cache)
    assert cold.cache_hits == 0 and "parse" in cold.timings
    warm = pipeline.build(root, cache_dir=cache)
    assert warm.cache_hits == files
    assert "parse" not in warm.timings  # the IR came from the cache: nothing was parsed
    assert warm.ir == cold.ir
    assert warm.warnings == cold.warnings
    assert warm.rule_count == cold.rule_count
    assert warm.sources == cold.sources


def test_changing_one_file_of_three_reparses_only_that_one(tmp_path: Path) -> None:
    root = three_files(tmp_path / "p")
    cache = tmp_path / "cache"
    first = pipeline.build(root, cache_dir=cache)
    assert first.cache_hits == 0

    (root / "rules" / "b.emx").write_text(rules("demo.app", "B", rule="renamed"), encoding="utf-8")
    second = pipeline.build(root, cache_dir=cache)
    assert second.cache_hits == 2
    assert second.ir is not None
    assert rule_names(second.ir) == {"r", "renamed"}
    assert [r["name"] for r in second.ir["workflows"][1]["rules"]] == ["renamed"]
    assert second.ir == pipeline.build(root, cache_dir=False).ir


def test_a_check_fills_the_cache_that_a_build_then_uses(tmp_path: Path) -> None:
    root = three_files(tmp_path / "p")
    cache = tmp_path / "cache"
    pipeline.check_only(root, cache_dir=cache)
    result = pipeline.build(root, cache_dir=cache)
    assert result.cache_hits == 3
    assert result.ir == pipeline.build(root, cache_dir=False).ir


def test_corrupt_cache_entries_are_ignored_and_rebuilt(tmp_path: Path) -> None:
    root = three_files(tmp_path / "p")
    cache = tmp_path / "cache"
    expected = pipeline.build(root, cache_dir=cache).ir
    entries = [p for p in cache.rglob("*") if p.is_file()]
    assert entries
    for entry in entries:
        entry.write_bytes(b"\x80\x04garbage\xff{not json")

    result = pipeline.build(root, cache_dir=cache)
    assert result.ir == expected
    assert result.cache_hits == 0
    # The damaged entries were written anew: the next build is answered from the cache.
    assert pipeline.build(root, cache_dir=cache).cache_hits == 3


def test_a_cache_entry_of_the_wrong_shape_is_a_miss(tmp_path: Path) -> None:
    root = three_files(tmp_path / "p")
    cache = tmp_path / "cache"
    expected = pipeline.build(root, cache_dir=cache).ir
    for entry in cache.rglob("*"):
        if entry.is_file():
            entry.write_bytes(b"{}")
    assert pipeline.build(root, cache_dir=cache).ir == expected


def test_changing_the_package_in_emirax_toml_is_checked_even_with_a_warm_cache(
    tmp_path: Path,
) -> None:
    root = three_files(tmp_path / "p")
    cache = tmp_path / "cache"
    pipeline.build(root, cache_dir=cache)
    (root / "emirax.toml").write_text('[bundle]\npackage = "other.name"\nversion = "1.0.0"\n')
    with pytest.raises(CheckError):  # as it is without the cache
        pipeline.build(root, cache_dir=cache)


def test_cache_dir_false_writes_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    env_cache = tmp_path / "env-cache"
    monkeypatch.setenv("EMIRAX_CACHE_DIR", str(env_cache))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    root = three_files(tmp_path / "p")
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    result = pipeline.build(root, cache_dir=False)
    assert result.ir is not None and result.cache_hits == 0
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before


def test_the_default_cache_lives_under_emirax_cache_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    env_cache = tmp_path / "env-cache"
    monkeypatch.setenv("EMIRAX_CACHE_DIR", str(env_cache))
    root = three_files(tmp_path / "p")
    pipeline.build(root)
    assert any((env_cache / "compile").iterdir())
    assert pipeline.build(root).cache_hits == 3


@pytest.mark.skipif(
    hasattr(os, "geteuid") and os.geteuid() == 0, reason="root ignores file permissions"
)
def test_an_unwritable_cache_dir_does_not_fail_the_build(tmp_path: Path) -> None:
    root = three_files(tmp_path / "p")
    cache = tmp_path / "cache"
    cache.mkdir()
    cache.chmod(0o500)
    try:
        first = pipeline.build(root, cache_dir=cache)
        second = pipeline.build(root, cache_dir=cache)
    finally:
        cache.chmod(0o700)
    assert first.ir == second.ir == pipeline.build(root, cache_dir=False).ir
    assert second.cache_hits == 0
    assert list(cache.iterdir()) == []


def test_a_cache_dir_that_cannot_be_created_does_not_fail_the_build(tmp_path: Path) -> None:
    # Works as root too: no permission can make a folder inside a regular file.
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    root = three_files(tmp_path / "p")
    result = pipeline.build(root, cache_dir=blocker / "cache")
    assert result.ir == pipeline.build(root, cache_dir=False).ir
    assert blocker.read_text() == "not a folder"


# ── writing the bundle ─────────────────────────────────────────────────────────────────────────


def test_write_makes_a_bundle_of_the_built_ir(tmp_path: Path) -> None:
    root = three_files(tmp_path / "p")
    result = pipeline.build(root, version="2.1.0", cache_dir=False)
    assert result.ir is not None
    out = tmp_path / "out" / "demo.emxb"
    manifest = pipeline.write(result, out)
    assert manifest["digest"] == ir.digest(result.ir)
    assert manifest["version"] == "2.1.0"
    assert manifest["package"] == "demo.app"
    loaded = load_bundle(out)
    assert loaded.digest == ir.digest(result.ir)
    assert loaded.ir == result.ir
    assert loaded.sources == result.sources
    assert json.loads(json.dumps(loaded.manifest)) == manifest


def test_an_unchanged_project_rewrites_its_bundle_from_the_cache(tmp_path: Path) -> None:
    root = three_files(tmp_path / "p")
    cache = tmp_path / "cache"
    first = pipeline.write(pipeline.build(root, cache_dir=cache), tmp_path / "a.emxb")
    second = pipeline.write(pipeline.build(root, cache_dir=cache), tmp_path / "b.emxb")
    assert first == second
    assert (tmp_path / "a.emxb").read_bytes() == (tmp_path / "b.emxb").read_bytes()
    assert load_bundle(tmp_path / "b.emxb").digest == first["digest"]
    for entry in cache.glob("bundle-*.emxb"):  # a lost cached bundle is rebuilt, not an error
        entry.unlink()
    third = pipeline.write(pipeline.build(root, cache_dir=cache), tmp_path / "c.emxb")
    assert (tmp_path / "c.emxb").read_bytes() == (tmp_path / "a.emxb").read_bytes()
    assert third == first


def test_a_new_version_is_a_new_bundle_not_the_cached_one(tmp_path: Path) -> None:
    root = three_files(tmp_path / "p")
    cache = tmp_path / "cache"
    one = pipeline.write(pipeline.build(root, cache_dir=cache), tmp_path / "a.emxb")
    two = pipeline.write(pipeline.build(root, version="9.9.9", cache_dir=cache), tmp_path / "b.emxb")
    assert two["version"] == "9.9.9" and one["version"] != "9.9.9"
    assert load_bundle(tmp_path / "b.emxb").manifest["version"] == "9.9.9"


def test_a_damaged_bundle_cache_entry_is_a_miss(tmp_path: Path) -> None:
    root = three_files(tmp_path / "p")
    cache = tmp_path / "cache"
    first = pipeline.write(pipeline.build(root, cache_dir=cache), tmp_path / "a.emxb")
    for entry in cache.glob("bundle-*"):
        if entry.suffix != ".emxb":
            entry.write_text('{"file": 3}')
    again = pipeline.write(pipeline.build(root, cache_dir=cache), tmp_path / "b.emxb")
    assert again == first
    assert (tmp_path / "b.emxb").read_bytes() == (tmp_path / "a.emxb").read_bytes()
