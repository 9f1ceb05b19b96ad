"""Emirax bundles (.emxb): the one file `emirax compile` writes and the server accepts.

    build_bundle(ir_doc, *, version, sources) -> bytes       deterministic zip bytes
    write_bundle(path, ir_doc, *, version, sources) -> dict  writes atomically, returns the manifest
    load_bundle(bytes | path) -> Bundle                      verifies everything or raises BundleError

A bundle is a zip archive (SPEC section 3, docs/bundles.md) holding exactly:

    manifest.json           format, compiler, package, version, digest, ir_version, workflows
    ir.json                 the IR in canonical form (emirax.ir.dumps)
    sources/<name>          the .emx sources, for error messages only (never compiled again)

The digest is emirax.ir.digest of the IR alone, so compiling the same sources again gives the same
digest and uploading it again is a no-op. The archive itself is byte-identical for the same inputs
too: fixed member order, timestamps (1980-01-01), permissions and compression.

`load_bundle` treats its input as hostile. It never extracts to disk, executes or imports anything;
it checks the archive (size, member count, names, file types, declared and actual sizes,
compression ratio), then the manifest's schema, then the IR (strict JSON, its version,
emirax.ir.validate), and finally that the manifest tells the truth about the IR (digest, package,
workflows). Every refusal is ONE BundleError whose message names the member and the problem. The
limits are named constants below so the server can reuse them (e.g. for its upload body limit).
"""

from __future__ import annotations

import io
import json
import os
import re
import stat
import tempfile
import zipfile
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from emirax import ir
from emirax.errors import BundleError, IRError
from emirax.project import MAX_FILE_BYTES, MAX_FILES, MAX_VERSION_LENGTH, PACKAGE_RE, VERSION_RE

BUNDLE_FORMAT = 1
BUNDLE_SUFFIX = ".emxb"
MANIFEST_NAME = "manifest.json"
IR_NAME = "ir.json"
SOURCES_PREFIX = "sources/"

# ── limits (fail closed; the server reuses them) ───────────────────────────────────────────────
# The whole .emxb file: far above a real project (the 10,000-line benchmark is well under 1 MiB).
MAX_BUNDLE_BYTES = 16 * 1024 * 1024
# Sources as a project may hold them (emirax.project), plus manifest.json and ir.json.
MAX_SOURCES = MAX_FILES
MAX_MEMBERS = MAX_SOURCES + 2
MAX_SOURCE_BYTES = MAX_FILE_BYTES
MAX_SOURCES_TOTAL_BYTES = 32 * 1024 * 1024
MAX_MANIFEST_BYTES = 4 * 1024 * 1024
MAX_IR_BYTES = 32 * 1024 * 1024
MAX_MEMBER_NAME = 1024
# Zip bombs: a member may not inflate more than MAX_RATIO times its compressed size, once it is
# larger than RATIO_MIN_BYTES (small members compress absurdly well and can do no harm). The size
# limits above are what bound memory; the ratio refuses crafted members before inflating them.
# 200, not 100: a legal but repetitive project (2,000 near-identical workflows) reaches 125:1 in
# its manifest, while a bomb's deflate stream runs near 1,000:1.
MAX_RATIO = 200
RATIO_MIN_BYTES = 64 * 1024
# JSON nesting. Valid IR nests at most ir.MAX_DEPTH code levels, each up to three JSON levels
# (node -> list -> entry -> node), under a few levels of document structure.
MAX_JSON_DEPTH = 3 * ir.MAX_DEPTH + 32
READ_CHUNK = 64 * 1024

_FIXED_DATE = (1980, 1, 1, 0, 0, 0)
_FILE_MODE = stat.S_IFREG | 0o644
_DIGEST_RE = re.compile(r"^sha256:[0-9a-f]{64}$")
_MS_DOS_DIRECTORY = 0x10
_ENCRYPTED = 0x1
_LOCAL_HEADER = b"PK\x03\x04"
_MANIFEST_KEYS: dict[str, tuple[type, ...]] = {
    "format": (int,), "compiler": (str,), "package": (str,), "version": (str,),
    "digest": (str,), "ir_version": (int,), "workflows": (list,),
}


@dataclass(frozen=True)
class Bundle:
    """A verified bundle: its manifest, its IR (valid), its sources by name, and its digest."""

    manifest: dict[str, Any]
    ir: dict[str, Any]
    sources: dict[str, str]
    digest: str


