"""The two workloads on durable_rules (a RETE engine in C with Python actions).

Written as durable_rules' documentation shows: a `ruleset` of `when_all` rules over facts told
apart by a `t` field, `c.name << pattern` bindings, `none(...)` for negation, `pri(n)` for
priority (the lower fires first) and `assert_facts` to start; a "modify" retracts the fact and
asserts its new version, as durable_rules' own Miss Manners test does. durable_rules keeps its
facts per ruleset name in the process, so every run defines a ruleset with a fresh name.
Firings are counted by each rule's action (one per action run: no `count(n)` batching).

Names: `c.m` and `c.s` are durable_rules' own (the message, the session state), so bindings use
other names; `id` and `sid` are its own fact fields, so the facts do not use them.
"""

from __future__ import annotations

import itertools
import os
import time
from typing import Any, Callable

from durable.lang import assert_facts, c, get_facts, get_host, get_state, m, none, pri, ruleset, when_all

from inputs import STEPS, work
from result import Run

Facts = list[dict[str, Any]]
_names = itertools.count()
# pri(n): the lower fires first; 0 is the default. Emirax's salience 10 over 0 becomes 0 over
# LATER (a negative pri does not order reliably in durable_rules 2.0.28).
LATER = 10


class Counter:
    """Firings, counted by the actions."""

    def __init__(self) -> None:
        self.n = 0


def _fresh_name(workload: str) -> str:
    return f"bench_{workload}_{os.getpid()}_{next(_names)}"


def _define_chain(name: str, fired: Counter) -> None:
    with ruleset(name):

        @when_all(c.job << (m.t == "Job"), none((m.t == "Step") & (m.key == c.job.key) & (m.n == 1)))
        def s1(ctx: Any) -> None:
            fired.n += 1
            ctx.assert_fact({"t": "Step", "key": ctx.job.key, "n": 1, "value": work(ctx.job.key, 1)})

        for n in range(2, STEPS + 1):
            when_all(
                c.job << (m.t == "Job"),
                c.prev << ((m.t == "Step") & (m.key == c.job.key) & (m.n == n - 1)),
                none((m.t == "Step") & (m.key == c.job.key) & (m.n == n)),
            )(_step_action(n, fired))


def _step_action(n: int, fired: Counter) -> Callable[[Any], None]:
    """The action of rule sN (N >= 2)."""

    def step(ctx: Any) -> None:
        fired.n += 1
        key = ctx.job.key
        ctx.assert_fact({"t": "Step", "key": key, "n": n, "value": work(key, n) + ctx.prev.value})

    return step


def _modify(ctx: Any, old: Any, **changes: Any) -> None:
    """Retract a fact and assert its new version."""
    new = {k: v for k, v in _fields(old).items()}
    new.update(changes)
    ctx.retract_fact(old)
    ctx.assert_fact(new)


def _fields(f: Any) -> dict[str, Any]:
    """A matched fact's own fields (durable_rules adds `sid`)."""
    return {k: v for k, v in f.items() if k != "sid"}


