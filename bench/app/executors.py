"""Executors run many independent runs (compare, sweeps). Local processes by default.

An executor takes a function and a list of argument tuples and yields ``(index, result,
error)`` as runs finish, so the caller can keep going when one run fails.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import secrets
import signal
import socket
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from typing import Any, Protocol

from bench.core.errors import BenchError
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
        stopped = False
        try:
            futures = {pool.submit(_call, fn, args): i for i, args in enumerate(jobs)}
            for fut in as_completed(futures):
                result, err = fut.result()
                yield futures[fut], result, err
        except KeyboardInterrupt:  # Ctrl-C: queued runs never start, running ones end KILLED
            for fut in futures:
                fut.cancel()
            _stop(list((getattr(pool, "_processes", {}) or {}).values()))
            stopped = True
            raise
        finally:
            pool.shutdown(wait=not stopped, cancel_futures=True)


def _stop(processes, grace_s: float = 5.0) -> None:
    """SIGTERM the workers (their runs end KILLED), SIGKILL any still there after ``grace_s``
    (its run is then marked KILLED by the next command that opens the store)."""
    for proc in processes:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGTERM)
    deadline = time.time() + grace_s
    for proc in processes:
        proc.join(max(0.0, deadline - time.time()))
        if proc.is_alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGKILL)


# what the runs on Ray workers need to see as the driver does
FORWARDED = (
    "BENCH_RESULTS",
    "HF_HOME",
    "HF_HUB_OFFLINE",
    "HF_DATASETS_OFFLINE",
    "MLFLOW_TRACKING_URI",
    "MLFLOW_DISABLE_TELEMETRY",
    "TOKENIZERS_PARALLELISM",
    "RAY_USAGE_STATS_ENABLED",
)


def _ray_call(fn: Callable, args: tuple) -> Any:
    """A run inside a Ray worker: no progress bar there (the driver shows one over all runs)."""
    os.environ["BENCH_PROGRESS"] = "0"
    return fn(*args)


class RayExecutor:
    """Each run a Ray task on a cluster (``address``: an existing one; None: a local one started
    here). A run of ``nproc`` processes gets a placement group of its own, one STRICT_PACK
    bundle of ``nproc`` CPUs (and ``nproc`` GPUs when the cluster has GPUs) on one node; its task
    takes the whole bundle, so Ray sets ``CUDA_VISIBLE_DEVICES`` to those GPUs, and launches the
    run there with torchrun's engine; the group is removed when the run ends. A task whose
    worker dies (a node lost, a preempted or killed process) is retried ``max_retries`` times,
    and the retry resumes the run from its last checkpoint (``bench.app.resume``); a run that
    raises is reported, not retried."""

    def __init__(self, address: str | None, max_retries: int = 2, cpus: float = 1, nproc: int = 1):
        self.address, self.max_retries, self.cpus, self.nproc = address, max_retries, cpus, nproc

    def _connect(self):
        import ray

        if ray.is_initialized():
            return ray
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        env = {"runtime_env": {"env_vars": {k: v for k, v in os.environ.items() if k in FORWARDED}}}
        address = self.address or os.environ.get("RAY_ADDRESS")
        if not address:  # a local cluster on loopback, this machine's cores
            _session_token()
            ray.init(
                include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False, **env
            )
            return ray
        _reachable(address)
        try:
            ray.init(address=address, log_to_driver=False, **env)
        except (ConnectionError, RuntimeError, ray.exceptions.RayError) as e:
            raise BenchError(_cannot_connect(address, e)) from None
        return ray

    def _submit(self, ray, fn, args):
        """(task ref, its placement group: one bundle on one node for a run of several
        processes, None for a one-process run)."""
        from ray.util.placement_group import placement_group
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        cpus = self.cpus * self.nproc
        gpus = self.nproc if self.nproc > 1 and ray.cluster_resources().get("GPU", 0) else 0
        options = {"num_cpus": cpus, "num_gpus": gpus, "max_retries": self.max_retries}
        options["retry_exceptions"] = False
        group = None
        if self.nproc > 1:  # Ray queues the task until its group's bundle is reserved
            bundle = {"CPU": cpus} | ({"GPU": gpus} if gpus else {})
            group = placement_group([bundle], strategy="STRICT_PACK")
            options["scheduling_strategy"] = PlacementGroupSchedulingStrategy(group, 0)
        return ray.remote(_ray_call).options(**options).remote(fn, args), group

    def map(self, fn, jobs):
        from ray.util.placement_group import remove_placement_group

        ray = self._connect()
        pending, groups = {}, {}
        for i, args in enumerate(jobs):
            ref, groups[i] = self._submit(ray, fn, args)
            pending[ref] = i
        try:
            while pending:
                done, _ = ray.wait(list(pending), num_returns=1)
                for ref in done:
                    i = pending.pop(ref)
                    if groups[i] is not None:
                        remove_placement_group(groups[i])
                    try:
                        yield i, ray.get(ref), None
                    except ray.exceptions.RayError as e:
                        cause = getattr(e, "cause", None) or e
                        yield i, None, f"{type(cause).__name__}: {str(cause).strip()[:2000]}"
        except KeyboardInterrupt:  # Ctrl-C: queued runs never start, running ones are stopped
            for ref in pending:
                ray.cancel(ref, force=True)
            raise
        finally:
            for i in pending.values():
                if groups[i] is not None:
                    remove_placement_group(groups[i])


AUTH_HELP = (
    "check the address (--ray-address, RAY_ADDRESS), that the cluster is up (ray status), and, "
    "for a cluster with token authentication, RAY_AUTH_MODE=token with its token in "
    "RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token"
)


def _cannot_connect(address: str, e: BaseException) -> str:
    first = next((line.strip() for line in str(e).splitlines() if line.strip()), type(e).__name__)
    return f"cannot connect to the Ray cluster at {address}: {first[:200]}; {AUTH_HELP}"


def _reachable(address: str, timeout_s: float = 5.0) -> None:
    """A cluster address that nothing answers on is one line at once (Ray itself retries for
    minutes). A ``ray://`` client address and ``auto`` are left to Ray."""
    if address.startswith("ray://") or ":" not in address:
        return
    host, port = address.rsplit(":", 1)
    try:
        socket.create_connection((host, int(port)), timeout=timeout_s).close()
    except (OSError, ValueError) as e:
        raise BenchError(_cannot_connect(address, e)) from None


