"""``--nproc N``: a command run as N processes by PyTorch's elastic launcher (what torchrun
runs), on this machine: ``bench run PRESET --nproc 2`` is
``torchrun --standalone --nproc-per-node 2 -m bench run PRESET``. If a rank fails, the launcher
stops the others; this process then names the rank and its error in one line, and marks the
MLflow run FAILED if its rank 0 could not (e.g. killed).
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import uuid

from bench.core.errors import BenchError, RunFailed
from bench.core.paths import results_dir


def torchrun(nproc: int, *args: str) -> list[str]:
    """The torchrun command line that starts ``args`` (a script and its arguments, or ``-m``
    and a module) as ``nproc`` processes on this machine."""
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        str(nproc),
        *args,
    ]


def run_processes(nproc: int, argv: list[str]) -> str | None:
    """Run ``python -m bench *argv`` as ``nproc`` processes of one process group; returns the
    MLflow run id rank 0 opened."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    from bench.distributed import first_failure

    launch = results_dir() / "launches" / uuid.uuid4().hex
    launch.mkdir(parents=True)
    os.environ["BENCH_LAUNCH_DIR"] = str(launch)  # the workers inherit it
    os.environ.setdefault("OMP_NUM_THREADS", str(_threads(nproc)))  # as torchrun would
    for name in list(logging.root.manager.loggerDict):  # the launcher's own log: our one line
        if name.startswith("torch.distributed"):
            logging.getLogger(name).setLevel(logging.CRITICAL)
    config = LaunchConfig(
        min_nodes=1,
        max_nodes=1,
        nproc_per_node=nproc,
        run_id=launch.name,
        rdzv_backend="c10d",
        rdzv_endpoint="127.0.0.1:0",
        local_addr="127.0.0.1",
        max_restarts=0,
        monitor_interval=0.1,
        start_method="spawn",
    )
    try:
        elastic_launch(config, sys.executable)("-m", "bench", *argv)
    except ChildFailedError as e:
        from bench.distributed import World

        rank, line = _cause(e, first_failure(World(launch=launch)))
        _mark_failed(launch, rank, line)
        kind, _, reason = line.partition(": ")
        if kind == "BenchError":  # a mistake in the input, found by the ranks (e.g. the data)
            raise BenchError(f"{reason} (rank {rank} of {nproc})") from None
        raise RunFailed(f"rank {rank} of {nproc} failed: {line}") from None
    run_id = (launch / "run_id").read_text() if (launch / "run_id").exists() else None
    shutil.rmtree(launch, ignore_errors=True)
    return run_id


def run_config(cfg, nproc: int, tracking_uri: str | None, tags: dict, resume=None) -> dict:
    """One run of a comparison or sweep on ``nproc`` processes: its config goes to the ranks as
    the resolved YAML; returns its final metrics, as ``bench.loop.train`` does."""
    import tempfile

    from bench.config import to_yaml
    from bench.tracking import client, resolve_uri

    uri = resolve_uri(tracking_uri or cfg.tracking.uri)
    with tempfile.TemporaryDirectory() as tmp:
        path = f"{tmp}/{cfg.name}.yaml"
        with open(path, "w") as f:
            f.write(to_yaml(cfg))
        argv = ["run", path, "--tracking-uri", uri, *[f"--tag={k}={v}" for k, v in tags.items()]]
        if resume is not None:  # results/checkpoints/<run_id>/step-N
            argv += ["--resume", resume.parent.name]
        run_id = run_processes(nproc, argv)
    return client(uri).get_run(run_id).data.metrics | {"run_id": run_id}


def _threads(nproc: int) -> int:
    return max(1, (os.cpu_count() or 1) // nproc)


def _cause(e, reported: tuple[int, str] | None) -> tuple[int, str]:
    """(rank, why) the launch failed: a rank killed by a signal (it could write no error, and the
    others' errors follow from it), else the first error a rank reported."""
    import signal

    for rank, failure in sorted(e.failures.items()):
        if failure.exitcode < 0 and failure.exitcode != -signal.SIGTERM:
            return rank, f"killed by {signal.Signals(-failure.exitcode).name}"
    if reported is not None:
        return reported
    rank = min(e.failures)
    return rank, f"exit code {e.failures[rank].exitcode}"


def _mark_failed(launch, rank: int, line: str) -> None:
    """The launch's MLflow run FAILED, naming the rank that caused it (rank 0 may have been
    killed, or have seen only the broken connection to the failed rank)."""
    run_id_file = launch / "run_id"
    uri_file = launch / "tracking_uri"
    if not run_id_file.exists() or not uri_file.exists():
        return
    from mlflow.entities import RunTag

    from bench.tracking import client

    c = client(uri_file.read_text())
    run_id = run_id_file.read_text()
    tags = [RunTag("bench.failed_rank", str(rank)), RunTag("bench.end", line)]
    c.log_batch(run_id, tags=tags)
    if c.get_run(run_id).info.status == "RUNNING":
        c.set_terminated(run_id, status="FAILED")


def without_nproc(argv: list[str]) -> list[str]:
    """The command line less its ``--nproc N`` (what each process runs)."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == "--nproc":
            skip = True
        elif not a.startswith("--nproc="):
            out.append(a)
    return out


def check_sharding(cfg, nproc: int) -> None:
    """Before any process starts: several processes need a sharding."""
    if cfg.train.sharding == "none":
        raise BenchError(
            f"--nproc {nproc} needs train.sharding=ddp or train.sharding=fsdp (it is none)"
        )
