"""`emirax check` and `emirax compile` as users run them: the real command in a subprocess.

Each test runs `python -m emirax ...` (once the installed `emirax` console script) in a fresh
folder, with EMIRAX_CACHE_DIR inside it so nothing touches ~/.cache, and asserts what people and
scripts rely on: exit codes (0 ok, 1 user error, 2 usage), `file:line:column: error: ...` with the
source line and a caret under that column, every error at once, one `emirax: error:` line for
problems without a position, never a traceback, JSON that parses, and bundles that load and are
byte-identical from one compile to the next. Each subprocess costs ~0.3 s, so tests group the
assertions one run can answer.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from emirax.bundle import load_bundle
from support import Run

TIMEOUT = 60

GOOD = """\
package demo.app

workflow W {
    fact Request(String source, int chunks = 31)
    fact Chunk(int index, String uri)
    function String encode(String uri, int level)

    rule 'encode' {
        match {
            c: Chunk()
            r: Request()
        }
        action { encode(c.uri, 3) }
        reaction { uri -> insert Chunk(index: c.index + 100, uri: uri) }
    }
}
"""

# Three independent mistakes; the checker reports all of them.
BAD = """\
package demo.app

workflow W {
    fact Request(String source, int chunks = 31)
    fact Chunk(int index, String uri)
    function String encode(String uri, int level)

    rule 'one' {
        match {
            c: Chunk(indx == 1)
        }
        action { encode(c.uri) }
    }
    rule 'two' {
        match {
            r: Reqest()
        }
        action { log "x" }
    }
}
"""

# Valid, with one warning: a String compared with an int is never equal.
WARN = GOOD.replace("r: Request()\n", "r: Request()\n            when 'a' == 1\n")

UNCLOSED = "package demo.app\n\nworkflow W {\n    fact A(int x)\n"
UNEXPECTED = "package demo.app\n\nworkflow W {\n    fact A(int x))\n}\n"

HEADER = re.compile(r"^(?P<file>\S+):(?P<line>\d+):(?P<column>\d+): (?P<severity>error|warning): (?P<message>.+)$")
# Lark's terminal names must never reach users.
TOKEN_NAMES = re.compile(
    r"\b(RBRACE|LBRACE|LPAR|RPAR|LSQB|RSQB|COMMA|SEMI|NAME|NUMBER|_NLC?|SQ_STRING|DQUOTE)\b"
    r"|__ANON|\$END"
)


@pytest.fixture(scope="session")
def warm_grammar(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A cache folder holding Lark's table of the grammar, built once per session.

    A cold start builds the table (~0.5 s); each test copies it into its own EMIRAX_CACHE_DIR, so
    tests stay isolated (their compile caches are their own) and fast.
    """
    folder = tmp_path_factory.mktemp("emirax-grammar")
    write(folder, "warm.emx", GOOD)
    env = {**os.environ, "EMIRAX_CACHE_DIR": str(folder / "cache")}
    subprocess.run([sys.executable, "-m", "emirax", "check", "warm.emx"], cwd=folder, env=env,
                   capture_output=True, timeout=TIMEOUT, check=False)
    return folder / "cache"


_WARM: list[Path] = []


@pytest.fixture(autouse=True)
def _grammar_table(warm_grammar: Path) -> None:
    _WARM[:] = [warm_grammar]


def _seed(cache: Path) -> None:
    """Give a fresh cache folder the session's grammar table (and nothing else)."""
    if cache.exists():
        return
    cache.mkdir(parents=True)
    for folder in _WARM:
        for table in folder.glob("grammar-*"):
            shutil.copy2(table, cache / table.name)


def emirax(cwd: Path, *args: str, command: list[str] | None = None, cache: Path | None = None) -> Run:
    """Run the command in `cwd`; no traceback may ever appear, whatever the exit code."""
    cache = cache or cwd / ".cache"
    _seed(cache)
    env = {k: v for k, v in os.environ.items() if k not in {"EMIRAX_DEBUG", "FORCE_COLOR"}}
    env.update(
        EMIRAX_CACHE_DIR=str(cache),
        COLUMNS="80",  # what a pipe or a CI log gets
        NO_COLOR="1",
        PYTHONIOENCODING="utf-8",
    )
    done = subprocess.run(
        [*(command or [sys.executable, "-m", "emirax"]), *args],
        cwd=cwd, env=env, capture_output=True, text=True, encoding="utf-8", timeout=TIMEOUT,
    )
    run = Run(done.returncode, done.stdout, done.stderr)
    assert "Traceback" not in run.output, run.output
    assert "internal error" not in run.output, run.output
    return run