def _session_token() -> None:
    """Token authentication for a local cluster with a token that lives in this process's
    environment (its Ray processes inherit it): Ray's default writes ``~/.ray/auth_token``,
    and a later ``ray start`` cluster would then require a token its drivers do not send.
    Left alone when the user set RAY_AUTH_MODE or a token of their own."""
    if any(k in os.environ for k in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")):
        return
    from ray._raylet import Config

    os.environ["RAY_AUTH_MODE"] = "token"
    os.environ["RAY_AUTH_TOKEN"] = secrets.token_hex(32)
    Config.initialize("")  # Ray reads its mode from a config cached at import


def executor(name: str, workers: int, nproc: int, address: str | None, max_retries: int, uri: str):
    """The executor ``--executor`` names: local processes (default) or Ray tasks. A Ray cluster
    elsewhere needs a tracking server every node reaches: a SQLite file is refused."""
    if name == "local":
        if address:
            raise BenchError("--ray-address needs --executor ray")
        return LocalExecutor(workers)
    if address and not _loopback(address) and uri.startswith(("sqlite:", "file:")):
        raise BenchError(
            f"--executor ray on the cluster at {address} logs from other machines: use a tracking "
            f"server (--tracking-uri http://HOST:5000, see docs/distributed.md), not {uri}"
        )
    try:
        import ray  # noqa: F401
    except ImportError:
        raise BenchError("--executor ray needs Ray: pip install 'gvpo-bench[ray]'") from None
    return RayExecutor(address, max_retries, cpus=1, nproc=nproc)


def _loopback(address: str) -> bool:
    host = address.removeprefix("ray://").rsplit(":", 1)[0]
    return host in ("127.0.0.1", "localhost", "auto", "local")
