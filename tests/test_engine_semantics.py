"""The engine's semantics, sentence by sentence: SPEC section 2 "Semantics", the decisions in
`engine/step.py`'s docstring and docs/engine.md, each with a test that fails when the engine
breaks it.

Every program here goes through the real front end (`pipeline.build`) and the real `step`; the
tests read what a host reads: deltas, the trace, the state and its JSON. Twelve tests here found
defects when they were written (non-finite results, values shared with the host and with
functions, limit blame, batches, the naive matcher's error handling); they now pin the fixes.

Sections: sets · refraction · agenda order · determinism · quiescence · statuses · invocations
· values from the host · not/exists/collect · child workflows · limits and bad input · match
errors · always on · state serialisation · event batches · the media-encoding tenant.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from emirax.engine.code import LimitError
from emirax.engine.matcher import Matcher
from emirax.engine.naive import NaiveMatcher
from emirax.engine.program import EngineError, InputError, Program, Workflow
from emirax.engine.state import WorkflowState
from emirax.engine.step import AddFacts, Delta, Failure, Limits, Result, Start, step
from emirax.local import LocalRun
from emirax.pipeline import build
from enginekit import Driver, deltas_json, events, fires, program_of, state_json, workflow_of, wrap

ROOT = Path(__file__).resolve().parents[1]


def line_of(source: str, text: str, after: int = 0) -> int:
    """The 1-based number of the first line of `source` after line `after` holding `text`."""
    return next(i for i, line in enumerate(source.splitlines(), 1) if i > after and text in line)


# ── sets ──────────────────────────────────────────────────────────────────────────────────────

SET_RULES = wrap("""
    fact A(def v, String tag = 'q')
    fact D(double d)
    fact Seen(def v)
    fact Go(int k)
    rule 'see' {
        match { a: A() }
        action { insert Seen(v: a.v) }
    }
    rule 'again' {
        match { g: Go() }
        action {
            insert A(v: 1)
            insert A(v: 1.0, tag: 'q')
        }
    }
""")


def test_inserting_an_equal_fact_is_a_no_op() -> None:
    run = Driver(workflow_of(SET_RULES)).start(("A", {"v": 1}), ("A", {"v": 1}))
    assert run.fact_ids("A") == [1]
    assert run.fires() == [("see", [1])]
    run.add(("A", {"v": 1}))
    assert run.last.inserted == [] and run.fires() == []
    assert run.state.next_fact == 3  # the duplicate took no id


def test_an_insert_from_a_rule_equal_to_a_present_fact_is_a_no_op() -> None:
    run = Driver(workflow_of(SET_RULES)).start(("A", {"v": 1}))
    run.add(("Go", {"k": 0}))
    assert run.fact_ids("A") == [1]
    assert [f["type"] for f in run.last.to_json()["inserted"]] == ["Go"]
    assert run.rules_fired() == ["see", "again"]


def test_1_and_1_0_are_one_fact_true_and_1_are_two() -> None:
    run = Driver(workflow_of(SET_RULES)).start(
        ("A", {"v": 1}), ("A", {"v": 1.0}), ("A", {"v": True}), ("A", {"v": [1]}),
        ("A", {"v": [1.0]}), ("A", {"v": "1"}))
    assert [f["v"] for f in run.facts("A")] == [1, True, [1], "1"]


def test_a_double_field_holds_1_and_1_0_as_one_fact() -> None:
    run = Driver(workflow_of(SET_RULES)).start(("D", {"d": 1}), ("D", {"d": 1.0}), ("D", {"d": 1.5}))
    assert run.facts("D") == [{"d": 1}, {"d": 1.5}]


def test_defaults_take_part_in_equality() -> None:
    run = Driver(workflow_of(SET_RULES)).start(("A", {"v": 2}), ("A", {"v": 2, "tag": "q"}),
                                               ("A", {"v": 2, "tag": "r"}))
    assert run.facts("A") == [{"v": 2, "tag": "q"}, {"v": 2, "tag": "r"}]


def test_a_modify_that_makes_a_fact_equal_to_another_retracts_it() -> None:
    """docs/engine.md: the set keeps one of the two; the modified fact is the one that goes."""
    src = wrap("""
        fact A(int n)
        fact Go(int k)
        rule 'bump' {
            match {
                g: Go()
                a: A(n == 1)
            }
            action { modify a { n = 2 } }
        }
    """)
    run = Driver(workflow_of(src)).start(("A", {"n": 1}), ("A", {"n": 2})).add(("Go", {"k": 0}))
    assert run.fact_ids("A") == [2]
    assert run.last.retracted == [1] and run.last.modified == []


# ── refraction ────────────────────────────────────────────────────────────────────────────────

REFRACTION = wrap("""
    fact A(int n, int seen = 0)
    fact Touch(int n)
    fact Same(int n)
    fact Drop(int n)
    fact Back(int n)
    rule 'watch' {
        match { a: A() }
        action { log "A ${a.n} seen ${a.seen}" }
    }
    rule 'touch' {
        match {
            t: Touch()
            a: A(n == t.n)
        }
        action {
            modify a { seen = a.seen + 1 }
            retract t
        }
    }
    rule 'same' {
        match {
            s: Same()
            a: A(n == s.n)
        }
        action { modify a { seen = a.seen } }
    }
    rule 'drop' {
        match {
            d: Drop()
            a: A(n == d.n)
        }
        action {
            retract a
            retract d
        }
    }
    rule 'back' {
        match { b: Back() }
        action { insert A(n: b.n) }
    }
""")


def test_an_activation_fires_once() -> None:
    run = Driver(workflow_of(REFRACTION)).start(("A", {"n": 1}))
    assert run.fires() == [("watch", [1])]
    run.add(("A", {"n": 2}))
    assert run.fires() == [("watch", [2])]  # not A 1 again
    run.add(("Same", {"n": 7}))  # joins nothing
    assert run.fires() == []


def test_a_modify_of_a_fact_makes_a_new_activation() -> None:
    run = Driver(workflow_of(REFRACTION)).start(("A", {"n": 1}))
    run.add(("Touch", {"n": 1}))
    assert run.fires() == [("touch", [2, 1]), ("watch", [1])]
    assert [(f.id, f.version) for f in run.last.modified] == [(1, 2)]
    assert events(run.last, "log")[-1]["message"] == "A 1 seen 1"


def test_a_modify_that_changes_nothing_makes_no_new_activation() -> None:
    run = Driver(workflow_of(REFRACTION)).start(("A", {"n": 1}))
    run.add(("Same", {"n": 1}))
    assert run.fires() == [("same", [2, 1])]  # and not 'watch' again, and no loop
    assert run.last.modified == [] and events(run.last, "modify") == []
    assert run.state.facts[1].version == 1


def test_retract_then_reinsert_of_an_equal_fact_is_a_new_fact_that_fires_again() -> None:
    run = Driver(workflow_of(REFRACTION)).start(("A", {"n": 1}))
    run.add(("Drop", {"n": 1}))
    assert run.last.retracted == [1] and run.fact_ids("A") == []
    run.add(("Back", {"n": 1}))
    assert run.fact_ids("A") == [4]
    assert run.fires() == [("back", [3]), ("watch", [4])]


def test_a_rule_that_modifies_its_own_fact_fires_once_per_version() -> None:
    src = wrap("""
        fact A(int n)
        rule 'count down' {
            match { a: A(n > 0) }
            action { modify a { n = a.n - 1 } }
        }
    """)
    run = Driver(workflow_of(src)).start(("A", {"n": 3}))
    assert run.fires() == [("count down", [1])] * 3
    assert run.facts("A") == [{"n": 0}] and run.state.facts[1].version == 4


def test_refraction_keys_are_rule_facts_and_versions() -> None:
    run = Driver(workflow_of(REFRACTION)).start(("A", {"n": 1})).add(("Touch", {"n": 1}))
    keys = run.state.to_json()["fired"]
    assert ["watch", [[1, 1]], []] in keys and ["watch", [[1, 2]], []] in keys
    assert ["touch", [[2, 1], [1, 1]], []] in keys


def test_an_activation_without_positive_facts_fires_once_for_the_workflows_life() -> None:
    """Its tuple is empty, so its refraction key never changes (docs/engine.md: the key is the
    rule, the positive facts and the collect lists)."""
    src = wrap("""
        fact Flag(int n)
        fact Drop(int n)
        rule 'some flag' {
            match { exists Flag() }
            action { log 'flag' }
        }
        rule 'drop' with [salience: 5] {
            match {
                d: Drop()
                f: Flag(n == d.n)
            }
            action {
                retract f
                retract d
            }
        }
    """)
    run = Driver(workflow_of(src)).start(("Flag", {"n": 1}))
    assert run.fires() == [("some flag", [])]
    run.add(("Drop", {"n": 1}))
    run.add(("Flag", {"n": 2}))  # exists is true again, but the activation is the same
    assert run.fires() == []


def test_two_patterns_may_match_the_same_fact() -> None:
    src = wrap("""
        fact A(int n)
        rule 'pairs' {
            match {
                a: A()
                b: A()
            }
            action { log "${a.n}${b.n}" }
        }
        rule 'distinct' {
            match {
                a: A()
                b: A(n != a.n)
            }
            action { log "${a.n}${b.n}" }
        }
    """)
    run = Driver(workflow_of(src)).start(("A", {"n": 1}), ("A", {"n": 2}))
    assert run.fires() == [("pairs", [1, 1]), ("pairs", [1, 2]), ("pairs", [2, 1]),
                           ("pairs", [2, 2]), ("distinct", [1, 2]), ("distinct", [2, 1])]


# ── agenda order ──────────────────────────────────────────────────────────────────────────────

AGENDA = wrap("""
    fact A(int n)
    fact B(int n)
    fact Urgent(int n)
    rule 'first in source' {
        match { a: A() }
        action { log 'x' }
    }
    rule 'pair' {
        match {
            a: A()
            b: B()
        }
        action { log 'x' }
    }
    rule 'salient' with [salience: 5] {
        match { b: B() }
        action { insert Urgent(n: b.n) }
    }
    rule 'urgent' with [salience: 7] {
        match { u: Urgent() }
        action { log 'x' }
    }
    rule 'last in source' {
        match { a: A() }
        action { log 'x' }
    }
    rule 'negative' with [salience: -3] {
        match { a: A() }
        action { log 'x' }
    }
