"""Executors run many independent runs (compare, sweeps). Local processes by default.

An executor takes a function and a list of argument tuples and yields ``(index, result,
error)`` as runs finish, so the caller can keep going when one run fails.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import signal
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from typing import Any, Protocol

from bench.core.signals import terminate_as_interrupt

CANCELLED = "cancelled: the comparison was interrupted"


class Executor(Protocol):
    def map(self, fn: Callable, jobs: list[tuple]) -> Iterator[tuple[int, Any, str | None]]: ...


def _exit_with_parent(parent: int) -> None:
    while True:
        time.sleep(2)
        if os.getppid() != parent:  # the parent died (killed, Ctrl-C): do not run on as an orphan
            os._exit(1)


_STOPPING = False  # set in a worker once it was told to stop: queued calls do not start


def _init_worker() -> None:
    os.environ["BENCH_PROGRESS"] = "0"  # the parent shows one bar over all runs
    terminate_as_interrupt()
    threading.Thread(target=_exit_with_parent, args=(os.getppid(),), daemon=True).start()


def _call(fn: Callable, args: tuple) -> Any:
    global _STOPPING
    if _STOPPING:
        return None, CANCELLED
    try:
        return fn(*args), None
    except KeyboardInterrupt:  # SIGTERM from the parent (Ctrl-C there): this run ended KILLED
        _STOPPING = True
        return None, CANCELLED
    except Exception as e:  # reported by the parent; the other runs go on
        return None, f"{type(e).__name__}: {e}\n{traceback.format_exc(limit=5)}"


class SerialExecutor:
    def map(self, fn, jobs):
        for i, args in enumerate(jobs):
            result, err = _call(fn, args)
            yield i, result, err


class LocalExecutor:
    """A process pool (spawned workers, one torch thread each by default)."""

    def __init__(self, workers: int = 2):
        self.workers = workers

    def map(self, fn, jobs):
        if self.workers <= 1:
            yield from SerialExecutor().map(fn, jobs)
            return
        ctx = mp.get_context("spawn")
        pool = ProcessPoolExecutor(self.workers, mp_context=ctx, initializer=_init_worker)
        try:
            futures = {pool.submit(_call, fn, args): i for i, args in enumerate(jobs)}
            for fut in as_completed(futures):
                result, err = fut.result()
                yield futures[fut], result, err
        except KeyboardInterrupt:  # Ctrl-C: queued runs never start, running ones end KILLED
            for fut in futures:
                fut.cancel()
            for pid in list(getattr(pool, "_processes", {}) or {}):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGTERM)
            raise
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
