"""Rule tests (`emirax test`, scenario files, the pytest plugin) as tenants use them.

The command runs for real in a subprocess (the installed console script), on the media-encoding
tenant and on copies of it with one thing broken: a passing project exits 0, a failed expectation
exits 1 naming it with the trace, a bad scenario file exits 1 with one readable line and runs
nothing, `--json` is one document. The pytest plugin runs through `pytester`: the fixtures in a
tenant's own test file, the trace shown under a failed test, scenario files collected as tests.
The validation of scenario files and the stub forms are checked in-process, where they are cheap.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

# pytester's in-process runs drop the modules first imported inside them, while the `emirax`
# package keeps its attributes: a later run would mix stale and fresh modules. Importing what the
# plugin uses here, before any such run, keeps one copy of each.
import emirax.cli.run  # noqa: F401
import emirax.local  # noqa: F401
import emirax.pipeline  # noqa: F401
from emirax.testing import RuleRun, Rules, ScenarioError, _equal, load_rules
from support import Run

ROOT = Path(__file__).resolve().parents[1]
TENANT = ROOT / "tenants" / "media-encoding"
TIMEOUT = 60


# ── helpers ────────────────────────────────────────────────────────────────────────────────────


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """One compile cache and one blob store for the module's subprocesses (none under ~)."""
    base = tmp_path_factory.mktemp("rule-tests")
    env = {k: v for k, v in os.environ.items() if k not in {"EMIRAX_DEBUG", "FORCE_COLOR"}}
    env.update(EMIRAX_CACHE_DIR=str(base / "cache"), MEDIA_ENCODING_STORE=str(base / "store"),
               NO_COLOR="1", COLUMNS="100", PYTHONIOENCODING="utf-8")
    return env


def emirax(env: dict[str, str], *args: str, cwd: Path = ROOT) -> Run:
    script = Path(sys.executable).with_name("emirax")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "emirax"]
    done = subprocess.run([*command, *args], cwd=cwd, env=env, capture_output=True, text=True,
                          encoding="utf-8", timeout=TIMEOUT)
    run = Run(done.returncode, done.stdout, done.stderr)
    assert "Traceback" not in run.output, run.output
    assert "internal error" not in run.output, run.output
    return run


def copy_tenant(dest: Path, *, python_tests: bool = False) -> Path:
    """The tenant's version 1 project (without v2/, a project of its own with its own tests)."""
    ignore = ["__pycache__", ".pytest_cache", "v2"] + ([] if python_tests else ["test_*.py"])
    return Path(shutil.copytree(TENANT, dest, ignore=shutil.ignore_patterns(*ignore)))


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text(encoding="utf-8")
    assert old in text, old
    path.write_text(text.replace(old, new, 1), encoding="utf-8")


def scenario_names(project: Path) -> list[str]:
    import yaml

    return [sc["name"] for f in sorted((project / "tests").glob("*.yaml"))
            for sc in yaml.safe_load(f.read_text(encoding="utf-8"))["scenarios"]]


# ── emirax test ────────────────────────────────────────────────────────────────────────────────


def test_the_tenant_passes_and_prints_a_line_per_scenario_and_a_summary(env: dict[str, str]) -> None:
    run = emirax(env, "test", "tenants/media-encoding")
    assert run.code == 0, run.output
    names = scenario_names(TENANT)
    assert len(names) >= 12
    lines = run.stdout.splitlines()
    for name in names:
        assert any(line.startswith("PASS") and line.split("  ")[1].endswith("::" + name)
                   for line in lines), name
    assert "FAIL" not in run.stdout
    assert "tests/video_encode.yaml" in run.stdout and "VideoEncode" in run.stdout  # the table
    assert lines[-1] == f"{len(names)} passed, 0 failed"


def test_k_selects_scenarios_and_json_reports_them(env: dict[str, str]) -> None:
    run = emirax(env, "test", "tenants/media-encoding", "-k", "RETRIED", "--json")
    assert run.code == 0, run.output
    doc = json.loads(run.stdout)
    assert doc["ok"] is True and doc["failed"] == 0
    names = [s["name"] for s in doc["scenarios"]]
    assert names == [n for n in scenario_names(TENANT) if "retried" in n.lower()] and len(names) == 2
    for s in doc["scenarios"]:
        assert s["passed"] is True and s["failures"] == [] and "trace" not in s
        assert s["workflow"].startswith("media.encode.") and s["seconds"] >= 0

    none = emirax(env, "test", "tenants/media-encoding", "-k", "no such scenario")
    assert none.code == 1
    assert "emirax: error: no scenario matches -k 'no such scenario'" in none.stderr