def compiler_id() -> str:
    """'emirax <version>' of the installed package, for the manifest."""
    try:
        return f"emirax {metadata.version('emirax')}"
    except metadata.PackageNotFoundError:
        return "emirax 0.0.0"


# ── writing ────────────────────────────────────────────────────────────────────────────────────


def make_manifest(ir_doc: Mapping[str, Any], *, version: str) -> dict[str, Any]:
    """The manifest of a bundle of `ir_doc` at `version`."""
    return {
        "format": BUNDLE_FORMAT,
        "compiler": compiler_id(),
        "package": ir_doc["package"],
        "version": version,
        "digest": ir.digest(ir_doc),
        "ir_version": ir_doc["ir_version"],
        "workflows": ir.signatures(ir_doc),
    }


def build_bundle(ir_doc: Mapping[str, Any], *, version: str, sources: Mapping[str, str]) -> bytes:
    """The .emxb bytes for `ir_doc` (valid IR) at `version`, carrying `sources` (name -> text).

    Refuses (BundleError) anything `load_bundle` would refuse, so a bundle that was written can be
    loaded: an invalid IR or version, a bad source name, sizes over the limits.
    """
    return _build(ir_doc, version, sources)[0]


def write_bundle(
    path: Path | str, ir_doc: Mapping[str, Any], *, version: str, sources: Mapping[str, str]
) -> dict[str, Any]:
    """Build the bundle and write it to `path` atomically; returns the manifest."""
    data, manifest = _build(ir_doc, version, sources)
    save(path, data)
    return manifest