""")


def test_agenda_order_salience_then_rule_order_then_fact_ids() -> None:
    run = Driver(workflow_of(AGENDA)).start(("B", {"n": 2}), ("A", {"n": 1}), ("A", {"n": 0}),
                                            ("B", {"n": 1}))
    # facts: B2=1, A1=2, A0=3, B1=4; 'salient' inserts Urgent 5 and 6, and 'urgent' (salience 7)
    # goes ahead of everything pending as soon as its fact exists.
    assert run.fires() == [
        ("salient", [1]), ("urgent", [5]), ("salient", [4]), ("urgent", [6]),
        ("first in source", [2]), ("first in source", [3]),
        ("pair", [2, 1]), ("pair", [2, 4]), ("pair", [3, 1]), ("pair", [3, 4]),
        ("last in source", [2]), ("last in source", [3]),
        ("negative", [2]), ("negative", [3]),
    ]


def test_the_agenda_order_is_the_naive_matchers() -> None:
    facts = [("B", {"n": 2}), ("A", {"n": 1}), ("A", {"n": 0}), ("B", {"n": 1})]
    wf = workflow_of(AGENDA)
    fast = Driver(wf).start(*facts)
    slow = Driver(wf, matcher=NaiveMatcher).start(*facts)
    assert fast.last.to_json() == slow.last.to_json()


def test_a_modified_fact_keeps_its_id_and_its_place_in_the_agenda() -> None:
    src = wrap("""
        fact A(int n, int k = 0)
        fact Go(int n)
        rule 'poke' with [salience: 9] {
            match { g: Go() }
            action { modify g { n = g.n } }
        }
        rule 'tick' with [salience: 9] {
            match {
                g: Go()
                a: A(k == 0)
            }
            action { modify a { k = 1 } }
        }
        rule 'see' {
            match { a: A() }
            action { log 'x' }
        }
    """)
    run = Driver(workflow_of(src)).start(("A", {"n": 1}), ("A", {"n": 2}), ("Go", {"n": 0}))
    # both A facts are modified (version 2) before 'see' runs: it takes them by id, oldest first
    assert run.fires()[-2:] == [("see", [1]), ("see", [2])]


# ── determinism ───────────────────────────────────────────────────────────────────────────────

BUSY = wrap("""
    fact Order(String id, Map lines, List tags = [])
    fact Line(String order, String sku, int qty)
    fact Report(String order, Map bySku, List uniq, String text)
    fact Quote(String order, def price)
    function def price(String sku, int qty)
    rule 'explode' {
        match { o: Order() }
        action {
            o.lines.each { sku, qty -> insert Line(order: o.id, sku: sku, qty: qty) }
        }
    }
    rule 'report' with [salience: -1] {
        match {
            o: Order()
            ls: collect Line(order == o.id)
            when ls.size() == o.lines.size()
        }
        action {
            def by = ls.groupBy { it.sku.substring(0, 1) }.collectEntries { k, v -> [k, v*.qty.sum()] }
            insert Report(order: o.id, bySku: by, uniq: (o.tags + ls*.sku).unique().sort(),
                          text: "${o.id}:${ls*.sku.join(',')}:${[b: 1, a: 2]}")
        }
    }
    rule 'quote' {
        match { l: Line(qty > 1) }
        action { [sku: l.sku, p: price(l.sku, l.qty)] }
        reaction { v -> insert Quote(order: l.order, price: v) }
    }
""")

BUSY_EVENTS: list[Any] = [
    Start([("Order", {"id": "o1", "lines": {"zeta": 2, "alpha": 1, "mid": 3}, "tags": ["z", "a"]}),
           ("Order", {"id": "o2", "lines": {"b": 5}})]),
    Result(2, {"eur": 1.5}), Result(1, [1, 2.0, "x"]),
    AddFacts([("Order", {"id": "o3", "lines": {"q": 4, "r": 1}})]),
    Result(3, None), Result(4, 7),
]


def _busy_run() -> str:
    run = Driver(workflow_of(BUSY))
    for event in BUSY_EVENTS:
        run.send(event)
    return deltas_json(run.deltas)


def test_the_same_facts_and_results_give_the_same_deltas() -> None:
    first, second = _busy_run(), _busy_run()
    assert first == second
    assert '"fire"' in first and '"Report"' in first and '"Quote"' in first


HASHSEED_SCRIPT = textwrap.dedent("""
    import sys
    sys.path.insert(0, sys.argv[1])
    import test_engine_semantics as t
    print(t._busy_run())
""")


def test_deltas_do_not_depend_on_the_hash_seed() -> None:
    outs = set()
    for seed in ("0", "1", "4242"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        done = subprocess.run([sys.executable, "-c", HASHSEED_SCRIPT, str(ROOT / "tests")],
                              cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        outs.add(done.stdout)
    assert len(outs) == 1
    assert outs.pop().strip() == _busy_run()


# ── quiescence ────────────────────────────────────────────────────────────────────────────────

CHAIN = wrap("""
    fact A(int n)
    fact B(int n)
    fact C(int n)
    function int f(int n)
    rule 'a to b' {
        match { a: A() }
        action { insert B(n: a.n) }
    }
    rule 'b to c' {
        match { b: B() }
        action { insert C(n: b.n) }
    }
    rule 'c calls' {
        match { c: C(n < 10) }
        action { f(c.n) }
        reaction { v -> insert A(n: v) }
        error { err -> insert A(n: 100 + err.attempts) }
    }
""")


def _quiet(run: Driver) -> None:
    """At quiescence nothing is left to fire: a rebuilt matcher under an identical (but new)
    workflow object finds no activation that has not fired."""
    state = WorkflowState.from_json(json.loads(state_json(run.state)))
    again = step(workflow_of(CHAIN), state, AddFacts([]))
    assert again.firings == 0, again.trace


def test_evaluation_runs_to_quiescence_after_every_change() -> None:
    run = Driver(workflow_of(CHAIN)).start(("A", {"n": 1}))
    assert run.rules_fired() == ["a to b", "b to c", "c calls"]
    _quiet(run)
    run.result(1, 11)  # a result
    assert [r for r, _ in run.fires()] == ["a to b", "b to c"]
    _quiet(run)
    run.add(("B", {"n": 2}))  # added facts
    assert [r for r, _ in run.fires()] == ["b to c", "c calls"]
    _quiet(run)
    run.failure(2, attempts=2)  # a failure
    assert [r for r, _ in run.fires()] == ["a to b", "b to c"]
    assert run.facts("C")[-1] == {"n": 102}
    _quiet(run)


# ── statuses ──────────────────────────────────────────────────────────────────────────────────

STATUS = wrap("""
    fact Job(int n)
    fact Done(int n)
    fact Stop(String why)
    fact Extra(int n)
    function int work(int n)
    rule 'work' {
        match { j: Job() }
        action { work(j.n) }
        reaction { v -> insert Done(n: v) }
    }
    rule 'finish' {
        match { d: Done() }
        action { complete(last: d.n) }
    }
    rule 'stop' with [salience: 100] {
        match { s: Stop() }
        action { fail "stopped: ${s.why}" }
    }
    rule 'extra' {
        match { e: Extra() }
        action { log "extra ${e.n}" }
    }
