"""Inputs and correctness checks of the engine benchmark's two workloads (issue 3).

Plain Python, no dependencies: the Emirax driver and the reference engines (`bench/refs/run.py`)
import it alike, so every engine starts from the same facts and is judged by the same checker.

Facts are dicts `{"type": "Job", "fields": {"key": 1}}`, the shape Emirax shows facts in.

    chain_facts(F) -> [Job facts]                 K = F // 6 jobs; 6 facts per job at the end
    check_chain(final_facts)                      raises AssertionError when a job is wrong
    manners_facts(F) -> (G, [initial facts])      G guests, chosen so the end has about F facts
    check_manners(final_facts)                    raises AssertionError when the seating is wrong

chain: each `Job(key)` grows `Step(key, n, value)` for n = 1..5, with
`value(n) = work(key, n) + value(n - 1)` and `work(key, n) = key * 7 + n`.

manners (Miss Manners): guests `Guest(name, sex, hobby)`, one fact per hobby of a guest, are
seated on a line of G seats (seat 1 to seat G, the ends are not neighbours) so that neighbours
have opposite sexes and share a hobby. The data makes every partial seating extendable, whatever
guest a rule picks: exactly G/2 guests of each sex, and every guest has at least 2 of the 3
hobbies, so any two guests share one. The rules therefore never backtrack, under any conflict
resolution strategy, and the number of facts at the end is fixed: the guest facts, G `Seating`,
G(G+1)/2 `Path` (seating k carries the k seats chosen so far), G-1 `Chosen`, and one each of
`Context`, `Count` and `LastSeat`.
"""

from __future__ import annotations

import random
from collections import Counter, defaultdict
from typing import Any

Fact = dict[str, Any]

SEED = 20240603  # any fixed number: the inputs must be the same on every run and host
STEPS = 5  # rules s1..s5 per chain job
HOBBIES = ("h1", "h2", "h3")


def fact(type_: str, **fields: Any) -> Fact:
    """A fact in the shared shape."""
    return {"type": type_, "fields": fields}


def work(key: int, n: int) -> int:
    """The chain's "function": what Emirax calls as the declared function `work`."""
    return key * 7 + n


# ---------------------------------------------------------------------------------------- chain


def chain_jobs(facts: int) -> int:
    """How many jobs a chain run of `facts` facts has (6 facts per job at the end)."""
    return facts // (STEPS + 1)


def chain_facts(facts: int) -> list[Fact]:
    """The initial facts of a chain run: `Job(key)` for key = 1..K, K = facts // 6."""
    return [fact("Job", key=key) for key in range(1, chain_jobs(facts) + 1)]


def chain_expected(key: int) -> list[int]:
    """The values of Step n = 1..5 of job `key`."""
    values, total = [], 0
    for n in range(1, STEPS + 1):
        total += work(key, n)
        values.append(total)
    return values


def check_chain(facts: list[Fact]) -> None:
    """Every job has exactly the five steps, each with its value; nothing else is there."""
    by_type = _by_type(facts)
    _only_types(by_type, {"Job", "Step"})
    keys = sorted(f["key"] for f in by_type["Job"])
    assert keys, "chain: no Job facts at the end"
    assert len(set(keys)) == len(keys), "chain: a Job key appears twice"
    steps: dict[int, dict[int, int]] = defaultdict(dict)
    for s in by_type["Step"]:
        key, n = s["key"], s["n"]
        assert (
            n not in steps[key]
        ), f"chain: job {key} has two Step facts with n={n} ({steps[key][n]} and {s['value']})"
        steps[key][n] = s["value"]
    assert set(steps) <= set(keys), f"chain: Step facts for unknown jobs {sorted(set(steps) - set(keys))[:5]}"
    for key in keys:
        want = chain_expected(key)
        got = [steps[key].get(n) for n in range(1, STEPS + 1)]
        assert got == want, f"chain: job {key} has Step values {got} for n=1..5, expected {want}"
    total = len(keys) * (STEPS + 1)
    assert len(facts) == total, f"chain: {len(facts)} facts at the end, expected {total}"


# -------------------------------------------------------------------------------------- manners