def test_a_failed_expectation_exits_1_names_it_and_prints_the_trace(
        env: dict[str, str], tmp_path: Path) -> None:
    project = copy_tenant(tmp_path / "media-encoding")
    edit(project / "tests" / "video_encode.yaml", "calls: {encode: 34}", "calls: {encode: 35}")
    run = emirax(env, "test", str(project))
    assert run.code == 1, run.output
    name = "an encode that keeps failing gives up after 4 attempts"
    out = run.stdout
    assert f"FAIL  {project}/tests/video_encode.yaml::{name}" in out
    assert "expectation calls['encode'] (" in out and "expected 35 call(s) of encode" in out
    assert "      expected: 35\n      actual:   34\n" in out
    # The trace of that run: the retries, the error section, 'give up' and the failure.
    failed_part = out[out.index(f"::{name}"):]
    for event in ("raised    #10 encode (attempt 4): FunctionError: codec crashed",
                  "fire      'give up' facts", "FAIL      Failed: encode failed: chunk 7"):
        assert event in failed_part, event
    assert out.count("trace (") == 1  # passing scenarios print no trace without -v
    total = len(scenario_names(project))
    assert out.count("\nPASS  ") + out.startswith("PASS  ") == total - 1
    assert out.splitlines()[-1] == f"{total - 1} passed, 1 failed"

    doc = json.loads(emirax(env, "test", str(project), "--json").stdout)
    assert doc["ok"] is False and doc["failed"] == 1 and doc["passed"] == total - 1
    bad = [s for s in doc["scenarios"] if not s["passed"]]
    assert [s["name"] for s in bad] == [name]
    failure, = bad[0]["failures"]
    assert failure["expectation"] == "calls['encode']"
    assert (failure["expected"], failure["actual"]) == (35, 34)
    assert failure["where"].endswith("video_encode.yaml:" + str(_line_of(project, "calls: {encode: 35}")))
    assert any(e["event"] == "fire" and e.get("rule") == "give up" for e in bad[0]["trace"])
    assert all("trace" not in s for s in doc["scenarios"] if s["passed"])


def _line_of(project: Path, text: str) -> int:
    lines = (project / "tests" / "video_encode.yaml").read_text(encoding="utf-8").splitlines()
    return next(i for i, line in enumerate(lines, 1) if text in line)


GOOD_FILE = """\
workflow: Thumbnail
scenarios:
  - name: grabs a frame
    given:
      - Frame: {source: s3://in/a.mov}
    functions:
      grab: {returns: a.pgm}
    expect:
      status: completed
"""


@pytest.mark.parametrize("old, new, message", [
    ("    expect:", "    expct:",
     "tests/bad.yaml:8: scenario 'grabs a frame': unknown key 'expct' in the scenario; "
     "did you mean 'expect'?"),
    ("status: completed", "status: completed: yes",
     "tests/bad.yaml:9:24: YAML syntax error: mapping values are not allowed here"),
    ("- Frame: {", "- Fram: {",
     "tests/bad.yaml:5: scenario 'grabs a frame': given[0]: unknown fact type 'Fram'; "
     "did you mean 'Frame'? (Thumbnail declares Frame, Picture)"),
], ids=["unknown-key", "yaml-syntax", "unknown-fact-type"])
def test_a_bad_scenario_file_is_one_readable_error_and_nothing_runs(
        env: dict[str, str], tmp_path: Path, old: str, new: str, message: str) -> None:
    project = copy_tenant(tmp_path / "media-encoding")
    assert old in GOOD_FILE
    (project / "tests" / "bad.yaml").write_text(GOOD_FILE.replace(old, new, 1), encoding="utf-8")
    run = emirax(env, "test", str(project))
    assert run.code == 1
    assert run.stderr.count("emirax: error:") == 1, run.stderr
    assert run.stderr.startswith(f"emirax: error: {project}/{message}"), run.stderr
    assert run.stdout == ""  # nothing ran

    doc = json.loads(emirax(env, "test", str(project), "--json").stdout)
    assert doc["ok"] is False and len(doc["errors"]) == 1 and "bad.yaml:" in doc["errors"][0]


