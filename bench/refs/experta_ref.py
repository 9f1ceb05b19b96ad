"""The two workloads on experta (a RETE engine in pure Python, CLIPS-style).

Written as experta's documentation shows: a KnowledgeEngine subclass, Fact subclasses, rules with
MATCH bindings, NOT, TEST and salience; a "modify" is experta's `modify` (retract and declare).
Firings are counted by each rule's action (one per action run).
"""

from __future__ import annotations

import time
from typing import Any

from experta import AS, MATCH, NOT, TEST, Fact, KnowledgeEngine, Rule

from inputs import STEPS, fact, work
from result import Run

Facts = list[dict[str, Any]]


class Job(Fact):
    """Job(key)"""


class Step(Fact):
    """Step(key, n, value)"""


class Guest(Fact):
    """Guest(name, sex, hobby): one fact per hobby of a guest."""


class LastSeat(Fact):
    """LastSeat(seat)"""


class Context(Fact):
    """Context(state, current): the phase, and the id of the seating being worked on."""


class Count(Fact):
    """Count(c): the next seating id."""


class Seating(Fact):
    """Seating(seatingId, parentId, pathDone, leftSeat, leftGuestName, rightSeat, rightGuestName)"""


class Path(Fact):
    """Path(seatingId, seat, guestName)"""


class Chosen(Fact):
    """Chosen(seatingId, guestName, hobby)"""


TYPES = {t.__name__: t for t in (Job, Step, Guest, LastSeat, Context, Count, Seating, Path, Chosen)}


def _step_rule(n: int) -> Rule:
    """Rule sN (N >= 2): the step after N-1, once per job."""

    @Rule(
        Job(key=MATCH.key),
        Step(key=MATCH.key, n=n - 1, value=MATCH.value),
        NOT(Step(key=MATCH.key, n=n)),
    )
    def step(self: ChainEngine, key: int, value: int) -> None:
        self.firings += 1
        self.declare(Step(key=key, n=n, value=work(key, n) + value))

    return step


class ChainEngine(KnowledgeEngine):
    """s1..s5 of bench/workloads/chain.emx."""

    firings = 0

    @Rule(Job(key=MATCH.key), NOT(Step(key=MATCH.key, n=1)))
    def s1(self, key: int) -> None:
        self.firings += 1
        self.declare(Step(key=key, n=1, value=work(key, 1)))

    s2, s3, s4, s5 = (_step_rule(n) for n in range(2, STEPS + 1))


class MannersEngine(KnowledgeEngine):
    """The rules of bench/workloads/manners.emx, with its saliences."""

    firings = 0

    @Rule(AS.ctx << Context(state="start"), AS.g << Guest(), AS.cnt << Count())
    def assign_first_seat(self, ctx: Context, g: Guest, cnt: Count) -> None:
        self.firings += 1
        c, name = cnt["c"], g["name"]
        self.declare(Seating(seatingId=c, parentId=0, pathDone=True, leftSeat=1,
                             leftGuestName=name, rightSeat=1, rightGuestName=name))
        self.declare(Path(seatingId=c, seat=1, guestName=name))
        self.modify(ctx, state="assign_seats", current=c)
        self.modify(cnt, c=c + 1)

    @Rule(
        AS.ctx << Context(state="assign_seats", current=MATCH.sid),
        AS.s << Seating(seatingId=MATCH.sid, pathDone=True, rightGuestName=MATCH.rname),
        Guest(name=MATCH.rname, sex=MATCH.sex1, hobby=MATCH.hobby),
        Guest(name=MATCH.g2name, sex=MATCH.sex2, hobby=MATCH.hobby),
        TEST(lambda sex1, sex2: sex1 != sex2),
        AS.cnt << Count(),
        NOT(Path(seatingId=MATCH.sid, guestName=MATCH.g2name)),
        NOT(Chosen(seatingId=MATCH.sid, guestName=MATCH.g2name, hobby=MATCH.hobby)),
    )
    def find_seating(self, ctx: Context, s: Seating, cnt: Count, sid: int, g2name: str,
                     hobby: str) -> None:
        self.firings += 1
        c, seat = cnt["c"], s["rightSeat"] + 1
        self.declare(Seating(seatingId=c, parentId=sid, pathDone=False, leftSeat=s["rightSeat"],
                             leftGuestName=s["rightGuestName"], rightSeat=seat,
                             rightGuestName=g2name))
        self.declare(Path(seatingId=c, seat=seat, guestName=g2name))
        self.declare(Chosen(seatingId=sid, guestName=g2name, hobby=hobby))
        self.modify(ctx, state="make_path", current=c)
        self.modify(cnt, c=c + 1)

    @Rule(
        Context(state="make_path", current=MATCH.sid),
        Seating(seatingId=MATCH.sid, pathDone=False, parentId=MATCH.pid),
        Path(seatingId=MATCH.pid, seat=MATCH.seat, guestName=MATCH.name),
        NOT(Path(seatingId=MATCH.sid, guestName=MATCH.name)),
        salience=10,
    )
    def make_path(self, sid: int, seat: int, name: str) -> None:
        self.firings += 1
        self.declare(Path(seatingId=sid, seat=seat, guestName=name))

    @Rule(
        AS.ctx << Context(state="make_path", current=MATCH.sid),
        AS.s << Seating(seatingId=MATCH.sid, pathDone=False),
    )
    def path_done(self, ctx: Context, s: Seating) -> None:
        self.firings += 1
        self.modify(s, pathDone=True)
        self.modify(ctx, state="check_done")

    @Rule(
        AS.ctx << Context(state="check_done", current=MATCH.sid),
        LastSeat(seat=MATCH.last),
        Seating(seatingId=MATCH.sid, rightSeat=MATCH.last),
        salience=10,
    )
    def are_we_done(self, ctx: Context) -> None:
        self.firings += 1
        self.modify(ctx, state="print_results")

    @Rule(AS.ctx << Context(state="check_done"))
    def continue_(self, ctx: Context) -> None:
        self.firings += 1
        self.modify(ctx, state="assign_seats")

    @Rule(AS.ctx << Context(state="print_results"), LastSeat())
    def all_done(self, ctx: Context) -> None:
        self.firings += 1
        self.modify(ctx, state="done")


def _run(engine: KnowledgeEngine, initial: Facts) -> Run:
    engine.reset()
    declared = [TYPES[f["type"]](**f["fields"]) for f in initial]
    start = time.perf_counter()
    engine.declare(*declared)
    engine.run()
    seconds = time.perf_counter() - start
    facts = [fact(type(f).__name__, **dict(f.as_dict())) for f in engine.facts.values()
             if type(f).__name__ in TYPES]
    return Run(facts, engine.firings, seconds)


def chain(initial: Facts) -> Run:
    return _run(ChainEngine(), initial)


def manners(initial: Facts) -> Run:
    return _run(MannersEngine(), initial)