def save(path: Path | str, data: bytes) -> None:
    """Write bundle bytes to `path` atomically (a temporary file, then os.replace), so a reader
    never sees half a bundle and a failed write leaves the old file as it was."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    # The temporary file sits next to the target so os.replace stays on one filesystem.
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp_name, 0o644)
        os.replace(tmp_name, target)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise


def build_with_manifest(
    ir_doc: Mapping[str, Any], *, version: str, sources: Mapping[str, str]
) -> tuple[bytes, dict[str, Any]]:
    """`build_bundle`, also returning the manifest it wrote."""
    return _build(ir_doc, version, sources)


def _build(ir_doc: Mapping[str, Any], version: str, sources: Mapping[str, str]) -> tuple[bytes, dict[str, Any]]:
    manifest = _manifest_for_build(ir_doc, version)
    members: list[tuple[str, bytes]] = [
        (MANIFEST_NAME, _manifest_bytes(manifest)),
        (IR_NAME, ir.dumps(ir_doc)),
    ]
    for name in sorted(sources):
        _check_source_name(name)
        members.append((SOURCES_PREFIX + name, sources[name].encode("utf-8")))
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, data in members:
            archive.writestr(_member_info(name), data)
    data = buffer.getvalue()
    # The same checks load_bundle makes on the archive: sizes, counts and ratios.
    if len(data) > MAX_BUNDLE_BYTES:
        raise BundleError(_too_big_bundle(len(data)))
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        _check_members(archive.infolist())
    return data, manifest


def _manifest_for_build(ir_doc: Mapping[str, Any], version: str) -> dict[str, Any]:
    try:
        ir.validate(ir_doc)
    except IRError as exc:
        raise BundleError(f"{IR_NAME}: {exc}") from None
    if not isinstance(version, str) or len(version) > MAX_VERSION_LENGTH or not VERSION_RE.match(version):
        raise BundleError(f"version {version!r} is not a version like \"1.0.0\"")
    return make_manifest(ir_doc, version=version)


def _manifest_bytes(manifest: Mapping[str, Any]) -> bytes:
    # Indented for people who unzip a bundle; sorted keys keep it deterministic.
    text = json.dumps(manifest, sort_keys=True, indent=2, ensure_ascii=False, allow_nan=False)
    return (text + "\n").encode("utf-8")


def _member_info(name: str) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name, date_time=_FIXED_DATE)
    info.compress_type = zipfile.ZIP_DEFLATED
    info.create_system = 3  # unix, whatever the host: the same bytes everywhere
    info.external_attr = _FILE_MODE << 16
    return info


# ── reading ────────────────────────────────────────────────────────────────────────────────────


def load_bundle(data: bytes | Path | str) -> Bundle:
    """Verify and read a bundle (its bytes, or the path of a .emxb file); raise BundleError."""
    raw = _read_input(data)
    if len(raw) > MAX_BUNDLE_BYTES:
        raise BundleError(_too_big_bundle(len(raw)))
    if not raw.startswith(_LOCAL_HEADER):
        # zipfile would skip leading bytes (a script glued before the archive); a bundle has none.
        raise BundleError("not a bundle: not a valid zip archive (it does not start with a zip header)")
    try:
        archive = zipfile.ZipFile(io.BytesIO(raw))
    except (zipfile.BadZipFile, zipfile.LargeZipFile, ValueError, OSError, EOFError) as exc:
        raise BundleError(f"not a bundle: not a valid zip archive ({exc}); rebuild it with emirax compile") from None
    with archive:
        infos = archive.infolist()
        _check_members(infos)
        by_name = {info.filename: info for info in infos}
        if MANIFEST_NAME not in by_name:
            raise BundleError(f"{MANIFEST_NAME} is missing: not an Emirax bundle (rebuild it with emirax compile)")
        if IR_NAME not in by_name:
            raise BundleError(f"{IR_NAME} is missing: the bundle holds no rules")
        manifest = _check_manifest(_parse_json(_read_member(archive, by_name[MANIFEST_NAME]), MANIFEST_NAME))
        doc = _parse_json(_read_member(archive, by_name[IR_NAME]), IR_NAME)
        sources = _read_sources(archive, [info for info in infos if info.filename.startswith(SOURCES_PREFIX)])
    _check_ir(doc, manifest)
    return Bundle(manifest=manifest, ir=doc, sources=sources, digest=manifest["digest"])


def _read_input(data: bytes | Path | str) -> bytes:
    if isinstance(data, (bytes, bytearray, memoryview)):
        return bytes(data)
    path = Path(data)
    try:
        with path.open("rb") as handle:
            return handle.read(MAX_BUNDLE_BYTES + 1)  # one byte more tells "too big" apart
    except OSError as exc:
        raise BundleError(f"{path}: cannot read: {exc.strerror or exc}") from None


def _too_big_bundle(size: int) -> str:
    return f"the bundle is {size} bytes, over the limit of {MAX_BUNDLE_BYTES // (1024 * 1024)} MiB"


# — the archive —


def _check_members(infos: list[zipfile.ZipInfo]) -> None:
    """Names, types, declared sizes and ratios of every member, from the headers alone."""
    if len(infos) > MAX_MEMBERS:
        raise BundleError(f"the bundle has {len(infos)} members, over the limit of {MAX_MEMBERS}")
    seen: set[str] = set()
    sources = 0
    sources_bytes = 0
    for info in infos:
        name = _check_member_name(info)
        if name in seen:
            raise BundleError(f"member {name!r} appears twice")
        seen.add(name)
        _check_member_type(info)
        _check_member_size(info)
        if name.startswith(SOURCES_PREFIX):
            sources += 1
            sources_bytes += info.file_size
    if sources > MAX_SOURCES:
        raise BundleError(f"the bundle has {sources} sources, over the limit of {MAX_SOURCES}")
    if sources_bytes > MAX_SOURCES_TOTAL_BYTES:
        raise BundleError(
            f"the sources total {sources_bytes} bytes, over the limit of "
            f"{MAX_SOURCES_TOTAL_BYTES // (1024 * 1024)} MiB"
        )


def _check_member_name(info: zipfile.ZipInfo) -> str:
    # orig_filename is the name as stored; zipfile cuts `filename` at a NUL byte.
    name = info.orig_filename
    if name != info.filename or "\x00" in name:
        raise BundleError(f"member {name!r}: a NUL byte in its name")
    if name in (MANIFEST_NAME, IR_NAME):
        return name
    _check_path(name)
    if not name.startswith(SOURCES_PREFIX):
        raise BundleError(
            f"unexpected member {name!r}: a bundle holds only {MANIFEST_NAME}, {IR_NAME} and "
            f"{SOURCES_PREFIX}..."
        )
    return name


def _check_path(name: str) -> None:
    """Refuse names that could escape a folder if someone extracted the bundle."""
    if len(name) > MAX_MEMBER_NAME:
        raise BundleError(f"member {name[:60]!r}...: a name longer than {MAX_MEMBER_NAME} characters")
    if "\\" in name:
        raise BundleError(f"member {name!r}: a backslash in its name (paths use '/')")
    if name.startswith("/"):
        raise BundleError(f"member {name!r}: an absolute path")
    if ":" in name:  # C:x, and NTFS alternate streams
        raise BundleError(f"member {name!r}: a drive letter or ':' in its name")
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in name):
        raise BundleError(f"member {name!r}: a control character in its name")
    parts = name.split("/")
    if ".." in parts:
        raise BundleError(f"member {name!r}: a '..' in its path (it would escape the bundle)")
    if any(part in ("", ".") for part in parts):
        raise BundleError(f"member {name!r}: an empty or '.' path segment (directories are not members)")


def _check_source_name(name: str) -> None:
    """At build time: a source's name (relative to sources/) must make a member load accepts."""
    try:
        if not isinstance(name, str) or not name:
            raise BundleError("empty")
        _check_path(SOURCES_PREFIX + name)
    except BundleError:
        raise BundleError(
            f"source name {name!r}: must be a relative path with '/' separators, without '..'"
        ) from None


