"""Rule tests: scenario files, running them, checking what they expect, and the pytest plugin.

This module owns the rule-test layer behind `emirax test` and behind tenants' own pytest suites:

    rules = load_rules("tenants/media-encoding")         # compile once; RulesError when broken
    files = rules.load_scenarios()                       # tests/*.yaml, validated; ScenarioError
    result = rules.run_scenario(files[0].scenarios[0])   # -> ScenarioResult (passed, mismatches)
    run = rules.run("VideoEncode", [{"Request": {...}}], functions={"split": lambda s, n: [...]})
    run.assert_fact("Assembled", uri="...")              # AssertionError with the trace

A scenario runs on `emirax.local.LocalRun` with `sequential=True`: every invocation on the calling
thread, in id order, retries without sleeping, so the same scenario always gives the same trace.
Functions are stubs described in the scenario (docs/testing.md lists the forms), the project's own
`functions.py` (`module: true`), or, from Python, any callables. Child workflows run for real.

pytest loads this module as a plugin (entry point `pytest11: emirax`) in every session of an
environment where Emirax is installed, so importing it must stay cheap and harmless: at module
level it imports only the standard library and `emirax.errors`; the compiler, the engine and
PyYAML are imported when first needed. The plugin part (the fixtures `emirax_project` and
`emirax_rules`, collection of `tests/*.yaml` next to an `emirax.toml`, and the trace of every run
shown under a failed test) is defined only when pytest itself is loaded, so `emirax test` never
imports pytest.
"""

from __future__ import annotations

import difflib
import json
import re
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from emirax.errors import EmiraxError

if TYPE_CHECKING:
    from emirax.engine.program import Program, Workflow

__all__ = [
    "Mismatch", "RuleRun", "Rules", "RulesError", "Scenario", "ScenarioError", "ScenarioFile",
    "ScenarioResult", "load_rules",
]

STATUSES = ("running", "waiting", "completed", "failed")
SCENARIO_GLOBS = ("*.yaml", "*.yml")


class ScenarioError(EmiraxError):
    """A scenario file (or a stub or expectation given from Python) that is not valid: the
    message names the file, the line, the scenario and the key."""


class RulesError(EmiraxError):
    """The project's rules do not compile; the message holds the rendered diagnostics."""


class StubFailure(Exception):
    """Raised by a stub that is told to fail; the subclass's name is the error's `type`."""


_UNSET: Any = object()


# ── YAML with line numbers ─────────────────────────────────────────────────────────────────────


class _Map(dict):  # type: ignore[type-arg]
    """A YAML mapping that remembers where it and each of its keys stand (1-based lines)."""

    line: int = 0
    lines: dict[Any, int]


def _yaml_loader() -> type:
    import yaml

    class Loader(yaml.SafeLoader):
        """SafeLoader whose mappings are `_Map`s, refusing duplicate keys."""

    def construct_map(loader: Any, node: Any) -> _Map:
        loader.flatten_mapping(node)
        m = _Map()
        m.line, m.lines = node.start_mark.line + 1, {}
        for key_node, value_node in node.value:
            key = loader.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            try:
                hash(key)
            except TypeError:
                raise _YamlProblem(line, key_node.start_mark.column + 1,
                                   "a mapping key must be a plain value") from None
            if key in m:
                raise _YamlProblem(line, key_node.start_mark.column + 1, f"duplicate key '{key}'")
            m[key] = loader.construct_object(value_node, deep=True)
            m.lines[key] = line
        return m

    Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, construct_map)
    return Loader


class _YamlProblem(Exception):
    def __init__(self, line: int, column: int, message: str) -> None:
        super().__init__(message)
        self.line, self.column, self.message = line, column, message


