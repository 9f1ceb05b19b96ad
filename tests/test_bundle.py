"""Bundles round-trip, are byte-identical for the same inputs, and refuse anything hostile.

Each refusal test builds a bad archive by hand (zipfile, byte patches) and asserts ONE BundleError
whose message names the problem, since that message is all a user or the server's log gets.
"""

from __future__ import annotations

import copy
import functools
import io
import json
import random
import stat
import struct
import warnings
import zipfile
from pathlib import Path
from typing import Any

import pytest

from emirax import bundle, ir
from emirax.bundle import build_bundle, load_bundle, make_manifest, write_bundle
from emirax.checker import check
from emirax.compiler import compile_modules
from emirax.errors import BundleError
from emirax.parser import parse
from emirax.source import Source

AT = [1, 1]

VIDEO = """\
package media.encode

workflow Encode {
    fact Request(String source, int chunks = 31)
    function String encode(String uri) with [timeout: '30s', retries: 2]

    rule 'encode it' {
        match {
            req: Request()
        }
        action { encode(req.source) }
        reaction { uri -> log "encoded ${uri}" }
    }
}
"""


@functools.cache
def _compiled() -> str:
    modules = [parse(Source("rules/video.emx", VIDEO))]
    check(modules)
    return json.dumps(compile_modules(modules))


def small_ir() -> dict[str, Any]:
    """A fresh copy of a small valid IR document (one workflow, fact, function and rule).

    Made by the compiler rather than by hand, so the tests follow the IR's shape as it evolves;
    the tests that forge documents edit copies of it.
    """
    return json.loads(_compiled())


SOURCES = {"rules/video.emx": VIDEO + "// é, non-ASCII survives\n", "main.emx": "// x\n"}


def good_bundle(doc: dict[str, Any] | None = None) -> bytes:
    return build_bundle(doc or small_ir(), version="1.0.0", sources=SOURCES)


def zip_of(members: list[tuple[str | zipfile.ZipInfo, bytes]], compression: int = zipfile.ZIP_DEFLATED) -> bytes:
    """An archive holding exactly `members`, in order (names kept as given, even hostile ones)."""
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zipfile warns about duplicate names; we want them
        with zipfile.ZipFile(buffer, "w", compression=compression) as archive:
            for name, data in members:
                info = name if isinstance(name, zipfile.ZipInfo) else zipfile.ZipInfo(name)
                if not isinstance(name, zipfile.ZipInfo):
                    info.compress_type = compression
                archive.writestr(info, data)
    return buffer.getvalue()


def forged(doc: Any, *, manifest: dict[str, Any] | None = None, ir_bytes: bytes | None = None,
           extra: list[tuple[str | zipfile.ZipInfo, bytes]] | None = None) -> bytes:
    """A bundle whose manifest is consistent with `doc` (unless overridden): only `doc` is bad."""
    base = {
        "format": bundle.BUNDLE_FORMAT, "compiler": "emirax test", "package": "media.encode",
        "version": "1.0.0", "digest": ir.digest(doc), "ir_version": ir.IR_VERSION,
        "workflows": ir.signatures(small_ir()),
    }
    base.update(manifest or {})
    members: list[tuple[str | zipfile.ZipInfo, bytes]] = [
        ("manifest.json", json.dumps(base).encode()),
        ("ir.json", ir_bytes if ir_bytes is not None else ir.dumps(doc)),
    ]
    return zip_of(members + (extra or []))


def refused(data: bytes | Path, *fragments: str) -> str:
    with pytest.raises(BundleError) as caught:
        load_bundle(data)
    message = str(caught.value)
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"
    return message


# ── round trip and determinism ─────────────────────────────────────────────────────────────────


def test_round_trip_gives_back_ir_manifest_and_sources() -> None:
    doc = small_ir()
    loaded = load_bundle(good_bundle(doc))
    assert loaded.ir == doc
    assert loaded.sources == SOURCES
    assert loaded.digest == ir.digest(doc) == loaded.manifest["digest"]
    assert loaded.manifest == make_manifest(doc, version="1.0.0")
    assert loaded.manifest["format"] == bundle.BUNDLE_FORMAT
    assert loaded.manifest["compiler"].startswith("emirax ")
    assert loaded.manifest["workflows"][0]["name"] == "media.encode.Encode"


