"""The server benchmark (issue 4): durable workflows through HTTP, against pgbench's one-row commit.

    .venv/bin/python bench/server.py [--clients 1,4,16] [--seconds 6] [--warmup 1.5]
                                     [--pgbench-seconds 5] [--db-url postgresql+psycopg://...]
                                     [--sqlite] [--check]

It owns the whole run: a fresh PostgreSQL database (created from `--db-url`, dropped at the end)
or, with `--sqlite`, a SQLite file in a temporary EMIRAX_HOME; one `emirax serve` subprocess on it
(uvicorn's default single worker process, as `emirax serve` runs it); a tenant; and the ORDERS
bundle, built from source here. The workload has no functions: a workflow is started with two
`Item` facts (one durable step: `count` fires, status `waiting`), then one `Shipped` fact is added
(a second step: `ship` fires, status `completed`). Each client is a thread with its own
kept-alive connection (the standard library's http.client, the cheapest client at hand: the load
shares the cores with the server and the database) running start, add-facts, start, ... back to
back.

For each client count C: a warm-up of `--warmup` seconds, then `--seconds` measured; only requests
that finish inside the measured window count. Then, in the same database, pgbench runs
`insert into bench_one (v) values (...)` with C clients for `--pgbench-seconds` (the physical
floor: one durable commit per transaction), and the ratio of our steps per second to its tps is
printed. Every response's status is checked (`waiting`, then `completed`); a wrong answer or an
HTTP error is counted and printed, and fails the run.

It always exits 0 when it measured something (it is a report); with `--check` it exits 1 when a
target is missed: steps per second at least 1/6 of pgbench's tps at every client count, and the
add-facts p99 under 20 ms at 4 clients.
"""

from __future__ import annotations

import _stdlib_first  # noqa: F401  (first: bench/queue.py shadows the standard library's queue)

import argparse
import http.client
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from emirax import pipeline  # noqa: E402
from emirax.bundle import build_bundle  # noqa: E402

DEFAULT_DB_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
WORKFLOW = "bench.orders.Order"
ORDERS = """\
package bench.orders

workflow Order {
    fact Item(String sku, int qty)
    fact Total(int items)
    fact Shipped(String carrier)

    rule 'count' {
        match {
            items: collect Item()
            when items.size() > 0
        }
        action {
            def n = items.sum { it.qty }
            insert Total(items: n)
        }
    }
    rule 'ship' {
        match {
            t: Total()
            s: Shipped()
        }
        action { complete(items: t.items, carrier: s.carrier) }
    }
}
"""
START_BODY = {"workflow": WORKFLOW, "facts": [{"type": "Item", "fields": {"sku": "a", "qty": 2}},
                                              {"type": "Item", "fields": {"sku": "b", "qty": 3}}]}
FACTS_BODY = {"facts": [{"type": "Shipped", "fields": {"carrier": "ups"}}]}
PGBENCH_SCRIPT = "insert into bench_one (v) values ('workflow step');\n"
# The targets.
MIN_RATIO, AIM_RATIO = 1 / 6, 1 / 3
ADD_P99_MS, ADD_P99_CLIENTS = 20.0, 4


# ── the database and the server ────────────────────────────────────────────────────────────────


def libpq_dsn(url: str) -> str:
    """A SQLAlchemy URL (`postgresql+psycopg://...`) as the libpq URI psycopg and pgbench take."""
    scheme, sep, rest = url.partition("://")
    if not sep or not scheme.startswith("postgresql"):
        raise ValueError(f"not a PostgreSQL URL: {url!r}")
    return f"postgresql://{rest}"