def write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def project(folder: Path, version: str = "1.2.0") -> Path:
    """A project folder: emirax.toml and two files under rules/."""
    write(folder, "emirax.toml", f'[bundle]\npackage = "demo.app"\nversion = "{version}"\n')
    write(folder, "rules/a.emx", GOOD)
    write(folder, "rules/b.emx", GOOD.replace("workflow W", "workflow V"))
    return folder


def at(src: str, needle: str) -> tuple[int, int]:
    """Line and column (1-based) where `needle` first starts in `src`."""
    index = src.index(needle)
    return src.count("\n", 0, index) + 1, index - (src.rfind("\n", 0, index) + 1) + 1


@dataclass
class Rendered:
    file: str
    line: int
    column: int
    severity: str
    message: str
    echoed: str  # the source line as printed
    caret_column: int  # 1-based column of the first '^' under it


def rendered(stderr: str) -> list[Rendered]:
    """Every diagnostic in the output, with the echoed source line and the caret's column."""
    lines = stderr.splitlines()
    found = []
    for i, text in enumerate(lines):
        m = HEADER.match(text)
        if not m:
            continue
        source_line, caret_line = lines[i + 1], lines[i + 2]
        gutter, bar, echoed = source_line.partition("| ")
        assert bar and gutter.strip() == m["line"], source_line
        start = len(gutter) + len(bar)
        assert caret_line[: start - 2].strip() == "" and caret_line[start - 2 : start] == "| ", caret_line
        found.append(Rendered(
            m["file"], int(m["line"]), int(m["column"]), m["severity"], m["message"],
            echoed, caret_line.index("^") - start + 1,
        ))
    return found


# ── emirax check ───────────────────────────────────────────────────────────────────────────────


def test_check_a_valid_file_and_a_project_folder(tmp_path: Path) -> None:
    write(tmp_path, "good.emx", GOOD)
    project(tmp_path / "proj")
    run = emirax(tmp_path, "check", "good.emx", "proj")
    assert run.code == 0, run.output
    lines = run.stdout.splitlines()
    assert "good.emx: ok (1 file, 1 rule)" in lines
    assert "proj: ok (2 files, 2 rules)" in lines
    assert "error" not in run.stderr


def test_check_reports_every_error_with_its_line_and_a_caret_under_its_column(tmp_path: Path) -> None:
    write(tmp_path, "bad.emx", BAD)
    run = emirax(tmp_path, "check", "bad.emx")
    assert run.code == 1
    diags = rendered(run.stderr)
    assert [(d.file, d.severity) for d in diags] == [("bad.emx", "error")] * 3
    source = BAD.splitlines()
    for d in diags:
        assert d.echoed == source[d.line - 1]
        assert d.caret_column == d.column, d
    indx, arity, unknown = diags
    assert (indx.line, indx.column) == at(BAD, "indx")
    assert "indx" in indx.message
    assert (arity.line, arity.column) == at(BAD, "encode(c.uri)")
    assert "encode" in arity.message and "2" in arity.message
    assert unknown.line == at(BAD, "Reqest")[0]
    assert unknown.column in (at(BAD, "r: Reqest")[1], at(BAD, "Reqest")[1])
    assert "Reqest" in unknown.message
    assert "did you mean 'index'?" in run.stderr
    assert run.stderr.rstrip().splitlines()[-1].startswith("bad.emx: 3 errors")


def test_syntax_errors_say_what_was_expected_in_words(tmp_path: Path) -> None:
    write(tmp_path, "unclosed.emx", UNCLOSED)
    write(tmp_path, "unexpected.emx", UNEXPECTED)
    run = emirax(tmp_path, "check", "unclosed.emx", "unexpected.emx")
    assert run.code == 1
    assert not TOKEN_NAMES.search(run.output), run.output
    diags = {d.file: d for d in rendered(run.stderr)}
    assert set(diags) == {"unclosed.emx", "unexpected.emx"}
    unclosed, unexpected = diags["unclosed.emx"], diags["unexpected.emx"]
    assert "'}'" in unclosed.message and "workflow" in unclosed.message
    line, column = at(UNEXPECTED, "))")
    assert (unexpected.line, unexpected.column) == (line, column + 1)  # the second ')'
    assert "')'" in unexpected.message and "expected" in unexpected.message
    assert unexpected.caret_column == unexpected.column
    assert "unclosed.emx: 1 error" in run.stderr and "unexpected.emx: 1 error" in run.stderr


def test_several_paths_one_good_one_bad_fail_and_both_are_reported(tmp_path: Path) -> None:
    write(tmp_path, "good.emx", GOOD)
    write(tmp_path, "bad.emx", BAD)
    run = emirax(tmp_path, "check", "good.emx", "bad.emx")
    assert run.code == 1
    assert "good.emx: ok (1 file, 1 rule)" in run.stdout.splitlines()
    assert len(rendered(run.stderr)) == 3
    assert "bad.emx: 3 errors" in run.stderr


