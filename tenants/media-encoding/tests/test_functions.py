"""The tenant's own pytest tests: functions.py on real bytes, and the rules run with it.

Run with `pytest tenants/media-encoding` (pytest also collects the scenario files next to this
one). The fixture `emirax_rules` comes from Emirax's pytest plugin: the project this file lives
in, compiled once per session (docs/testing.md).
"""

from __future__ import annotations

import hashlib
import importlib.util
import zlib
from pathlib import Path
from types import ModuleType

import pytest

FUNCTIONS = Path(__file__).resolve().parents[1] / "functions.py"


@pytest.fixture
def fns(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """functions.py, with its blob store in a folder of this test's own."""
    monkeypatch.setenv("MEDIA_ENCODING_STORE", str(tmp_path / "store"))
    spec = importlib.util.spec_from_file_location("media_encoding_functions", FUNCTIONS)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_split_cuts_the_source_into_pieces_that_join_back(fns: ModuleType) -> None:
    uris = fns.split("s3://in/movie.mov", 31)
    assert len(uris) == 31 and len(set(uris)) == 31
    pieces = [fns._get(u) for u in uris]
    assert b"".join(pieces) == fns._video("s3://in/movie.mov")
    assert max(map(len, pieces)) - min(map(len, pieces)) <= 1
    assert fns.split("s3://in/movie.mov", 31) == uris  # deterministic
    assert fns.split("s3://in/other.mov", 31) != uris


def test_encode_assemble_index_round_trip(fns: ModuleType) -> None:
    source = fns._video("clip")
    parts = [fns.encode(u, "archive") for u in fns.split("clip", 4)]
    whole = fns.assemble(parts)
    found = fns.index(whole)
    assert found["chunks"] == 4
    assert found["decoded_bytes"] == len(source)
    assert found["decoded_sha256"] == hashlib.sha256(source).hexdigest()
    assert found["size"] < len(source) // 4  # the synthetic video compresses like video
    blob = fns._get(parts[0])
    header = fns._PART.unpack_from(blob)
    assert header[1] == 9 and zlib.decompress(blob[fns._PART.size:]) == fns._get(fns.split("clip", 4)[0])


def test_bad_inputs_fail_with_a_message(fns: ModuleType) -> None:
    chunk = fns.split("clip", 2)[0]
    with pytest.raises(ValueError, match="unknown recipe 'vp9'"):
        fns.encode(chunk, "vp9")
    with pytest.raises(ValueError, match="not an encoded chunk"):
        fns.assemble([chunk])
    with pytest.raises(ValueError, match="no such blob"):
        fns.index("cas://" + "0" * 64)
    with pytest.raises(ValueError, match="cannot split"):
        fns.split("clip", 0)


def test_grab_gives_a_pgm_picture(fns: ModuleType) -> None:
    picture = fns._get(fns.grab("clip", 5))
    assert picture.startswith(b"P5\n64 64\n255\n")
    assert len(picture) == len(b"P5\n64 64\n255\n") + 64 * 64


def test_the_workflow_with_the_real_functions(emirax_rules, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEDIA_ENCODING_STORE", str(tmp_path / "store"))
    run = emirax_rules.run("VideoEncode",
                           [{"Request": {"source": "s3://in/a.mov", "recipe": "zlib-1"}}],
                           module=True)
    assert run.status == "completed"
    assert run.fired.count("encode chunk") == 31
    assert run.output["index"]["chunks"] == 31
    run.assert_fact("Assembled", uri=run.output["uri"])
    run.assert_calls("encode", 31)