@contextmanager
def fresh_postgres(base_url: str) -> Iterator[str]:
    """A new database next to `base_url`'s, dropped (even on errors) when the block ends."""
    import psycopg

    name = "emirax_bench_" + secrets.token_hex(4)
    admin = libpq_dsn(base_url)
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f"create database {name}")
    try:
        yield base_url.rsplit("/", 1)[0] + "/" + name
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f"drop database if exists {name} with (force)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`python -m emirax serve` in a subprocess; its output goes to a log file, shown on failure."""

    def __init__(self, db_url: str, home: Path, admin_token: str, workers: int = 1) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log_path = home / "server.log"
        env = {**os.environ, "EMIRAX_HOME": str(home), "EMIRAX_ADMIN_TOKEN": admin_token,
               "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
        self.log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "emirax", "serve", "--port", str(self.port), "--db", db_url,
             "--workers", str(workers)],
            env=env, stdout=self.log, stderr=subprocess.STDOUT, cwd=ROOT)

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the server exited ({self.proc.returncode}):\n{self.log_tail()}")
            try:
                if httpx.get(f"{self.base}/healthz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"the server did not answer /healthz in {timeout:.0f} s:\n{self.log_tail()}")

    def log_tail(self, lines: int = 30) -> str:
        self.log.flush()
        text = self.log_path.read_text(encoding="utf-8", errors="replace")
        return "\n".join(text.splitlines()[-lines:])

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.log.close()


def proc_table() -> dict[int, tuple[int, str, float]]:
    """pid -> (parent pid, command name, CPU seconds so far), from Linux /proc ({} elsewhere)."""
    table: dict[int, tuple[int, str, float]] = {}
    tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    for entry in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = entry.read_text()
        except OSError:
            continue
        name = text[text.find("(") + 1:text.rfind(")")]
        rest = text.rsplit(")", 1)[1].split()
        table[int(entry.parent.name)] = (int(rest[1]), name, (int(rest[11]) + int(rest[12])) / tick)
    return table


def family_cpu(table: dict[int, tuple[int, str, float]], root: int) -> float:
    """CPU seconds in `table` of the process `root` and its live descendants."""
    family, frontier = {root}, [root]
    while frontier:
        parent = frontier.pop()
        kids = [pid for pid, (ppid, _, _) in table.items() if ppid == parent and pid not in family]
        family.update(kids)
        frontier += kids
    return sum(table[pid][2] for pid in family if pid in table)


def db_cpu(table: dict[int, tuple[int, str, float]]) -> float:
    """CPU seconds in `table` of every PostgreSQL process on the machine (its backends for ours)."""
    return sum(cpu for _, name, cpu in table.values() if name.startswith("postgres"))


def build_orders_bundle(folder: Path) -> bytes:
    path = folder / "orders.emx"
    path.write_text(ORDERS, encoding="utf-8")
    result = pipeline.build(path, cache_dir=False)
    if result.ir is None:
        raise RuntimeError(f"the ORDERS workload does not compile: {result}")
    return build_bundle(result.ir, version="1.0.0", sources={})


def set_up_tenant(base: str, admin_token: str, bundle: bytes) -> str:
    """A tenant with the ORDERS bundle active; returns the tenant's token."""
    with httpx.Client(base_url=base, timeout=30) as c:
        r = c.post("/v1/tenants", json={"name": "bench-" + secrets.token_hex(3)},
                   headers={"Authorization": f"Bearer {admin_token}"})
        r.raise_for_status()
        token = r.json()["token"]
        r = c.post("/v1/bundles", content=bundle, headers={"Authorization": f"Bearer {token}"})
        r.raise_for_status()
        if not r.json()["active"]:
            raise RuntimeError(f"the uploaded bundle is not active: {r.text}")
    return token


# ── the HTTP load ──────────────────────────────────────────────────────────────────────────────


@dataclass
class Tally:
    """What one client saw: latencies and completions inside the measured window, errors at any time."""

    start_ms: list[float] = field(default_factory=list)
    add_ms: list[float] = field(default_factory=list)
    completed: int = 0
    errors: list[str] = field(default_factory=list)


class Window:
    """The measured interval: requests that finish inside [begin, end) count."""

    def __init__(self) -> None:
        self.begin = float("inf")
        self.end = float("inf")

    def inside(self, t: float) -> bool:
        return self.begin <= t < self.end


class Client:
    """One kept-alive HTTP/1.1 connection through the standard library's http.client. A
    benchmark's load competes with the server and PostgreSQL for the same cores, so it should
    cost as little as it can: http.client spends a fraction of httpx's CPU per request."""

    def __init__(self, base: str, token: str) -> None:
        where = urlsplit(base)
        self.conn = http.client.HTTPConnection(where.hostname or "127.0.0.1", where.port, timeout=30)
        self.headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}

    def post(self, path: str, body: bytes) -> tuple[int, bytes]:
        self.conn.request("POST", path, body=body, headers=self.headers)
        response = self.conn.getresponse()
        return response.status, response.read()

    def close(self) -> None:
        self.conn.close()


START_JSON, FACTS_JSON = json.dumps(START_BODY).encode(), json.dumps(FACTS_BODY).encode()


def client_loop(base: str, token: str, window: Window, stop: threading.Event, tally: Tally) -> None:
    """Start a workflow, add the fact that completes it, again, until `stop`. A transport error
    (the server gone, a timeout) is kept and ends this client: the run is then reported failed."""
    client = Client(base, token)
    try:
        _workflows(client, window, stop, tally)
    except (OSError, http.client.HTTPException) as exc:
        tally.errors.append(f"{type(exc).__name__}: {exc}")
    finally:
        client.close()