def _check_member_type(info: zipfile.ZipInfo) -> None:
    mode = info.external_attr >> 16
    if stat.S_ISLNK(mode):
        raise BundleError(f"member {info.filename!r}: a symlink (bundles hold regular files only)")
    if (mode and stat.S_IFMT(mode) not in (0, stat.S_IFREG)) or info.external_attr & _MS_DOS_DIRECTORY:
        raise BundleError(f"member {info.filename!r}: not a regular file")
    if info.flag_bits & _ENCRYPTED:
        raise BundleError(f"member {info.filename!r}: encrypted")
    if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
        raise BundleError(
            f"member {info.filename!r}: compression method {info.compress_type} "
            "(bundles use deflate or none)"
        )


def _limit_of(name: str) -> int:
    if name == MANIFEST_NAME:
        return MAX_MANIFEST_BYTES
    if name == IR_NAME:
        return MAX_IR_BYTES
    return MAX_SOURCE_BYTES


def _check_member_size(info: zipfile.ZipInfo) -> None:
    limit = _limit_of(info.filename)
    if info.file_size > limit:
        raise BundleError(
            f"member {info.filename!r}: {info.file_size} bytes uncompressed, over the limit of {limit}"
        )
    if info.file_size > RATIO_MIN_BYTES and info.file_size > MAX_RATIO * max(info.compress_size, 1):
        raise BundleError(
            f"member {info.filename!r}: compressed more than {MAX_RATIO}:1 "
            f"({info.compress_size} -> {info.file_size} bytes), refused as a zip bomb"
        )


def _read_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> bytes:
    """Read one member in chunks, stopping as soon as it yields more than its header declared."""
    # Headers can lie: never trust file_size for the read itself, count what comes out.
    limit = min(info.file_size, _limit_of(info.filename))
    out = bytearray()
    try:
        with archive.open(info) as handle:
            while chunk := handle.read(READ_CHUNK):
                out += chunk
                if len(out) > limit:
                    raise BundleError(
                        f"member {info.filename!r}: inflates past its declared size of "
                        f"{info.file_size} bytes (a lying header)"
                    )
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError, NotImplementedError) as exc:
        raise BundleError(
            f"member {info.filename!r}: corrupt data ({exc}); the bundle is damaged or was tampered with"
        ) from None
    if len(out) != info.file_size:
        raise BundleError(
            f"member {info.filename!r}: {len(out)} bytes where its header declares {info.file_size}"
        )
    return bytes(out)