def test_rules_that_do_not_compile_print_their_diagnostics(env: dict[str, str], tmp_path: Path) -> None:
    project = copy_tenant(tmp_path / "media-encoding")
    rules = project / "rules" / "video_encode.emx"
    edit(rules, "not Encoded(index == c.index)", "not Encoded(indx == c.index)")
    run = emirax(env, "test", str(project))
    assert run.code == 1
    assert "rules/video_encode.emx:" in run.stderr and "unknown field 'indx'" in run.stderr
    assert "PASS" not in run.stdout

    folder = emirax(env, "test", str(project / "rules"))
    assert folder.code == 1 and "not a project folder (no emirax.toml)" in folder.stderr
    shutil.rmtree(project / "tests")
    edit(rules, "indx ==", "index ==")
    empty = emirax(env, "test", str(project))
    assert empty.code == 1 and "no scenario files" in empty.stderr


# ── the pytest plugin ──────────────────────────────────────────────────────────────────────────

TENANT_TESTS = '''
def test_encode(emirax_project):
    rules = emirax_project("proj")
    run = rules.run(
        "VideoEncode",
        [{"type": "Request", "fields": {"source": "s3://in/a.mov", "recipe": "fast"}}],
        functions={
            "split": lambda source, n: [f"{source}#{i}" for i in range(n)],
            "encode": lambda uri, recipe: uri + ".enc",
            "assemble": {"returns": "movie.enc"},
            "index": {"returns": {"chunks": 31}},
            "grab": {"returns": "poster.pgm"},
        },
    )
    assert run.status == "completed"
    assert run.fired.count("encode chunk") == 31
    run.assert_fact("Assembled", uri="movie.enc")


def test_plain_assert_shows_the_trace(emirax_rules):
    run = emirax_rules.run("Thumbnail", [{"Frame": {"source": "x"}}], {"grab": {"returns": "p"}})
    assert run.status == "failed"


def test_helper_assert_says_what_and_shows_the_trace(emirax_rules):
    run = emirax_rules.run("Thumbnail", [("Frame", {"source": "x"})],
                           functions={"grab": {"error": "camera offline"}})
    run.assert_fact("Picture", uri="p")
'''