def _read_yaml(path: Path, label: str) -> Any:
    """The document in `path`; ScenarioError `label:line:column: ...` when it is not YAML."""
    try:
        import yaml
    except ImportError:
        raise ScenarioError(f"{label}: reading scenario files needs PyYAML "
                            "(pip install pyyaml)") from None

    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ScenarioError(f"{label}: cannot read it: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise ScenarioError(f"{label}: not UTF-8 text") from None
    try:
        return yaml.load(text, Loader=_yaml_loader())  # noqa: S506 - a SafeLoader subclass
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"{label}:{mark.line + 1}:{mark.column + 1}" if mark else label
        problem = exc.problem or exc.context or "not valid YAML"
        context = f" ({exc.context})" if exc.context and exc.problem else ""
        raise ScenarioError(f"{where}: YAML syntax error: {problem}{context}") from None
    except _YamlProblem as exc:
        raise ScenarioError(f"{label}:{exc.line}:{exc.column}: {exc.message}") from None
    except yaml.YAMLError as exc:
        raise ScenarioError(f"{label}: YAML error: {exc}") from None


# ── where a problem is, for messages ───────────────────────────────────────────────────────────


@dataclass(frozen=True)
class _At:
    """The place a validation error points to: a file, a scenario in it, and a line."""

    file: str
    scenario: str | None = None

    def error(self, message: str, node: Any = None, key: Any = _UNSET) -> ScenarioError:
        line = _line(node, key)
        where = f"{self.file}:{line}" if line else self.file
        who = f" scenario '{self.scenario}':" if self.scenario else ""
        return ScenarioError(f"{where}:{who} {message}")

    def named(self, scenario: str) -> _At:
        return _At(self.file, scenario)


def _line(node: Any, key: Any = _UNSET) -> int:
    if not isinstance(node, _Map):
        return 0
    if key is not _UNSET and key in node.lines:
        return node.lines[key]
    return node.line


def _keys(node: Any, what: str, at: _At, *, allowed: Iterable[str], required: Iterable[str] = (),
          parent: Any = None, key: Any = _UNSET) -> None:
    """`node` is a mapping with only `allowed` keys and every `required` one."""
    if not isinstance(node, dict):
        raise at.error(f"{what} must be a mapping, not {_kind(node)}", parent, key)
    allowed = tuple(allowed)
    for k in node:
        if k not in allowed:
            hint = _did_you_mean(str(k), allowed)
            raise at.error(f"unknown key '{k}' in {what}{hint} (known: {', '.join(allowed)})",
                           node, k)
    for k in required:
        if k not in node:
            raise at.error(f"{what} needs the key '{k}'", node)


def _did_you_mean(word: str, options: Iterable[str]) -> str:
    close = difflib.get_close_matches(word, list(options), n=1, cutoff=0.6)
    return f"; did you mean '{close[0]}'?" if close else ""


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    return {bool: "a boolean", int: "a number", float: "a number", str: "a string",
            list: "a list"}.get(type(value), "a mapping" if isinstance(value, dict)
                                else type(value).__name__)


def _plain(value: Any, at: _At, what: str, node: Any = None, key: Any = _UNSET) -> Any:
    """A YAML value as JSON data (plain dicts and lists); dates, sets, binary and NaN are refused,
    since a fact or a function result can only hold JSON."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")):
            raise at.error(f"{what}: {value} is not a JSON number", node, key)
        return value
    if isinstance(value, list):
        return [_plain(v, at, what, node, key) for v in value]
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise at.error(f"{what}: the key {k!r} is not a string (quote it)", value, k)
            out[k] = _plain(v, at, what, value, k)
        return out
    raise at.error(f"{what}: {type(value).__name__} {value!r} is not JSON data (quote it)", node, key)


# ── values ─────────────────────────────────────────────────────────────────────────────────────


def _equal(a: Any, b: Any) -> bool:
    """Value equality as the rules see it: 1 == 1.0, but a boolean never equals a number."""
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return a == b
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    return type(a) is type(b) and a == b


def _contains(actual: Any, expected: Any) -> bool:
    """`expected` is a part of `actual`: maps compare their listed keys (recursively), anything
    else compares equal."""
    if isinstance(expected, dict):
        return isinstance(actual, dict) and all(
            k in actual and _contains(actual[k], v) for k, v in expected.items())
    return _equal(actual, expected)


def _show(value: Any, limit: int = 300) -> str:
    text = json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= limit else text[: limit - 3] + "..."


_ARG = re.compile(r"\{(\d+)\}")


def _fill(value: Any, args: tuple[Any, ...]) -> Any:
    """A stub's value with `{0}`, `{1}`, ... in its strings replaced by the call's arguments."""
    if isinstance(value, str):
        def sub(m: re.Match[str]) -> str:
            i = int(m.group(1))
            if i >= len(args):
                return m.group(0)
            arg = args[i]
            return arg if isinstance(arg, str) else json.dumps(arg, ensure_ascii=False)
        return _ARG.sub(sub, value)
    if isinstance(value, list):
        return [_fill(v, args) for v in value]
    if isinstance(value, dict):
        return {k: _fill(v, args) for k, v in value.items()}
    return value


# ── stubs ──────────────────────────────────────────────────────────────────────────────────────

STUB_KEYS = ("returns", "results", "when", "error", "fail_first", "module")
_ERROR_CLASSES: dict[str, type[StubFailure]] = {}


@dataclass
class Stub:
    """What a declared function does in a scenario (docs/testing.md, "Functions")."""

    name: str
    returns: Any = _UNSET
    results: list[Any] | None = None
    when: list[tuple[list[Any], str, Any]] = field(default_factory=list)  # (args, kind, value)
    error: tuple[str, str] | None = None  # (type, message)
    fail_first: int = 0
    module: bool = False

    def make(self, module_fn: Callable[..., Any] | None) -> Callable[..., Any]:
        """The function a run calls; `module_fn` is functions.py's, for `module: true`."""
        seen = {"calls": 0, "results": 0}

        def call(*args: Any) -> Any:
            n = seen["calls"]
            seen["calls"] += 1
            if n < self.fail_first:
                kind, message = self.error or ("FunctionError", "fails on purpose")
                raise _stub_error(kind, f"{message} (fail_first: call {n + 1} of {self.fail_first})")
            for wargs, kind, value in self.when:
                if _equal(list(args), wargs):
                    if kind == "error":
                        raise _stub_error(*value)
                    return _fill(value, args)
            if self.error is not None and not self.fail_first:
                raise _stub_error(*self.error)
            if self.module:
                assert module_fn is not None
                return module_fn(*args)
            if self.results is not None:
                k = seen["results"]
                seen["results"] += 1
                if k >= len(self.results):
                    raise _stub_error("StubExhausted", f"the stub of {self.name} lists "
                                      f"{len(self.results)} result(s); call {k + 1} found none left")
                return _fill(self.results[k], args)
            if self.returns is not _UNSET:
                return _fill(self.returns, args)
            raise _stub_error("NoMatchingStub", f"no `when` entry of the stub matches "
                              f"{self.name}({', '.join(_show(a, 60) for a in args)})")

        call.__name__ = self.name
        return call


def _stub_error(kind: str, message: str) -> StubFailure:
    cls = _ERROR_CLASSES.get(kind)
    if cls is None:
        cls = _ERROR_CLASSES[kind] = type(kind, (StubFailure,), {})
    return cls(message)


def _missing(name: str) -> Callable[..., Any]:
    def call(*args: Any) -> Any:
        raise _stub_error("NoStub", f"the scenario gives no stub for '{name}' (add it under "
                          "`functions:`, or `module: true` to call functions.py)")
    return call


def _parse_error(value: Any, at: _At, what: str, node: Any, key: Any) -> tuple[str, str]:
    if isinstance(value, str):
        return ("FunctionError", value)
    if isinstance(value, dict):
        _keys(value, what, at, allowed=("message", "type"), required=("message",),
              parent=node, key=key)
        kind, message = value.get("type", "FunctionError"), value["message"]
        if not isinstance(kind, str) or not kind.isidentifier():
            raise at.error(f"{what}: type must be a name like TimeoutError", value, "type")
        if not isinstance(message, str):
            raise at.error(f"{what}: message must be a string", value, "message")
        return (kind, message)
    raise at.error(f"{what} must be a message, or {{message: ..., type: ...}}", node, key)


def _parse_stub(name: str, spec: Any, at: _At, node: Any) -> Stub:
    what = f"the stub of '{name}'"
    _keys(spec, what, at, allowed=STUB_KEYS, parent=node, key=name)
    answers = [k for k in ("returns", "results", "module") if k in spec]
    if len(answers) > 1:
        raise at.error(f"{what}: give one of returns, results and module, not "
                       f"{' and '.join(answers)}", spec)
    if "error" in spec and answers and "fail_first" not in spec:
        raise at.error(f"{what}: error (every call fails) cannot go with {answers[0]}; "
                       "add fail_first: N to fail only the first N calls", spec)
    if not answers and "when" not in spec and "error" not in spec:
        raise at.error(f"{what} needs one of returns, results, when, error or module", spec)
    stub = Stub(name)
    if "returns" in spec:
        stub.returns = _plain(spec["returns"], at, f"{what}: returns", spec, "returns")
    if "results" in spec:
        if not isinstance(spec["results"], list):
            raise at.error(f"{what}: results must be a list (one value per call)", spec, "results")
        stub.results = _plain(spec["results"], at, f"{what}: results", spec, "results")
    if "module" in spec:
        if spec["module"] is not True:
            raise at.error(f"{what}: module must be true", spec, "module")
        stub.module = True
    if "error" in spec:
        stub.error = _parse_error(spec["error"], at, f"{what}: error", spec, "error")
    if "fail_first" in spec:
        n = spec["fail_first"]
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            raise at.error(f"{what}: fail_first must be a whole number, 1 or more", spec, "fail_first")
        if not answers and "when" not in spec:
            raise at.error(f"{what}: fail_first needs what later calls give (returns, results, "
                           "when or module)", spec, "fail_first")
        stub.fail_first = n
    if "when" in spec:
        stub.when = _parse_when(spec["when"], at, what, spec)
    return stub


def _parse_when(entries: Any, at: _At, what: str, spec: Any) -> list[tuple[list[Any], str, Any]]:
    if not isinstance(entries, list) or not entries:
        raise at.error(f"{what}: when must be a list of {{args: [...], returns: ...}}", spec, "when")
    out = []
    for i, entry in enumerate(entries):
        label = f"{what}: when[{i}]"
        _keys(entry, label, at, allowed=("args", "returns", "error"), required=("args",),
              parent=spec, key="when")
        if ("returns" in entry) == ("error" in entry):
            raise at.error(f"{label} needs exactly one of returns and error", entry)
        if not isinstance(entry["args"], list):
            raise at.error(f"{label}: args must be the list of the call's arguments", entry, "args")
        args = _plain(entry["args"], at, f"{label}: args", entry, "args")
        if "error" in entry:
            out.append((args, "error", _parse_error(entry["error"], at, f"{label}: error",
                                                    entry, "error")))
        else:
            out.append((args, "returns", _plain(entry["returns"], at, f"{label}: returns",
                                                entry, "returns")))
    return out


@dataclass
class FunctionSpec:
    """The functions of a scenario: stubs by name, and whether functions.py serves the rest."""

    stubs: dict[str, Stub] = field(default_factory=dict)
    module_rest: bool = False

    def merged(self, over: FunctionSpec) -> FunctionSpec:
        """`over` (a scenario's) on top of `self` (the file's): stubs replace stubs by name, and
        `functions: module` replaces the file's stubs altogether."""
        if over.module_rest:
            return over
        return FunctionSpec({**self.stubs, **over.stubs}, self.module_rest)

    @property
    def needs_module(self) -> bool:
        return self.module_rest or any(s.module for s in self.stubs.values())


def _parse_functions(spec: Any, at: _At, declared: Iterable[str], node: Any, key: str) -> FunctionSpec:
    if spec == "module":
        return FunctionSpec(module_rest=True)
    if not isinstance(spec, dict):
        raise at.error("functions must be a mapping from function name to stub, or the word "
                       "module (functions.py for every function)", node, key)
    declared = sorted(declared)
    out = FunctionSpec()
    for name, stub in spec.items():
        if name not in declared:
            raise at.error(f"functions: '{name}' is not a declared function"
                           f"{_did_you_mean(str(name), declared)} (declared: {', '.join(declared)})",
                           spec, name)
        out.stubs[name] = _parse_stub(name, stub, at, spec)
    return out


# ── facts ──────────────────────────────────────────────────────────────────────────────────────


def _fact_parts(item: Any, at: _At, what: str, node: Any, key: Any) -> tuple[Any, Any]:
    """(type, fields) of a fact written `{Type: {fields}}`, `{type: T, fields: {...}}` or `Type`."""
    if isinstance(item, str):
        return item, {}
    if isinstance(item, dict) and "type" in item and set(item) <= {"type", "fields"}:
        return item["type"], item.get("fields") or {}
    if isinstance(item, dict) and len(item) == 1:
        (fact_type, fields), = item.items()
        return fact_type, {} if fields is None else fields
    raise at.error(f"{what} must be a fact, `- Type: {{field: value}}` or "
                   "`- {type: Type, fields: {...}}`", node, key)


def _fact_type(fact_type: Any, wf: Workflow, at: _At, what: str, node: Any, key: Any) -> str:
    if not isinstance(fact_type, str) or fact_type not in wf.facts:
        known = sorted(wf.facts)
        raise at.error(f"{what}: unknown fact type '{fact_type}'{_did_you_mean(str(fact_type), known)}"
                       f" ({wf.short} declares {', '.join(known) or 'none'})", node, key)
    return fact_type


def _input_facts(items: Any, wf: Workflow, at: _At, what: str, node: Any) -> list[dict[str, Any]]:
    """Facts to start with or add: every field checked and defaults filled, as the engine will."""
    from emirax.engine.program import InputError

    if not isinstance(items, list):
        raise at.error(f"{what} must be a list of facts", node, what)
    facts = []
    for i, item in enumerate(items):
        label = f"{what}[{i}]"
        raw_type, raw_fields = _fact_parts(item, at, label, node, what)
        fact_type = _fact_type(raw_type, wf, at, label, item, raw_type)
        fields = _plain(raw_fields, at, label, item, raw_type)
        try:
            fields = wf.make_fact(fact_type, fields)
        except InputError as exc:
            raise at.error(f"{label}: {exc}", item if isinstance(item, dict) else node) from None
        facts.append({"type": fact_type, "fields": fields})
    return facts


def _pattern(item: Any, wf: Workflow, at: _At, what: str, node: Any) -> tuple[str, dict[str, Any]]:
    """A fact to look for: its type and some of its fields (each must be declared)."""
    raw_type, raw_fields = _fact_parts(item, at, what, node, _UNSET)
    fact_type = _fact_type(raw_type, wf, at, what, item, raw_type)
    if not isinstance(raw_fields, dict):
        raise at.error(f"{what}: the fields of {fact_type} must be a mapping", item)
    declared = list(wf.facts[fact_type].fields)
    for name in raw_fields:
        if name not in declared:
            raise at.error(f"{what}: {fact_type} has no field '{name}'"
                           f"{_did_you_mean(str(name), declared)} (fields: {', '.join(declared)})",
                           raw_fields, name)
    return fact_type, _plain(raw_fields, at, what, item, raw_type)


def _normal_facts(items: Iterable[Any], wf: Workflow, what: str) -> list[dict[str, Any]]:
    """Facts given from Python: `{"type", "fields"}`, `("Type", {...})` or `{"Type": {...}}`."""
    items = [{"type": i[0], "fields": i[1]} if isinstance(i, tuple) and len(i) == 2 else i
             for i in items]
    return _input_facts(items, wf, _At(f"running {wf.short}"), what, None)


# ── expectations ───────────────────────────────────────────────────────────────────────────────

EXPECT_KEYS = ("status", "output", "output_contains", "error", "facts", "no_facts", "fact_counts",
               "fired", "not_fired", "calls")


@dataclass
class Expect:
    """What a run must show; every field is optional."""

    status: str | None = None
    output: Any = _UNSET
    output_contains: dict[str, Any] | None = None
    error: str | None = None
    facts: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    no_facts: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    fact_counts: dict[str, int] = field(default_factory=dict)
    fired: dict[str, int | None] = field(default_factory=dict)
    not_fired: list[str] = field(default_factory=list)
    calls: dict[str, int] = field(default_factory=dict)
    lines: dict[str, int] = field(default_factory=dict)  # expectation -> its line in the file


def _count(value: Any, at: _At, what: str, node: Any, key: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise at.error(f"{what} must be a whole number, 0 or more", node, key)
    return value


def _rule_name(name: Any, wf: Workflow, at: _At, what: str, node: Any, key: Any = _UNSET) -> str:
    if not isinstance(name, str) or name not in wf.rules_by_name:
        known = list(wf.rules_by_name)
        raise at.error(f"{what}: {wf.short} has no rule '{name}'{_did_you_mean(str(name), known)}"
                       f" (rules: {', '.join(known)})", node, key)
    return name


def _parse_expect(spec: Any, wf: Workflow, declared_functions: Iterable[str], at: _At,
                  node: Any = None) -> Expect:
    _keys(spec, "expect", at, allowed=EXPECT_KEYS, parent=node, key="expect")
    if not spec:
        raise at.error("expect is empty: say what the run must show", spec)
    ex = Expect(lines={k: _line(spec, k) for k in spec})
    if "status" in spec:
        if spec["status"] not in STATUSES:
            raise at.error(f"expect.status must be one of {', '.join(STATUSES)}", spec, "status")
        ex.status = spec["status"]
    if "output" in spec:
        ex.output = _plain(spec["output"], at, "expect.output", spec, "output")
    if "output_contains" in spec:
        if not isinstance(spec["output_contains"], dict):
            raise at.error("expect.output_contains must be a mapping", spec, "output_contains")
        ex.output_contains = _plain(spec["output_contains"], at, "expect.output_contains", spec,
                                    "output_contains")
    if "error" in spec:
        if not isinstance(spec["error"], str):
            raise at.error("expect.error must be a string (a part of the error's message)",
                           spec, "error")
        ex.error = spec["error"]
    for key in ("facts", "no_facts"):
        if key in spec:
            items = spec[key]
            if not isinstance(items, list):
                raise at.error(f"expect.{key} must be a list of facts", spec, key)
            getattr(ex, key).extend(_pattern(item, wf, at, f"expect.{key}[{i}]", spec)
                                    for i, item in enumerate(items))
    if "fact_counts" in spec:
        counts = spec["fact_counts"]
        if not isinstance(counts, dict):
            raise at.error("expect.fact_counts must map fact types to numbers", spec, "fact_counts")
        for t, n in counts.items():
            fact_type = _fact_type(t, wf, at, "expect.fact_counts", counts, t)
            ex.fact_counts[fact_type] = _count(n, at, f"expect.fact_counts.{t}", counts, t)
    if "fired" in spec:
        ex.fired = _parse_fired(spec["fired"], wf, at, spec)
    if "not_fired" in spec:
        names = spec["not_fired"]
        if not isinstance(names, list):
            raise at.error("expect.not_fired must be a list of rule names", spec, "not_fired")
        ex.not_fired = [_rule_name(n, wf, at, "expect.not_fired", spec, "not_fired") for n in names]
    if "calls" in spec:
        calls = spec["calls"]
        declared = sorted(declared_functions)
        if not isinstance(calls, dict):
            raise at.error("expect.calls must map function names to numbers", spec, "calls")
        for name, n in calls.items():
            if name not in declared:
                raise at.error(f"expect.calls: '{name}' is not a declared function"
                               f"{_did_you_mean(str(name), declared)} (declared: "
                               f"{', '.join(declared)})", calls, name)
            ex.calls[name] = _count(n, at, f"expect.calls.{name}", calls, name)
    return ex


def _parse_fired(spec: Any, wf: Workflow, at: _At, node: Any) -> dict[str, int | None]:
    """`[rule, {rule: N}, ...]` or `{rule: N, ...}`: rules that must fire (N times when given)."""
    entries: list[tuple[Any, Any, Any]] = []  # (name, count or None, where)
    if isinstance(spec, dict):
        entries = [(k, v, spec) for k, v in spec.items()]
    elif isinstance(spec, list):
        for item in spec:
            if isinstance(item, dict) and len(item) == 1:
                (k, v), = item.items()
                entries.append((k, v, item))
            elif isinstance(item, str):
                entries.append((item, None, node))
            else:
                raise at.error("expect.fired: each entry is a rule name or {rule name: times}",
                               node, "fired")
    else:
        raise at.error("expect.fired must be a list of rule names (or {rule name: times})",
                       node, "fired")
    out: dict[str, int | None] = {}
    for name, n, where in entries:
        rule = _rule_name(name, wf, at, "expect.fired", where, name)
        out[rule] = None if n is None else _count(n, at, f"expect.fired.{name}", where, name)
    return out


@dataclass
class Mismatch:
    """One expectation a run did not meet."""

    expectation: str  # e.g. "status", "fired['encode chunk']", "facts[0]"
    expected: Any
    actual: Any
    message: str
    where: str = ""  # file:line of the expectation, when it comes from a scenario file

    def to_json(self) -> dict[str, Any]:
        return {"expectation": self.expectation, "expected": self.expected,
                "actual": self.actual, "message": self.message, "where": self.where or None}

    @property
    def title(self) -> str:
        at = f" ({self.where})" if self.where else ""
        return f"expectation {self.expectation}{at}: {self.message}"

    def text(self) -> str:
        return (f"{self.title}\n"
                f"  expected: {_show(self.expected)}\n"
                f"  actual:   {_show(self.actual)}")


def _describe(fact_type: str, fields: Mapping[str, Any]) -> str:
    return f"{fact_type} {_show(dict(fields))}" if fields else fact_type


def check(run: RuleRun, ex: Expect) -> list[Mismatch]:
    """Every expectation of `ex` that `run` does not meet, in the order they are listed above."""
    found: list[Mismatch] = [Mismatch("run", "no problem", p, p) for p in run.problems]
    if ex.status is not None and run.status != ex.status:
        why = f" ({run.error.get('type')}: {run.error.get('message')})" if run.error else ""
        found.append(Mismatch("status", ex.status, run.status,
                              f"the workflow ended {run.status}{why}, not {ex.status}"))
    if ex.output is not _UNSET and not _equal(run.output, ex.output):
        found.append(Mismatch("output", ex.output, run.output, "the output differs"))
    if ex.output_contains is not None and not _contains(run.output, ex.output_contains):
        found.append(Mismatch("output_contains", ex.output_contains, run.output,
                              "the output does not hold these keys and values"))
    if ex.error is not None:
        message = (run.error or {}).get("message")
        if message is None or ex.error not in message:
            found.append(Mismatch("error", ex.error, message,
                                  "the workflow has no error" if message is None else
                                  "the error's message does not contain the expected text"))
    for i, (fact_type, fields) in enumerate(ex.facts):
        if not run.facts_of(fact_type, **fields):
            present = run.facts_of(fact_type)
            found.append(Mismatch(f"facts[{i}]", {fact_type: fields}, {fact_type: present[:5]},
                                  f"no fact {_describe(fact_type, fields)}; "
                                  f"{len(present)} {fact_type} fact(s) present"))
    for i, (fact_type, fields) in enumerate(ex.no_facts):
        present = run.facts_of(fact_type, **fields)
        if present:
            found.append(Mismatch(f"no_facts[{i}]", None, {fact_type: present[:5]},
                                  f"expected no fact {_describe(fact_type, fields)}, "
                                  f"found {len(present)}"))
    for fact_type, n in ex.fact_counts.items():
        have = len(run.facts_of(fact_type))
        if have != n:
            found.append(Mismatch(f"fact_counts['{fact_type}']", n, have,
                                  f"expected {n} {fact_type} fact(s), found {have}"))
    fired = Counter(run.fired)
    for rule, n in ex.fired.items():
        if (n is None and fired[rule] == 0) or (n is not None and fired[rule] != n):
            wanted = "to fire" if n is None else f"to fire {n} time(s)"
            found.append(Mismatch(f"fired['{rule}']", "at least once" if n is None else n,
                                  fired[rule], f"expected '{rule}' {wanted}, it fired "
                                  f"{fired[rule]} time(s)"))
    for rule in ex.not_fired:
        if fired[rule]:
            found.append(Mismatch(f"not_fired['{rule}']", 0, fired[rule],
                                  f"expected '{rule}' not to fire, it fired {fired[rule]} time(s)"))
    for name, n in ex.calls.items():
        have = run.calls.get(name, 0)
        if have != n:
            found.append(Mismatch(f"calls['{name}']", n, have,
                                  f"expected {n} call(s) of {name} (every attempt counts), "
                                  f"got {have}"))
    return found


# ── a run ──────────────────────────────────────────────────────────────────────────────────────


@dataclass(repr=False)
class RuleRun:
    """How one local run ended: the root workflow's status, output, error and facts, the rules it
    fired (root workflow, in order), the calls of each function (every attempt, children
    included), and the trace of every workflow it ran."""

    workflow: str
    status: str
    output: dict[str, Any] | None
    error: dict[str, Any] | None
    facts: list[dict[str, Any]]
    fired: list[str]
    calls: dict[str, int]
    trace: list[dict[str, Any]]
    problems: list[str] = field(default_factory=list)  # the run could not go as asked
    shown: bool = field(default=False, repr=False)  # its trace went out with a failure already
    wf: Workflow | None = field(default=None, repr=False, compare=False)
    declared_functions: frozenset[str] = field(default=frozenset(), repr=False, compare=False)

    def facts_of(self, fact_type: str, **fields: Any) -> list[dict[str, Any]]:
        """The fields of every fact of `fact_type` whose fields include `fields`."""
        return [f["fields"] for f in self.facts
                if f["type"] == fact_type and _contains(f["fields"], fields)]

    def has_fact(self, fact_type: str, **fields: Any) -> bool:
        return bool(self.facts_of(fact_type, **fields))

    def __repr__(self) -> str:
        return (f"<RuleRun {self.workflow} {self.status}: {len(self.facts)} facts, "
                f"{len(self.fired)} firings, {sum(self.calls.values())} calls, "
                f"{len(self.trace)} trace events>")

    def trace_text(self) -> str:
        from emirax.cli.run import format_event

        return "\n".join(format_event(ev) for ev in self.trace)

    def to_json(self) -> dict[str, Any]:
        return {"workflow": self.workflow, "status": self.status, "output": self.output,
                "error": self.error, "facts": self.facts, "fired": self.fired,
                "calls": self.calls}

    # ── assertions: each failure says what was expected and what happened, then the trace ──────

    def assert_status(self, status: str) -> None:
        __tracebackhide__ = True  # pytest shows the test's line, not this one
        self.expect({"status": status})

    def assert_fact(self, fact_type: str, **fields: Any) -> dict[str, Any]:
        """The fields of the first fact of `fact_type` with these fields."""
        __tracebackhide__ = True  # pytest shows the test's line, not this one
        self.expect({"facts": [{"type": fact_type, "fields": fields}]})
        return self.facts_of(fact_type, **fields)[0]

    def assert_no_fact(self, fact_type: str, **fields: Any) -> None:
        __tracebackhide__ = True  # pytest shows the test's line, not this one
        self.expect({"no_facts": [{"type": fact_type, "fields": fields}]})

    def assert_fired(self, rule: str, times: int | None = None) -> None:
        __tracebackhide__ = True  # pytest shows the test's line, not this one
        self.expect({"fired": [rule if times is None else {rule: times}]})

    def assert_not_fired(self, rule: str) -> None:
        __tracebackhide__ = True  # pytest shows the test's line, not this one
        self.expect({"not_fired": [rule]})

    def assert_calls(self, function: str, times: int) -> None:
        __tracebackhide__ = True  # pytest shows the test's line, not this one
        self.expect({"calls": {function: times}})

    def expect(self, spec: Mapping[str, Any]) -> None:
        """Check an `expect:` section given as a dict (the keys of a scenario file's); an
        AssertionError lists every expectation not met, and the trace."""
        __tracebackhide__ = True
        mismatches = self.check(spec)
        if mismatches:
            self.shown = True
            raise AssertionError(failure_text(self, mismatches))

    def check(self, spec: Mapping[str, Any]) -> list[Mismatch]:
        """The expectations of `spec` this run does not meet (a bad spec raises ScenarioError)."""
        if self.wf is None:
            raise ScenarioError("this run does not know its workflow's declarations")
        at = _At(f"expectations on {self.wf.short}")
        return check(self, _parse_expect(dict(spec), self.wf, self.declared_functions, at))


def failure_text(run: RuleRun, mismatches: list[Mismatch]) -> str:
    """What failed, expected against actual, then the trace of the run."""
    lines = [m.text() for m in mismatches]
    lines.append(f"trace of {run.workflow} (ended {run.status}, {len(run.trace)} events):")
    lines.append(_indent(run.trace_text()))
    return "\n".join(lines)


def _indent(text: str, by: str = "  ") -> str:
    return "\n".join(by + line if line else line for line in text.splitlines())


# ── scenarios ──────────────────────────────────────────────────────────────────────────────────

FILE_KEYS = ("workflow", "description", "functions", "scenarios")
SCENARIO_KEYS = ("name", "description", "given", "then_add", "functions", "expect")


@dataclass
class Scenario:
    file: str  # as shown in messages: the path the user gave, then tests/NAME.yaml
    name: str
    workflow: str  # full name
    given: list[dict[str, Any]]
    then_add: list[dict[str, Any]] | None
    functions: FunctionSpec
    expect: Expect
    line: int = 0

    @property
    def id(self) -> str:
        return f"{self.file}::{self.name}"


@dataclass
class ScenarioFile:
    path: Path
    label: str
    workflow: str
    scenarios: list[Scenario]


@dataclass
class ScenarioResult:
    scenario: Scenario
    passed: bool
    seconds: float
    mismatches: list[Mismatch]
    run: RuleRun | None

    def to_json(self, with_trace: bool) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "file": self.scenario.file, "name": self.scenario.name,
            "workflow": self.scenario.workflow, "passed": self.passed,
            "seconds": round(self.seconds, 6),
            "status": self.run.status if self.run else None,
            "failures": [m.to_json() for m in self.mismatches],
        }
        if with_trace and self.run is not None:
            doc["trace"] = self.run.trace
        return doc

    def failure_text(self) -> str:
        if self.run is None:
            return "\n".join(m.text() for m in self.mismatches)
        return failure_text(self.run, self.mismatches)


def load_rules(path: str | Path) -> Rules:
    """Compile the project at `path`; RulesError with the rendered diagnostics when it fails."""
    from emirax import diagnostics, pipeline
    from emirax.engine.program import Program
    from emirax.errors import IRError, SourceError

    path = Path(path)
    try:
        result = pipeline.build(path)
    except SourceError as exc:
        diags = list(exc.diagnostics) + list(exc.warnings)
        text = diagnostics.render(diags, pipeline.render_sources(exc.sources))
        raise RulesError(f"the rules of {path} do not compile:\n{text}") from None
    except IRError as exc:
        raise RulesError(f"{path}: {exc}") from None
    assert result.ir is not None
    return Rules(path, Program.from_ir(result.ir, version=result.project.version))


class Rules:
    """A compiled project, ready to run workflows and scenarios against (see the module doc)."""

    def __init__(self, path: str | Path, program: Program) -> None:
        self.path = Path(path)
        self.program = program
        self.runs: list[RuleRun] = []  # every run made through this object, for failure reports
        self._shared: dict[str, Any] = {}  # functions.py, once loaded: shared with views

    def __repr__(self) -> str:
        return f"<Rules {self.program.package} at {self.path}>"

    def view(self) -> Rules:
        """The same compiled rules, recording runs in a list of its own (one per test)."""
        other = Rules(self.path, self.program)
        other._shared = self._shared
        return other

    @property
    def functions_file(self) -> Path:
        return (self.path if self.path.is_dir() else self.path.parent) / "functions.py"

    def module_functions(self) -> dict[str, Callable[..., Any]]:
        """The callables of the project's functions.py (loaded once)."""
        if "module" not in self._shared:
            from emirax.local import load_functions

            if not self.functions_file.is_file():
                raise ScenarioError(f"module: true needs {self.functions_file}, which does not exist")
            self._shared["module"] = load_functions(self.functions_file)
        return self._shared["module"]

    @property
    def declared_functions(self) -> set[str]:
        return {name for wf in self.program.workflows.values() for name in wf.functions}

    # ── running ────────────────────────────────────────────────────────────────────────────────

    def run(self, workflow: str, facts: Iterable[Any] = (),
            functions: Mapping[str, Any] | str | None = None, *, module: bool = False,
            then_add: Iterable[Any] | None = None) -> RuleRun:
        """Run `workflow` from `facts` to quiescence, then add `then_add` and run again.

        `functions` maps declared names to callables or to stub specs (the dicts of a scenario
        file's `functions:`); the string "module", or `module=True`, lets functions.py serve
        every function not given. A function nobody serves fails every call."""
        wf = self._workflow(workflow)
        spec = FunctionSpec(module_rest=module or functions == "module")
        given: dict[str, Callable[..., Any]] = {}
        if isinstance(functions, Mapping):
            stubs = {k: v for k, v in functions.items() if not callable(v)}
            given = {k: v for k, v in functions.items() if callable(v)}
            undeclared = sorted(set(given) - self.declared_functions)
            if undeclared:
                raise ScenarioError(f"functions: '{undeclared[0]}' is not a declared function "
                                    f"(declared: {', '.join(sorted(self.declared_functions))})")
            spec = spec.merged(_parse_functions(stubs, _At("functions"), self.declared_functions,
                                                None, "functions"))
        elif functions not in (None, "module"):
            raise ScenarioError("functions must be a mapping of name -> callable or stub, or 'module'")
        start = _normal_facts(list(facts), wf, "facts")
        later = _normal_facts(list(then_add), wf, "then_add") if then_add is not None else None
        return self._execute(wf, start, self._callables(spec, given), later)

    def load_scenarios(self) -> list[ScenarioFile]:
        """Every scenario file of the project, validated; ScenarioError at the first bad one."""
        return [self.load_file(p) for p in self.scenario_files()]

    def scenario_files(self) -> list[Path]:
        folder = self.path / "tests"
        found = {p for pattern in SCENARIO_GLOBS for p in folder.glob(pattern) if p.is_file()}
        return sorted(found)

    def load_file(self, path: Path) -> ScenarioFile:
        """One scenario file, validated against the compiled rules."""
        label = str(path)
        doc = _read_yaml(path, label)
        at = _At(label)
        if doc is None:
            raise at.error("the file is empty: it needs a workflow and scenarios")
        _keys(doc, "the file", at, allowed=FILE_KEYS, required=("workflow", "scenarios"))
        from emirax.engine.program import EngineError

        try:
            wf = self.program.workflow(str(doc["workflow"]))
        except EngineError as exc:
            raise at.error(f"workflow: {exc}", doc, "workflow") from None
        declared = self.declared_functions
        defaults = (_parse_functions(doc["functions"], at, declared, doc, "functions")
                    if "functions" in doc else FunctionSpec())
        items = doc["scenarios"]
        if not isinstance(items, list) or not items:
            raise at.error("scenarios must be a non-empty list", doc, "scenarios")
        scenarios, names = [], set()
        for i, item in enumerate(items):
            sc = self._scenario(item, i, wf, defaults, at, label)
            if sc.name in names:
                raise at.error(f"two scenarios are named '{sc.name}'", item)
            names.add(sc.name)
            scenarios.append(sc)
        return ScenarioFile(path, label, wf.name, scenarios)

    def _scenario(self, item: Any, i: int, wf: Workflow, defaults: FunctionSpec, at: _At,
                  label: str) -> Scenario:
        name = item.get("name") if isinstance(item, dict) else None
        if not isinstance(name, str) or not name.strip():
            raise at.error(f"scenarios[{i}] needs a name (a string)", item)
        at = at.named(name)
        _keys(item, "the scenario", at, allowed=SCENARIO_KEYS, required=("name", "given", "expect"))
        declared = self.declared_functions
        given = _input_facts(item["given"], wf, at, "given", item)
        then_add = _input_facts(item["then_add"], wf, at, "then_add", item) if "then_add" in item else None
        functions = defaults
        if "functions" in item:
            functions = defaults.merged(_parse_functions(item["functions"], at, declared, item,
                                                         "functions"))
        if functions.needs_module and not self.functions_file.is_file():
            raise at.error(f"module: true needs {self.functions_file}, which does not exist",
                           item, "functions")
        expect = _parse_expect(item["expect"], wf, declared, at, item)
        return Scenario(label, name, wf.name, given, then_add, functions, expect, _line(item))

    def run_scenario(self, sc: Scenario) -> ScenarioResult:
        started = time.perf_counter()
        wf = self.program.workflow(sc.workflow)
        try:
            run = self._execute(wf, sc.given, self._callables(sc.functions, {}), sc.then_add)
        except Exception as exc:  # a crash of the run is this scenario's failure, not the others'
            if _debug():
                raise
            message = f"the run raised {type(exc).__name__}: {exc}"
            return ScenarioResult(sc, False, time.perf_counter() - started,
                                  [Mismatch("run", "a finished run", message, message)], None)
        mismatches = check(run, sc.expect)
        for m in mismatches:
            line = sc.expect.lines.get(re.split(r"[\[.]", m.expectation)[0])
            m.where = f"{sc.file}:{line}" if line else ""
        return ScenarioResult(sc, not mismatches, time.perf_counter() - started, mismatches, run)

    # ── internals ──────────────────────────────────────────────────────────────────────────────

    def _workflow(self, name: str) -> Workflow:
        from emirax.engine.program import EngineError

        try:
            return self.program.workflow(name)
        except EngineError as exc:
            raise ScenarioError(str(exc)) from None

    def _callables(self, spec: FunctionSpec, given: Mapping[str, Callable[..., Any]]
                   ) -> dict[str, Callable[..., Any]]:
        module = self.module_functions() if spec.needs_module else {}
        out: dict[str, Callable[..., Any]] = {}
        for name in sorted(self.declared_functions):
            if name in given:
                out[name] = given[name]
            elif name in spec.stubs:
                out[name] = spec.stubs[name].make(module.get(name) or self._not_in_module(name))
            elif spec.module_rest and name in module:
                out[name] = module[name]
            else:
                out[name] = _missing(name)
        return out

    def _not_in_module(self, name: str) -> Callable[..., Any]:
        def call(*args: Any) -> Any:
            raise _stub_error("NotFound", f"{self.functions_file} defines no '{name}'")
        return call

    def _execute(self, wf: Workflow, facts: list[dict[str, Any]],
                 functions: Mapping[str, Callable[..., Any]],
                 then_add: list[dict[str, Any]] | None) -> RuleRun:
        from emirax.engine.program import EngineError
        from emirax.local import LocalRun

        calls: Counter[str] = Counter()
        counted = {name: _counted(name, fn, calls) for name, fn in functions.items()}
        runner = LocalRun(self.program, counted, sequential=True)
        runner.run(wf.name, facts)
        problems = []
        if then_add is not None:
            try:
                runner.add_facts(then_add)
            except EngineError as exc:
                problems.append(f"then_add: {exc}")
        root = runner.flows[min(runner.flows)].state
        run = RuleRun(wf.name, root.status, root.output, root.error, root.fact_list(),
                      list(runner.fired), dict(sorted(calls.items())), runner.trace, problems,
                      wf=wf, declared_functions=frozenset(self.declared_functions))
        self.runs.append(run)
        return run


def _counted(name: str, fn: Callable[..., Any], calls: Counter[str]) -> Callable[..., Any]:
    def call(*args: Any) -> Any:
        calls[name] += 1
        return fn(*args)
    return call


def _debug() -> bool:
    import os

    return bool(os.environ.get("EMIRAX_DEBUG"))


def find_project(start: Path) -> Path | None:
    """The nearest folder at or above `start` that holds an emirax.toml."""
    for folder in (start, *start.parents):
        if (folder / "emirax.toml").is_file():
            return folder
    return None


# ── the pytest plugin ──────────────────────────────────────────────────────────────────────────
# Defined only when pytest is running (it loads this module through its entry point), so that
# `emirax test` and library users never import pytest.

if "pytest" in sys.modules or "_pytest" in sys.modules:
    import pytest

    _RUNS = pytest.StashKey[list]()
    _COMPILED = pytest.StashKey[dict]()

    def _compiled(config: pytest.Config, path: Path) -> Rules:
        """A project compiled once per session."""
        cache = config.stash.setdefault(_COMPILED, {})
        key = path.resolve()
        if key not in cache:
            cache[key] = load_rules(path)
        return cache[key]

    def _rules_for(request: pytest.FixtureRequest, path: Path) -> Rules:
        try:
            rules = _compiled(request.config, path).view()
        except (RulesError, EmiraxError) as exc:
            pytest.fail(str(exc), pytrace=False)
        rules.runs = request.node.stash.setdefault(_RUNS, [])
        return rules

    def pytest_addoption(parser: pytest.Parser) -> None:
        parser.addini("emirax_scenarios", type="bool", default=True,
                      help="collect Emirax scenario files (tests/*.yaml next to an emirax.toml)")

    @pytest.fixture
    def emirax_project(request: pytest.FixtureRequest) -> Callable[[str | Path], Rules]:
        """A factory: `emirax_project(path)` gives the compiled project at `path` (relative to
        the rootdir or the working directory), whose `run(...)` records its traces for the
        failure report."""
        def factory(path: str | Path = ".") -> Rules:
            p = Path(path)
            if not p.is_absolute() and not p.exists():
                p = request.config.rootpath / p
            return _rules_for(request, p)
        return factory

    @pytest.fixture
    def emirax_rules(request: pytest.FixtureRequest) -> Rules:
        """The project the test file lives in: the nearest emirax.toml above it."""
        project = find_project(Path(request.path).parent)
        if project is None:
            pytest.fail(f"emirax_rules: no emirax.toml at or above {Path(request.path).parent}; "
                        "use emirax_project(path)", pytrace=False)
        return _rules_for(request, project)

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
        outcome = yield
        report = outcome.get_result()
        if report.when != "call" or not report.failed:
            return
        for n, run in enumerate(item.stash.get(_RUNS, []), 1):
            if not run.shown:
                report.sections.append((f"emirax trace: run {n}, {run.workflow} ended {run.status}",
                                        run.trace_text()))

    def pytest_collect_file(file_path: Path, parent: pytest.Collector) -> pytest.Collector | None:
        if (file_path.suffix in (".yaml", ".yml") and file_path.parent.name == "tests"
                and (file_path.parent.parent / "emirax.toml").is_file()
                and parent.config.getini("emirax_scenarios")):
            return ScenarioCollector.from_parent(parent, path=file_path)
        return None

    class ScenarioCollector(pytest.File):
        """One scenario file: one test per scenario."""

        def collect(self) -> Iterable[pytest.Item]:
            try:
                rules = _compiled(self.config, self.path.parent.parent)
                loaded = rules.load_file(self.path)
            except EmiraxError as exc:
                raise self.CollectError(str(exc)) from None
            for sc in loaded.scenarios:
                yield ScenarioItem.from_parent(self, name=sc.name, rules=rules, scenario=sc)

    class ScenarioItem(pytest.Item):
        def __init__(self, *, rules: Rules, scenario: Scenario, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self.rules, self.scenario = rules, scenario

        def runtest(self) -> None:
            result = self.rules.view().run_scenario(self.scenario)
            if not result.passed:
                raise ScenarioFailed(result)

        def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException],
                         style: Any = None) -> str:
            if isinstance(excinfo.value, ScenarioFailed):
                return excinfo.value.result.failure_text()
            return str(super().repr_failure(excinfo, style=style))

        def reportinfo(self) -> tuple[Path, int | None, str]:
            return self.path, self.scenario.line - 1 if self.scenario.line else None, \
                f"scenario: {self.scenario.name}"


class ScenarioFailed(Exception):
    """A scenario collected by pytest did not meet its expectations."""

    def __init__(self, result: ScenarioResult) -> None:
        super().__init__(result.scenario.id)
        self.result = result
