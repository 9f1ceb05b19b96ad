"""The naive matcher: every `pop` re-evaluates every rule over every fact from scratch.

It has the incremental matcher's interface (`insert`, `retract`, `pop`, `activations`, `errors`)
and none of its machinery (no memories, indexes, plans or conflict set): nested loops over the
facts in source order, straight from the semantics of SPEC section 2. The property tests run both
on random programs and fact sequences and require the same activations in the same order; the
engine takes it as `matcher=NaiveMatcher` for that.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from emirax.engine.code import Frame, LimitError, Meter
from emirax.engine.matcher import CONDITION_STEPS, Activation, MatchError, make_activation, runaway
from emirax.engine.program import Element, Rule, Workflow
from emirax.engine.values import FactValue, RuleError, equals, truthy

__all__ = ["NaiveMatcher"]


class NaiveMatcher:
    def __init__(self, workflow: Workflow, fired: set[Any]) -> None:
        self.workflow = workflow
        self.fired = fired
        self.facts: dict[int, FactValue] = {}
        self.errors: list[MatchError] = []
        self.frame = Frame({}, Meter(CONDITION_STEPS))

    def insert(self, fact: FactValue) -> None:
        self.facts[fact.id] = fact

    def retract(self, fact: FactValue) -> None:
        self.facts.pop(fact.id, None)

    def activations(self) -> list[Activation]:
        found = [a for rule in self.workflow.rules if rule.enabled for a in self._rule(rule)]
        return sorted((a for a in found if a.key not in self.fired), key=lambda a: a.order)

    def pop(self) -> Activation | None:
        acts = self.activations()
        return acts[0] if acts else None

    def _rule(self, rule: Rule) -> Iterator[Activation]:
        yield from self._from(rule, 0, {}, [], [])

    def _from(self, rule: Rule, k: int, env: dict[str, Any], facts: list[FactValue],
              collected: list[list[FactValue]]) -> Iterator[Activation]:
        if k == len(rule.elements):
            yield make_activation(rule, tuple(facts), dict(env), [list(c) for c in collected])
            return
        el = rule.elements[k]
        try:
            if el.kind == "guard":
                assert el.guard is not None
                if truthy(self._run(el.guard.fn, env, None)):
                    yield from self._from(rule, k + 1, env, facts, collected)
                return
        except LimitError as exc:
            raise runaway(rule, exc) from None
        except RuleError as exc:
            self.errors.append(MatchError(rule.name, exc.at, exc.message))
            return
        matching = [f for f in sorted(self.facts.values(), key=lambda f: f.id)
                    if f.type == el.type and self._matches_or_error(rule, el, f, env)]
        if el.kind == "fact":
            for f in matching:
                if el.binding:
                    env[el.binding] = f
                yield from self._from(rule, k + 1, env, facts + [f], collected)
                if el.binding:
                    env.pop(el.binding, None)
        elif el.kind == "not" and not matching or el.kind == "exists" and matching:
            yield from self._from(rule, k + 1, env, facts, collected)
        elif el.kind == "collect":
            if el.binding:
                env[el.binding] = matching
            yield from self._from(rule, k + 1, env, facts, collected + [matching])
            if el.binding:
                env.pop(el.binding, None)

    def _matches_or_error(self, rule: Rule, el: Element, fact: FactValue, env: dict[str, Any]) -> bool:
        """A test that raises makes this one fact not match (and is reported), as in Matcher."""
        try:
            return self._matches(el, fact, env)
        except LimitError as exc:
            raise runaway(rule, exc) from None
        except RuleError as exc:
            self.errors.append(MatchError(rule.name, exc.at, exc.message))
            return False

    def _matches(self, el: Element, fact: FactValue, env: dict[str, Any]) -> bool:
        tests = [(None, fn) for fn in el.alpha] + [(j.field, j.fn) for j in el.joins]
        tests += [(None, t.fn) for t in el.beta]
        for field, fn in tests:
            value = self._run(fn, env, fact)
            if field is None:
                if not truthy(value):
                    return False
            elif not equals(fact.fields.get(field), value):
                return False
        return True

    def _run(self, fn: Any, env: dict[str, Any], fact: FactValue | None) -> Any:
        frame = self.frame
        frame.vars = env
        frame.fact = fact
        frame.meter.used = 0
        return fn(frame)
