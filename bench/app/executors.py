"""Executors run many independent runs (compare, sweeps). Local processes by default.

An executor takes a function and a list of argument tuples and yields ``(index, result,
error)`` as runs finish, so the caller can keep going when one run fails.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from typing import Any, Protocol


class Executor(Protocol):
    def map(self, fn: Callable, jobs: list[tuple]) -> Iterator[tuple[int, Any, str | None]]: ...


def _exit_with_parent(parent: int) -> None:
    while True:
        time.sleep(2)
        if os.getppid() != parent:  # the parent died (killed, Ctrl-C): do not run on as an orphan
            os._exit(1)


def _init_worker() -> None:
    os.environ["BENCH_PROGRESS"] = "0"  # the parent shows one bar over all runs
    threading.Thread(target=_exit_with_parent, args=(os.getppid(),), daemon=True).start()


def _call(fn: Callable, args: tuple) -> Any:
    try:
        return fn(*args), None
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
        with ProcessPoolExecutor(self.workers, mp_context=ctx, initializer=_init_worker) as pool:
            futures = {pool.submit(_call, fn, args): i for i, args in enumerate(jobs)}
            for fut in as_completed(futures):
                result, err = fut.result()
                yield futures[fut], result, err
