"""A configuration is run once, however many comparisons or sweeps ask for it at the same time.

Before a run starts, its process takes the configuration's claim: a lock file under
``<results>/claims/`` (``filelock``: the OS drops it when the process dies, so a killed run's
claim is free at once). A configuration whose claim another process holds is left for later;
once the claim is free, a FINISHED run of it in the store is reported, not run again. Across
machines that share a tracking server but not a results folder, a RUNNING run of the same
configuration on another host whose heartbeat (``bench.heartbeat``, sent with its metrics) is
younger than ``BENCH_STALE_S`` seconds (1800) holds it too; an older one is marked KILLED and
taken over (resumed from its checkpoint when it has one).
"""

from __future__ import annotations

import contextlib
import os
import socket
import time
from collections.abc import Iterator

from filelock import FileLock, Timeout

from bench.config import RunConfig, config_hash
from bench.core.paths import results_dir
from bench.tracking import client, process_alive, resolve_uri


def stale_after_s() -> float:
    return float(os.environ.get("BENCH_STALE_S", "1800"))


@contextlib.contextmanager
def claim(cfg: RunConfig, wait: bool) -> Iterator[bool]:
    """True while this process holds the configuration's claim; False (at once) when another
    process holds it and ``wait`` is False."""
    folder = results_dir() / "claims"
    folder.mkdir(parents=True, exist_ok=True)
    lock = FileLock(folder / f"{config_hash(cfg)}.lock")
    try:
        lock.acquire(timeout=-1 if wait else 0)
    except Timeout:
        yield False
        return
    try:
        yield True
    finally:
        lock.release()


def _runs(cfg: RunConfig, tracking_uri: str | None, status: str, tags: dict | None = None) -> list:
    """Runs of this configuration with this status (and these tags: a sweep's point)."""
    c = client(resolve_uri(tracking_uri or cfg.tracking.uri))
    exp = c.get_experiment_by_name(cfg.tracking.experiment)
    if exp is None:
        return []
    query = f"attributes.status = '{status}' and tags.`bench.config` = '{config_hash(cfg)}'"
    for key, value in (tags or {}).items():
        query += " and tags.`{}` = '{}'".format(key, str(value).replace("'", "\\'"))
    return c.search_runs([exp.experiment_id], query, max_results=100)


def finished(cfg: RunConfig, tracking_uri: str | None, tags: dict | None = None) -> dict | None:
    """The final metrics of a FINISHED run of this configuration (with these tags), or None."""
    runs = _runs(cfg, tracking_uri, "FINISHED", tags)
    if not runs:
        return None
    return dict(runs[0].data.metrics) | {"run_id": runs[0].info.run_id}


def live_elsewhere(cfg: RunConfig, tracking_uri: str | None) -> bool:
    """A RUNNING run of this configuration by a live process: on this host, its pid is alive;
    on another host, its heartbeat is fresh. A dead one (a pid gone here, a stale heartbeat
    elsewhere) is marked KILLED: it is taken over (resumed from its checkpoint)."""
    host, now = socket.gethostname(), time.time()
    live = False
    for run in _runs(cfg, tracking_uri, "RUNNING"):
        tags = run.data.tags
        pid = tags.get("bench.pid", "")
        if tags.get("bench.host") == host:
            if pid.isdigit() and process_alive(int(pid)):
                live = True
                continue
            why = f"process {pid} on {host} was gone"
        else:
            beat = float(tags.get("bench.heartbeat", "0") or 0)
            if now - beat < stale_after_s():
                live = True
                continue
            why = f"no heartbeat for {now - beat:.0f} s: taken over by {host} pid {os.getpid()}"
        c = client(resolve_uri(tracking_uri or cfg.tracking.uri))
        c.set_tag(run.info.run_id, "bench.end", why)
        c.set_terminated(run.info.run_id, status="KILLED")
    return live