def _define_manners(name: str, fired: Counter) -> None:
    with ruleset(name):

        @when_all(c.ctx << ((m.t == "Context") & (m.state == "start")),
                  c.g << (m.t == "Guest"),
                  c.cnt << (m.t == "Count"))
        def assign_first_seat(ctx: Any) -> None:
            fired.n += 1
            n, name = ctx.cnt.c, ctx.g.name
            ctx.assert_fact({"t": "Seating", "seatingId": n, "parentId": 0, "pathDone": True,
                             "leftSeat": 1, "leftGuestName": name, "rightSeat": 1,
                             "rightGuestName": name})
            ctx.assert_fact({"t": "Path", "seatingId": n, "seat": 1, "guestName": name})
            _modify(ctx, ctx.ctx, state="assign_seats", current=n)
            _modify(ctx, ctx.cnt, c=n + 1)

        @when_all(c.ctx << ((m.t == "Context") & (m.state == "assign_seats")),
                  c.seating << ((m.t == "Seating") & (m.seatingId == c.ctx.current)
                                & (m.pathDone == True)),  # noqa: E712  (a durable_rules expression)
                  c.g1 << ((m.t == "Guest") & (m.name == c.seating.rightGuestName)),
                  c.g2 << ((m.t == "Guest") & (m.sex != c.g1.sex) & (m.hobby == c.g1.hobby)),
                  c.cnt << (m.t == "Count"),
                  none((m.t == "Path") & (m.seatingId == c.seating.seatingId)
                       & (m.guestName == c.g2.name)),
                  none((m.t == "Chosen") & (m.seatingId == c.seating.seatingId)
                       & (m.guestName == c.g2.name) & (m.hobby == c.g1.hobby)))
        def find_seating(ctx: Any) -> None:
            fired.n += 1
            n, s, g2 = ctx.cnt.c, ctx.seating, ctx.g2.name
            ctx.assert_fact({"t": "Seating", "seatingId": n, "parentId": s.seatingId,
                             "pathDone": False, "leftSeat": s.rightSeat,
                             "leftGuestName": s.rightGuestName, "rightSeat": s.rightSeat + 1,
                             "rightGuestName": g2})
            ctx.assert_fact({"t": "Path", "seatingId": n, "seat": s.rightSeat + 1, "guestName": g2})
            ctx.assert_fact({"t": "Chosen", "seatingId": s.seatingId, "guestName": g2,
                             "hobby": ctx.g1.hobby})
            _modify(ctx, ctx.ctx, state="make_path", current=n)
            _modify(ctx, ctx.cnt, c=n + 1)

        @when_all(c.ctx << ((m.t == "Context") & (m.state == "make_path")),
                  c.seating << ((m.t == "Seating") & (m.seatingId == c.ctx.current)
                                & (m.pathDone == False)),  # noqa: E712
                  c.path << ((m.t == "Path") & (m.seatingId == c.seating.parentId)),
                  none((m.t == "Path") & (m.seatingId == c.seating.seatingId)
                       & (m.guestName == c.path.guestName)))
        def make_path(ctx: Any) -> None:
            fired.n += 1
            ctx.assert_fact({"t": "Path", "seatingId": ctx.seating.seatingId,
                             "seat": ctx.path.seat, "guestName": ctx.path.guestName})

        @when_all(pri(LATER),
                  c.ctx << ((m.t == "Context") & (m.state == "make_path")),
                  c.seating << ((m.t == "Seating") & (m.seatingId == c.ctx.current)
                                & (m.pathDone == False)))  # noqa: E712
        def path_done(ctx: Any) -> None:
            fired.n += 1
            _modify(ctx, ctx.seating, pathDone=True)
            _modify(ctx, ctx.ctx, state="check_done")

        @when_all(c.ctx << ((m.t == "Context") & (m.state == "check_done")),
                  c.last << (m.t == "LastSeat"),
                  (m.t == "Seating") & (m.seatingId == c.ctx.current) & (m.rightSeat == c.last.seat))
        def are_we_done(ctx: Any) -> None:
            fired.n += 1
            _modify(ctx, ctx.ctx, state="print_results")

        @when_all(pri(LATER), c.ctx << ((m.t == "Context") & (m.state == "check_done")))
        def continue_(ctx: Any) -> None:
            fired.n += 1
            _modify(ctx, ctx.ctx, state="assign_seats")

        # durable_rules refuses a fact that no rule mentions (MessageNotHandledException), and
        # Context(state: 'done') ends the run: the `none` names it and never blocks anything.
        @when_all(c.ctx << ((m.t == "Context") & (m.state == "print_results")),
                  c.last << (m.t == "LastSeat"),
                  none((m.t == "Context") & (m.state == "done")))
        def all_done(ctx: Any) -> None:
            fired.n += 1
            _modify(ctx, ctx.ctx, state="done")


def _run(workload: str, define: Callable[[str, Counter], None], initial: Facts) -> Run:
    name, fired = _fresh_name(workload), Counter()
    define(name, fired)
    get_host()  # registers the ruleset: building it is setup, not the run
    facts = [{"t": f["type"], **f["fields"]} for f in initial]
    start = time.perf_counter()
    assert_facts(name, facts)  # the actions run inside this call, to quiescence
    seconds = time.perf_counter() - start
    error = get_state(name).get("exception")
    if error:  # durable_rules records an action's exception in the state instead of raising it
        raise RuntimeError(f"durable_rules action failed: {error.split(', traceback')[0]}")
    out = [{"type": f["t"], "fields": {k: v for k, v in f.items() if k not in ("t", "sid")}}
           for f in get_facts(name)]
    return Run(out, fired.n, seconds)


def chain(initial: Facts) -> Run:
    return _run("chain", _define_chain, initial)


def manners(initial: Facts) -> Run:
    return _run("manners", _define_manners, initial)