def test_check_json_gives_each_path_its_report(tmp_path: Path) -> None:
    write(tmp_path, "good.emx", GOOD)
    write(tmp_path, "bad.emx", BAD)
    run = emirax(tmp_path, "check", "--json", "good.emx", "bad.emx")
    assert run.code == 1
    good, bad = json.loads(run.stdout)
    assert (good["path"], good["ok"], good["errors"], good["diagnostics"]) == ("good.emx", True, 0, [])
    assert (bad["path"], bad["ok"], bad["errors"]) == ("bad.emx", False, 3)
    first = bad["diagnostics"][0]
    assert (first["file"], first["line"], first["column"]) == ("bad.emx", *at(BAD, "indx"))
    assert "indx" in first["message"] and first["severity"] == "error"
    assert all({"file", "line", "column", "message"} <= set(d) for d in bad["diagnostics"])


def test_warnings_are_printed_but_do_not_fail(tmp_path: Path) -> None:
    write(tmp_path, "warn.emx", WARN)
    run = emirax(tmp_path, "check", "warn.emx")
    assert run.code == 0, run.output
    (d,) = rendered(run.stderr)
    assert d.severity == "warning"
    assert (d.line, d.column) == at(WARN, "'a' == 1") == (d.line, d.caret_column)
    assert "always false" in d.message
    assert "warn.emx: ok (1 file, 1 rule, 1 warning)" in run.stdout.splitlines()

    compiled = emirax(tmp_path, "compile", "warn.emx", "-o", "warn.emxb")
    assert compiled.code == 0, compiled.output
    assert "warning: comparing a String with an int" in compiled.stderr
    load_bundle(tmp_path / "warn.emxb")


# ── errors without a position, usage ───────────────────────────────────────────────────────────


def _missing(tmp: Path) -> str:
    return "nowhere.emx"


def _folder_without_toml(tmp: Path) -> str:
    write(tmp, "loose/rules/a.emx", GOOD)
    return "loose"


def _malformed_toml(tmp: Path) -> str:
    write(tmp, "broken/emirax.toml", "[bundle\nversion = 1\n")
    write(tmp, "broken/rules/a.emx", GOOD)
    return "broken"


def _not_utf8(tmp: Path) -> str:
    (tmp / "latin1.emx").write_bytes("package demo.app\n// café\n".encode("latin-1"))
    return "latin1.emx"