""")


def test_status_waiting_when_quiescent_with_nothing_open() -> None:
    run = Driver(workflow_of(STATUS)).start(("Extra", {"n": 1}))
    assert run.last.status == "waiting" and run.state.status == "waiting"


def test_status_running_while_invocations_are_open_then_completed() -> None:
    run = Driver(workflow_of(STATUS)).start(("Job", {"n": 1}))
    assert run.last.status == "running"
    assert events(run.last, "status") == [{"event": "status", "from": "waiting", "to": "running"}]
    run.result(1, 5)
    assert run.last.status == "completed" and run.last.output == {"last": 5}


def test_complete_with_invocations_open_stays_running_until_they_finish() -> None:
    run = Driver(workflow_of(STATUS)).start(("Job", {"n": 1}), ("Job", {"n": 2}))
    run.result(1, 5)
    assert run.last.status == "running" and run.state.output == {"last": 5}
    run.result(2, 6)
    assert run.last.status == "completed" and run.last.output == {"last": 6}  # a later complete wins


def test_a_completed_workflow_woken_by_new_facts_ends_completed_keeping_its_output() -> None:
    run = Driver(workflow_of(STATUS)).start(("Job", {"n": 1})).result(1, 5)
    run.add(("Extra", {"n": 1}))
    assert run.fires() == [("extra", [3])]
    assert run.last.status == "completed" and run.last.output == {"last": 5}
    run.add(("Job", {"n": 2}))  # wakes a rule that calls a function
    assert run.last.status == "running" and run.last.output == {"last": 5}
    run.result(2, 9)
    assert run.last.status == "completed" and run.last.output == {"last": 9}


def test_fail_fails_the_workflow_cancels_open_calls_and_nothing_fires_after() -> None:
    run = Driver(workflow_of(STATUS)).start(("Job", {"n": 1}), ("Job", {"n": 2}))
    run.add(("Stop", {"why": "enough"}), ("Extra", {"n": 1}))
    assert run.last.status == "failed"
    assert run.fires() == [("stop", [3])]  # 'extra' was ready but never fires
    assert sorted(run.last.cancelled) == [1, 2] and run.state.calls == {}
    err = run.last.error
    assert err is not None and err["type"] == "Failed" and err["message"] == "stopped: enough"
    assert err["rule"] == "stop" and err["section"] == "action"


def test_a_failed_workflow_is_terminal() -> None:
    run = Driver(workflow_of(STATUS)).start(("Job", {"n": 1}), ("Stop", {"why": "x"}))
    before = state_json(run.state)
    with pytest.raises(EngineError):
        run.add(("Extra", {"n": 1}))
    run.result(1, 5)  # a late result
    assert events(run.last, "ignored") and run.last.status == "failed"
    assert state_json(run.state) == before


def test_a_second_start_is_refused() -> None:
    run = Driver(workflow_of(STATUS)).start(("Extra", {"n": 1}))
    with pytest.raises(EngineError):
        run.start(("Extra", {"n": 2}))


# ── actions, invocations, reactions, errors ───────────────────────────────────────────────────

CALLS = wrap("""
    fact Job(int n, String tag = '')
    fact Got(def v, String tag = '')
    fact Err(String message, String type, def fn, int attempts, int n)
    fact Poke(int n)
    function String f(int n)
    function String g(int n) with [retries: 2, timeout: '5m', priority: 3, queue: 'gpu']
    rule 'fan' {
        match { j: Job(tag == 'fan') }
        action { [a: f(j.n), b: [g(j.n), f(j.n + 1)], c: 7] }
        reaction { v -> insert Got(v: v, tag: "${j.n}") }
        error { err ->
            insert Err(message: err.message, type: err.type, fn: err.function, attempts: err.attempts, n: j.n)
        }
    }
    rule 'plain' {
        match { j: Job(tag == 'plain') }
        action { [j.n, j.n * 2] }
        reaction { v -> insert Got(v: v, tag: 'plain') }
    }
    rule 'late view' {
        match { j: Job(tag == 'view') }
        action { f(j.n) }
        reaction { v -> insert Got(v: [v, j.n], tag: 'view') }
    }
    rule 'poke' {
        match {
            p: Poke()
            j: Job(tag == 'view')
        }
        action { modify j { n = p.n } }
    }
    rule 'bad action' {
        match { j: Job(tag == 'bad') }
        action {
            insert Got(v: 'partial', tag: 'bad')
            def x = 1.intdiv(j.n - j.n)
        }
        error { err ->
            insert Err(message: err.message, type: err.type, fn: err.function, attempts: err.attempts, n: j.n)
        }
    }
    rule 'bad no error' {
        match { j: Job(tag == 'crash') }
        action {
            insert Got(v: 'partial', tag: 'crash')
            def x = 1.intdiv(j.n - j.n)
        }
    }
    rule 'no error section' {
        match { j: Job(tag == 'nosec') }
        action { f(j.n) }
    }
""")


def _calls() -> Driver:
    return Driver(workflow_of(CALLS))


def test_calls_in_an_action_become_invocations_with_their_options() -> None:
    run = _calls().start(("Job", {"n": 1, "tag": "fan"}))
    invs = run.invocations()
    assert [(i["id"], i["kind"], i["name"], i["args"], i["rule"]) for i in invs] == [
        (1, "call", "f", [1], "fan"), (2, "call", "g", [1], "fan"), (3, "call", "f", [2], "fan")]
    assert invs[1]["options"]["retries"] == 2 and invs[1]["options"]["priority"] == 3
    assert invs[1]["options"]["queue"] == "gpu"
    assert run.last.status == "running" and run.open_calls() == [1, 2, 3]


def test_a_map_and_list_of_calls_give_a_map_and_list_of_results() -> None:
    run = _calls().start(("Job", {"n": 1, "tag": "fan"}))
    run.result(3, "z").result(1, "x")
    assert run.facts("Got") == [] and run.last.status == "running"
    run.result(2, "y")
    assert run.facts("Got") == [{"v": {"a": "x", "b": ["y", "z"], "c": 7}, "tag": "1"}]
    assert run.last.status == "waiting"


def test_an_action_calling_nothing_goes_straight_to_its_reaction() -> None:
    run = _calls().start(("Job", {"n": 3, "tag": "plain"}))
    assert run.invocations() == [] and run.last.status == "waiting"
    assert run.facts("Got") == [{"v": [3, 6], "tag": "plain"}]


def test_the_reaction_sees_the_bindings_as_they_were_at_firing() -> None:
    run = _calls().start(("Job", {"n": 1, "tag": "view"}))
    run.add(("Poke", {"n": 50}))
    assert run.facts("Job") == [{"n": 50, "tag": "view"}]
    run.result(1, "r")
    assert run.facts("Got") == [{"v": ["r", 1], "tag": "view"}]


def test_a_failure_closes_the_activation_cancels_the_others_and_runs_the_error_section() -> None:
    run = _calls().start(("Job", {"n": 4, "tag": "fan"}))
    run.result(1, "x").failure(2, "disk full", "IOError", attempts=3)
    assert run.last.cancelled == [3] and run.open_calls() == []
    assert run.facts("Err") == [{"message": "disk full", "type": "IOError", "fn": "g",
                                 "attempts": 3, "n": 4}]
    assert run.facts("Got") == [] and run.last.status == "waiting"
    assert events(run.last, "cancel") == [{"event": "cancel", "call": 3}]


def test_late_and_duplicate_results_are_ignored_and_change_nothing() -> None:
    run = _calls().start(("Job", {"n": 4, "tag": "fan"}))
    run.result(1, "x").failure(2)
    before = state_json(run.state)
    for event in (Result(3, "late"), Result(1, "again"), Failure(2, "again"), Result(99, "unknown")):
        delta = run.send(event)
        assert [e["event"] for e in delta.trace] == ["ignored"]
        assert delta.inserted == [] and delta.firings == 0
    assert state_json(run.state) == before


def test_an_action_that_raises_applies_nothing_and_runs_its_error_section() -> None:
    run = _calls().start(("Job", {"n": 2, "tag": "bad"}))
    assert run.facts("Got") == []  # the insert before the error is not applied
    assert run.facts("Err") == [{"message": "division by zero", "type": "ArithmeticError",
                                 "fn": None, "attempts": 0, "n": 2}]
    assert run.last.status == "waiting"


def test_an_action_that_raises_without_an_error_section_fails_the_workflow_with_its_position() -> None:
    run = _calls().start(("Job", {"n": 2, "tag": "crash"}))
    err = run.last.error
    assert run.last.status == "failed" and run.facts("Got") == []
    assert err is not None and err["rule"] == "bad no error" and err["section"] == "action"
    assert err["file"] == "rules.emx" and err["message"] == "division by zero"
    failing = line_of(CALLS, "def x = 1.intdiv(j.n - j.n)", after=line_of(CALLS, "rule 'bad no error'"))
    assert (err["line"], err["column"]) == (failing, 21)  # the call that raised


def test_a_failed_invocation_without_an_error_section_fails_the_workflow() -> None:
    run = _calls().start(("Job", {"n": 2, "tag": "nosec"}), ("Job", {"n": 3, "tag": "nosec"}))
    run.failure(1, "nope", "Boom", attempts=1)
    err = run.last.error
    assert run.last.status == "failed" and run.last.cancelled == [2]
    assert err is not None and err["rule"] == "no error section" and err["type"] == "Boom"
    assert "nope" in err["message"] and err["file"] == "rules.emx"
    assert (err["line"], err["column"]) == (line_of(CALLS, "rule 'no error section'"), 5)


def test_a_result_that_is_not_json_data_is_refused_and_changes_nothing() -> None:
    run = _calls().start(("Job", {"n": 1, "tag": "view"}))
    before = state_json(run.state)
    with pytest.raises(InputError):
        run.result(1, object())
    assert state_json(run.state) == before
    run.result(1, "fine")
    assert run.facts("Got") == [{"v": ["fine", 1], "tag": "view"}]


def test_a_result_that_is_not_a_finite_number_is_refused() -> None:
    run = _calls().start(("Job", {"n": 1, "tag": "view"}))
    before = state_json(run.state)
    with pytest.raises(InputError):
        run.result(1, float("nan"))
    assert state_json(run.state) == before


# ── values from the host ──────────────────────────────────────────────────────────────────────

HOST_VALUES = wrap("""
    fact A(List xs, Map m = [:])
    fact Got(def v)
    function def f(int n)
    rule 'pair' {
        match { a: A(xs.size() == 2) }
        action { [f(1), f(2)] }
        reaction { v -> insert Got(v: v) }
    }