def test_a_compiled_project_round_trips() -> None:
    text = """\
package media.encode

workflow VideoEncode {
    fact Request(String source, int chunks = 31)
    fact Chunk(int index, String uri)
    function List split(String source, int chunks) with [timeout: '30m', retries: 2]

    rule 'split source' {
        match {
            req: Request()
            not Chunk()
        }
        action { split(req.source, req.chunks) }
        reaction { parts -> parts.eachWithIndex { uri, i -> insert Chunk(index: i, uri: uri) } }
    }
}
"""
    modules = [parse(Source("rules/video.emx", text))]
    check(modules)
    doc = compile_modules(modules)
    data = build_bundle(doc, version="2.1.0", sources={"rules/video.emx": text})
    loaded = load_bundle(data)
    assert loaded.ir == doc
    assert loaded.sources == {"rules/video.emx": text}
    assert loaded.manifest["version"] == "2.1.0"
    assert loaded.manifest["package"] == "media.encode"
    # Compiling the same text again gives the same bundle, byte for byte.
    again = compile_modules([parse(Source("rules/video.emx", text))])
    assert build_bundle(again, version="2.1.0", sources={"rules/video.emx": text}) == data


def test_two_builds_are_byte_identical() -> None:
    reordered = dict(reversed(list(SOURCES.items())))
    first = build_bundle(small_ir(), version="1.0.0", sources=SOURCES)
    assert build_bundle(small_ir(), version="1.0.0", sources=reordered) == first
    with zipfile.ZipFile(io.BytesIO(first)) as archive:
        infos = archive.infolist()
    assert [i.filename for i in infos] == [
        "manifest.json", "ir.json", "sources/main.emx", "sources/rules/video.emx"]
    for info in infos:
        assert info.date_time == (1980, 1, 1, 0, 0, 0)
        assert info.external_attr >> 16 == stat.S_IFREG | 0o644
        assert info.compress_type == zipfile.ZIP_DEFLATED


def test_the_digest_covers_the_ir_only() -> None:
    """A re-upload of the same rules is a no-op, whatever the version or comments say."""
    one = load_bundle(build_bundle(small_ir(), version="1.0.0", sources=SOURCES))
    two = load_bundle(build_bundle(small_ir(), version="1.0.1", sources={"a.emx": "// other\n"}))
    assert one.digest == two.digest
    changed = small_ir()
    changed["workflows"][0]["rules"][0]["salience"] = 5
    assert load_bundle(good_bundle(changed)).digest != one.digest


def test_ir_json_holds_the_canonical_bytes() -> None:
    with zipfile.ZipFile(io.BytesIO(good_bundle())) as archive:
        assert archive.read("ir.json") == ir.dumps(small_ir())


def test_write_bundle_writes_atomically_and_returns_the_manifest(tmp_path: Path) -> None:
    target = tmp_path / "out" / "media.emxb"
    manifest = write_bundle(target, small_ir(), version="1.0.0", sources=SOURCES)
    assert manifest == make_manifest(small_ir(), version="1.0.0")
    assert target.read_bytes() == good_bundle()
    assert [p.name for p in target.parent.iterdir()] == ["media.emxb"]  # no temporary file left
    assert load_bundle(target).manifest == manifest
    assert load_bundle(str(target)).digest == manifest["digest"]
    # Overwriting an existing bundle works the same way.
    write_bundle(target, small_ir(), version="1.0.1", sources=SOURCES)
    assert load_bundle(target).manifest["version"] == "1.0.1"


def test_a_bundle_without_sources_loads() -> None:
    loaded = load_bundle(build_bundle(small_ir(), version="1", sources={}))
    assert loaded.sources == {}


# ── build refuses what load would refuse ───────────────────────────────────────────────────────


def test_build_refuses_invalid_ir() -> None:
    doc = small_ir()
    doc["workflows"][0]["rules"][0]["action"]["body"][0] = {"op": "exec", "at": AT, "code": "rm -rf /"}
    with pytest.raises(BundleError, match=r"ir.json: .*unknown statement operator 'exec'"):
        build_bundle(doc, version="1.0.0", sources={})