def manners_guests(guests: int, seed: int = SEED) -> list[Fact]:
    """`Guest(name, sex, hobby)` facts for `guests` guests (an even number, 2 or more).

    Exactly half of the guests are of each sex (in a shuffled order) and each has 2 or 3 of the
    three hobbies, so any greedy seating succeeds (see the module docstring).
    """
    if guests < 2 or guests % 2:
        raise ValueError(f"manners needs an even number of guests, 2 or more, not {guests}")
    rng = random.Random(seed)
    sexes = ["m", "f"] * (guests // 2)
    rng.shuffle(sexes)
    out = []
    for i, sex in enumerate(sexes, start=1):
        hobbies = sorted(rng.sample(HOBBIES, rng.choice((2, 3))))
        out.extend(fact("Guest", name=f"n{i}", sex=sex, hobby=h) for h in hobbies)
    return out


def manners_end_count(guests: int, guest_facts: int) -> int:
    """How many facts a finished manners run holds (see the module docstring)."""
    return guest_facts + guests + guests * (guests + 1) // 2 + (guests - 1) + 3


def manners_size(facts: int, seed: int = SEED) -> int:
    """The even guest count G whose finished run holds the number of facts nearest to `facts`."""
    best, best_gap, g = 2, None, 2
    while True:  # the count grows with G: stop at the first G past `facts`
        count = manners_end_count(g, len(manners_guests(g, seed)))
        if best_gap is None or abs(count - facts) < best_gap:
            best, best_gap = g, abs(count - facts)
        if count >= facts:
            return best
        g += 2


def manners_facts(facts: int, seed: int = SEED) -> tuple[int, list[Fact]]:
    """(G, the initial facts): the guests, `LastSeat(seat: G)`, `Context(state: 'start')` and
    `Count(c: 1)`, for a run ending with about `facts` facts."""
    guests = manners_size(facts, seed)
    initial = manners_guests(guests, seed)
    initial += [
        fact("LastSeat", seat=guests),
        fact("Context", state="start", current=0),
        fact("Count", c=1),
    ]
    return guests, initial


def check_manners(facts: list[Fact]) -> None:
    """The finished seating holds every guest once, alternates sexes and neighbours share a
    hobby; the run reached the end state and holds exactly the facts the rules make."""
    by_type = _by_type(facts)
    _only_types(by_type, {"Guest", "LastSeat", "Context", "Count", "Seating", "Path", "Chosen"})
    for single in ("LastSeat", "Context", "Count"):
        assert len(by_type[single]) == 1, f"manners: {len(by_type[single])} {single} facts, expected 1"
    last = by_type["LastSeat"][0]["seat"]
    state = by_type["Context"][0]["state"]
    assert state == "done", f"manners: Context.state is {state!r} at the end, expected 'done'"

    sex: dict[str, str] = {}
    hobbies: dict[str, set[str]] = defaultdict(set)
    for g in by_type["Guest"]:
        sex[g["name"]] = g["sex"]
        hobbies[g["name"]].add(g["hobby"])
    assert len(sex) == last, f"manners: {len(sex)} guests but LastSeat is {last}"

    final = [s for s in by_type["Seating"] if s["rightSeat"] == last]
    assert len(final) == 1, f"manners: {len(final)} Seating facts reach seat {last}, expected 1"
    seating_id = final[0]["seatingId"]
    seats = _seats_of(by_type["Path"], seating_id)
    assert sorted(seats) == list(range(1, last + 1)), (
        f"manners: seating {seating_id} has seats {sorted(seats)[:10]}..., expected 1..{last}"
    )
    seated = [seats[n] for n in range(1, last + 1)]
    twice = [name for name, k in Counter(seated).items() if k > 1]
    assert not twice, f"manners: guests seated more than once: {twice[:5]}"
    assert set(seated) == set(sex), f"manners: guests never seated: {sorted(set(sex) - set(seated))[:5]}"
    for n in range(1, last):
        a, b = seats[n], seats[n + 1]
        assert sex[a] != sex[b], f"manners: seats {n} and {n + 1} ({a}, {b}) have the same sex"
        assert hobbies[a] & hobbies[b], f"manners: seats {n} and {n + 1} ({a}, {b}) share no hobby"

    want = manners_end_count(last, len(by_type["Guest"]))
    assert len(facts) == want, f"manners: {len(facts)} facts at the end, expected {want}"


def _seats_of(paths: list[Fact], seating_id: int) -> dict[int, str]:
    """seat -> guest name of one seating's Path facts; a seat given twice is an error."""
    seats: dict[int, str] = {}
    for p in paths:
        if p["seatingId"] == seating_id:
            assert p["seat"] not in seats, f"manners: seating {seating_id} gives seat {p['seat']} twice"
            seats[p["seat"]] = p["guestName"]
    return seats


def _by_type(facts: list[Fact]) -> dict[str, list[dict[str, Any]]]:
    """The facts' fields grouped by type."""
    out: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for f in facts:
        out[f["type"]].append(f["fields"])
    return out


def _only_types(by_type: dict[str, list], allowed: set[str]) -> None:
    extra = set(by_type) - allowed
    assert not extra, f"unexpected fact types at the end: {sorted(extra)}"