""")


def test_start_facts_are_copied_so_the_host_may_change_its_objects_afterwards() -> None:
    xs, m = [1, 2], {"k": [1]}
    run = Driver(workflow_of(HOST_VALUES)).start(("A", {"xs": xs, "m": m}))
    xs.append(3)
    m["k"].append(2)
    m["z"] = 0
    assert run.facts("A") == [{"xs": [1, 2], "m": {"k": [1]}}]
    assert '"z"' not in state_json(run.state)
    run.add(("A", {"xs": [1, 2], "m": {"k": [1]}}))  # the set index still knows the stored value
    assert run.last.inserted == [] and run.fact_ids("A") == [1]
    run.add(("A", {"xs": xs, "m": m}))  # what the host's objects hold now is another fact
    assert run.fact_ids("A") == [1, 2]
    assert run.facts("A")[-1] == {"xs": [1, 2, 3], "m": {"k": [1, 2], "z": 0}}


def test_a_host_may_reuse_one_fields_object_for_several_added_facts() -> None:
    run = Driver(workflow_of(HOST_VALUES)).start()
    fields: dict[str, Any] = {"xs": [1]}
    run.add(("A", fields))
    fields["xs"].append(2)
    run.add(("A", fields))
    assert run.fires() == [("pair", [2])]
    fields["xs"] = ["gone"]
    fields["m"] = {"late": True}
    assert run.facts("A") == [{"xs": [1], "m": {}}, {"xs": [1, 2], "m": {}}]


def test_results_are_copied_so_the_host_may_change_them_afterwards() -> None:
    run = Driver(workflow_of(HOST_VALUES)).start(("A", {"xs": [1, 2]}))
    first: dict[str, Any] = {"a": [1, {"b": 2}]}
    run.result(1, first)
    first["a"][1]["b"] = 99  # while the activation still waits for call 2
    first["a"].append(3)
    second = [7]
    run.result(2, second)
    second.append(8)
    assert run.facts("Got") == [{"v": [{"a": [1, {"b": 2}]}, [7]]}]
    assert "99" not in state_json(run.state)
    # an equal value from a later activation is recognised as the same fact
    run.add(("A", {"xs": [3, 4]}))
    run.result(3, {"a": [1, {"b": 2}]}).result(4, [7])
    assert run.last.inserted == [] and run.fact_ids("Got") == [2]


def test_the_workflow_output_is_not_the_hosts_result_object() -> None:
    src = wrap("""
        fact Job(int n)
        function Map f(int n)
        rule 'job' {
            match { j: Job() }
            action { f(j.n) }
            reaction { v -> complete(got: v) }
        }
    """)
    value: dict[str, Any] = {"uri": "s3://x", "parts": [1]}
    run = Driver(workflow_of(src)).start(("Job", {"n": 1})).result(1, value)
    value["parts"].append(2)
    value["uri"] = "changed"
    assert run.state.output == {"got": {"uri": "s3://x", "parts": [1]}}


ARG_MUTATION = wrap("""
    fact A(List xs)
    fact Got(def v)
    function int f(List xs)
    rule 'sorted size' {
        match { a: A() }
        action { f(a.xs) }
        reaction { v -> insert Got(v: v) }
    }
""")


def test_a_function_that_changes_its_argument_changes_no_fact() -> None:
    def f(xs: list[int]) -> int:
        xs.sort()  # a function may do what it likes with its own arguments
        return len(xs)

    out = LocalRun(program_of(ARG_MUTATION), {"f": f}, sequential=True).run(
        "W", [{"type": "A", "fields": {"xs": [3, 1, 2]}}])
    assert out.status == "waiting", out.error
    assert {"type": "A", "fields": {"xs": [3, 1, 2]}} in out.facts


# ── not / exists / collect ────────────────────────────────────────────────────────────────────

CONDITIONS = wrap("""
    fact Job(int n)
    fact Block(int n, String tag = '')
    fact Item(String group, int w)
    fact Group(String name, int min = 0)
    fact Move(int from, int to)
    fact Drop(int n)
    fact Reweigh(String group, int w, int to)
    fact Out(String group, int w)
    rule 'move' with [salience: 10] {
        match {
            m: Move()
            b: Block(n == m.from)
        }
        action {
            modify b { n = m.to }
            retract m
        }
    }
    rule 'drop' with [salience: 10] {
        match {
            d: Drop()
            b: Block(n == d.n)
        }
        action {
            retract b
            retract d
        }
    }
    rule 'reweigh' with [salience: 10] {
        match {
            r: Reweigh()
            i: Item(group == r.group, w == r.w)
        }
        action {
            modify i { w = r.to }
            retract r
        }
    }
    rule 'out' with [salience: 10] {
        match {
            o: Out()
            i: Item(group == o.group, w == o.w)
        }
        action {
            retract i
            retract o
        }
    }
    rule 'blocker' with [salience: 5] {
        match { j: Job(n > 100) }
        action { insert Block(n: j.n) }
    }
    rule 'free' {
        match {
            j: Job()
            not Block(n == j.n)
        }
        action { log "free ${j.n}" }
    }
    rule 'held' {
        match {
            j: Job()
            exists Block(n == j.n)
        }
        action { log "held ${j.n}" }
    }
    rule 'members' {
        match {
            g: Group()
            items: collect Item(group == g.name)
            when items*.w.sum() >= g.min
        }
        action { log "${g.name}: ${items*.w}" }
    }
""")


def _conditions(matcher: type = Matcher) -> Driver:
    return Driver(workflow_of(CONDITIONS), matcher=matcher)


def _logs(run: Driver) -> list[str]:
    return [e["message"] for e in run.events("log")]


def test_a_not_is_blocked_by_an_insert_and_freed_by_a_modify_or_a_retract() -> None:
    run = _conditions().start(("Job", {"n": 1}), ("Block", {"n": 1}))
    assert run.fires() == [("held", [1])]  # Job 1 is blocked
    run.add(("Move", {"from": 1, "to": 2}))  # the modify frees Job 1
    assert run.fires() == [("move", [3, 2]), ("free", [1])]
    run.add(("Job", {"n": 2}))  # the moved Block blocks the new Job
    assert run.fires() == [("held", [4])]
    run.add(("Drop", {"n": 2}))  # the retract frees it
    assert run.fires() == [("drop", [5, 2]), ("free", [4])]
    assert run.facts("Block") == []


def test_a_blocking_fact_inserted_before_the_activation_fires_takes_it_off_the_agenda() -> None:
    run = _conditions().start(("Job", {"n": 7}), ("Job", {"n": 101}))
    # 'free' for Job 101 was on the agenda until 'blocker' (salience 5) inserted its Block
    assert run.fires() == [("blocker", [2]), ("free", [1]), ("held", [2])]


def test_exists_fires_once_however_many_facts_support_it() -> None:
    run = _conditions().start(("Job", {"n": 3}), ("Block", {"n": 3, "tag": "a"}),
                              ("Block", {"n": 3, "tag": "b"}))
    assert run.fires() == [("held", [1])]
    run.add(("Drop", {"n": 3}))  # one supporter goes: still exists, and no new activation
    assert [r for r, _ in run.fires()] == ["drop"] and len(run.facts("Block")) == 1
    run.add(("Job", {"n": 5}), ("Block", {"n": 6}))
    assert run.fires() == [("free", [5])]
    run.add(("Move", {"from": 6, "to": 5}))  # a modify that makes it exist
    assert run.fires() == [("move", [7, 6]), ("held", [5])]


def test_a_collect_list_is_in_fact_id_order_and_every_change_to_it_is_a_new_activation() -> None:
    run = _conditions().start(("Group", {"name": "g"}))
    assert run.fires() == [("members", [1])] and _logs(run) == ["g: []"]
    run.add(("Item", {"group": "g", "w": 3}))  # a new member
    assert _logs(run) == ["g: [3]"]
    run.add(("Item", {"group": "g", "w": 2}), ("Item", {"group": "h", "w": 9}))
    assert run.fires() == [("members", [1])] and _logs(run) == ["g: [3, 2]"]  # h is not a member
    run.add(("Reweigh", {"group": "g", "w": 3, "to": 1}))  # a member modified keeps its place
    assert _logs(run) == ["g: [1, 2]"]
    run.add(("Out", {"group": "g", "w": 2}))  # a member leaves
    assert _logs(run) == ["g: [1]"]
    run.add(("Item", {"group": "h", "w": 1}))  # another group's change touches nothing
    assert run.fires() == []
    keys = [k for k in run.state.to_json()["fired"] if k[0] == "members"]
    assert ["members", [[1, 1]], [[[2, 2], [3, 1]]]] in keys  # ids and versions, in id order
    assert len(keys) == 5


def test_a_guard_over_a_collect_list_follows_the_list() -> None:
    run = _conditions().start(("Group", {"name": "g", "min": 5}), ("Item", {"group": "g", "w": 3}))
    assert run.fires() == []  # 3 < 5
    run.add(("Item", {"group": "g", "w": 2}))
    assert _logs(run) == ["g: [3, 2]"]
    run.add(("Reweigh", {"group": "g", "w": 3, "to": 1}))  # 1 + 2 < 5: the guard is false again
    assert [r for r, _ in run.fires()] == ["reweigh"]
    run.add(("Item", {"group": "g", "w": 4}))
    assert _logs(run) == ["g: [1, 2, 4]"]
    run.add(("Out", {"group": "g", "w": 1}))  # 2 + 4 still passes, with another list
    assert _logs(run) == ["g: [2, 4]"]


CONDITION_EVENTS: list[Any] = [
    Start([("Job", {"n": 1}), ("Block", {"n": 1}), ("Group", {"name": "g", "min": 4}),
           ("Job", {"n": 101})]),
    AddFacts([("Move", {"from": 1, "to": 2}), ("Item", {"group": "g", "w": 3})]),
    AddFacts([("Job", {"n": 2}), ("Item", {"group": "g", "w": 2}),
              ("Block", {"n": 2, "tag": "x"})]),
    AddFacts([("Drop", {"n": 2}), ("Reweigh", {"group": "g", "w": 3, "to": 1})]),
    AddFacts([("Drop", {"n": 2}), ("Item", {"group": "g", "w": 5}), ("Group", {"name": "h"})]),
    AddFacts([("Out", {"group": "g", "w": 1}), ("Move", {"from": 101, "to": 1})]),
]


def test_not_exists_and_collect_agree_with_the_naive_matcher() -> None:
    fast, slow = _conditions(), _conditions(NaiveMatcher)
    for event in CONDITION_EVENTS:
        fast.send(event)
        slow.send(event)
    assert deltas_json(fast.deltas) == deltas_json(slow.deltas)
    assert state_json(fast.state) == state_json(slow.state)
    assert {"free", "held", "members", "move", "drop", "reweigh", "out", "blocker"} <= set(
        fast.rules_fired())


# ── child workflows ───────────────────────────────────────────────────────────────────────────

FAMILY = """package fam.ily

