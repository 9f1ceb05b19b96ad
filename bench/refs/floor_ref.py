"""The physical floor of the engine benchmark: both workloads as plain Python loops and dicts.

No engine, no matching: the same logic as the rules, done directly, making the same facts. It is
the least a Python program can spend on the work, the reference the engines are divided by.

Firings are counted as the rules' logical steps, one per firing the rules would make:
chain, one per Step made (5 per job); manners, assign_first_seat 1, find_seating G-1,
make_path G(G-1)/2 (one per Path copied from the parent seating), path_done G-1,
continue G-2, are_we_done 1, all_done 1.
"""

from __future__ import annotations

import time
from collections import defaultdict
from typing import Any

from inputs import STEPS, fact, work
from result import Run

Fact = dict[str, Any]


def chain(initial: list[Fact]) -> Run:
    """Each job's five steps, in the rules' order: step n exists only once, from step n-1."""
    keys = [f["fields"]["key"] for f in initial]
    start = time.perf_counter()
    steps: dict[tuple[int, int], int] = {}
    firings = 0
    for key in keys:
        value = 0
        for n in range(1, STEPS + 1):
            if (key, n) not in steps:  # the rule's `not Step(key == j.key, n == N)`
                value = steps[(key, n)] = work(key, n) + value
                firings += 1
    seconds = time.perf_counter() - start
    facts = list(initial) + [fact("Step", key=k, n=n, value=v) for (k, n), v in steps.items()]
    return Run(facts, firings, seconds)


class _Table:
    """The seating search's working state: what the manners rules keep in facts."""

    def __init__(self, guests: list[dict[str, Any]]) -> None:
        self.hobbies: dict[str, list[tuple[str, str]]] = defaultdict(list)  # name -> [(sex, hobby)]
        self.by_hobby: dict[str, list[tuple[str, str]]] = defaultdict(list)  # hobby -> [(name, sex)]
        for g in guests:
            self.hobbies[g["name"]].append((g["sex"], g["hobby"]))
            self.by_hobby[g["hobby"]].append((g["name"], g["sex"]))
        self.seatings: dict[int, dict[str, Any]] = {}
        self.paths: dict[int, dict[str, int]] = {}  # seating id -> guest name -> seat
        self.chosen: set[tuple[int, str, str]] = set()
        self.count = 1
        self.firings = 0

    def first_seat(self, name: str) -> int:
        """assign_first_seat: the first guest takes seat 1."""
        sid = self._new_seating(0, True, 1, name, 1, name)
        self.paths[sid] = {name: 1}
        self.firings += 1
        return sid

    def find_seating(self, current: int) -> int:
        """find_seating: a guest of the other sex sharing a hobby with the right-hand guest, not
        yet in this seating's path and not chosen here before for that hobby."""
        s = self.seatings[current]
        path = self.paths[current]
        for sex, hobby in self.hobbies[s["rightGuestName"]]:
            for name, other in self.by_hobby[hobby]:
                if other != sex and name not in path and (current, name, hobby) not in self.chosen:
                    seat = s["rightSeat"] + 1
                    sid = self._new_seating(current, False, s["rightSeat"], s["rightGuestName"], seat, name)
                    self.paths[sid] = {name: seat}
                    self.chosen.add((current, name, hobby))
                    self.firings += 1
                    return sid
        raise AssertionError(f"manners floor: seating {current} cannot be extended")

    def make_path(self, sid: int) -> None:
        """make_path, once per seat of the parent; then path_done."""
        path = self.paths[sid]
        for name, seat in self.paths[self.seatings[sid]["parentId"]].items():
            if name not in path:
                path[name] = seat
                self.firings += 1
        self.seatings[sid]["pathDone"] = True
        self.firings += 1

    def _new_seating(self, parent: int, done: bool, lseat: int, lname: str, rseat: int, rname: str) -> int:
        sid, self.count = self.count, self.count + 1
        self.seatings[sid] = {
            "seatingId": sid, "parentId": parent, "pathDone": done, "leftSeat": lseat,
            "leftGuestName": lname, "rightSeat": rseat, "rightGuestName": rname,
        }
        return sid


def manners(initial: list[Fact]) -> Run:
    """The seating search of the manners rules, step for step, without the rules."""
    guests = [f["fields"] for f in initial if f["type"] == "Guest"]
    last = next(f["fields"]["seat"] for f in initial if f["type"] == "LastSeat")
    start = time.perf_counter()
    table = _Table(guests)
    current = table.first_seat(guests[0]["name"])
    while True:
        current = table.find_seating(current)
        table.make_path(current)
        table.firings += 1  # are_we_done or continue
        if table.seatings[current]["rightSeat"] == last:
            table.firings += 1  # all_done
            break
    seconds = time.perf_counter() - start
    return Run(_manners_facts(initial, table, current), table.firings, seconds)


def _manners_facts(initial: list[Fact], table: _Table, current: int) -> list[Fact]:
    """The working memory the rules would end with."""
    facts = [f for f in initial if f["type"] in ("Guest", "LastSeat")]
    facts.append(fact("Context", state="done", current=current))
    facts.append(fact("Count", c=table.count))
    facts += [{"type": "Seating", "fields": s} for s in table.seatings.values()]
    for sid, path in table.paths.items():
        facts += [fact("Path", seatingId=sid, seat=seat, guestName=name) for name, seat in path.items()]
    facts += [fact("Chosen", seatingId=sid, guestName=n, hobby=h) for sid, n, h in table.chosen]
    return facts