@pytest.mark.parametrize(("make", "words"), [
    (_missing, ["nowhere.emx", "no such file"]),
    (_folder_without_toml, ["loose", "emirax.toml"]),
    (_malformed_toml, ["emirax.toml", "malformed TOML"]),
    (_not_utf8, ["latin1.emx", "UTF-8"]),
], ids=["missing path", "folder without emirax.toml", "malformed emirax.toml", "not UTF-8"])
def test_a_project_problem_is_one_readable_line(
    tmp_path: Path, make: Callable[[Path], str], words: list[str]
) -> None:
    run = emirax(tmp_path, "check", make(tmp_path))
    assert run.code == 1
    lines = [line for line in run.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, run.stderr
    assert lines[0].startswith("emirax: error: ")
    for word in words:
        assert word in lines[0]
    assert run.stdout == ""


@pytest.mark.parametrize("args", [["check"], ["check", "--bogus", "good.emx"], ["frobnicate"]],
                         ids=["check without paths", "unknown option", "unknown command"])
def test_usage_errors_exit_2(tmp_path: Path, args: list[str]) -> None:
    write(tmp_path, "good.emx", GOOD)
    run = emirax(tmp_path, *args)
    assert run.code == 2, run.output
    assert "Usage" in run.stderr


def test_help_lists_the_commands(tmp_path: Path) -> None:
    run = emirax(tmp_path, "--help")
    assert run.code == 0
    assert re.search(r"\bcheck\b", run.stdout) and re.search(r"\bcompile\b", run.stdout)


def test_a_missing_path_does_not_stop_the_others_from_being_checked(tmp_path: Path) -> None:
    write(tmp_path, "bad.emx", BAD)
    write(tmp_path, "good.emx", GOOD)
    run = emirax(tmp_path, "check", "bad.emx", "nowhere.emx", "good.emx")
    assert run.code == 1
    assert "emirax: error: nowhere.emx: no such file or folder" in run.stderr
    assert "good.emx: ok" in run.stdout


def test_check_json_reports_a_project_error_as_json(tmp_path: Path) -> None:
    write(tmp_path, "good.emx", GOOD)
    run = emirax(tmp_path, "check", "--json", "nowhere.emx", "good.emx")
    assert run.code == 1
    reports = json.loads(run.stdout)
    assert [(r["path"], r["ok"]) for r in reports] == [("nowhere.emx", False), ("good.emx", True)]


# ── emirax compile ─────────────────────────────────────────────────────────────────────────────


def test_compile_writes_a_loadable_bundle_byte_identical_every_time(tmp_path: Path) -> None:
    write(tmp_path, "good.emx", GOOD)
    first = emirax(tmp_path, "compile", "good.emx", "-o", "out/first.emxb")
    assert first.code == 0, first.output
    bundle = load_bundle(tmp_path / "out" / "first.emxb")
    assert bundle.manifest["package"] == "demo.app"
    assert bundle.manifest["version"] == "0.0.0"
    assert bundle.sources == {"good.emx": GOOD}
    # The digest is printed whole, on one line, whatever the terminal's width.
    assert bundle.digest in re.sub(r"\s+", "", first.stdout)
    assert "compiled out/first.emxb" in first.stdout

    second = emirax(tmp_path, "compile", "good.emx", "-o", "second.emxb")  # from the cache
    assert second.code == 0, second.output
    assert (tmp_path / "second.emxb").read_bytes() == (tmp_path / "out" / "first.emxb").read_bytes()


def test_compile_json_with_a_version_and_no_cache(tmp_path: Path) -> None:
    write(tmp_path, "good.emx", GOOD)
    cache = tmp_path / "fresh-cache"
    run = emirax(tmp_path, "compile", "good.emx", "-o", "v2.emxb", "--version", "2.0.0",
                 "--json", "--no-cache", cache=cache)
    assert run.code == 0, run.output
    doc = json.loads(run.stdout)
    assert doc["ok"] is True and doc["bundle"] == "v2.emxb"
    assert doc["manifest"]["version"] == "2.0.0"
    assert doc["manifest"]["package"] == "demo.app"
    assert doc["size"] == (tmp_path / "v2.emxb").stat().st_size
    bundle = load_bundle(tmp_path / "v2.emxb")
    assert bundle.manifest == doc["manifest"]
    assert bundle.manifest["version"] == "2.0.0"
    # --no-cache wrote no compile cache (Lark's grammar table may sit next to it: not ours to test).
    assert not (cache / "compile").exists()


def test_compile_defaults_to_build_package_version_under_the_cwd(tmp_path: Path) -> None:
    """Also the one run through the installed `emirax` console script."""
    script = Path(sys.executable).parent / ("emirax.exe" if os.name == "nt" else "emirax")
    if not script.exists():
        pytest.skip(f"no console script next to {sys.executable}")
    project(tmp_path / "proj", version="1.2.0")
    run = emirax(tmp_path, "compile", "proj", command=[str(script)])
    assert run.code == 0, run.output
    target = tmp_path / "build" / "demo.app-1.2.0.emxb"
    bundle = load_bundle(target)
    assert bundle.manifest["version"] == "1.2.0"
    assert sorted(bundle.sources) == ["rules/a.emx", "rules/b.emx"]
    assert not (tmp_path / "proj" / "build").exists()


def test_compile_of_a_broken_project_writes_nothing(tmp_path: Path) -> None:
    work, cache = tmp_path / "work", tmp_path / "cache"
    write(work, "bad.emx", BAD)
    existing = work / "out.emxb"
    existing.write_bytes(b"the previous bundle")
    before = sorted(p.name for p in work.iterdir())
    run = emirax(work, "compile", "bad.emx", "-o", "out.emxb", cache=cache)
    assert run.code == 1
    assert len(rendered(run.stderr)) == 3
    assert "bad.emx: 3 errors" in run.stderr
    assert existing.read_bytes() == b"the previous bundle"
    assert sorted(p.name for p in work.iterdir()) == before  # no temporary file left either

    as_json = emirax(work, "compile", "bad.emx", "--json", cache=cache)  # no -o: build/...
    assert as_json.code == 1
    doc = json.loads(as_json.stdout)
    assert doc["ok"] is False
    assert [(d["line"], d["column"]) for d in doc["diagnostics"]][:2] == [
        at(BAD, "indx"), at(BAD, "encode(c.uri)")
    ]
    assert sorted(p.name for p in work.iterdir()) == before


def test_compile_prints_the_digest_on_one_line(tmp_path: Path) -> None:
    write(tmp_path, "good.emx", GOOD)
    run = emirax(tmp_path, "compile", "good.emx", "-o", "a.emxb")
    assert run.code == 0
    assert load_bundle(tmp_path / "a.emxb").digest in run.stdout
