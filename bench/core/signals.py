"""SIGTERM as an interruption: a run ends KILLED (not RUNNING forever) when it is terminated,
as it does on Ctrl-C."""

from __future__ import annotations

import signal


class Terminated(KeyboardInterrupt):
    """Raised in the main thread on SIGTERM."""


received = {"SIGTERM": False}  # libraries may re-raise the interruption as another exception


def terminate_as_interrupt() -> None:
    def handler(signum, frame):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # once: the run's own clean-up goes on
        received["SIGTERM"] = True
        raise Terminated()

    signal.signal(signal.SIGTERM, handler)