def test_the_fixtures_in_a_tenant_test_file(pytester: pytest.Pytester,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEDIA_ENCODING_STORE", str(pytester.path / "store"))
    project = copy_tenant(pytester.path / "proj", python_tests=True)
    (project / "tests" / "test_extra.py").write_text(TENANT_TESTS, encoding="utf-8")
    result = pytester.runpytest("-p", "no:cacheprovider", "proj")
    yaml_count = len(scenario_names(project))
    result.assert_outcomes(passed=yaml_count + 5 + 1, failed=2)
    out = result.stdout.str()
    # A plain assert: the report gets a section with the run's trace.
    assert out.count("emirax trace: run 1, media.encode.Thumbnail ended completed") == 1
    assert "fire      'grab frame' facts [1]" in out
    # A helper: what was expected, what was there, and the trace in the message (not twice).
    assert "expectation facts[0]: no fact Picture" in out
    assert "raised    #1 grab (attempt 2): FunctionError: camera offline" in out
    assert "emirax trace: run 1, media.encode.Thumbnail ended failed" not in out
    assert "emirax/testing.py" not in out  # the helpers hide their own frames


def test_scenario_files_under_pytest(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEDIA_ENCODING_STORE", str(pytester.path / "store"))
    project = copy_tenant(pytester.path / "proj")
    edit(project / "tests" / "thumbnail.yaml", "calls: {grab: 2}\n", "calls: {grab: 3}\n")
    (project / "tests" / "bad.yaml").write_text(GOOD_FILE.replace("expect:", "expct:"),
                                                encoding="utf-8")
    result = pytester.runpytest("-p", "no:cacheprovider", "--continue-on-collection-errors", "proj")
    total = len(scenario_names(project)) - 1  # bad.yaml's one scenario is not collected
    result.assert_outcomes(passed=total - 1, failed=1, errors=1)
    out = result.stdout.str()
    assert "scenario: a grab that fails once is retried" in out
    assert "expectation calls['grab']" in out and "expected: 3" in out and "actual:   2" in out
    assert "returned  #1 grab (attempt 2)" in out
    assert "bad.yaml:8: scenario 'grabs a frame': unknown key 'expct'" in out
    assert "Traceback" not in out

    pytester.makeini("[pytest]\nemirax_scenarios = false\n")
    (project / "tests" / "bad.yaml").unlink()
    off = pytester.runpytest("-p", "no:cacheprovider", "proj")
    off.assert_outcomes()  # nothing collected: the yaml files are left alone


# ── in-process: the stubs and the validation ───────────────────────────────────────────────────


@pytest.fixture(scope="module")
def rules() -> Rules:
    return load_rules(TENANT)


FRAME = [{"Frame": {"source": "s3://in/a.mov"}}]


def test_stub_forms(rules: Rules) -> None:
    run = rules.run("Thumbnail", FRAME, {"grab": {"results": ["first"]}})
    assert run.output == {"uri": "first"} and run.calls == {"grab": 1}

    run = rules.run("Thumbnail", FRAME, {"grab": {"fail_first": 1, "results": ["second"]}})
    assert run.output == {"uri": "second"} and run.calls == {"grab": 2}

    run = rules.run("Thumbnail", FRAME, {"grab": {"fail_first": 2, "results": ["never"]}})
    assert run.status == "failed" and "fail_first: call 2 of 2" in run.error["message"]

    run = rules.run("Thumbnail", FRAME, {"grab": {"when": [{"args": ["s3://in/b.mov", 5], "returns": "b"}]}})
    assert run.status == "failed" and run.error["type"] == "NoMatchingStub"
    assert 'grab("s3://in/a.mov", 5)' in run.error["message"]

    run = rules.run("Thumbnail", FRAME, {"grab": {"when": [{"args": ["s3://in/a.mov", 5.0], "returns": "{1}@{0}"}]}})
    assert run.output == {"uri": "5@s3://in/a.mov"}  # 5 == 5.0; {N} is argument N

    run = rules.run("Thumbnail", FRAME)
    assert run.status == "failed" and run.error["type"] == "NoStub"

    run = rules.run("Thumbnail", FRAME, {"grab": lambda source, second: f"{source}:{second}"})
    assert run.output == {"uri": "s3://in/a.mov:5"}
    assert repr(run).startswith("<RuleRun media.encode.Thumbnail completed: 2 facts, 1 firings, 1 calls, ")


def test_then_add_and_a_stub_that_runs_out(rules: Rules) -> None:
    run = rules.run("Thumbnail", FRAME, {"grab": {"results": ["one"]}},
                    then_add=[{"Frame": {"source": "s3://in/a.mov", "second": 9}}])
    # 'grab frame' needs `not Picture()`: the second frame wakes nothing.
    assert run.status == "completed" and run.fired == ["grab frame"] and len(run.facts_of("Frame")) == 2

    run = rules.run("VideoEncode", [{"Request": {"source": "a", "recipe": "fast", "chunks": 2}}],
                    {"split": {"returns": ["c0", "c1"]}, "encode": {"results": ["e0"]},
                     "grab": {"returns": "g"}})
    assert run.status == "failed"  # through the rule's error section and 'give up'
    assert "the stub of encode lists 1 result(s); call 5 found none left" in run.error["message"]
    assert run.calls["encode"] == 5  # the second chunk's four attempts ran out too


def test_expectations_all_reported_with_the_trace(rules: Rules) -> None:
    run = rules.run("Thumbnail", FRAME, {"grab": {"returns": "p.pgm"}})
    assert run.check({"status": "completed", "output": {"uri": "p.pgm"}, "facts": ["Picture"],
                      "fired": {"grab frame": 1}, "calls": {"grab": 1}, "no_facts": [{"Picture": {"uri": "x"}}],
                      "fact_counts": {"Frame": 1}, "output_contains": {}}) == []
    found = run.check({"status": "failed", "output": {"uri": True}, "error": "boom",
                       "fired": ["grab frame", {"grab frame": 2}], "not_fired": ["grab frame"]})
    assert [m.expectation for m in found] == ["status", "output", "error", "fired['grab frame']",
                                             "not_fired['grab frame']"]
    with pytest.raises(AssertionError) as raised:
        run.expect({"fact_counts": {"Picture": 2}})
    text = str(raised.value)
    assert "expected 2 Picture fact(s), found 1" in text and "complete  {\"uri\": \"p.pgm\"}" in text
    with pytest.raises(ScenarioError, match="has no rule 'grab fram'; did you mean 'grab frame'"):
        run.check({"fired": ["grab fram"]})
    with pytest.raises(AssertionError, match="no fact Picture"):
        run.assert_fact("Picture", uri="other")
    with pytest.raises(ScenarioError, match="unknown fact type 'Pictures'"):
        run.assert_fact("Pictures")


def test_values_compare_as_the_rules_do() -> None:
    assert _equal(1, 1.0) and _equal({"a": [1, 2.0]}, {"a": [1.0, 2]})
    assert not _equal(True, 1) and not _equal([1], [1, 2]) and not _equal({"a": 1}, {"a": 1, "b": 2})


@pytest.mark.parametrize("scenario, message", [
    ({"functions": {"grab": {"returns": 1, "results": [1]}}},
     "give one of returns, results and module, not returns and results"),
    ({"functions": {"grab": {"error": "x", "returns": 1}}}, "add fail_first: N"),
    ({"functions": {"grab": {}}}, "needs one of returns, results, when, error or module"),
    ({"functions": {"grabb": {"returns": 1}}}, "'grabb' is not a declared function; did you mean 'grab'?"),
    ({"functions": {"grab": {"when": [{"returns": 1}]}}}, "when[0] needs the key 'args'"),
    ({"functions": {"grab": {"fail_first": 0, "returns": 1}}}, "fail_first must be a whole number"),
    ({"functions": {"grab": {"returns": "2024-01-01T00:00:00Z"}}}, None),
    ({"expect": {"calls": {"grab": -1}}}, "expect.calls.grab must be a whole number"),
    ({"expect": {"facts": [{"Picture": {"url": "x"}}]}}, "Picture has no field 'url'; did you mean 'uri'?"),
    ({"expect": {"fired": [["grab frame"]]}}, "each entry is a rule name or {rule name: times}"),
    ({"expect": {}}, "expect is empty"),
    ({"given": [{"Frame": {"second": 5}}]}, "given[0]: Frame needs field(s) source"),
    ({"then_add": {"Frame": {}}}, "then_add must be a list of facts"),
    ({"functions": "modules"}, "functions must be a mapping"),
], ids=lambda v: v[:30] if isinstance(v, str) else None)
def test_bad_scenarios_are_named_errors(rules: Rules, tmp_path: Path, scenario: dict,
                                        message: str | None) -> None:
    import yaml

    doc = {"workflow": "Thumbnail", "scenarios": [{
        "name": "s", "given": [{"Frame": {"source": "a"}}], "expect": {"status": "completed"},
        **scenario}]}
    path = tmp_path / "tests" / "s.yaml"
    path.parent.mkdir()
    path.write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
    if message is None:
        rules.load_file(path)  # a date-like string in quotes stays a string
        return
    with pytest.raises(ScenarioError) as raised:
        rules.load_file(path)
    text = str(raised.value)
    assert text.startswith(f"{path}:") and "scenario 's':" in text and message in text, text


def test_a_date_or_a_duplicate_key_in_yaml_is_refused(rules: Rules, tmp_path: Path) -> None:
    path = tmp_path / "d.yaml"
    path.write_text(textwrap.dedent(GOOD_FILE).replace("returns: a.pgm", "returns: 2024-01-01")
                    .replace("Request", "Frame"), encoding="utf-8")
    with pytest.raises(ScenarioError, match=r"d.yaml:7: scenario 'grabs a frame': the stub of "
                                            r"'grab': returns: date .* is not JSON data \(quote it\)"):
        rules.load_file(path)
    path.write_text(GOOD_FILE.replace("Request", "Frame").replace(
        "    expect:", "    given: []\n    expect:"), encoding="utf-8")
    with pytest.raises(ScenarioError, match=r"d.yaml:8:5: duplicate key 'given'"):
        rules.load_file(path)


def test_a_run_result_is_data(rules: Rules, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEDIA_ENCODING_STORE", str(tmp_path))
    run = rules.run("Thumbnail", FRAME, "module")
    assert isinstance(run, RuleRun)
    doc = run.to_json()
    json.dumps(doc)
    assert doc["status"] == "completed" and doc["output"]["uri"].startswith("cas://")
