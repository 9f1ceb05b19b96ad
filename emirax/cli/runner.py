"""`emirax runner`: serve the functions of a Python module to a server (SPEC section 4).

    emirax runner MODULE.py [--server URL] [--token TOKEN] [--concurrency N] [--batch M]
                  [--name NAME] [--function F ...] [--grace SECONDS] [--wait SECONDS]

MODULE.py defines the declared functions (plain callables named like them, or decorated with
`emirax.runner.function`); `--function` serves only the named ones. The runner logs to stderr with
a timestamp: one line at start, one per invocation end (docs/runners.md). SIGTERM or Ctrl-C stops
it gracefully (exit 0); a second one stops it at once. A missing module, a module without
functions, an unknown `--function` or a token the server refuses is one `emirax: error:` line, or
one log line, and exit 1.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Annotated, Any

import typer

from emirax.cli.client import DEFAULT_SERVER, Server, Token
from emirax.cli.output import error_message, fail
from emirax.local import FunctionsError, load_functions
from emirax.runner import Runner

__all__ = ["register", "select"]

log = logging.getLogger("emirax.runner")


def register(app: typer.Typer) -> None:
    app.command("runner")(runner)


def runner(
    module: Annotated[Path, typer.Argument(help="The Python module with the functions.")],
    server: Server = DEFAULT_SERVER,
    token: Token = "",
    concurrency: Annotated[int, typer.Option(min=1, max=1024, help="Invocations run at once.")] = 4,
    batch: Annotated[int | None, typer.Option(min=1, max=100, help="Invocations leased at most per request (default: --concurrency).")] = None,
    name: Annotated[str | None, typer.Option("--name", help="This runner's name in logs and `leased by` (default: host:pid).")] = None,
    function: Annotated[list[str] | None, typer.Option("--function", "-f", help="Serve only this function (repeatable).")] = None,
    grace: Annotated[float, typer.Option(min=0, help="Seconds running invocations get to finish when stopping.")] = 30.0,
    wait: Annotated[float, typer.Option(min=0, max=60, help="Seconds a lease request waits for work (the long poll).")] = 20.0,
) -> None:
    """Lease invocations of the module's functions from the server, run them, report results."""
    if not token:
        fail("no token: pass --token or set EMIRAX_TOKEN")
    try:
        fns = select(load_functions(module), function or [], module)
    except FunctionsError as exc:
        fail(error_message(exc))
    try:
        worker = Runner(fns, server or DEFAULT_SERVER, token, concurrency=concurrency, batch=batch,
                        name=name, grace=grace, wait=wait)
    except ValueError as exc:
        fail(str(exc))
    _setup_logging()
    previous = _on_signals(worker)  # before the start line: who sees it may signal at once
    log.info("runner %s serving %s from %s, concurrency %d", worker.name, ", ".join(sorted(fns)),
             worker.server, concurrency)
    try:
        code = worker.run()
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    if worker.running:
        # Functions still running after the grace period (their invocations were released):
        # the interpreter would wait for their threads at exit, so leave without them.
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    if code:
        raise typer.Exit(code)


def select(fns: dict[str, Callable[..., Any]], only: list[str],
           module: Path) -> dict[str, Callable[..., Any]]:
    """The functions to serve: all of the module's, or the ones `--function` names."""
    if not fns:
        raise FunctionsError(f"{module} defines no functions: define them as plain callables "
                             "named like the declared functions, or with @emirax.runner.function")
    unknown = [f for f in only if f not in fns]
    if unknown:
        raise FunctionsError(f"{module} defines no function {', '.join(map(repr, unknown))} "
                             f"(it defines {', '.join(sorted(fns))})")
    return {f: fns[f] for f in only} if only else fns


def _setup_logging() -> None:
    """Timestamped lines on stderr, for the runner and for the functions' own logging."""
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(message)s")
    for chatty in ("httpx", "httpcore"):  # one INFO line per request otherwise
        logging.getLogger(chatty).setLevel(logging.WARNING)


def _on_signals(worker: Runner) -> dict[int, Any]:
    """SIGTERM and SIGINT stop the runner gracefully; a second one stops it at once."""
    count = [0]

    def handle(signum: int, frame: FrameType | None) -> None:
        count[0] += 1
        # Not here: a handler interrupts the main thread, maybe inside a lock stop() takes.
        threading.Thread(target=worker.stop, kwargs={"now": count[0] > 1}, daemon=True).start()

    previous: dict[int, Any] = {}
    for signum in (signal.SIGTERM, signal.SIGINT):
        previous[signum] = signal.signal(signum, handle)
    return previous