workflow Parent {
    fact Req(int n, String tag = '')
    fact Got(def v)
    fact Err(String message, String type, def fn, int attempts)
    function int f(int n)
    rule 'spawn' {
        match { r: Req(tag != 'both') }
        action { start fam.ily.Child(Seed(n: r.n), Seed(n: r.n + 1, labels: [r.tag])) }
        reaction { out -> insert Got(v: out) }
        error { err ->
            insert Err(message: err.message, type: err.type, fn: err.function, attempts: err.attempts)
        }
    }
    rule 'both' {
        match { r: Req(tag == 'both') }
        action { [child: start fam.ily.Child(Seed(n: r.n)), plain: f(r.n)] }
        reaction { v -> insert Got(v: v) }
    }
}

workflow Child {
    fact Seed(int n, List labels = [])
    rule 'sum' {
        match { all: collect Seed() }
        action { complete(total: all*.n.sum(), labels: all*.labels.flatten()) }
    }
}
"""


def _family() -> Program:
    return program_of(FAMILY)


def _run_child(program: Program, invocation: dict[str, Any]) -> Driver:
    """What a host does with a `start` invocation: a new workflow instance from its facts."""
    child = Driver(program.workflow(invocation["name"]))
    return child.start(*[(f["type"], f["fields"]) for f in invocation["facts"]])


def test_start_is_an_invocation_of_kind_start_with_the_full_name_and_the_facts() -> None:
    run = Driver(_family().workflow("Parent")).start(("Req", {"n": 4, "tag": "x"}))
    assert run.invocations() == [{
        "id": 1, "kind": "start", "name": "fam.ily.Child", "args": [], "options": {},
        "facts": [{"type": "Seed", "fields": {"n": 4}},
                  {"type": "Seed", "fields": {"n": 5, "labels": ["x"]}}],
        "rule": "spawn"}]
    assert run.last.status == "running" and run.open_calls() == [1]
    assert events(run.last, "invoke") == [
        {"event": "invoke", "rule": "spawn", "call": 1, "kind": "start", "name": "fam.ily.Child"}]


def test_the_childs_output_is_the_result_its_parents_reaction_receives() -> None:
    program = _family()
    run = Driver(program.workflow("Parent")).start(("Req", {"n": 4, "tag": "x"}))
    child = _run_child(program, run.invocations()[0])
    assert child.last.status == "completed"
    run.result(1, child.last.output)
    assert run.facts("Got") == [{"v": {"total": 9, "labels": ["x"]}}]
    assert run.last.status == "waiting"


def test_a_child_and_a_call_in_one_action_give_a_map_of_their_results() -> None:
    program = _family()
    run = Driver(program.workflow("Parent")).start(("Req", {"n": 2, "tag": "both"}))
    kinds = [(i["id"], i["kind"], i["name"]) for i in run.invocations()]
    assert kinds == [(1, "start", "fam.ily.Child"), (2, "call", "f")]
    run.result(2, 20)
    assert run.facts("Got") == []
    run.result(1, _run_child(program, run.invocations(run.deltas[0])[0]).last.output)
    assert run.facts("Got") == [{"v": {"child": {"total": 2, "labels": []}, "plain": 20}}]


def test_a_failed_child_reaches_the_error_section() -> None:
    run = Driver(_family().workflow("Parent")).start(("Req", {"n": 1}))
    run.failure(1, "the child failed: no seeds", "Failed", attempts=1)
    assert run.facts("Err") == [{"message": "the child failed: no seeds", "type": "Failed",
                                 "fn": "start fam.ily.Child", "attempts": 1}]
    assert run.facts("Got") == [] and run.last.status == "waiting"


# ── limits and bad input ──────────────────────────────────────────────────────────────────────

LIMITED = wrap("""
    fact Job(int n)
    fact Spin(int n)
    fact Loop(int n)
    fact Grow(int n)
    fact Big(int n)
    fact Blob(String s)
    fact Puff(String s = '')
    fact Keep(List xs = [], String s = '', int n = 0, double d = 0)
    function int f(int n)
    rule 'job' {
        match { j: Job() }
        action { f(j.n) }
    }
    rule 'spin' {
        match { s: Spin() }
        action {
            def i = 0
            for (x in 0..<1000000) {
                i += 1
            }
        }
    }
    rule 'loop' {
        match { l: Loop() }
        action { modify l { n = l.n + 1 } }
    }
    rule 'grow' {
        match { g: Grow() }
        action { insert Grow(n: g.n + 1) }
    }
    rule 'big' {
        match { b: Big() }
        action { insert Blob(s: 'x' * b.n) }
    }
    rule 'puff' {
        match { p: Puff(s == '') }
        action { modify p { s = 'x' * 500 } }
    }
""")
SMALL = Limits(steps=500, firings=20, facts=15, fact_bytes=200)


@pytest.mark.parametrize(("fact", "type_", "rule", "at"), [
    (("Spin", {"n": 0}), "StepLimit", "spin", "for (x in 0..<1000000)"),  # an infinite loop
    (("Loop", {"n": 0}), "FiringLimit", "loop", "rule 'loop'"),  # a rule that feeds itself
    (("Grow", {"n": 0}), "FactLimit", "grow", "rule 'grow'"),
    (("Big", {"n": 500}), "FactSizeLimit", "big", "rule 'big'"),  # an insert too big
    (("Puff", {}), "FactSizeLimit", "puff", "rule 'puff'"),  # a modify too big
])
def test_a_limit_fails_the_workflow_naming_the_rule_and_cancels_open_invocations(
        fact: tuple[str, dict[str, Any]], type_: str, rule: str, at: str) -> None:
    run = Driver(workflow_of(LIMITED), limits=SMALL).start(("Job", {"n": 1}), ("Job", {"n": 2}))
    run.add(fact)  # never raises: the workflow fails
    err = run.last.error
    assert run.last.status == "failed" and err is not None
    assert (err["type"], err["rule"], err["file"]) == (type_, rule, "rules.emx")
    line = line_of(LIMITED, at)
    assert (err["line"], err["column"]) == (line, LIMITED.splitlines()[line - 1].index(at) + 1)
    assert sorted(run.last.cancelled) == [1, 2]
    assert run.state.calls == {} and run.state.pending == {}
    assert events(run.last, "fail")[0]["type"] == type_
    with pytest.raises(EngineError):  # and it is over
        run.add(("Job", {"n": 3}))


def test_the_firing_limit_stops_a_self_feeding_rule_at_the_limit() -> None:
    run = Driver(workflow_of(LIMITED), limits=SMALL).start(("Loop", {"n": 0}))
    err = run.last.error
    assert run.rules_fired().count("loop") == 20 and run.facts("Loop") == [{"n": 20}]
    assert err is not None and "more than 20 firings" in err["message"]


def test_the_fact_limit_counts_live_facts() -> None:
    run = Driver(workflow_of(LIMITED), limits=SMALL).start(("Job", {"n": 1}), ("Grow", {"n": 0}))
    err = run.last.error
    assert len(run.state.facts) == 15 and err is not None and err["type"] == "FactLimit"


REACTION_LIMITS = wrap("""
    fact Job(int n)
    fact Blob(String s)
    function int f(int n)
    rule 'job' {
        match { j: Job() }
        action { f(j.n) }
        reaction { v ->
            if (v < 0) {
                for (x in 0..<1000000) { }
            }
            insert Blob(s: 'x' * v)
        }
    }
