"""The functions of media.encode, as plain Python: split, encode, assemble, index and grab.

This module owns the tenant's function code, the part that `emirax run`, `emirax test` (with
`module: true`) and function runners call. It works on real bytes, with the standard library only:

- the "video" is synthetic: `split` generates it from the source's name (64 frames of 64x64 grey
  pixels, 256 KiB, always the same bytes for the same name), so no test needs a media file;
- every blob lives in a content-addressed store, a folder under the system's temp directory
  (`$MEDIA_ENCODING_STORE` moves it), and is named by a URI `cas://<sha256 of its bytes>`;
  writing a blob that exists is a no-op, and writes are atomic, so parallel runs share the store;
- `encode` compresses a chunk with zlib at the level its recipe names, inside a small header that
  records the original size and digest; `index` checks every part against it.

Nothing here sleeps or touches the network: the 31 chunks of the model case take a few
milliseconds. Helpers start with `_` because every public callable of the module counts as a
declared function (emirax.runner.functions_of).
"""

from __future__ import annotations

import hashlib
import os
import struct
import tempfile
import zlib
from pathlib import Path
from typing import Any

FRAMES = 64  # frames in a synthetic source
SIDE = 64  # a frame is SIDE x SIDE grey pixels, one byte each
FPS = 4  # frames per second of the synthetic source: `grab(source, 5)` takes frame 20
URI_PREFIX = "cas://"

# Recipe -> zlib level. `zlib-0` .. `zlib-9` name a level directly.
RECIPES = {"fast": 1, "h264-720p": 4, "h264-1080p": 6, "archive": 9}

# One encoded part: magic, zlib level, original length, compressed length, original sha256.
_PART = struct.Struct(">4sBII32s")
_MAGIC = b"EMXZ"


# ── the functions ──────────────────────────────────────────────────────────────────────────────


def split(source: str, chunks: int) -> list[str]:
    """Cut the source into `chunks` pieces of (nearly) equal size; their URIs, in order."""
    if chunks < 1:
        raise ValueError(f"cannot split into {chunks} chunks")
    video = _video(source)
    _put(video)
    size, extra = divmod(len(video), chunks)
    if size == 0:
        raise ValueError(f"{source} has {len(video)} bytes: too small for {chunks} chunks")
    uris, start = [], 0
    for i in range(chunks):
        end = start + size + (1 if i < extra else 0)
        uris.append(_put(video[start:end]))
        start = end
    return uris


def encode(uri: str, recipe: str) -> str:
    """Compress one chunk with the recipe's zlib level; the URI of the encoded part."""
    level = _level(recipe)
    raw = _get(uri)
    packed = zlib.compress(raw, level)
    header = _PART.pack(_MAGIC, level, len(raw), len(packed), hashlib.sha256(raw).digest())
    return _put(header + packed)


def assemble(parts: list[str]) -> str:
    """Join encoded parts in the order given; the URI of the assembled file."""
    if not parts:
        raise ValueError("nothing to assemble")
    blobs = []
    for n, uri in enumerate(parts):
        blob = _get(uri)
        if not blob.startswith(_MAGIC):
            raise ValueError(f"part {n} ({uri}) is not an encoded chunk")
        blobs.append(blob)
    return _put(b"".join(blobs))


def index(uri: str) -> dict[str, Any]:
    """What is inside an assembled file: its size and digest, and its decoded chunks' totals.

    Every part is decompressed and checked against the digest `encode` recorded, so a file
    assembled from damaged parts fails here."""
    blob = _get(uri)
    decoded = hashlib.sha256()
    offset = count = total = 0
    while offset < len(blob):
        if len(blob) - offset < _PART.size:
            raise ValueError(f"{uri}: truncated part header at byte {offset}")
        magic, level, length, packed, digest = _PART.unpack_from(blob, offset)
        if magic != _MAGIC:
            raise ValueError(f"{uri}: no part header at byte {offset}")
        start = offset + _PART.size
        raw = zlib.decompress(blob[start:start + packed])
        if len(raw) != length or hashlib.sha256(raw).digest() != digest:
            raise ValueError(f"{uri}: part {count} does not decode to what was encoded")
        decoded.update(raw)
        offset, count, total = start + packed, count + 1, total + length
    return {"chunks": count, "size": len(blob), "sha256": hashlib.sha256(blob).hexdigest(),
            "decoded_bytes": total, "decoded_sha256": decoded.hexdigest()}


def grab(source: str, second: int) -> str:
    """The frame shown at `second`, as a binary PGM picture; its URI."""
    if second < 0:
        raise ValueError(f"no frame at second {second}")
    frame = (second * FPS) % FRAMES
    video = _video(source)
    pixels = video[frame * SIDE * SIDE:(frame + 1) * SIDE * SIDE]
    return _put(b"P5\n%d %d\n255\n" % (SIDE, SIDE) + pixels)


# ── the synthetic source ───────────────────────────────────────────────────────────────────────


def _video(source: str) -> bytes:
    """FRAMES frames of a moving gradient with a little noise: compressible, like real video,
    and different for every source name."""
    seed = hashlib.sha256(source.encode("utf-8")).digest()
    ramp = bytes(range(256)) * 2
    frames = []
    for f in range(FRAMES):
        noise = hashlib.sha256(seed + f.to_bytes(2, "big")).digest()
        rows = []
        for y in range(SIDE):
            shift = (seed[y % 32] + f * 3 + y) % 256
            row = bytearray(ramp[shift:shift + SIDE])
            row[noise[y % 32] % SIDE] = noise[(y + 1) % 32]  # one speck per row
            rows.append(bytes(row))
        frames.append(b"".join(rows))
    return b"".join(frames)


def _level(recipe: str) -> int:
    if recipe in RECIPES:
        return RECIPES[recipe]
    name, _, level = recipe.partition("-")
    if name == "zlib" and level.isdigit() and 0 <= int(level) <= 9:
        return int(level)
    known = ", ".join(sorted(RECIPES))
    raise ValueError(f"unknown recipe '{recipe}' (known: {known}, zlib-0 .. zlib-9)")


# ── the content-addressed store ────────────────────────────────────────────────────────────────


def _store() -> Path:
    folder = os.environ.get("MEDIA_ENCODING_STORE")
    return Path(folder) if folder else Path(tempfile.gettempdir()) / "emirax-media-encoding"


def _path(digest: str) -> Path:
    return _store() / digest[:2] / digest


def _put(data: bytes) -> str:
    digest = hashlib.sha256(data).hexdigest()
    path = _path(digest)
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        # Atomic: a reader never sees half a blob, and two writers of one blob write the same bytes.
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    return URI_PREFIX + digest


def _get(uri: str) -> bytes:
    if not isinstance(uri, str) or not uri.startswith(URI_PREFIX):
        raise ValueError(f"not a cas:// URI: {uri!r}")
    digest = uri[len(URI_PREFIX):]
    if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
        raise ValueError(f"not a cas:// URI: {uri!r}")
    try:
        data = _path(digest).read_bytes()
    except FileNotFoundError:
        raise ValueError(f"{uri}: no such blob in {_store()}") from None
    if hashlib.sha256(data).hexdigest() != digest:
        raise ValueError(f"{uri}: the stored blob is damaged")
    return data
