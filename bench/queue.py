"""The queue benchmark (issue 5): invocations through lease and complete, dispatch latency and
the video pipeline end to end, against pgbench's SKIP LOCKED claim and enqueue-claim-complete cycle.

    .venv/bin/python bench/queue.py [--runners 1,4,16] [--batch 16] [--wait 5] [--seconds 6]
                                    [--warmup 1.5] [--samples 300] [--pace 0.05] [--video 100]
                                    [--pgbench-seconds 5] [--server-workers 1]
                                    [--db-url postgresql+psycopg://...] [--check]

It owns the whole run: a fresh PostgreSQL database (created next to `--db-url`, dropped at the
end), one `emirax serve` subprocess on it (EMIRAX_MAX_IN_FLIGHT raised so the tenant limit does
not cap the run), two tenants (one for the queue workload, one for the video pipeline, so the
video's leases never scan the other's leftover backlog), and two bundles compiled from source:
bench/workloads/queue.emx (`bench.queue.Fan`: N Task facts queue N calls of `work`, each result
one durable step) and tenants/media-encoding.

Runners are separate OS processes: this script run again with a hidden `--runner-process`
argument. Each has one httpx.Client (one kept-alive connection); it leases micro-batches
(`--batch`, long-polling `--wait` seconds) and completes them at once with fake but well-formed
results (instant functions), in one `POST /v1/invocations/complete` per lease, as the runner SDK
reports results that are ready together, checking every answer (200, `applied: true`).

1. Dispatch latency: `--latency-runners` runners idle in a long poll; `--samples` workflows with
   one Task each are started one at a time, one every `--pace` seconds (50 ms: a sample's start,
   lease and complete take about 30 ms of the one server process, so a faster pace measures a
   queue of requests, not dispatch). For each, the runner records when its lease answer arrived
   (time.time(), same machine). Two figures bound "step committed to lease received": from the
   start request's answer (the step commits before the answer is sent: a lower bound, the
   target's measure) and from the invocation's `created_at` (taken in the step, before the rest
   of the step and its commit: an upper bound).
2. Throughput, for each runner count R: a backlog of Fan workflows (`--tasks` Tasks each) is
   started first, large enough for the warm-up and the window at the best rate seen so far, so
   the window measures only lease and complete. After `--warmup`, invocations completed inside
   `--seconds` count. A runner that gets an empty lease inside the window means the backlog ran
   out (then the figure is a lower bound, and the output says so).
3. The floor, right after each throughput run, in the same database with pgbench at R clients:
   (a) the bare claim, one transaction `UPDATE ... WHERE id = (SELECT id ... ORDER BY priority
   DESC, id LIMIT 1 FOR UPDATE SKIP LOCKED) RETURNING id` on a table of pre-filled jobs, and (b)
   the whole cycle of three transactions: enqueue (INSERT), claim, complete (UPDATE). Our
   invocations per second over each floor's tps is printed.
4. The video pipeline: `--video` media.encode.VideoEncode workflows (31 chunks each: split, 31
   encodes, assemble, index, and a Thumbnail child workflow calling grab), started together,
   served by `--video-runners` runners. It reports workflows per minute end to end (first start
   to last completion, by the server's timestamps) and the mean and p99 workflow duration, and
   checks every workflow and child ended `completed` with a well-formed output.

It always exits 0 when it measured something (it is a report); with `--check` it exits 1 when a
target is missed: invocations per second at least half of the whole-cycle floor at every runner
count, and dispatch p99 (from the start's answer) under 20 ms. A wrong answer, a lost or
duplicated invocation, or a video workflow that did not complete prints ERRORS and exits 1.
"""

from __future__ import annotations

import _stdlib_first  # noqa: F401  (first: this file's name shadows the standard library's queue)

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

import argparse  # noqa: E402
import importlib.util  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import os  # noqa: E402
import secrets  # noqa: E402
import shutil  # noqa: E402
import signal  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from collections import Counter  # noqa: E402
from concurrent.futures import ThreadPoolExecutor  # noqa: E402
from contextlib import ExitStack  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from datetime import datetime, timezone  # noqa: E402
from types import ModuleType  # noqa: E402
from typing import Any  # noqa: E402

import httpx  # noqa: E402

DEFAULT_DB_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
WORKLOAD = HERE / "workloads" / "queue.emx"
MEDIA = ROOT / "tenants" / "media-encoding"
FAN = "bench.queue.Fan"
VIDEO = "media.encode.VideoEncode"
VIDEO_FUNCTIONS = ["split", "encode", "assemble", "index", "grab"]
VIDEO_CHUNKS = 31  # the Request's default
MAX_IN_FLIGHT = 100_000  # the server's per-tenant limit for this run: never the bottleneck
# The targets.
CYCLE_RATIO = 0.5
DISPATCH_P99_MS = 20.0