""")


@pytest.mark.parametrize(("value", "type_"), [
    (-1, "StepLimit"),
    (500, "FactSizeLimit"),
])
def test_a_limit_hit_in_a_reaction_names_the_reaction(value: int, type_: str) -> None:
    run = Driver(workflow_of(REACTION_LIMITS), limits=SMALL).start(("Job", {"n": 1}))
    run.result(1, value)
    err = run.last.error
    assert err is not None and (err["type"], err["rule"]) == (type_, "job")
    assert err["section"] == "reaction"


BAD_FACTS = [
    pytest.param(("Nope", {}), "no fact type 'Nope'", id="unknown type"),
    pytest.param(("Keep", {"zz": 1}), "no field 'zz'", id="unknown field"),
    pytest.param(("Keep", {"n": "one"}), "Keep.n is int", id="wrong type"),
    pytest.param(("Keep", {"n": True}), "Keep.n is int", id="boolean for int"),
    pytest.param(("Job", {}), "needs field(s) n", id="missing required field"),
    pytest.param(("Keep", {"s": "x" * 300}), "over the limit of 200", id="too big"),
    pytest.param(("Keep", {"d": float("inf")}), "not JSON data", id="non-finite"),
    pytest.param(("Keep", {"xs": [object()]}), "not JSON data", id="not data"),
    pytest.param({"fields": {}}, "expected", id="no type"),
]


@pytest.mark.parametrize(("bad", "says"), BAD_FACTS)
def test_bad_facts_from_outside_raise_and_change_nothing(bad: Any, says: str) -> None:
    wf = workflow_of(LIMITED)
    fresh = Driver(wf, limits=SMALL)
    before = state_json(fresh.state)
    with pytest.raises(InputError, match=re.escape(says)):
        fresh.start(("Keep", {"n": 1}), bad)
    assert state_json(fresh.state) == before
    run = Driver(wf, limits=SMALL).start(("Job", {"n": 1}))
    before = state_json(run.state)
    with pytest.raises(InputError, match=re.escape(says)):
        run.add(("Keep", {"n": 2}), bad)  # the good fact before it is not added either
    assert state_json(run.state) == before
    run.add(("Keep", {"n": 2}))  # and the workflow goes on
    assert run.facts("Keep") == [{"xs": [], "s": "", "n": 2, "d": 0}]


def test_more_facts_than_the_limit_allows_raise_and_change_nothing() -> None:
    wf = workflow_of(LIMITED)
    limits = Limits(facts=4)
    fresh = Driver(wf, limits=limits)
    with pytest.raises(InputError, match="more than 4 facts"):
        fresh.start(*[("Keep", {"n": n}) for n in range(5)])
    assert state_json(fresh.state) == state_json(WorkflowState.new(wf.name))
    run = Driver(wf, limits=limits).start(*[("Keep", {"n": n}) for n in range(3)])
    before = state_json(run.state)
    with pytest.raises(InputError, match="more than 4 facts"):
        run.add(("Keep", {"n": 10}), ("Keep", {"n": 11}))
    assert state_json(run.state) == before
    run.add(("Keep", {"n": 10}))
    assert len(run.state.facts) == 4


# ── match errors ──────────────────────────────────────────────────────────────────────────────

MATCH_ERRORS = wrap("""
    fact A(def xs, int n = 0)
    fact B(int n)
    fact Go(int n)
    fact Job(int n)
    function int f(int n)
    rule 'job' {
        match { j: Job() }
        action { f(j.n) }
    }
    rule 'alpha' {
        match { a: A(xs.size() > 1) }
        action { log "alpha ${a.n}" }
    }
    rule 'beta' {
        match {
            b: B()
            a: A(n == b.n, xs.size() > b.n)
        }
        action { log "beta ${a.n}" }
    }
    rule 'guard' {
        match {
            a: A()
            when a.xs.size() > 0
        }
        action { log "guard ${a.n}" }
    }
    rule 'waker' {
        match { b: B(n == 99) }
        action { insert Go(n: 1) }
    }
    rule 'runaway' {
        match {
            g: Go()
            when (0..<200000).every { it >= 0 }
        }
        action { log 'never' }
    }
""")
ERROR_FACTS = [("A", {"xs": [1, 2, 3], "n": 1}), ("A", {"xs": None, "n": 1}),
               ("A", {"xs": None, "n": 2}), ("B", {"n": 1})]


def _match_errors(delta: Delta) -> list[tuple[str, str]]:
    return sorted((e["rule"], e["message"]) for e in events(delta, "match_error"))


def test_a_test_or_guard_that_raises_makes_that_tuple_not_match_and_is_reported_once() -> None:
    run = Driver(workflow_of(MATCH_ERRORS)).start(*ERROR_FACTS)
    assert run.fires() == [("alpha", [1]), ("beta", [4, 1]), ("guard", [1])]
    # a constant test, a join's test and a guard: one event per rule for two failing facts
    assert _match_errors(run.last) == [("alpha", "null has no method 'size'"),
                                       ("beta", "null has no method 'size'"),
                                       ("guard", "null has no method 'size'")]
    at = {e["rule"]: e["at"] for e in events(run.last, "match_error")}
    assert at["alpha"] == [line_of(MATCH_ERRORS, "a: A(xs.size() > 1)"), 22]
    assert at["guard"][0] == line_of(MATCH_ERRORS, "when a.xs.size() > 0")
    assert run.last.status == "waiting" and run.last.error is None


def test_a_match_error_is_not_reported_again_by_later_steps() -> None:
    run = Driver(workflow_of(MATCH_ERRORS)).start(*ERROR_FACTS)
    run.add(("A", {"xs": [5, 6], "n": 3}))
    assert run.fires() == [("alpha", [5]), ("guard", [5])]
    assert events(run.last, "match_error") == []


def test_the_naive_matcher_agrees_on_match_errors() -> None:
    wf = workflow_of(MATCH_ERRORS)
    fast = Driver(wf).start(*ERROR_FACTS)
    slow = Driver(wf, matcher=NaiveMatcher).start(*ERROR_FACTS)
    assert fast.fires() == slow.fires()
    assert _match_errors(fast.last) == _match_errors(slow.last)
    assert fast.facts() == slow.facts()


def test_a_runaway_condition_fails_the_workflow_naming_its_own_rule() -> None:
    run = Driver(workflow_of(MATCH_ERRORS)).start(("Job", {"n": 1}))
    try:
        run.add(("B", {"n": 99}))  # 'waker' inserts the Go that wakes 'runaway'
    except LimitError:  # pragma: no cover - the failure is the workflow's, not the host's
        pytest.fail("step raised for a runaway condition")
    err = run.last.error
    assert run.last.status == "failed" and err is not None
    assert (err["type"], err["rule"], err["section"]) == ("StepLimit", "runaway", "match")
    assert (err["file"], err["line"]) == ("rules.emx", line_of(MATCH_ERRORS, "when (0..<200000)"))
    assert "a match condition used more than" in err["message"]
    assert run.last.cancelled == [1] and "never" not in str(run.last.trace)


RUNAWAY_BARE = wrap("""
    fact Job(int n)
    rule 'job' {
        match { j: Job() }
        action { log 'job' }
    }
    rule 'bare' {
        match { when (0..<200000).every { it >= 0 } }
        action { log 'never' }
    }
""")


def test_a_runaway_condition_without_positive_patterns_fails_the_workflow() -> None:
    run = Driver(workflow_of(RUNAWAY_BARE)).start(("Job", {"n": 1}))
    err = run.last.error
    assert run.last.status == "failed" and err is not None
    assert (err["type"], err["rule"], err["section"]) == ("StepLimit", "bare", "match")
    assert err["line"] == line_of(RUNAWAY_BARE, "match { when")
    assert "never" not in str(run.last.trace)


def test_a_new_version_with_a_runaway_condition_fails_the_workflow_it_wakes() -> None:
    run = Driver(workflow_of(RUNAWAY_BARE.replace("200000", "2"))).start(("Job", {"n": 1}))
    assert run.rules_fired() == ["job", "bare"]
    run.reevaluate(workflow_of(RUNAWAY_BARE.replace("rule 'bare'", "rule 'bare 2'"), version="2"))
    err = run.last.error
    assert run.last.status == "failed" and err is not None and err["rule"] == "bare 2"


RUNAWAY_ALPHA = wrap("""
    fact Kick(int n)
    fact Go(int n)
    rule 'kick' {
        match { k: Kick() }
        action { insert Go(n: k.n) }
    }
    rule 'slow' {
        match { g: Go((0..<200000).every { it >= 0 }) }
        action { log 'never' }
    }
""")


def test_a_runaway_constant_test_fails_the_workflow_naming_its_own_rule() -> None:
    run = Driver(workflow_of(RUNAWAY_ALPHA)).start(("Kick", {"n": 1}))
    err = run.last.error
    assert run.last.status == "failed" and err is not None
    assert (err["rule"], err["line"]) == ("slow", line_of(RUNAWAY_ALPHA, "g: Go((0..<200000)"))


def test_the_naive_matcher_also_fails_the_workflow_for_a_runaway_condition() -> None:
    run = Driver(workflow_of(MATCH_ERRORS), matcher=NaiveMatcher).start(("B", {"n": 99}))
    err = run.last.error
    assert run.last.status == "failed" and err is not None and err["rule"] == "runaway"


# ── always on ─────────────────────────────────────────────────────────────────────────────────

ALWAYS_V1 = wrap("""
    fact Job(int n)
    fact Done(int n)
    function int work(int n)
    rule 'small' {
        match { j: Job(n < 3) }
        action { log "small ${j.n}" }
    }
    rule 'work' {
        match { j: Job(n == 9) }
        action { work(j.n) }
        reaction { v -> insert Done(n: v) }
    }
    rule 'finish' {
        match { d: Done() }
        action { complete(last: d.n) }
    }
