"""SIGTERM as an interruption: a run ends KILLED (not RUNNING forever) when it is terminated,
as it does on Ctrl-C."""

from __future__ import annotations

import signal


class Terminated(KeyboardInterrupt):
    """Raised in the main thread on SIGTERM."""


def terminate_as_interrupt() -> None:
    def handler(signum, frame):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # once: the run's own clean-up goes on
        raise Terminated()

    signal.signal(signal.SIGTERM, handler)