CLAIM_SQL = ("update bench_claim set status = 'leased' where id = (select id from bench_claim "
             "where status = 'queued' order by priority desc, id limit 1 for update skip locked) "
             "returning id;\n")
CYCLE_SQL = ("insert into bench_cycle (priority, payload) values (0, 'job');\n"
             "with c as (update bench_cycle set status = 'leased' where id = (select id from "
             "bench_cycle where status = 'queued' order by priority desc, id limit 1 for update "
             "skip locked) returning id) select coalesce(max(id), 0) as id from c \\gset\n"
             "update bench_cycle set status = 'done' where id = :id;\n")


# ── the runner process ─────────────────────────────────────────────────────────────────────────


def fake_result(inv: dict[str, Any]) -> Any:
    """An instant function's result, well-formed for what the rules do with it."""
    name, args, wid = inv["function"], inv["args"], inv["workflow"]
    if name == "work":
        return int(args[0]) + 1
    if name == "split":
        return [f"cas://bench/{wid}/chunk-{i}" for i in range(int(args[1]))]
    if name == "encode":
        return f"{args[0]}.{args[1]}"
    if name == "assemble":
        return f"cas://bench/{wid}/assembled-{len(args[0])}"
    if name == "index":
        return {"uri": args[0], "frames": 64, "ok": True}
    if name == "grab":
        return f"cas://bench/{wid}/frame-{args[1]}"
    raise ValueError(f"the benchmark's runner has no fake for {name}")


def _epoch(iso: str) -> float:
    stamp = datetime.fromisoformat(iso)
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=timezone.utc)
    return stamp.timestamp()


def runner_main(config: dict[str, Any]) -> int:
    """One runner: `ready`, then on `go` lease and complete until `stop` (or EOF) on stdin; the
    current batch is always completed (no lease left to expire). Prints one JSON line: a record
    per invocation [id, workflow, lease received, created_at, completed, complete ms], the times
    of empty leases, and errors."""
    stop = threading.Event()
    records: list[list[Any]] = []
    empties: list[float] = []
    errors: list[str] = []
    headers = {"Authorization": f"Bearer {config['token']}"}
    lease_body = {"runner": config["name"], "functions": config["functions"],
                  "max": config["batch"], "wait": config["wait"]}
    with httpx.Client(base_url=config["base"], headers=headers, timeout=config["wait"] + 60) as c:
        c.get("/healthz")  # the connection is open before the clock matters
        print("ready", flush=True)
        if sys.stdin.readline().strip() != "go":
            return 0
        threading.Thread(target=lambda: (sys.stdin.readline(), stop.set()), daemon=True).start()
        try:
            while not stop.is_set():
                r = c.post("/v1/runners/lease", json=lease_body)
                received = time.time()
                if r.status_code != 200:
                    errors.append(f"lease: HTTP {r.status_code} {r.text[:200]}")
                    break
                leased = r.json()["invocations"]
                if not leased:
                    empties.append(received)
                if leased:
                    # Instant functions all finish at once: their results go back in one batch,
                    # as the runner SDK reports the results that are ready together.
                    t0 = time.perf_counter()
                    r = c.post("/v1/invocations/complete", json={"results": [
                        {"id": inv["id"], "fence": inv["fence"], "result": fake_result(inv)}
                        for inv in leased]})
                    done, ms = time.time(), (time.perf_counter() - t0) * 1000
                    answers = r.json().get("results", []) if r.status_code == 200 else []
                    if len(answers) != len(leased):
                        errors.append(f"complete: HTTP {r.status_code} {r.text[:200]}")
                    for inv, answer in zip(leased, answers):
                        if answer.get("applied") is not True:
                            errors.append(f"complete {inv['id']}: {answer}")
                        records.append([inv["id"], inv["workflow"], received,
                                        _epoch(inv["created_at"]), done, ms])
        except httpx.HTTPError as exc:
            errors.append(f"{type(exc).__name__}: {exc}")
    print(json.dumps({"records": records, "empties": empties, "errors": errors}), flush=True)
    return 0


@dataclass
class Tally:
    """What a group of runners saw (merged)."""

    records: list[list[Any]] = field(default_factory=list)
    empties: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


