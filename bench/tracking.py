"""MLflow tracking. Default store: embedded SQLite under results/; MLFLOW_TRACKING_URI or
``--tracking-uri`` (a server URL or another sqlite path) overrides it.

Each run logs flattened params, tags (git sha, dirty flag, package versions, task version),
step metrics (batched), and artifacts (resolved config YAML, a JSONL sample of completions).
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import time
from importlib import metadata
from pathlib import Path
from typing import Any

from bench.core.errors import BenchError
from bench.core.paths import results_dir

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")  # no INFO lines when a store is created


def default_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{results_dir() / 'mlflow.db'}"


def resolve_uri(uri: str | None) -> str:
    return uri or default_uri()


def git_info() -> dict[str, str]:
    root = Path(__file__).resolve().parent.parent
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return {"git.sha": "unknown", "git.dirty": "unknown"}
    return {"git.sha": sha or "unknown", "git.dirty": str(bool(dirty)).lower()}


def package_versions() -> dict[str, str]:
    out = {}
    for pkg in ("gvpo-bench", "torch", "transformers", "trl", "mlflow"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            out[f"version.{pkg}"] = metadata.version(pkg)
    return out


def process_tags() -> dict[str, str]:
    """Who runs this: the host and pid (dead runs are found by them), a heartbeat, and the
    machine (CPU model, torch threads, device) that reports list and warn about when mixed."""
    import torch

    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    return {
        "bench.host": socket.gethostname(),
        "bench.pid": str(os.getpid()),
        "bench.heartbeat": str(int(time.time())),
        "machine.cpu": cpu_model(),
        "machine.threads": str(torch.get_num_threads()),
        "machine.device": device,
    }


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    import platform

    return platform.processor() or platform.machine()


def client(uri: str):
    """An MLflow client on a store that exists, is readable, and tells the truth about its runs
    (see ``open_store``)."""
    from mlflow.tracking import MlflowClient

    open_store(uri)
    return MlflowClient(tracking_uri=uri)


_OPENED: set[str] = set()


def sqlite_path(uri: str) -> Path | None:
    return Path(uri.removeprefix("sqlite:///")) if uri.startswith("sqlite:///") else None


def open_store(uri: str) -> None:
    """Once per process and URI: create and migrate a SQLite store under an inter-process file
    lock (MLflow's first-time migrations race: two runs started together on a fresh folder can
    corrupt it), turn an unreadable store into one line, and mark runs of this host whose
    process is gone as KILLED."""
    if uri in _OPENED:
        return
    from filelock import FileLock
    from mlflow.tracking import MlflowClient

    path = sqlite_path(uri)
    lock = contextlib.nullcontext()
    if path is not None:
        _writable_folder(path.parent)
        lock = FileLock(str(path) + ".lock", timeout=300)
    try:
        with lock:
            c = MlflowClient(tracking_uri=uri)
            c.search_experiments(max_results=1)  # creates and migrates the schema if needed
            reap_dead_runs(c)
    except BenchError:
        raise
    except Exception as e:  # sqlalchemy/MLflow errors: not a database, locked, read-only, ...
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise BenchError(f"tracking store {uri} cannot be used: {first}") from None
    _OPENED.add(uri)


def _writable_folder(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise BenchError(f"cannot create the results folder {folder}: {e.strerror}") from None
    if not os.access(folder, os.W_OK):
        raise BenchError(f"the results folder {folder} is not writable (BENCH_RESULTS moves it)")


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def reap_dead_runs(c) -> list[str]:
    """RUNNING runs started on this host whose process is gone -> KILLED, tagged why."""
    host = socket.gethostname()
    exps = [e.experiment_id for e in c.search_experiments()]
    if not exps:
        return []
    dead = []
    for run in c.search_runs(exps, "attributes.status = 'RUNNING'", max_results=1000):
        tags = run.data.tags
        pid = tags.get("bench.pid")
        if (
            tags.get("bench.host") != host
            or not pid
            or not pid.isdigit()
            or process_alive(int(pid))
        ):
            continue
        c.set_tag(run.info.run_id, "bench.end", f"process {pid} on {host} was gone")
        c.set_terminated(run.info.run_id, status="KILLED")
        dead.append(run.info.run_id)
    return dead


def experiment_id(uri: str, name: str, create: bool = True) -> str | None:
    c = client(uri)
    exp = c.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    if not create:
        return None
    location = None
    if uri.startswith("sqlite:") or uri.startswith("file:") or "://" not in uri:
        location = (results_dir() / "mlartifacts" / name).as_uri()
    return c.create_experiment(name, artifact_location=location)


class Tracker:
    """One MLflow run. Metrics are buffered for a few seconds; ``end`` (called from the loop's
    ``finally``, also on errors and Ctrl-C) flushes them, so a failing run keeps its curves."""

    def __init__(
        self, uri: str, experiment: str, run_name: str, params: dict[str, Any], tags: dict[str, str]
    ):
        from mlflow.entities import Param

        self.uri = uri
        self.client = client(uri)
        exp = experiment_id(uri, experiment)
        all_tags = {**git_info(), **package_versions(), **process_tags(), **tags}
        self.run_id = self.client.create_run(exp, run_name=run_name, tags=all_tags).info.run_id
        items = [Param(k, str(v)) for k, v in params.items()]
        for s in range(0, len(items), 100):
            self.client.log_batch(self.run_id, params=items[s : s + 100])
        self._start_buffer()

    def _start_buffer(self) -> None:
        from bench.spool import Guard

        self._buffer: list[list] = []  # [key, value, timestamp ms, step]
        self._last_flush = time.time()
        self.flush_s = 5.0
        self.sent: set[tuple[str, int]] = set()  # (metric, step) already in MLflow (a resume)
        self.send = Guard(self.client, self.uri, self.run_id)  # or spool, in an outage

    @classmethod
    def resume(cls, uri: str, run_id: str, after_step: int) -> Tracker:
        """The MLflow run ``run_id`` continued (status RUNNING again, this process's tags). The
        steps after ``after_step`` are computed again; what of them already reached MLflow
        before the run stopped is not sent a second time (a spool left by the stopped run is
        sent first)."""
        self = cls.__new__(cls)
        self.uri, self.client, self.run_id = uri, client(uri), run_id
        self._start_buffer()
        if self.send.spool.active:
            self.send.spool.replay(self.client)
        for key in self.client.get_run(run_id).data.metrics:
            for m in self.client.get_metric_history(run_id, key):
                if m.step > after_step:
                    self.sent.add((key, m.step))
        self.client.update_run(run_id, status="RUNNING")
        with contextlib.suppress(Exception):  # why it stopped: no longer true
            self.client.delete_tag(run_id, "bench.end")
        self.set_tags(process_tags() | {"bench.resumed_from_step": after_step})
        return self

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        """Buffered: sent every ``flush_s`` seconds (and by flush/end), one SQL batch for many steps.
        A SQLite insert costs ~10 ms, more than a whole step of a small model."""
        ts = int(time.time() * 1000)
        self._buffer += [
            [k, float(v), ts, step] for k, v in metrics.items() if (k, step) not in self.sent
        ]
        if time.time() - self._last_flush > self.flush_s or len(self._buffer) >= 1000:
            self.flush()

    def flush(self) -> None:
        items, self._buffer = self._buffer, []
        heartbeat = [["bench.heartbeat", str(int(time.time()))]]
        for s in range(0, max(len(items), 1), 1000):
            self.send("log_batch", metrics=items[s : s + 1000], tags=heartbeat)
        self._last_flush = time.time()

    def set_tags(self, tags: dict[str, str]) -> None:
        self.send("log_batch", tags=[[k, str(v)] for k, v in tags.items()])

    def log_text(self, text: str, name: str) -> None:
        self.send("log_text", text=text, name=name)

    def end(self, status: str = "FINISHED") -> None:
        self.flush()
        self.send("set_terminated", status=status)
        self.send.close()


class RankTracker:
    """What ranks other than 0 of a sharded run have instead of a ``Tracker``: rank 0 alone
    talks to MLflow, the others know its run id (for their error files and checkpoints)."""

    def __init__(self, run_id: str):
        self.run_id = run_id

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        pass

    def flush(self) -> None:
        pass

    def set_tags(self, tags: dict[str, str]) -> None:
        pass

    def log_text(self, text: str, name: str) -> None:
        pass

    def end(self, status: str = "FINISHED") -> None:
        pass
