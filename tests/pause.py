"""``python -m tests.pause EVENT@STEP ARGS``: ``bench ARGS`` that stops itself with SIGSTOP when
the loop reaches EVENT of step STEP, so a test can kill it there with a real signal, timed by
what the run did and not by the clock. EVENT: ``drawn`` (completions sampled, not yet scored),
``updated`` (the optimiser stepped, nothing of the step logged), ``logged`` (the step's metrics
sent), ``checkpointed`` (its evals and checkpoint written)."""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

import bench.loop as loop


def pause_at(name: str, step: int) -> None:
    draw, log, after = loop.draw, loop.log, loop.after_step
    at = {"step": 0}

    def stop(event: str) -> None:
        if event == name and at["step"] == step:
            os.kill(os.getpid(), signal.SIGSTOP)

    def drawing(run):
        at["step"] += 1  # the step after the last one logged (a fresh run: log(0) came first)
        got = draw(run)
        stop("drawn")
        return got

    def logging(run, metrics, s):
        at["step"] = s
        if s > 0:
            stop("updated")
        log(run, metrics, s)
        if s > 0:
            stop("logged")

    def after_step(run, s):
        after(run, s)
        stop("checkpointed")

    loop.draw, loop.log, loop.after_step = drawing, logging, after_step


def stopped(pid: int, timeout: float = 300) -> None:
    """Until process ``pid`` is stopped (state T in /proc), or fail if it ends first."""
    stat = Path(f"/proc/{pid}/stat")
    deadline = time.time() + timeout
    while stat.read_text().rsplit(")", 1)[1].split()[0] not in ("T", "Z"):
        assert time.time() < deadline, f"process {pid} never reached its pause"
        time.sleep(0.02)
    assert stat.read_text().rsplit(")", 1)[1].split()[0] == "T", "the run ended before its pause"


if __name__ == "__main__":
    event, _, step = sys.argv[1].partition("@")
    pause_at(event, int(step))
    sys.argv = ["bench", *sys.argv[2:]]
    from bench.app.cli import main

    main()