class Runners:
    """N runner processes; `stop()` returns what they saw. Their stderr goes to one log file."""

    def __init__(self, n: int, base: str, token: str, functions: list[str], batch: int,
                 wait: float, log_path: Path, tag: str) -> None:
        self.wait = wait
        self.log = open(log_path, "ab")  # noqa: SIM115 - closed in close()
        self.procs: list[subprocess.Popen[str]] = []
        for k in range(n):
            config = {"base": base, "token": token, "functions": functions, "batch": batch,
                      "wait": wait, "name": f"bench-{tag}-{k}"}
            self.procs.append(subprocess.Popen(
                [sys.executable, str(Path(__file__).resolve()), "--runner-process", json.dumps(config)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log, text=True, cwd=ROOT))

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    def start(self) -> None:
        """Wait until every runner has its connection, then let them all go at once."""
        for p in self.procs:
            line = p.stdout.readline() if p.stdout else ""
            if line.strip() != "ready":
                raise RuntimeError(f"a runner process did not start (exit {p.poll()}); see "
                                   f"{self.log.name}")
        for p in self.procs:
            self._send(p, "go\n")

    def stop(self) -> Tally:
        for p in self.procs:
            self._send(p, "stop\n")
        tally = Tally()
        for p in self.procs:
            try:
                out, _ = p.communicate(timeout=self.wait + 60)
            except subprocess.TimeoutExpired:
                p.kill()
                tally.errors.append(f"runner {p.pid} did not stop")
                continue
            lines = [line for line in out.splitlines() if line.startswith("{")]
            if p.returncode != 0 or not lines:
                tally.errors.append(f"runner {p.pid} exited {p.returncode} without its report; "
                                    f"see {self.log.name}")
                continue
            doc = json.loads(lines[-1])
            tally.records += doc["records"]
            tally.empties += doc["empties"]
            tally.errors += doc["errors"]
        return tally

    def close(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.kill()
                p.wait(timeout=10)
        self.log.close()

    @staticmethod
    def _send(p: subprocess.Popen[str], text: str) -> None:
        try:
            assert p.stdin is not None
            p.stdin.write(text)
            p.stdin.flush()
        except (BrokenPipeError, OSError):
            pass  # it exited; stop() reports it


# ── CPU of processes ───────────────────────────────────────────────────────────────────────────


@dataclass
class Cpu:
    """CPU seconds of the server (with its worker processes), the runners and PostgreSQL."""

    server: float
    runners: float
    db: float


def cpu_snapshot(bench: ModuleType, server_pid: int, runner_pids: list[int]) -> Cpu:
    """CPU so far, through bench/server.py's /proc helpers."""
    table = bench.proc_table()
    return Cpu(server=bench.family_cpu(table, server_pid),
               runners=sum(table[p][2] for p in runner_pids if p in table),
               db=bench.db_cpu(table))


def cpu_rates(a: Cpu, b: Cpu, seconds: float) -> Cpu:
    return Cpu(*(max(0.0, (getattr(b, k) - getattr(a, k)) / seconds) for k in ("server", "runners", "db")))


# ── the setup ──────────────────────────────────────────────────────────────────────────────────


def load_server_bench() -> ModuleType:
    """bench/server.py, for its database, server and pgbench helpers (its module name `server`
    is the server package's, so it is loaded under another)."""
    spec = importlib.util.spec_from_file_location("bench_server", HERE / "server.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_server"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def build_bundles() -> tuple[bytes, bytes]:
    """The queue workload and the media-encoding project, compiled from source."""
    from emirax import pipeline
    from emirax.bundle import build_bundle

    fan = pipeline.build(WORKLOAD, cache_dir=False)
    media = pipeline.build(MEDIA, cache_dir=False)
    if fan.ir is None or media.ir is None:
        raise RuntimeError("a benchmark bundle does not compile")
    return (build_bundle(fan.ir, version="1.0.0", sources={}),
            build_bundle(media.ir, version=media.project.version, sources={}))


def make_tenant(base: str, admin_token: str, bundle: bytes, name: str) -> tuple[int, str]:
    """A tenant with `bundle` active: (its id, its token)."""
    with httpx.Client(base_url=base, timeout=30) as c:
        r = c.post("/v1/tenants", json={"name": f"{name}-{secrets.token_hex(3)}"},
                   headers={"Authorization": f"Bearer {admin_token}"})
        r.raise_for_status()
        tenant_id, token = r.json()["id"], r.json()["token"]
        r = c.post("/v1/bundles", content=bundle, headers={"Authorization": f"Bearer {token}"})
        r.raise_for_status()
        if not r.json()["active"]:
            raise RuntimeError(f"the uploaded bundle is not active: {r.text}")
    return tenant_id, token


@dataclass
class Context:
    args: argparse.Namespace
    home: Path
    db_url: str
    dsn: str  # the same database for psycopg and pgbench
    server: Any  # bench/server.py's Server
    fan: tuple[int, str]  # the queue workload's tenant: (id, token)
    video: tuple[int, str]  # the video pipeline's tenant
    pgbench: str | None
    bench: ModuleType  # bench/server.py
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def runners(self, n: int, tenant: tuple[int, str], functions: list[str], tag: str) -> Runners:
        return Runners(n, self.server.base, tenant[1], functions, self.args.batch, self.args.wait,
                       self.home / "runners.log", tag)

    def sql(self, query: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        import psycopg

        with psycopg.connect(self.dsn, autocommit=True) as conn:
            cur = conn.execute(query, params)  # type: ignore[arg-type]
            return cur.fetchall() if cur.description else []


def start_workflows(ctx: Context, token: str, bodies: list[dict[str, Any]], threads: int = 4) -> None:
    """POST every body to /v1/workflows from `threads` clients; every answer checked."""
    def part(chunk: list[dict[str, Any]]) -> None:
        with httpx.Client(base_url=ctx.server.base, timeout=60,
                          headers={"Authorization": f"Bearer {token}"}) as c:
            for body in chunk:
                _check_start(c.post("/v1/workflows", json=body), ctx.errors)

    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(part, [bodies[k::threads] for k in range(threads)]))


def _check_start(r: httpx.Response, errors: list[str]) -> None:
    if r.status_code != 201:
        errors.append(f"start: HTTP {r.status_code} {r.text[:200]}")
    elif r.json().get("status") not in ("running", "waiting"):
        errors.append(f"start: status {r.json().get('status')!r}, expected work pending")


def fan_body(wid: str, tasks: int) -> dict[str, Any]:
    return {"workflow": FAN, "id": wid,
            "facts": [{"type": "Task", "fields": {"n": n}} for n in range(tasks)]}


def percentile(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[max(1, math.ceil(len(ordered) * p / 100)) - 1]


# ── 1. dispatch latency ────────────────────────────────────────────────────────────────────────


@dataclass
class Dispatch:
    runners: int
    samples: int
    from_answer_ms: list[float]
    from_created_ms: list[float]


def measure_dispatch(ctx: Context) -> Dispatch:
    args = ctx.args
    answered: dict[str, float] = {}
    runners = ctx.runners(args.latency_runners, ctx.fan, ["work"], "dispatch")
    try:
        runners.start()
        time.sleep(0.5)  # every runner is in its long poll
        with httpx.Client(base_url=ctx.server.base, timeout=60,
                          headers={"Authorization": f"Bearer {ctx.fan[1]}"}) as c:
            due = time.perf_counter()
            for k in range(args.samples):
                wid = f"dispatch-{k}"
                r = c.post("/v1/workflows", json=fan_body(wid, 1))
                answered[wid] = time.time()
                _check_start(r, ctx.errors)
                due += args.pace
                time.sleep(max(0.0, due - time.perf_counter()))
        _wait_for(ctx, "select count(*) from workflows where tenant_id = %s and id like 'dispatch-%%' "
                  "and status = 'completed'", (ctx.fan[0],), args.samples, 30)
        tally = runners.stop()
    finally:
        runners.close()
    ctx.errors += tally.errors
    seen = Counter(rec[1] for rec in tally.records)
    if sorted(seen) != sorted(answered) or any(n != 1 for n in seen.values()):
        ctx.errors.append(f"dispatch: {len(answered)} workflows started, {len(seen)} leased, "
                          f"{sum(n > 1 for n in seen.values())} leased twice")
    return Dispatch(
        runners=args.latency_runners, samples=len(tally.records),
        from_answer_ms=[(rec[2] - answered[rec[1]]) * 1000 for rec in tally.records if rec[1] in answered],
        from_created_ms=[(rec[2] - rec[3]) * 1000 for rec in tally.records])


def _wait_for(ctx: Context, query: str, params: tuple[Any, ...], want: int, timeout: float) -> int:
    """Poll a count until it reaches `want` (or the time runs out); returns the last count."""
    deadline = time.monotonic() + timeout
    while True:
        got = int(ctx.sql(query, params)[0][0])
        if got >= want or time.monotonic() > deadline:
            return got
        time.sleep(0.1)


# ── 2. throughput, 3. the floor ────────────────────────────────────────────────────────────────


@dataclass
class Throughput:
    runners: int
    seconds: float
    completed: int
    complete_ms: list[float]
    cpu: Cpu
    backlog: int
    dry: bool
    claim_tps: float | None = None
    cycle_tps: float | None = None

    @property
    def per_s(self) -> float:
        return self.completed / self.seconds


def fill_backlog(ctx: Context, want: int, phase: int) -> int:
    """Start Fan workflows until at least `want` invocations are queued; returns the backlog."""
    query = "select count(*) from invocations where tenant_id = %s and status = 'queued'"
    have = int(ctx.sql(query, (ctx.fan[0],))[0][0])
    tasks = ctx.args.tasks
    count = max(0, math.ceil((want - have) / tasks))
    start_workflows(ctx, ctx.fan[1], [fan_body(f"fan-{phase}-{k}", tasks) for k in range(count)])
    return int(ctx.sql(query, (ctx.fan[0],))[0][0])


def measure_throughput(ctx: Context, n: int, rate_guess: float, phase: int) -> Throughput:
    args = ctx.args
    backlog = fill_backlog(ctx, max(args.backlog, math.ceil(rate_guess * (args.warmup + args.seconds)
                                                            * 1.5)), phase)
    runners = ctx.runners(n, ctx.fan, ["work"], f"t{n}")
    try:
        runners.start()
        time.sleep(args.warmup)
        cpu0, begin = cpu_snapshot(ctx.bench, ctx.server.proc.pid, runners.pids), time.time()
        time.sleep(args.seconds)
        cpu1, end = cpu_snapshot(ctx.bench, ctx.server.proc.pid, runners.pids), time.time()
        tally = runners.stop()
    finally:
        runners.close()
    ctx.errors += tally.errors
    ids = Counter(rec[0] for rec in tally.records)
    if any(k > 1 for k in ids.values()):
        ctx.errors.append(f"{n} runners: {sum(k > 1 for k in ids.values())} invocations completed twice")
    inside = [rec for rec in tally.records if begin <= rec[4] < end]
    dry = any(begin <= t < end for t in tally.empties)
    if dry:
        ctx.warnings.append(f"{n} runners: the backlog ran out inside the window (an empty lease); "
                            "the figure is a lower bound: raise --backlog")
    return Throughput(n, end - begin, len(inside), [rec[5] for rec in inside],
                      cpu_rates(cpu0, cpu1, end - begin), backlog, dry)


def prepare_floor(ctx: Context, table: str, jobs: int) -> None:
    """A fresh job table (the shape of a queue: status, priority, id) with `jobs` queued rows."""
    ctx.sql(f"drop table if exists {table}")
    ctx.sql(f"create table {table} (id bigserial primary key, priority int not null default 0, "
            f"status text not null default 'queued', payload text)")
    ctx.sql(f"create index {table}_claim on {table} (status, priority desc, id)")
    if jobs:
        ctx.sql(f"insert into {table} (priority, payload) select 0, 'job' from generate_series(1, %s)",
                (jobs,))
    ctx.sql(f"vacuum analyze {table}")


def measure_floor(ctx: Context, clients: int) -> tuple[float, float]:
    """pgbench's tps for the bare claim and for the whole cycle at `clients`."""
    args, bench = ctx.args, ctx.bench
    claim, cycle = ctx.home / "claim.sql", ctx.home / "cycle.sql"
    claim.write_text(CLAIM_SQL, encoding="utf-8")
    cycle.write_text(CYCLE_SQL, encoding="utf-8")
    jobs = args.floor_jobs or 20_000 * args.pgbench_seconds
    prepare_floor(ctx, "bench_claim", jobs)
    claim_tps = bench.run_pgbench(ctx.pgbench, ctx.db_url, clients, args.pgbench_seconds, claim)
    left = int(ctx.sql("select count(*) from bench_claim where status = 'queued'")[0][0])
    if left == 0:
        ctx.warnings.append(f"pgbench claim at {clients} clients ran out of its {jobs:,} jobs: its "
                            "tps counts empty claims; raise --floor-jobs")
    prepare_floor(ctx, "bench_cycle", 0)
    cycle_tps = bench.run_pgbench(ctx.pgbench, ctx.db_url, clients, args.pgbench_seconds, cycle)
    return claim_tps, cycle_tps


def lease_plan(ctx: Context) -> str:
    """The plan of the lease's locking subquery (as server/store/queue.py writes it) on the
    backlog left by the throughput runs: the scan nodes, in order."""
    rows = ctx.sql(
        "explain select id from invocations where tenant_id = %s and status = 'queued' and "
        "kind = 'call' and name in ('work') and (available_at is null or available_at <= now()) "
        "order by priority desc, workflow_pk, call_id limit %s for update skip locked",
        (ctx.fan[0], ctx.args.batch))
    nodes = [line.strip().lstrip("-> ").split("  (")[0] for (line,) in rows
             if "(cost=" in line]
    return " -> ".join(nodes)


# ── 4. the video pipeline ──────────────────────────────────────────────────────────────────────


@dataclass
class Video:
    workflows: int
    runners: int
    statuses: dict[str, int]
    children: dict[str, int]
    invocations: int
    span_s: float
    durations_s: list[float]
    cpu: Cpu

    @property
    def per_minute(self) -> float:
        return self.statuses.get("completed", 0) / self.span_s * 60 if self.span_s > 0 else 0.0


def run_video(ctx: Context) -> Video:
    args = ctx.args
    request = json.loads((MEDIA / "request.json").read_text(encoding="utf-8"))[0]
    bodies = [{"workflow": VIDEO, "id": f"video-{k}", "facts": [
        {"type": "Request", "fields": {**request["fields"], "source": f"s3://in/movie-{k}.mov"}}]}
        for k in range(args.video)]
    runners = ctx.runners(args.video_runners, ctx.video, VIDEO_FUNCTIONS, "video")
    # Child workflows' ids start with their parent's: only the parents (no parent_pk) count.
    finished = ("select count(*) from workflows where tenant_id = %s and id like 'video-%%' "
                "and parent_pk is null and status in ('completed', 'failed')")
    try:
        runners.start()
        cpu0, t0 = cpu_snapshot(ctx.bench, ctx.server.proc.pid, runners.pids), time.time()
        start_workflows(ctx, ctx.video[1], bodies)
        _wait_for(ctx, finished, (ctx.video[0],), args.video, args.video_timeout)
        cpu1, t1 = cpu_snapshot(ctx.bench, ctx.server.proc.pid, runners.pids), time.time()
        tally = runners.stop()
    finally:
        runners.close()
    ctx.errors += tally.errors
    rows = ctx.sql("select id, status, output, created_at, updated_at from workflows "
                   "where tenant_id = %s and id like 'video-%%' and parent_pk is null", (ctx.video[0],))
    statuses = Counter(r[1] if r[1] in ("completed", "failed") else "unfinished" for r in rows)
    statuses["unfinished"] += args.video - len(rows)  # never started (a start was refused)
    children = dict(ctx.sql("select status, count(*) from workflows where tenant_id = %s and "
                            "parent_pk is not null group by status", (ctx.video[0],)))
    done = [r for r in rows if r[1] == "completed"]
    bad = [r[0] for r in done if not (isinstance(r[2], dict) and str(r[2].get("uri", "")).startswith(
        "cas://") and isinstance(r[2].get("index"), dict))]
    if statuses["completed"] != args.video or children.get("completed", 0) != args.video or bad:
        ctx.errors.append(f"video: {dict(statuses)}, children {children}, "
                          f"{len(bad)} completed with a malformed output; e.g. {_why(ctx, rows)}")
    span = (max(r[4] for r in done) - min(r[3] for r in done)).total_seconds() if done else 0.0
    return Video(args.video, args.video_runners, dict(statuses), children, len(tally.records), span,
                 [(r[4] - r[3]).total_seconds() for r in done], cpu_rates(cpu0, cpu1, t1 - t0))


def _why(ctx: Context, rows: list[tuple[Any, ...]]) -> str:
    """One unfinished or failed workflow's status, error and what its pending calls wait for."""
    stuck = next((r[0] for r in rows if r[1] != "completed"), None)
    if stuck is None:
        return "none unfinished"
    with httpx.Client(base_url=ctx.server.base, timeout=30,
                      headers={"Authorization": f"Bearer {ctx.video[1]}"}) as c:
        view = c.get(f"/v1/workflows/{stuck}").json()
    pending = [p.get("waiting") for p in view.get("pending", [])][:3]
    return f"{stuck}: {view.get('status')} {view.get('error') or ''} pending {pending}"


# ── the report ─────────────────────────────────────────────────────────────────────────────────

HEADER = (f"{'runners':>7}  {'batch':>5}  {'invocations/s':>13}  {'complete p50':>12}  "
          f"{'complete p99':>12}  {'server cpu':>10}  {'runner cpu':>10}  {'db cpu':>6}  "
          f"{'claim tps':>9}  {'ours/claim':>10}  {'cycle tps':>9}  {'ours/cycle':>10}")


def row(t: Throughput, batch: int) -> str:
    def floor(tps: float | None, width: int) -> str:
        return f"{tps:{width},.0f}" if tps else f"{'-':>{width}}"

    def ratio(tps: float | None) -> str:
        return f"{t.per_s / tps:10.3f}" if tps else f"{'-':>10}"

    rate = f"{t.per_s:,.0f}" + ("*" if t.dry else "")
    return (f"{t.runners:>7}  {batch:>5}  {rate:>13}  {percentile(t.complete_ms, 50):12.1f}  "
            f"{percentile(t.complete_ms, 99):12.1f}  {t.cpu.server:10.2f}  {t.cpu.runners:10.2f}  "
            f"{t.cpu.db:6.2f}  {floor(t.claim_tps, 9)}  {ratio(t.claim_tps)}  "
            f"{floor(t.cycle_tps, 9)}  {ratio(t.cycle_tps)}")


def print_dispatch(d: Dispatch, args: argparse.Namespace) -> None:
    print(f"dispatch latency: {args.samples} workflows of one call each, started one every "
          f"{args.pace * 1000:g} ms; {d.runners} runner(s) idle in a long poll")
    for label, values, note in (
            ("start answered -> lease received", d.from_answer_ms,
             "a lower bound: the step commits before the answer"),
            ("created_at -> lease received", d.from_created_ms,
             "an upper bound: created_at is taken in the step, before its commit")):
        print(f"  {label:<34} p50 {percentile(values, 50):6.1f} ms  p99 "
              f"{percentile(values, 99):6.1f} ms  ({note})")
    print()


def print_video(v: Video) -> None:
    print(f"video pipeline: {v.workflows} {VIDEO} workflows ({VIDEO_CHUNKS} chunks, a Thumbnail "
          f"child each), {v.runners} runners, instant functions")
    others = ", ".join(f"{n} {s}" for s, n in sorted(v.statuses.items()) if s != "completed" and n)
    print(f"  {v.statuses.get('completed', 0)} completed{f' ({others})' if others else ''}; "
          f"children {dict(sorted(v.children.items()))}; {v.invocations:,} invocations leased "
          f"and completed")
    print(f"  end to end: {v.per_minute:,.0f} workflows/min ({v.span_s:.1f} s from the first start "
          f"to the last completion); duration mean {sum(v.durations_s) / max(1, len(v.durations_s)):.1f} s, "
          f"p99 {percentile(v.durations_s, 99):.1f} s; server cpu {v.cpu.server:.2f}, "
          f"runner cpu {v.cpu.runners:.2f}, db cpu {v.cpu.db:.2f}")
    print()


def verdicts(results: list[Throughput], d: Dispatch | None) -> tuple[list[str], bool]:
    lines, ok = [], True
    for t in results:
        if t.cycle_tps:
            ratio = t.per_s / t.cycle_tps
            met = ratio >= CYCLE_RATIO
            ok &= met
            lines.append(f"invocations/cycle floor at {t.runners} runners = {ratio:.3f} "
                         f"(target >= {CYCLE_RATIO:g}: {'met' if met else 'MISSED'})")
    if d is not None and d.from_answer_ms:
        p99, upper = percentile(d.from_answer_ms, 99), percentile(d.from_created_ms, 99)
        met = p99 < DISPATCH_P99_MS
        ok &= met
        lines.append(f"dispatch p99 = {p99:.1f} ms from the start's answer (target < "
                     f"{DISPATCH_P99_MS:.0f} ms: {'met' if met else 'MISSED'}); {upper:.1f} ms from "
                     f"created_at (upper bound)")
    return lines, ok


# ── the run ────────────────────────────────────────────────────────────────────────────────────


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runners", default="1,4,16", help="comma-separated runner process counts")
    p.add_argument("--batch", type=int, default=16, help="invocations per lease (the lease's max)")
    p.add_argument("--wait", type=float, default=5.0, help="long-poll seconds of a lease")
    p.add_argument("--seconds", type=float, default=6.0, help="measured seconds per runner count")
    p.add_argument("--warmup", type=float, default=1.5, help="warm-up seconds per runner count")
    p.add_argument("--tasks", type=int, default=16, help="calls per backlog workflow")
    p.add_argument("--backlog", type=int, default=2000, help="least invocations queued before a run")
    p.add_argument("--samples", type=int, default=300, help="dispatch latency samples")
    p.add_argument("--pace", type=float, default=0.05, help="seconds between dispatch samples")
    p.add_argument("--latency-runners", type=int, default=4, help="runners idle for the dispatch samples")
    p.add_argument("--video", type=int, default=100, help="video workflows (0: skip)")
    p.add_argument("--video-runners", type=int, default=4, help="runner processes for the video")
    p.add_argument("--video-timeout", type=float, default=900.0, help="seconds to wait for the video")
    p.add_argument("--pgbench-seconds", type=int, default=5, help="pgbench -T per floor and client count")
    p.add_argument("--floor-jobs", type=int, default=0,
                   help="jobs pre-filled for the claim floor (default 20,000 per pgbench second)")
    p.add_argument("--server-workers", type=int, default=1, help="emirax serve --workers")
    p.add_argument("--db-url", default=DEFAULT_DB_URL,
                   help="PostgreSQL URL whose server gets the temporary database")
    p.add_argument("--check", action="store_true", help="exit 1 when a target is missed")
    p.add_argument("--runner-process", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.runner_process:
        return args
    try:
        args.runner_counts = [int(c) for c in args.runners.split(",") if c.strip()]
    except ValueError:
        args.runner_counts = []
    if not args.runner_counts or min(args.runner_counts) < 1:
        p.error("--runners takes positive integers, e.g. 1,4,16")
    if not 1 <= args.batch <= 100:
        p.error("--batch is 1 to 100 (the protocol's max)")
    if not 0 < args.wait <= 60:
        p.error("--wait is more than 0 and at most 60 seconds")
    if args.tasks < 1 or args.samples < 0 or args.video < 0 or args.latency_runners < 1 \
            or args.video_runners < 1:
        p.error("--tasks, --latency-runners and --video-runners are at least 1; --samples and "
                "--video at least 0")
    return args


def _sigterm_exits() -> None:
    """SIGTERM unwinds like Ctrl-C, so runners and server are stopped and the database dropped."""
    def handler(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)
    signal.signal(signal.SIGTERM, handler)


def git_commit() -> str:
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, cwd=ROOT, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, cwd=ROOT, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{head}{' (with uncommitted changes)' if dirty else ''}" if head else "unknown"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.runner_process:
        return runner_main(json.loads(args.runner_process))
    _sigterm_exits()
    bench = load_server_bench()
    pgbench = shutil.which("pgbench")
    with ExitStack() as stack:
        home = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="emirax-qbench-")))
        db_url = stack.enter_context(bench.fresh_postgres(args.db_url))
        fan_bundle, media_bundle = build_bundles()
        admin = "admin-" + secrets.token_hex(8)
        # The server copies this process's environment: the limit is the server's default.
        os.environ["EMIRAX_MAX_IN_FLIGHT"] = str(MAX_IN_FLIGHT)
        server = bench.Server(db_url, home, admin, args.server_workers)
        stack.callback(server.stop)
        server.wait_ready()
        ctx = Context(args, home, db_url, bench.libpq_dsn(db_url), server,
                      make_tenant(server.base, admin, fan_bundle, "bench-queue"),
                      make_tenant(server.base, admin, media_bundle, "bench-video"), pgbench, bench)
        _print_preamble(ctx, db_url)
        return _run(ctx)
    return 1  # not reached: the block returns


def _print_preamble(ctx: Context, db_url: str) -> None:
    args = ctx.args
    print(f"commit: {git_commit()}")
    print(f"machine: {os.cpu_count()} cores, load average {ctx.bench._load_average()} before the run")
    print(f"database: PostgreSQL, fresh database {db_url.rsplit('/', 1)[1]} (dropped at the end)")
    print(f"server: `emirax serve --workers {args.server_workers}`, EMIRAX_MAX_IN_FLIGHT="
          f"{MAX_IN_FLIGHT} (the tenant limit never caps the run)")
    print(f"workload: {FAN} (bench/workloads/queue.emx): a workflow queues one `work` call per "
          f"Task; each result is one durable step")
    print(f"runners: separate processes, one httpx.Client each, lease max {args.batch}, long poll "
          f"{args.wait:g} s, complete a lease's results in one batch request")
    if ctx.pgbench:
        print(f"floor: pgbench -n -c C -j C -T {args.pgbench_seconds} "
              "on the same database right after each run: claim = one SKIP LOCKED UPDATE; cycle = "
              "INSERT, claim, UPDATE (three transactions)")
    else:
        print("floor: pgbench is not installed (not on PATH): no ratios")
    print("latencies in ms; cpu = CPU seconds per wall second (server with its workers, all runner "
          "processes, every PostgreSQL process on the machine); * = the backlog ran out\n", flush=True)


def _run(ctx: Context) -> int:
    args = ctx.args
    dispatch = measure_dispatch(ctx) if args.samples else None
    if dispatch is not None:
        print_dispatch(dispatch, args)
    print(HEADER, flush=True)
    results: list[Throughput] = []
    for phase, n in enumerate(args.runner_counts):
        guess = 2 * max((t.per_s for t in results), default=200.0)
        t = measure_throughput(ctx, n, guess, phase)
        if ctx.server.proc.poll() is not None:
            raise RuntimeError(f"the server exited ({ctx.server.proc.returncode}):\n"
                               f"{ctx.server.log_tail()}")
        if ctx.pgbench:
            t.claim_tps, t.cycle_tps = measure_floor(ctx, n)
        print(row(t, args.batch), flush=True)
        results.append(t)
    print(f"\nlease query plan ({_backlog(ctx):,} queued): {lease_plan(ctx)}\n", flush=True)
    if args.video:
        print_video(run_video(ctx))
    # Other work on the shared machine skews every figure: say how busy it was.
    print(f"machine load average at the end: {ctx.bench._load_average()}")
    for w in ctx.warnings:
        print(f"WARNING: {w}")
    if ctx.errors:
        print(f"ERRORS: {len(ctx.errors)}, e.g. {ctx.errors[0]}")
    lines, ok = verdicts(results, dispatch)
    for line in lines:
        print(line)
    if ctx.errors:
        return 1
    return 1 if args.check and not ok else 0


def _backlog(ctx: Context) -> int:
    return int(ctx.sql("select count(*) from invocations where tenant_id = %s and status = 'queued'",
                       (ctx.fan[0],))[0][0])


if __name__ == "__main__":
    sys.exit(main())
