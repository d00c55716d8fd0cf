"""The error boundary of every command: a user's mistake is one line and exit 2, a failed run
one line and exit 1, an interruption 130 (SIGINT) or 143 (SIGTERM); ``--debug`` (or
BENCH_DEBUG=1) shows the traceback instead."""

from __future__ import annotations

import functools
import os
import sys

import typer
from rich.markup import escape

from bench.core import signals
from bench.core.errors import BenchError, RunFailed
from bench.core.progress import console
from bench.core.signals import terminate_as_interrupt


def user_errors(fn):
    """The error boundary of every command: a user's mistake is one line and exit 2, a failed
    run one line and exit 1; ``--debug`` (or BENCH_DEBUG=1) shows the traceback instead."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (typer.Exit, KeyboardInterrupt):
            raise
        except Exception as e:
            if os.environ.get("BENCH_LAUNCH_DIR"):  # a rank of a sharded run
                from bench.distributed import record_failure

                record_failure(e)  # for rank 0 and the launcher
            if os.environ.get("BENCH_DEBUG") == "1":
                raise
            line, code = error_line(e)
            console.print(f"[red]error:[/red] {escape(line)}", highlight=False, soft_wrap=True)
            raise typer.Exit(code) from None

    return wrapper


def error_line(e: Exception) -> tuple[str, int]:
    """(one line, exit code) for an exception that reached a command."""
    if isinstance(e, BenchError):
        return str(e), 2
    if isinstance(e, RunFailed):
        return str(e), 1
    if isinstance(e, OSError) and e.strerror:  # disk full, permissions, a missing file
        where = f" {e.filename}" if e.filename else ""
        return f"cannot use{where}: {e.strerror}", 2
    first = (str(e).strip().splitlines() or [""])[0][:300]
    return f"internal error: {type(e).__name__}: {first} (--debug shows the traceback)", 1


def main(app) -> None:
    terminate_as_interrupt()  # SIGTERM ends a run KILLED, as Ctrl-C does
    try:
        code = _invoke(app)
    except KeyboardInterrupt:
        if signals.received["SIGTERM"]:
            console.print("terminated")
            sys.exit(143)
        console.print("interrupted")
        sys.exit(130)
    sys.exit(code)


def _invoke(app) -> int:
    """Run the app; a usage error is one line and exit 2."""
    try:
        code = app(standalone_mode=False)
        if code == 130:  # typer returns its answer to KeyboardInterrupt (SIGINT, our SIGTERM)
            raise KeyboardInterrupt
        return code if isinstance(code, int) else 0
    except typer.Exit as e:
        if e.exit_code == 130:  # typer's own answer to KeyboardInterrupt (SIGINT or our SIGTERM)
            raise KeyboardInterrupt from None
        return e.exit_code
    except typer.TyperException as e:  # click's usage errors: a bad option, command or value
        message = e.format_message() if hasattr(e, "format_message") else str(e)
        if type(e).__name__ == "NoArgsIsHelpError":  # `bench` alone: the help
            console.print(message, highlight=False, markup=False)
            return 0
        console.print(f"[red]error:[/red] {escape(message.splitlines()[0])}", highlight=False)
        return getattr(e, "exit_code", 2)