def _workflows(c: Client, window: Window, stop: threading.Event, tally: Tally) -> None:
    clock = time.perf_counter
    while not stop.is_set():
        t0 = clock()
        answer = c.post("/v1/workflows", START_JSON)
        t1 = clock()
        wid = _expect("/v1/workflows", answer, 201, "waiting", tally)
        if window.inside(t1):
            tally.start_ms.append((t1 - t0) * 1000)
        if wid is None:
            continue
        path = f"/v1/workflows/{wid}/facts"
        answer = c.post(path, FACTS_JSON)
        t2 = clock()
        done = _expect(path, answer, 200, "completed", tally)
        if window.inside(t2):
            tally.add_ms.append((t2 - t1) * 1000)
            tally.completed += done is not None


def _expect(path: str, answer: tuple[int, bytes], code: int, status: str, tally: Tally) -> str | None:
    """The workflow id when the answer is right; else None, with the error kept (a wrong answer
    counts during the warm-up too: the figures are only worth having if every answer is right)."""
    got, body = answer
    if got == code:
        doc = json.loads(body)
        if doc.get("status") == status:
            return doc["id"]
        problem = f"{path}: status {doc.get('status')!r}, expected {status!r}"
    else:
        problem = f"{path}: HTTP {got} {body[:200].decode(errors='replace')}"
    tally.errors.append(problem)
    return None


@dataclass
class HttpResult:
    clients: int
    seconds: float
    steps: int
    workflows: int
    start_ms: list[float]
    add_ms: list[float]
    errors: list[str]
    server_cpu: float  # server CPU seconds per wall second in the window
    client_cpu: float  # this process's (the load's) CPU seconds per wall second
    db_cpu: float  # every PostgreSQL process's CPU seconds per wall second (0 on SQLite)

    @property
    def steps_per_s(self) -> float:
        return self.steps / self.seconds

    @property
    def workflows_per_s(self) -> float:
        return self.workflows / self.seconds


def run_http(server: Server, token: str, clients: int, warmup: float, seconds: float) -> HttpResult:
    window, stop = Window(), threading.Event()
    tallies = [Tally() for _ in range(clients)]
    threads = [threading.Thread(target=client_loop, args=(server.base, token, window, stop, t),
                                daemon=True) for t in tallies]
    for t in threads:
        t.start()
    time.sleep(warmup)
    table0, own0, begin = proc_table(), _own_cpu(), time.perf_counter()
    window.end = begin + seconds  # end first: no client may see a window without its end
    window.begin = begin
    time.sleep(seconds)
    table1, own1 = proc_table(), _own_cpu()
    pid = server.proc.pid  # with its uvicorn worker processes, if any
    stop.set()
    for t in threads:
        t.join(timeout=60)
    start_ms = [x for t in tallies for x in t.start_ms]
    add_ms = [x for t in tallies for x in t.add_ms]
    return HttpResult(
        clients=clients, seconds=seconds, steps=len(start_ms) + len(add_ms),
        workflows=sum(t.completed for t in tallies), start_ms=start_ms, add_ms=add_ms,
        errors=[e for t in tallies for e in t.errors],
        server_cpu=(family_cpu(table1, pid) - family_cpu(table0, pid)) / seconds,
        client_cpu=(own1 - own0) / seconds, db_cpu=(db_cpu(table1) - db_cpu(table0)) / seconds)


def _own_cpu() -> float:
    t = os.times()
    return t.user + t.system


def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100); NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * p // 100))
    return ordered[int(rank) - 1]


# ── pgbench ────────────────────────────────────────────────────────────────────────────────────


def prepare_pgbench(db_url: str) -> None:
    import psycopg

    with psycopg.connect(libpq_dsn(db_url), autocommit=True) as conn:
        conn.execute("create table bench_one (id bigserial primary key, v text)")


def run_pgbench(pgbench: str, db_url: str, clients: int, seconds: int, script: Path) -> float:
    """pgbench's tps (without the initial connection time) for one-row inserts at `clients`."""
    cmd = [pgbench, "-n", "-c", str(clients), "-j", str(clients), "-T", str(seconds),
           "-f", str(script), libpq_dsn(db_url)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60)
    if proc.returncode != 0:
        raise RuntimeError(f"pgbench failed ({proc.returncode}):\n{proc.stderr}")
    found = re.search(r"^tps = ([\d.]+) \(without initial connection time\)", proc.stdout, re.M)
    if found is None:
        raise RuntimeError(f"no tps in pgbench's output:\n{proc.stdout}")
    return float(found.group(1))


