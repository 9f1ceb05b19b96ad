"""The `emirax` command: one typer application, one module per command group.

    emirax check PATH...                 emirax/cli/build.py
    emirax compile PATH -o FILE.emxb     emirax/cli/build.py
    emirax run PATH --workflow W ...     emirax/cli/run.py
    emirax test PROJECT                  emirax/cli/test.py
    emirax serve, tenants, upload,       emirax/cli/client.py (serve imports server/ when it runs)
      workflows start|list|get|facts|trace
    emirax runner MODULE.py ...          emirax/cli/runner.py (serves functions to a server)

Exit codes (SPEC section 6): 0 ok, 1 a user error (bad rules, bad input, a failed workflow) with a
clear message and no traceback, 2 a usage error (click's own). `main()` is the console script.
"""

from __future__ import annotations

import os
import sys

import typer

from emirax.cli import build, client, run, runner, test
from emirax.cli.output import fail_unexpected

app = typer.Typer(
    name="emirax",
    help="Emirax: write rules, compile them into bundles, run workflows.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
build.register(app)
run.register(app)
test.register(app)
client.register(app)
runner.register(app)


def main() -> None:
    """Entry point of the `emirax` console script."""
    try:
        app()
    except Exception as exc:  # a bug of ours: one line, and the traceback only on request
        if os.environ.get("EMIRAX_DEBUG"):
            raise
        fail_unexpected(exc)
        sys.exit(1)