""")
# 'small' admits more tuples, 'work' is gone, and the test adds rules at EXTRA
ALWAYS_V2 = wrap("""
    fact Job(int n)
    fact Done(int n)
    function int work(int n)
    rule 'small' {
        match { j: Job(n < 5) }
        action { log "small ${j.n}" }
    }
    rule 'finish' {
        match { d: Done() }
        action { complete(last: d.n) }
    }
    EXTRA
""")
COUNT_RULE = """
    rule 'count' {
        match { js: collect Job() }
        action { log "count ${js.size()}" }
    }
"""


def _v2(extra: str = "") -> Workflow:
    return workflow_of(ALWAYS_V2.replace("EXTRA", extra), version="2")


def test_a_new_version_fires_only_the_activations_that_did_not_fire() -> None:
    run = Driver(workflow_of(ALWAYS_V1)).start(("Job", {"n": 1}), ("Job", {"n": 4}))
    assert run.fires() == [("small", [1])]
    run.reevaluate(_v2(COUNT_RULE))
    # 'small' admits Job 4 now; Job 1 fired under version 1 and does not fire again
    assert run.fires() == [("small", [2]), ("count", [])]
    assert events(run.last, "version") == [{"event": "version", "from": "1", "to": "2"}]
    assert run.state.version == "2" and run.last.status == "waiting"


def test_reevaluating_with_the_same_version_fires_nothing() -> None:
    run = Driver(workflow_of(ALWAYS_V1)).start(("Job", {"n": 1}), ("Job", {"n": 4}))
    run.reevaluate(_v2(COUNT_RULE))
    run.reevaluate(run.wf)
    assert run.last.trace == [] and run.last.firings == 0
    run.reevaluate(_v2(COUNT_RULE))  # the same version loaded again: a rebuilt matcher
    assert run.last.trace == [] and run.last.firings == 0


def test_a_rule_keeps_its_firings_across_versions_by_its_name() -> None:
    run = Driver(workflow_of(ALWAYS_V1)).start(("Job", {"n": 1}))
    run.reevaluate(workflow_of(ALWAYS_V1.replace("rule 'small'", "rule 'tiny'"), version="2"))
    assert run.fires() == [("tiny", [1])]  # a renamed rule is a new rule


def test_a_completed_workflow_woken_by_a_new_version_ends_completed_keeping_its_output() -> None:
    run = Driver(workflow_of(ALWAYS_V1)).start(("Done", {"n": 5}))
    assert run.last.status == "completed" and run.last.output == {"last": 5}
    run.reevaluate(_v2(COUNT_RULE))
    assert run.fires() == [("count", [])]
    assert run.last.status == "completed" and run.last.output == {"last": 5}
    assert events(run.last, "status") == []
    recount = """
    rule 'recount' {
        match { d: Done() }
        action { complete(last: d.n, again: true) }
    }
    """
    run.reevaluate(workflow_of(ALWAYS_V2.replace("EXTRA", recount), version="3"))
    assert run.fires() == [("recount", [1])]  # and not 'count' again
    assert run.last.status == "completed" and run.last.output == {"last": 5, "again": True}


def test_a_completed_workflow_woken_into_work_runs_then_ends_completed_again() -> None:
    run = Driver(workflow_of(ALWAYS_V1)).start(("Done", {"n": 5}), ("Job", {"n": 6}))
    late = """
    rule 'late work' {
        match { j: Job(n == 6) }
        action { work(j.n) }
    }
    """
    run.reevaluate(_v2(late))
    assert run.last.status == "running" and run.last.output == {"last": 5}
    run.result(1, 0)
    assert run.last.status == "completed" and run.last.output == {"last": 5}


def test_a_pending_activation_whose_rule_was_removed_is_dropped_when_its_result_arrives() -> None:
    run = Driver(workflow_of(ALWAYS_V1)).start(("Job", {"n": 9}))
    run.reevaluate(_v2())  # 'work' is not in version 2
    assert run.last.status == "running" and run.open_calls() == [1]
    run.result(1, 7)
    assert events(run.last, "dropped") == [
        {"event": "dropped", "rule": "work", "reason": "the rule is not in this bundle version"}]
    assert run.facts("Done") == [] and run.last.closed == [1] and run.last.status == "waiting"


def test_a_failure_for_a_removed_rule_is_dropped_too() -> None:
    run = Driver(workflow_of(ALWAYS_V1)).start(("Job", {"n": 9}))
    run.reevaluate(_v2())
    run.failure(1, "late")
    assert [e["event"] for e in run.last.trace if e["event"] in ("dropped", "fail")] == ["dropped"]
    assert run.last.status == "waiting" and run.last.error is None


def test_a_pending_activation_reacts_under_the_version_in_force_when_its_result_arrives() -> None:
    run = Driver(workflow_of(ALWAYS_V1)).start(("Job", {"n": 9}))
    run.reevaluate(workflow_of(ALWAYS_V1.replace("Done(n: v)", "Done(n: v * 10)"), version="2"))
    run.result(1, 4)
    assert run.facts("Done") == [{"n": 40}] and run.last.output == {"last": 40}


# ── state serialisation ───────────────────────────────────────────────────────────────────────

SERIAL = wrap("""
    fact Order(String id, int n)
    fact Line(String order, int qty)
    fact Priced(String order, List qtys, def price)
    function def price(List qtys)
    function def tax(String order)
    rule 'explode' {
        match { o: Order() }
        action {
            for (i in 1..o.n) {
                insert Line(order: o.id, qty: i)
            }
        }
    }
    rule 'price' {
        match {
            o: Order()
            ls: collect Line(order == o.id)
            when ls.size() == o.n
        }
        action { [p: price(ls*.qty), t: tax(o.id)] }
        reaction { v -> insert Priced(order: o.id, qtys: ls*.qty, price: v) }
        error { err -> log "no price for ${o.id}: ${err.message}" }
    }
    rule 'bump' {
        match {
            p: Priced()
            l: Line(order == p.order, qty == 1)
        }
        action { modify l { qty = 10 } }
    }