# ── the report ─────────────────────────────────────────────────────────────────────────────────

HEADER = (f"{'clients':>7}  {'steps/s':>8}  {'workflows/s':>11}  {'start p50':>9}  {'start p99':>9}  "
          f"{'add p50':>7}  {'add p99':>7}  {'pgbench tps':>11}  {'ratio':>6}  {'server cpu':>10}  "
          f"{'load cpu':>8}  {'db cpu':>6}  {'ms cpu/step':>11}")


def row(r: HttpResult, tps: float | None) -> str:
    ratio = f"{r.steps_per_s / tps:6.3f}" if tps else f"{'-':>6}"
    pg = f"{tps:11,.0f}" if tps else f"{'-':>11}"
    return (f"{r.clients:>7}  {r.steps_per_s:8,.0f}  {r.workflows_per_s:11,.0f}  "
            f"{percentile(r.start_ms, 50):9.1f}  {percentile(r.start_ms, 99):9.1f}  "
            f"{percentile(r.add_ms, 50):7.1f}  {percentile(r.add_ms, 99):7.1f}  {pg}  {ratio}  "
            f"{r.server_cpu:10.2f}  {r.client_cpu:8.2f}  {r.db_cpu:6.2f}  {_cpu_per_step(r):>11}")


def _cpu_per_step(r: HttpResult) -> str:
    """Server / database milliseconds of CPU per step: what a step costs, whatever the load."""
    if not r.steps:
        return "-"
    per = 1000 / r.steps_per_s
    return f"{r.server_cpu * per:.2f}/{r.db_cpu * per:.2f}"


def verdicts(results: list[tuple[HttpResult, float | None]]) -> tuple[list[str], bool]:
    """The lines saying whether each target is met, and whether all measured ones are."""
    lines, ok = [], True
    for r, tps in results:
        if tps:
            ratio = r.steps_per_s / tps
            met = ratio >= MIN_RATIO
            ok &= met
            aim = "met" if ratio >= AIM_RATIO else "not met"
            as_part = f" = 1/{1 / ratio:.0f}" if ratio else ""
            lines.append(f"steps/pgbench at {r.clients} clients = {ratio:.3f}{as_part} (target "
                         f">= 1/6: {'met' if met else 'MISSED'}; aim 1/3: {aim})")
            lines.append(ceiling(r, tps))
    at = [r for r, _ in results if r.clients == ADD_P99_CLIENTS]
    if at:
        p99 = percentile(at[0].add_ms, 99)
        met = p99 < ADD_P99_MS
        ok &= met
        lines.append(f"add-facts p99 at {ADD_P99_CLIENTS} clients = {p99:.1f} ms "
                     f"(target < {ADD_P99_MS:.0f} ms: {'met' if met else 'MISSED'})")
    else:
        lines.append(f"add-facts p99 at {ADD_P99_CLIENTS} clients: not measured (no run at "
                     f"{ADD_P99_CLIENTS} clients)")
    return lines, ok


def ceiling(r: HttpResult, tps: float, cores: int | None = None) -> str:
    """What the machine could carry at this step's CPU cost: every CPU second a step took (the
    server's, PostgreSQL's and the load's, all on the same cores) against the cores there are,
    beside what 1/6 of pgbench would need. It says whether a missed ratio is the server's
    waiting or the machine's limit."""
    cores = cores or os.cpu_count() or 1
    if not r.steps:
        return f"  cpu at {r.clients} clients: no steps measured"
    per_step = (r.server_cpu + r.db_cpu + r.client_cpu) / r.steps_per_s * 1000
    return (f"  cpu at {r.clients} clients: {per_step:.2f} ms a step in all (server "
            f"{r.server_cpu / r.steps_per_s * 1000:.2f}, database {r.db_cpu / r.steps_per_s * 1000:.2f}, "
            f"load {r.client_cpu / r.steps_per_s * 1000:.2f}): {cores} cores carry at most "
            f"{cores * 1000 / per_step:,.0f} steps/s; 1/6 of pgbench is {tps * MIN_RATIO:,.0f}")