@pytest.mark.parametrize("version", ["", "one", "1.0.0.0", "v1", "1.0 beta"])
def test_build_refuses_a_bad_version(version: str) -> None:
    with pytest.raises(BundleError, match="is not a version"):
        build_bundle(small_ir(), version=version, sources={})


@pytest.mark.parametrize("name", ["../x.emx", "/etc/passwd", "a/../../x", "a\\b.emx", "C:/x.emx", ""])
def test_build_refuses_a_bad_source_name(name: str) -> None:
    with pytest.raises(BundleError, match="source name"):
        build_bundle(small_ir(), version="1.0.0", sources={name: "x"})


def test_build_refuses_a_source_over_the_limit() -> None:
    with pytest.raises(BundleError, match="over the limit"):
        build_bundle(small_ir(), version="1.0.0",
                     sources={"big.emx": "// x\n" * (bundle.MAX_SOURCE_BYTES // 5 + 1)})


# ── the archive ────────────────────────────────────────────────────────────────────────────────


def test_not_a_zip_is_refused() -> None:
    refused(b"this is not a zip file", "not a valid zip archive")
    refused(b"", "not a valid zip archive")


def test_a_truncated_zip_is_refused() -> None:
    data = good_bundle()
    refused(data[: len(data) // 2], "not a valid zip archive")
    refused(data[:-10], "not a valid zip archive")


def test_bytes_before_the_archive_are_refused() -> None:
    # zipfile itself would read past a script glued in front; a bundle never has one.
    refused(b"#!/bin/sh\necho hi\n" + good_bundle(), "does not start with a zip header")


def test_a_corrupt_member_is_refused() -> None:
    data = bytearray(good_bundle())
    start = data.index(b"ir.json") + len(b"ir.json")  # the local header's name, then the deflate data
    for i in range(start + 10, start + 40):
        data[i] ^= 0xFF
    refused(bytes(data), "'ir.json'", "corrupt data")


def test_a_missing_file_is_refused(tmp_path: Path) -> None:
    refused(tmp_path / "nothing.emxb", "cannot read")


def test_a_file_over_the_size_limit_is_refused() -> None:
    refused(b"\0" * (bundle.MAX_BUNDLE_BYTES + 1), "over the limit of 16 MiB")


@pytest.mark.parametrize(("name", "fragment"), [
    ("../x", "'..'"),
    ("sources/../../x", "'..'"),
    ("sources/../manifest.json", "'..'"),
    ("/etc/passwd", "absolute path"),
    ("sources\\..\\x.emx", "backslash"),
    ("C:/windows/x.emx", "drive letter"),
    ("sources/a/./b.emx", "'.' path segment"),
    ("sources/", "empty or '.' path segment"),
    ("sources/a\x01.emx", "control character"),
    ("evil.py", "unexpected member 'evil.py'"),
    ("sources", "unexpected member"),
])
def test_hostile_member_names_are_refused(name: str, fragment: str) -> None:
    refused(forged(small_ir(), extra=[(name, b"x")]), fragment)


def test_a_nul_byte_in_a_name_is_refused() -> None:
    # zipfile cuts names at a NUL when writing, so write a placeholder and patch it in.
    data = forged(small_ir(), extra=[("sources/a.emx#../../x", b"x")])
    refused(data.replace(b"a.emx#", b"a.emx\x00"), "NUL byte")


def test_duplicate_members_are_refused() -> None:
    refused(forged(small_ir(), extra=[("sources/a.emx", b"x"), ("sources/a.emx", b"y")]),
            "'sources/a.emx' appears twice")
    refused(forged(small_ir(), extra=[("ir.json", b"{}")]), "'ir.json' appears twice")


def test_a_symlink_member_is_refused() -> None:
    link = zipfile.ZipInfo("sources/passwd.emx")
    link.create_system = 3
    link.external_attr = (stat.S_IFLNK | 0o777) << 16
    refused(forged(small_ir(), extra=[(link, b"/etc/passwd")]), "symlink")


def test_a_directory_or_device_member_is_refused() -> None:
    device = zipfile.ZipInfo("sources/dev.emx")
    device.external_attr = (stat.S_IFCHR | 0o644) << 16
    refused(forged(small_ir(), extra=[(device, b"")]), "not a regular file")
    dos_dir = zipfile.ZipInfo("sources/dir.emx")
    dos_dir.external_attr = 0x10
    refused(forged(small_ir(), extra=[(dos_dir, b"")]), "not a regular file")


def test_an_encrypted_member_is_refused() -> None:
    data = bytearray(forged(small_ir(), extra=[("sources/a.emx", b"x")]))
    _patch_headers(data, "sources/a.emx", flag_bits=0x1)
    refused(bytes(data), "encrypted")


def test_an_unusual_compression_method_is_refused() -> None:
    lzma = zipfile.ZipInfo("sources/a.emx")
    lzma.compress_type = zipfile.ZIP_LZMA
    refused(forged(small_ir(), extra=[(lzma, b"x" * 100)]), "compression method 14")


def test_too_many_members_are_refused() -> None:
    extra: list[tuple[str | zipfile.ZipInfo, bytes]] = [
        (f"sources/f{i}.emx", b"") for i in range(bundle.MAX_MEMBERS - 1)]
    refused(forged(small_ir(), extra=extra), f"over the limit of {bundle.MAX_MEMBERS}")


def test_a_zip_bomb_of_zeros_is_refused() -> None:
    """50 MB of zeros deflate to about 50 KB: the header's size alone refuses it, before inflating."""
    bomb = bytes(50 * 1024 * 1024)
    refused(forged(small_ir(), ir_bytes=bomb), "'ir.json'", "over the limit")


def test_a_member_compressed_past_the_ratio_is_refused() -> None:
    # Under the size limit of a source, but inflating about 1,000 times: refused as a bomb.
    refused(forged(small_ir(), extra=[("sources/a.emx", b"a" * (bundle.MAX_SOURCE_BYTES - 1))]),
            "'sources/a.emx'", "zip bomb")


def test_sources_over_the_total_limit_are_refused() -> None:
    # Each source is at its own limit and compresses about 100:1 (under the ratio cap), so only
    # the total of their declared sizes is over the limit.
    noise = random.Random(0).randbytes(10_000)
    source = noise + bytes(bundle.MAX_SOURCE_BYTES - len(noise))
    count = bundle.MAX_SOURCES_TOTAL_BYTES // bundle.MAX_SOURCE_BYTES + 1
    extra: list[tuple[str | zipfile.ZipInfo, bytes]] = [(f"sources/f{i}.emx", source) for i in range(count)]
    refused(forged(small_ir(), extra=extra), "the sources total")


def test_a_header_that_understates_the_size_is_refused() -> None:
    """A small declared size passes the header checks; reading stops at it and the CRC fails."""
    data = bytearray(good_bundle())
    _patch_headers(data, "ir.json", file_size=100)
    refused(bytes(data), "'ir.json'", "corrupt data")


def test_a_header_that_overstates_the_size_is_refused() -> None:
    data = bytearray(good_bundle())
    real = len(ir.dumps(small_ir()))
    _patch_headers(data, "ir.json", file_size=real + 1000)
    refused(bytes(data), "'ir.json'", f"{real} bytes where its header declares {real + 1000}")


def test_a_header_lying_past_the_ratio_is_refused() -> None:
    """The declared size is checked against the ratio cap from the header, before inflating."""
    data = bytearray(good_bundle())
    _patch_headers(data, "ir.json", file_size=bundle.MAX_IR_BYTES - 1)
    refused(bytes(data), "'ir.json'", "zip bomb")


def _patch_headers(data: bytearray, name: str, *, file_size: int | None = None,
                   flag_bits: int | None = None) -> None:
    """Rewrite the local and central headers of member `name` in place (the bytes a liar edits)."""
    encoded = name.encode()
    patched = 0
    for signature, size_at, flags_at, name_len_at, name_at in (
        (b"PK\x03\x04", 22, 6, 26, 30),   # local file header
        (b"PK\x01\x02", 24, 8, 28, 46),   # central directory header
    ):
        start = 0
        while (pos := data.find(signature, start)) >= 0:
            start = pos + 4
            (name_len,) = struct.unpack_from("<H", data, pos + name_len_at)
            if bytes(data[pos + name_at: pos + name_at + name_len]) != encoded:
                continue
            if file_size is not None:
                struct.pack_into("<I", data, pos + size_at, file_size)
            if flag_bits is not None:
                (flags,) = struct.unpack_from("<H", data, pos + flags_at)
                struct.pack_into("<H", data, pos + flags_at, flags | flag_bits)
            patched += 1
    assert patched == 2


def test_a_source_that_is_not_utf8_is_refused() -> None:
    refused(forged(small_ir(), extra=[("sources/a.emx", b"\xff\xfe bad")]), "'sources/a.emx'", "not UTF-8")


def test_missing_manifest_or_ir_is_refused() -> None:
    refused(zip_of([("ir.json", ir.dumps(small_ir()))]), "manifest.json is missing")
    manifest = json.dumps(make_manifest(small_ir(), version="1.0.0")).encode()
    refused(zip_of([("manifest.json", manifest)]), "ir.json is missing")


# ── the manifest ───────────────────────────────────────────────────────────────────────────────


def test_an_unknown_format_version_is_refused() -> None:
    refused(forged(small_ir(), manifest={"format": 2}), "bundle format 2 is not supported")


def test_an_unknown_ir_version_is_refused() -> None:
    doc = small_ir()
    doc["ir_version"] = 2
    refused(forged(doc, manifest={"ir_version": 2}), "IR version 2 is not supported")
    refused(forged(doc), "ir.json: ir_version 2 differs from the manifest's 1")


@pytest.mark.parametrize(("change", "fragment"), [
    ({"format": "1"}, "'format' must be an integer"),
    ({"format": True}, "'format' must be an integer"),
    ({"version": 1}, "'version' must be a string"),
    ({"workflows": {}}, "'workflows' must be a list"),
    ({"version": "latest"}, "version 'latest' is not a version"),
    ({"package": "media/encode"}, "is not a dotted name"),
    ({"digest": "md5:abc"}, "is not 'sha256:' and 64 hex digits"),
    ({"signed_by": "me"}, "unknown key 'signed_by'"),
])
def test_a_malformed_manifest_is_refused(change: dict[str, Any], fragment: str) -> None:
    refused(forged(small_ir(), manifest=change), "manifest.json", fragment)


def test_a_manifest_missing_a_key_is_refused() -> None:
    manifest = make_manifest(small_ir(), version="1.0.0")
    del manifest["digest"]
    data = zip_of([("manifest.json", json.dumps(manifest).encode()), ("ir.json", ir.dumps(small_ir()))])
    refused(data, "manifest.json: missing key 'digest'")


def test_a_manifest_that_is_not_an_object_is_refused() -> None:
    data = zip_of([("manifest.json", b"[1, 2]"), ("ir.json", ir.dumps(small_ir()))])
    refused(data, "manifest.json: expected a JSON object")


def test_a_manifest_lying_about_the_package_is_refused() -> None:
    refused(forged(small_ir(), manifest={"package": "other.pkg"}), "package 'other.pkg' differs")


def test_a_manifest_lying_about_the_workflows_is_refused() -> None:
    refused(forged(small_ir(), manifest={"workflows": []}), "'workflows' does not match")


# ── the IR: integrity, strict JSON, verification ───────────────────────────────────────────────


def test_an_edited_ir_is_refused_by_its_digest() -> None:
    original = small_ir()
    edited = copy.deepcopy(original)
    edited["workflows"][0]["functions"][0]["options"]["retries"] = 1000  # still valid IR
    data = forged(edited, manifest={"digest": ir.digest(original)})
    refused(data, "digest mismatch")


def test_a_forged_manifest_digest_is_refused() -> None:
    refused(forged(small_ir(), manifest={"digest": "sha256:" + "0" * 64}), "digest mismatch")


def test_a_digest_of_the_raw_bytes_is_not_enough() -> None:
    """The digest is recomputed from the parsed IR: re-formatting ir.json is fine, editing is not."""
    pretty = json.dumps(small_ir(), indent=4).encode()
    assert load_bundle(forged(small_ir(), ir_bytes=pretty)).ir == small_ir()


@pytest.mark.parametrize(("node", "fragment"), [
    ({"op": "exec", "at": AT, "code": "import os"}, "unknown statement operator 'exec'"),
    ({"op": "expr", "at": AT, "expr": {"op": "python", "at": AT, "source": "__import__('os')"}},
     "unknown expression operator 'python'"),
    ({"op": "expr", "at": AT, "expr": {"op": "method", "at": AT, "obj": {"op": "lit", "at": AT, "value": 1},
                                       "name": "__class__", "args": [], "safe": False, "spread": False}},
     "unknown method '__class__'"),
])
def test_unknown_operators_in_the_ir_are_refused(node: dict[str, Any], fragment: str) -> None:
    doc = small_ir()
    doc["workflows"][0]["rules"][0]["action"]["body"].append(node)
    # The manifest is consistent (a forger recomputes the digest): verification must still refuse.
    refused(forged(doc), "ir.json: workflows[0].rules[0].action.body[1]", fragment)


def test_an_ir_that_is_not_an_object_is_refused() -> None:
    refused(forged(small_ir(), ir_bytes=b"[]"), "ir.json: expected a JSON object")


def test_duplicate_json_keys_are_refused() -> None:
    text = ir.dumps(small_ir()).decode()
    doubled = text.replace('"package":"media.encode"', '"package":"media.encode","package":"evil.pkg"')
    assert doubled != text
    refused(forged(small_ir(), ir_bytes=doubled.encode()), "ir.json: duplicate key 'package'")
    manifest = json.dumps(make_manifest(small_ir(), version="1.0.0"))
    manifest = manifest.replace('"format": 1', '"format": 1, "format": 1')
    data = zip_of([("manifest.json", manifest.encode()), ("ir.json", ir.dumps(small_ir()))])
    refused(data, "manifest.json: duplicate key 'format'")


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity"])
def test_nan_and_infinity_are_refused(constant: str) -> None:
    text = ir.dumps(small_ir()).decode().replace('"salience":0', f'"salience":{constant}')
    refused(forged(small_ir(), ir_bytes=text.encode()), "ir.json", f"{constant} is not a JSON number")


def test_invalid_json_is_refused() -> None:
    refused(forged(small_ir(), ir_bytes=b'{"ir_version": 1,'), "ir.json: not valid JSON")
    refused(forged(small_ir(), ir_bytes=b"\xff{}"), "ir.json: not UTF-8")


@pytest.mark.parametrize("depth", [bundle.MAX_JSON_DEPTH + 1, 20_000])
def test_deep_nesting_is_refused(depth: int) -> None:
    deep = b"[" * depth + b"]" * depth
    refused(forged(small_ir(), ir_bytes=b'{"x":' + deep + b"}"), "ir.json: nested deeper than")


def test_the_deepest_valid_ir_is_not_refused_for_its_nesting() -> None:
    """MAX_JSON_DEPTH must admit every document ir.validate admits (maps nest 3 JSON levels each)."""
    doc = small_ir()
    expr: dict[str, Any] = {"op": "lit", "at": AT, "value": 1}
    for _ in range(ir.MAX_DEPTH - 2):  # the statement and its expression take two levels
        expr = {"op": "map", "at": AT, "entries": [{"key": {"op": "lit", "at": AT, "value": "k"}, "value": expr}]}
    doc["workflows"][0]["rules"][0]["action"]["body"].append({"op": "expr", "at": AT, "expr": expr})
    assert load_bundle(build_bundle(doc, version="1", sources={})).ir == doc
    # one level more is refused by the IR's own limit, with its path
    doc["workflows"][0]["rules"][0]["action"]["body"][-1]["expr"] = {
        "op": "map", "at": AT, "entries": [{"key": {"op": "lit", "at": AT, "value": "k"}, "value": expr}]}
    refused(forged(doc), "ir.json: workflows[0].rules[0].action.body[1]", "nested deeper than")