def _read_sources(archive: zipfile.ZipFile, infos: list[zipfile.ZipInfo]) -> dict[str, str]:
    sources: dict[str, str] = {}
    for info in sorted(infos, key=lambda item: item.filename):
        data = _read_member(archive, info)
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise BundleError(f"member {info.filename!r}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
        sources[info.filename[len(SOURCES_PREFIX):]] = text
    return sources


# — JSON —


def _parse_json(data: bytes, name: str) -> Any:
    """Strict JSON: UTF-8, no NaN or Infinity, no duplicate keys, bounded nesting."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BundleError(f"{name}: not UTF-8 ({exc.reason} at byte {exc.start})") from None
    try:
        value = json.loads(text, object_pairs_hook=_no_duplicates(name), parse_constant=_no_constant(name))
    except RecursionError:
        raise BundleError(f"{name}: nested deeper than {MAX_JSON_DEPTH} levels") from None
    except ValueError as exc:  # JSONDecodeError, and ints too long to convert
        raise BundleError(f"{name}: not valid JSON ({exc})") from None
    _check_depth(value, name)
    return value


def _no_duplicates(name: str) -> Callable[[list[tuple[str, Any]]], dict[str, Any]]:
    def hook(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        obj = dict(pairs)
        if len(obj) != len(pairs):
            seen: set[str] = set()
            for key, _ in pairs:
                if key in seen:
                    raise BundleError(f"{name}: duplicate key {key!r} in an object")
                seen.add(key)
        return obj

    return hook


def _no_constant(name: str) -> Callable[[str], Any]:
    def refuse(constant: str) -> Any:
        raise BundleError(f"{name}: {constant} is not a JSON number (only finite numbers are allowed)")

    return refuse


def _check_depth(value: Any, name: str) -> None:
    # Iterative, so a deep document cannot exhaust the stack while we measure it.
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > MAX_JSON_DEPTH:
            raise BundleError(f"{name}: nested deeper than {MAX_JSON_DEPTH} levels")
        if isinstance(item, dict):
            stack.extend((child, depth + 1) for child in item.values() if isinstance(child, (dict, list)))
        elif isinstance(item, list):
            stack.extend((child, depth + 1) for child in item if isinstance(child, (dict, list)))


# — the manifest and the IR —


def _check_manifest(manifest: Any) -> dict[str, Any]:
    where = MANIFEST_NAME
    if not isinstance(manifest, dict):
        raise BundleError(f"{where}: expected a JSON object")
    fmt = manifest.get("format")
    if type(fmt) is not int:
        raise BundleError(f"{where}: 'format' must be an integer (the bundle format version)")
    if fmt != BUNDLE_FORMAT:
        raise BundleError(
            f"{where}: bundle format {fmt} is not supported (this Emirax reads format {BUNDLE_FORMAT}); "
            "compile the bundle with a matching emirax"
        )
    for key, types in _MANIFEST_KEYS.items():
        if key not in manifest:
            raise BundleError(f"{where}: missing key {key!r}")
        value = manifest[key]
        if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
            raise BundleError(f"{where}: {key!r} must be {_type_word(types[0])}")
    unknown = sorted(set(manifest) - set(_MANIFEST_KEYS))
    if unknown:
        raise BundleError(f"{where}: unknown key {unknown[0]!r}")
    if len(manifest["compiler"]) > 200:
        raise BundleError(f"{where}: 'compiler' is longer than 200 characters")
    if len(manifest["package"]) > ir.MAX_NAME or not PACKAGE_RE.match(manifest["package"]):
        raise BundleError(f"{where}: package {manifest['package']!r} is not a dotted name")
    if len(manifest["version"]) > MAX_VERSION_LENGTH or not VERSION_RE.match(manifest["version"]):
        raise BundleError(f"{where}: version {manifest['version']!r} is not a version like \"1.0.0\"")
    if not _DIGEST_RE.match(manifest["digest"]):
        raise BundleError(f"{where}: digest {manifest['digest'][:80]!r} is not 'sha256:' and 64 hex digits")
    if manifest["ir_version"] != ir.IR_VERSION:
        raise BundleError(
            f"{where}: IR version {manifest['ir_version']} is not supported (this Emirax reads IR "
            f"version {ir.IR_VERSION}); compile the bundle with a matching emirax"
        )
    return manifest


def _type_word(kind: type) -> str:
    return {int: "an integer", str: "a string", list: "a list"}.get(kind, kind.__name__)


def _check_ir(doc: Any, manifest: dict[str, Any]) -> None:
    if not isinstance(doc, dict):
        raise BundleError(f"{IR_NAME}: expected a JSON object")
    if doc.get("ir_version") != manifest["ir_version"] or type(doc.get("ir_version")) is not int:
        raise BundleError(
            f"{IR_NAME}: ir_version {doc.get('ir_version')!r} differs from the manifest's "
            f"{manifest['ir_version']}"
        )
    try:
        ir.validate(doc)
    except IRError as exc:
        raise BundleError(f"{IR_NAME}: {exc}") from None
    except RecursionError:
        raise BundleError(f"{IR_NAME}: nested too deeply") from None
    actual = ir.digest(doc)
    if actual != manifest["digest"]:
        raise BundleError(
            f"digest mismatch: the manifest says {manifest['digest']} but ir.json hashes to {actual}; "
            "the bundle was altered after it was built (rebuild it with emirax compile)"
        )
    if doc["package"] != manifest["package"]:
        raise BundleError(
            f"{MANIFEST_NAME}: package {manifest['package']!r} differs from the IR's {doc['package']!r}"
        )
    if manifest["workflows"] != ir.signatures(doc):
        raise BundleError(f"{MANIFEST_NAME}: 'workflows' does not match the workflows of {IR_NAME}")