# ── the run ────────────────────────────────────────────────────────────────────────────────────


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clients", default="1,4,16", help="comma-separated client counts")
    p.add_argument("--seconds", type=float, default=6.0, help="measured seconds per client count")
    p.add_argument("--warmup", type=float, default=1.5, help="warm-up seconds per client count")
    p.add_argument("--pgbench-seconds", type=int, default=5, help="pgbench -T per client count")
    p.add_argument("--db-url", default=DEFAULT_DB_URL,
                   help="PostgreSQL URL whose server gets the temporary database")
    p.add_argument("--sqlite", action="store_true", help="the embedded SQLite file instead (no pgbench)")
    p.add_argument("--check", action="store_true", help="exit 1 when a target is missed")
    p.add_argument("--workers", type=int, default=1, help="emirax serve --workers (server processes)")
    args = p.parse_args(argv)
    args.client_counts = [int(c) for c in args.clients.split(",") if c.strip()]
    if not args.client_counts or min(args.client_counts) < 1:
        p.error("--clients takes positive integers, e.g. 1,4,16")
    return args


def _sigterm_exits() -> None:
    """SIGTERM unwinds like Ctrl-C, so the server is stopped and the database dropped."""
    def handler(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)
    signal.signal(signal.SIGTERM, handler)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    _sigterm_exits()
    pgbench = None if args.sqlite else shutil.which("pgbench")
    with ExitStack() as stack:
        home = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="emirax-bench-")))
        if args.sqlite:
            db_url, where = f"sqlite:///{home / 'emirax.db'}", "SQLite file (WAL) in a temporary folder"
        else:
            db_url = stack.enter_context(fresh_postgres(args.db_url))
            where = f"PostgreSQL, fresh database {db_url.rsplit('/', 1)[1]} (dropped at the end)"
            if pgbench:
                prepare_pgbench(db_url)
        admin = "admin-" + secrets.token_hex(8)
        bundle = build_orders_bundle(home)
        server = Server(db_url, home, admin, args.workers)
        stack.callback(server.stop)
        server.wait_ready()
        token = set_up_tenant(server.base, admin, bundle)
        _print_preamble(where, args, pgbench)
        results = _measure_all(server, token, db_url, pgbench, home, args)
    return _report(results, args, pgbench)


def _print_preamble(where: str, args: argparse.Namespace, pgbench: str | None) -> None:
    print(f"database: {where}")
    print(f"server: `emirax serve --workers {args.workers}` = uvicorn with {args.workers} worker "
          "process(es) (FastAPI runs the sync routes in each one's thread pool)")
    print(f"workload: {WORKFLOW} (no functions): start with 2 facts -> waiting (1 step), "
          "add 1 fact -> completed (1 step)")
    print(f"load: C threads in this process, one http.client connection each; {args.warmup:g} s warm-up, "
          f"{args.seconds:g} s measured per client count")
    if args.sqlite:
        print("reference: none (SQLite run: no pgbench ratio)")
    elif pgbench is None:
        print("reference: pgbench is not installed (not on PATH): no ratio")
    else:
        print(f"reference: pgbench -n -c C -j C -T {args.pgbench_seconds} of `{PGBENCH_SCRIPT.strip()}` "
              "on the same database, right after each HTTP run")
    print(f"machine: {os.cpu_count()} cores, load average {_load_average()} before the run; "
          "latencies in ms; cpu = CPU seconds per wall second (db: every PostgreSQL process); "
          "ms cpu/step = server/db CPU milliseconds per step\n")


def _load_average() -> str:
    """Other work on the machine skews every figure; the 1-minute load average says how much."""
    try:
        return f"{os.getloadavg()[0]:.2f}"
    except OSError:
        return "unknown"


def _measure_all(server: Server, token: str, db_url: str, pgbench: str | None, home: Path,
                 args: argparse.Namespace) -> list[tuple[HttpResult, float | None]]:
    script = home / "insert.sql"
    script.write_text(PGBENCH_SCRIPT, encoding="utf-8")
    print(HEADER, flush=True)
    results = []
    for clients in args.client_counts:
        r = run_http(server, token, clients, args.warmup, args.seconds)
        if server.proc.poll() is not None:
            raise RuntimeError(f"the server exited ({server.proc.returncode}):\n{server.log_tail()}")
        tps = run_pgbench(pgbench, db_url, clients, args.pgbench_seconds, script) if pgbench else None
        print(row(r, tps), flush=True)
        results.append((r, tps))
    return results


def _report(results: list[tuple[HttpResult, float | None]], args: argparse.Namespace,
            pgbench: str | None) -> int:
    print()
    errors = [e for r, _ in results for e in r.errors]
    if errors:
        print(f"ERRORS: {len(errors)} wrong answers, e.g. {errors[0]}")
    lines, ok = verdicts(results)
    for line in lines:
        print(line)
    if errors:
        return 1
    return 1 if args.check and not ok else 0


if __name__ == "__main__":
    sys.exit(main())
