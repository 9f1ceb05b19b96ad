"""A workflow's durable state: its facts, refraction memory, pending activations, status and output.

    WorkflowState.new(workflow_name)      an empty workflow
    state.to_json() / WorkflowState.from_json(doc)

Everything here is plain data that a host stores; `step` changes it and says how in a `Delta`. The
matcher is not state: it is rebuilt from the facts whenever a state meets a workflow version it
was not built for (a state loaded from a store, or a new bundle version), and cached on the state
object otherwise.

A pending activation is a rule that fired and waits for its invocations: it keeps the bindings as
they were when it fired (so the reaction sees the facts it matched) and the action's value with a
placeholder for every call, filled in as results arrive.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from emirax.engine.code import Placeholder
from emirax.engine.matcher import hkey
from emirax.engine.values import FactValue, equals

__all__ = ["Pending", "WorkflowState", "decode", "encode", "fact_hash"]


def fact_hash(fact_type: str, fields: Mapping[str, Any]) -> int:
    """Equal for facts the language calls equal (`hkey` of the fields)."""
    return hash((fact_type, hkey(fields)))


@dataclass
class Pending:
    """A fired rule waiting for the results of the invocations its action started."""

    id: int
    rule: str
    bindings: dict[str, Any]  # name -> FactValue, or a list of them (collect)
    value: Any  # the action's value, with Placeholders
    calls: list[int]  # every invocation the action started, in order
    results: dict[int, Any] = field(default_factory=dict)
    labels: list[str] = field(default_factory=list)  # what each call is, for `err.function`

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id, "rule": self.rule, "bindings": encode(self.bindings),
            "value": encode(self.value), "calls": list(self.calls),
            "results": [[k, encode(v)] for k, v in self.results.items()],
            "labels": list(self.labels),
        }

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> Pending:
        return cls(doc["id"], doc["rule"], decode(doc["bindings"]), decode(doc["value"]),
                   list(doc["calls"]), {k: decode(v) for k, v in doc["results"]},
                   list(doc["labels"]))


@dataclass
class WorkflowState:
    workflow: str
    facts: dict[int, FactValue] = field(default_factory=dict)
    fired: set[Any] = field(default_factory=set)
    pending: dict[int, Pending] = field(default_factory=dict)
    calls: dict[int, int] = field(default_factory=dict)  # open invocation -> pending id
    status: str = "waiting"
    output: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    version: str | None = None  # the bundle version of the last step
    next_fact: int = 1
    next_call: int = 1
    next_pending: int = 1
    # Not state: the matcher built for one workflow version, and the identity index of the set.
    matcher: Any = field(default=None, repr=False, compare=False)
    matcher_for: Any = field(default=None, repr=False, compare=False)
    # hash of (type, fields) -> the fact id, or the ids, with that hash: only an int per fact is
    # kept; equal hashes are told apart with `==` (see find_equal).
    identity: dict[int, Any] | None = field(default=None, repr=False, compare=False)

    def index_facts(self) -> None:
        """Build the set index from the facts (after a load, or for a new matcher)."""
        self.identity = {}
        for fact in self.facts.values():
            self.remember(fact)

    def find_equal(self, fact_type: str, fields: Mapping[str, Any], h: int) -> int | None:
        """The id of a present fact equal to (fact_type, fields), whose hash is `h`."""
        found = self.identity.get(h)  # type: ignore[union-attr]
        if found is None:
            return None
        for fid in (found if found.__class__ is list else (found,)):
            other = self.facts[fid]
            if other.type == fact_type and equals(dict(other.fields), dict(fields)):
                return fid
        return None

    def remember(self, fact: FactValue, h: int | None = None) -> None:
        identity = self.identity
        assert identity is not None
        h = fact_hash(fact.type, fact.fields) if h is None else h
        found = identity.get(h)
        if found is None:
            identity[h] = fact.id
        elif found.__class__ is list:
            found.append(fact.id)
        else:
            identity[h] = [found, fact.id]

    def forget(self, fact: FactValue) -> None:
        identity = self.identity
        assert identity is not None
        h = fact_hash(fact.type, fact.fields)
        found = identity.get(h)
        if found.__class__ is list:
            found.remove(fact.id)
            if len(found) == 1:
                identity[h] = found[0]
        elif found == fact.id:
            del identity[h]

    @classmethod
    def new(cls, workflow: str) -> WorkflowState:
        return cls(workflow)

    def fact_list(self) -> list[dict[str, Any]]:
        """The facts as `{"type", "fields"}` objects, oldest first (SPEC section 6's shape)."""
        return [{"type": f.type, "fields": dict(f.fields)} for _, f in sorted(self.facts.items())]

    def to_json(self) -> dict[str, Any]:
        return {
            "workflow": self.workflow,
            "facts": [[f.id, f.version, f.type, f.fields] for _, f in sorted(self.facts.items())],
            "fired": sorted(key_to_json(k) for k in self.fired),
            "pending": [p.to_json() for _, p in sorted(self.pending.items())],
            "calls": sorted([k, v] for k, v in self.calls.items()),
            "status": self.status, "output": self.output, "error": self.error,
            "version": self.version, "next_fact": self.next_fact, "next_call": self.next_call,
            "next_pending": self.next_pending,
        }

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> WorkflowState:
        return cls(
            workflow=doc["workflow"],
            facts={i: FactValue(t, fields, i, v) for i, v, t, fields in doc["facts"]},
            fired={key_from_json(k) for k in doc["fired"]},
            pending={p["id"]: Pending.from_json(p) for p in doc["pending"]},
            calls={k: v for k, v in doc["calls"]},
            status=doc["status"], output=doc["output"], error=doc["error"],
            version=doc["version"], next_fact=doc["next_fact"], next_call=doc["next_call"],
            next_pending=doc["next_pending"],
        )


def key_to_json(key: Any) -> list[Any]:
    """A refraction key as JSON: [rule, [[id, version], ...], [[[id, version], ...], ...]]."""
    rule, facts, collects = key
    return [rule, [list(p) for p in facts], [[list(p) for p in c] for c in collects]]


def key_from_json(doc: list[Any]) -> Any:
    rule, facts, collects = doc
    return (rule, tuple(tuple(p) for p in facts), tuple(tuple(tuple(p) for p in c) for c in collects))


# Values held across steps (bindings, an action's value) may hold facts and placeholders; every
# map is wrapped so that no user key can be mistaken for a tag.


def encode(value: Any) -> Any:
    cls = value.__class__
    if cls is list:
        return [encode(v) for v in value]
    if cls is dict:
        return {"$map": [[k, encode(v)] for k, v in value.items()]}
    if cls is FactValue:
        return {"$fact": [value.type, encode(dict(value.fields)), value.id, value.version]}
    if cls is Placeholder:
        return {"$call": [value.id, value.label]}
    return value


def decode(doc: Any) -> Any:
    if isinstance(doc, list):
        return [decode(v) for v in doc]
    if isinstance(doc, dict):
        if "$map" in doc:
            return {k: decode(v) for k, v in doc["$map"]}
        if "$fact" in doc:
            t, fields, i, v = doc["$fact"]
            return FactValue(t, decode(fields), i, v)
        if "$call" in doc:
            return Placeholder(*doc["$call"])
    return doc