""")
SERIAL_EVENTS: list[Any] = [
    Start([("Order", {"id": "a", "n": 2}), ("Order", {"id": "b", "n": 1})]),
    Result(2, 0.2), Result(1, 10),  # a's reaction: Priced, 'bump', and 'price' again (calls 5, 6)
    AddFacts([("Order", {"id": "c", "n": 1})]),  # calls 7, 8
    Result(3, 5), Failure(4, "down"), Result(6, 0.1), Result(5, [1, {"x": None}]),
    Result(8, 0.3), Result(7, 3), Result(10, 0.0), Result(9, 1.5),
]


def _round_trip(state: WorkflowState) -> WorkflowState:
    return WorkflowState.from_json(json.loads(json.dumps(state.to_json())))


@pytest.mark.parametrize("cut", range(1, len(SERIAL_EVENTS)))
def test_a_state_saved_and_loaded_mid_run_continues_as_the_original(cut: int) -> None:
    original = Driver(workflow_of(SERIAL))
    for event in SERIAL_EVENTS[:cut]:
        original.send(event)
    # a host that restarts: the state from its JSON text, the bundle compiled again
    loaded = Driver(workflow_of(SERIAL), state=_round_trip(original.state))
    assert state_json(loaded.state) == state_json(original.state)
    done = len(original.deltas)
    for event in SERIAL_EVENTS[cut:]:
        original.send(event)
        loaded.send(event)
    assert deltas_json(loaded.deltas) == deltas_json(original.deltas[done:])
    assert state_json(loaded.state) == state_json(original.state)
    assert original.state.status == "waiting" and len(original.facts("Priced")) == 4


def test_the_saved_state_holds_pending_bindings_collect_lists_and_fired_keys() -> None:
    run = Driver(workflow_of(SERIAL))
    for event in SERIAL_EVENTS[:4]:
        run.send(event)
    doc = json.loads(json.dumps(run.state.to_json()))
    pending = {p["id"]: p for p in doc["pending"]}
    assert sorted(doc["calls"]) == [[3, 2], [4, 2], [5, 3], [6, 3], [7, 4], [8, 4]]
    ls = dict(pending[3]["bindings"]["$map"])["ls"]  # the collect list as it was at firing
    assert [f["$fact"][1]["$map"] for f in ls] == [[["order", "a"], ["qty", 10]],
                                                  [["order", "a"], ["qty", 2]]]
    assert pending[3]["value"] == {"$map": [["p", {"$call": [5, "price"]}],
                                            ["t", {"$call": [6, "tax"]}]]}
    assert ["price", [[1, 1]], [[[3, 1], [4, 1]]]] in doc["fired"]
    assert ["price", [[1, 1]], [[[3, 2], [4, 1]]]] in doc["fired"]
    assert WorkflowState.from_json(doc).to_json() == doc


def test_a_loaded_state_does_not_fire_again_what_fired_before_it_was_saved() -> None:
    run = Driver(workflow_of(SERIAL))
    for event in SERIAL_EVENTS[:4]:
        run.send(event)
    loaded = Driver(workflow_of(SERIAL), state=_round_trip(run.state))
    loaded.send(AddFacts([]))
    assert loaded.last.firings == 0 and loaded.last.invocations == []


# ── event batches ─────────────────────────────────────────────────────────────────────────────


def _one_by_one(wf: Workflow, events_: list[Any]) -> Driver:
    run = Driver(wf)
    for event in events_:
        run.send(event)
    return run


@pytest.mark.parametrize(("source", "events_"), [
    pytest.param(BUSY, BUSY_EVENTS, id="busy"),
    pytest.param(SERIAL, SERIAL_EVENTS, id="serial"),
    pytest.param(CONDITIONS, CONDITION_EVENTS, id="conditions"),
])
def test_a_batch_is_one_step_with_the_end_state_and_firings_of_its_events_one_by_one(
        source: str, events_: list[Any]) -> None:
    wf = workflow_of(source)
    apart = _one_by_one(wf, events_)
    together = Driver(wf)
    together.send(list(events_))
    assert len(together.deltas) == 1
    assert state_json(together.state) == state_json(apart.state)
    assert together.all_fires() == apart.all_fires()
    assert together.last.firings == sum(d.firings for d in apart.deltas)
    assert [i.to_json() for i in together.last.invocations] == [
        i.to_json() for d in apart.deltas for i in d.invocations]
    assert together.last.status == apart.last.status


def test_a_batch_after_a_start_equals_its_events_one_by_one() -> None:
    wf = workflow_of(SERIAL)
    apart = _one_by_one(wf, SERIAL_EVENTS)
    together = Driver(wf)
    together.send(SERIAL_EVENTS[0])
    together.send(SERIAL_EVENTS[1:6])
    together.send(SERIAL_EVENTS[6:])
    assert state_json(together.state) == state_json(apart.state)
    assert together.all_fires() == apart.all_fires()
    # one delta per batch, with the net changes by id of all its events
    first, second = together.deltas[1], together.deltas[2]
    assert [f.id for f in first.inserted] == [6, 7, 8]
    assert [(f.id, f.version) for f in first.modified] == [(3, 2)]
    assert [f.id for f in second.inserted] == [9, 10, 11]
    assert [(f.id, f.version) for f in second.modified] == [(8, 2)]
    assert sorted(first.closed + second.closed) == [1, 2, 3, 4, 5]


@pytest.mark.parametrize("where", [0, 1, 2])
@pytest.mark.parametrize("bad", [
    pytest.param(Result(9, float("nan")), id="non-finite result"),
    pytest.param(AddFacts([("Line", {"order": "z", "qty": 1}), ("Nope", {})]), id="unknown fact"),
    pytest.param(AddFacts([("Line", {"order": "z"})]), id="missing field"),
    pytest.param(Start([]), id="second start"),
])
def test_a_bad_event_anywhere_in_a_batch_raises_and_changes_nothing(where: int, bad: Any) -> None:
    run = Driver(workflow_of(SERIAL))
    for event in SERIAL_EVENTS[:4]:
        run.send(event)
    before = state_json(run.state)
    batch = [Result(3, 5), AddFacts([("Order", {"id": "d", "n": 1})])]
    batch.insert(where, bad)
    with pytest.raises(EngineError):
        run.send(batch)
    assert state_json(run.state) == before
    run.send(batch[:where] + batch[where + 1:])  # the good events alone go through
    assert run.facts("Order")[-1] == {"id": "d", "n": 1}


def test_start_can_only_be_the_first_event_of_a_batch() -> None:
    wf = workflow_of(STATUS)
    state = WorkflowState.new(wf.name)
    with pytest.raises(EngineError, match="first"):
        step(wf, state, [AddFacts([("Extra", {"n": 1})]), Start([("Extra", {"n": 2})])])
    assert state_json(state) == state_json(WorkflowState.new(wf.name))
    delta = step(wf, state, [Start([("Extra", {"n": 1})]), AddFacts([("Extra", {"n": 2})])])
    assert fires(delta) == [("extra", [1]), ("extra", [2])]


def test_a_batch_cannot_start_a_workflow_twice() -> None:
    wf = workflow_of(STATUS)
    state = WorkflowState.new(wf.name)
    with pytest.raises(EngineError):
        step(wf, state, [Start([("Extra", {"n": 1})]), Start([("Extra", {"n": 2})])])


def test_events_after_the_workflow_failed_within_a_batch_are_ignored() -> None:
    run = Driver(workflow_of(STATUS)).start(("Job", {"n": 1}))
    run.send([AddFacts([("Stop", {"why": "enough"})]), AddFacts([("Extra", {"n": 1})]),
              Result(1, 5)])
    assert run.last.status == "failed" and run.last.cancelled == [1]
    assert run.fires() == [("stop", [2])] and run.facts("Extra") == [] and run.facts("Done") == []
    ignored = events(run.last, "ignored")
    assert [e.get("reason") for e in ignored] == ["facts for a workflow that has failed",
                                                  "the workflow has failed"]
    assert ignored[1]["call"] == 1


def test_the_firing_limit_in_a_batch_counts_each_event_as_its_own_evaluation() -> None:
    wf = workflow_of(CHAIN)
    adds = [AddFacts([("A", {"n": 20})]), AddFacts([("A", {"n": 21})])]  # 2 firings each
    limits = Limits(firings=3)
    apart = Driver(wf, limits=limits).start()
    for event in adds:
        apart.send(event)
    assert apart.last.status == "waiting"
    together = Driver(wf, limits=limits).start()
    together.send(adds)
    assert together.last.status == "waiting", together.last.error
    # and within one event of a batch it still applies
    over = Driver(wf, limits=limits).start()
    over.send([AddFacts([("A", {"n": 30})]), AddFacts([("A", {"n": 31}), ("A", {"n": 32})])])
    err = over.last.error
    assert over.last.status == "failed" and err is not None and err["type"] == "FiringLimit"
    assert over.facts("C") == [{"n": 30}, {"n": 31}]  # the first event's evaluation finished


# ── the media-encoding tenant ─────────────────────────────────────────────────────────────────


def _media() -> Program:
    result = build(ROOT / "tenants" / "media-encoding", cache_dir=False)
    assert result.ir is not None
    return Program.from_ir(result.ir, version="1.0.0")


MEDIA_FUNCTIONS = {
    "split": lambda source, n: [f"{source}/c{i}" for i in range(n)],
    "encode": lambda uri, recipe: f"{uri}.{recipe}",
    "assemble": lambda parts: "whole:" + ",".join(parts),
    "index": lambda uri: {"length": len(uri)},
    "grab": lambda source, second: f"{source}@{second}",
}
REQUEST = [{"type": "Request", "fields": {"source": "s3://in/m", "recipe": "h264", "chunks": 3}}]


def test_the_media_tenant_runs_to_completed() -> None:
    out = LocalRun(_media(), MEDIA_FUNCTIONS, sequential=True).run("VideoEncode", REQUEST)
    assert out.status == "completed", out.error
    whole = "whole:" + ",".join(f"s3://in/m/c{i}.h264" for i in range(3))
    assert out.output == {"uri": whole, "index": {"length": len(whole)}}
    assert out.fired == ["split source", "thumbnail", "encode chunk", "encode chunk",
                         "encode chunk", "assemble", "index", "done"]
    assert {"type": "Thumbnailed", "fields": {"uri": "s3://in/m@5"}} in out.facts


def test_the_media_tenant_gives_up_after_an_encode_fails_its_retries() -> None:
    tries: list[str] = []

    def encode(uri: str, recipe: str) -> str:
        tries.append(uri)
        if uri.endswith("c1"):
            raise RuntimeError("disk full")
        return f"{uri}.{recipe}"

    out = LocalRun(_media(), {**MEDIA_FUNCTIONS, "encode": encode}, sequential=True).run(
        "VideoEncode", REQUEST)
    assert out.status == "failed" and out.output is None
    assert tries.count("s3://in/m/c1") == 4  # retries: 3 allows 4 attempts
    assert out.error is not None and out.error["rule"] == "give up"
    assert out.error["message"] == "encode failed: chunk 1: disk full (after 4 attempts)"
    assert out.fired[-1] == "give up" and "assemble" not in out.fired
    assert {"type": "Failed", "fields": {"step": "encode",
                                          "reason": "chunk 1: disk full (after 4 attempts)"}} in out.facts


SHARED_ALPHA = wrap("""
    fact A(int n)
    rule 'first' {
        match { a: A(10.intdiv(n) > 1) }
        action { log "first" }
    }
    rule 'second' {
        match { a: A(10.intdiv(n) > 1) }
        action { log "second" }
    }
""")


@pytest.mark.parametrize("matcher", [Matcher, NaiveMatcher])
def test_a_constant_test_shared_by_two_rules_reports_both(matcher: type) -> None:
    run = Driver(workflow_of(SHARED_ALPHA), matcher=matcher).start(("A", {"n": 0}), ("A", {"n": 2}))
    errors = [e for e in run.last.trace if e["event"] == "match_error"]
    assert sorted(e["rule"] for e in errors) == ["first", "second"]
    assert fires(run.last) == [("first", [2]), ("second", [2])]  # A(n: 2) matches both
