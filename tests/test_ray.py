"""``--executor ray`` on a local Ray cluster started here (loopback only, 2 CPUs): a sweep logs
what the local executor logs, and a run whose worker is killed is retried by Ray and resumes
from its checkpoint (no gap, no duplicate in its step history)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from bench.tracking import client
from tests.helpers import CLOCK, bench

pytest.importorskip("ray")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    port = _free_port()
    ray = str(Path(os.sys.executable).with_name("ray"))
    env = os.environ | {"RAY_USAGE_STATS_ENABLED": "0"}
    start = [ray, "start", "--head", "--num-cpus", "2", "--node-ip-address", "127.0.0.1"]
    subprocess.run(
        [*start, "--port", str(port), "--include-dashboard", "false", "--disable-usage-stats"],
        check=True,
        capture_output=True,
        env=env,
    )
    yield f"127.0.0.1:{port}"
    subprocess.run([ray, "stop", "--force"], capture_output=True, env=env)


def _finals(results: Path) -> dict[str, dict]:
    c = client(f"sqlite:///{results}/mlflow.db")
    runs = c.search_runs([c.get_experiment_by_name("smoke").experiment_id])
    return {
        r.data.tags["sweep.point"]: {k: v for k, v in r.data.metrics.items() if k not in CLOCK}
        for r in runs
        if r.info.status == "FINISHED"
    }


def test_a_sweep_on_ray_logs_what_the_local_executor_logs(tmp_path, cluster):
    grid = ["--grid", "algorithm=gvpo,grpo", "--grid", "seed=0,1", "train.steps=1"]
    grid += ["eval.max_prompts=4", "eval.k=0"]
    local = bench("sweep", "smoke", *grid, results=tmp_path / "local")
    assert local.returncode == 0, local.stderr[-2000:]
    on_ray = bench(
        "sweep",
        "smoke",
        *grid,
        "--executor",
        "ray",
        "--ray-address",
        cluster,
        results=tmp_path / "ray",
    )
    assert on_ray.returncode == 0, on_ray.stderr[-2000:]
    a, b = _finals(tmp_path / "local"), _finals(tmp_path / "ray")
    assert len(a) == 4 and a == b  # the same final metrics, bitwise


def test_sharded_runs_on_ray_take_a_node_each_and_log_what_one_process_logs(tmp_path, cluster):
    """--nproc 2 through Ray: each run's placement group holds the cluster's 2 CPUs, so the two
    runs go one after the other; each is launched on 2 processes (world_size 2) and logs the
    metrics of the same run on one process (world-size invariance, to float rounding)."""
    grid = ["--grid", "seed=0,1", "train.steps=2", "eval.max_prompts=4", "eval.k=0"]
    grid += ["model.num_layers=2", "train.sharding=ddp"]
    one = bench("sweep", "smoke", *grid, results=tmp_path / "one")
    assert one.returncode == 0, one.stderr[-2000:]
    ray_args = ["--nproc", "2", "--executor", "ray", "--ray-address", cluster]
    two = bench("sweep", "smoke", *grid, *ray_args, results=tmp_path / "two")
    assert two.returncode == 0, two.stderr[-2000:]
    c = client(f"sqlite:///{tmp_path / 'two'}/mlflow.db")
    runs = c.search_runs([c.get_experiment_by_name("smoke").experiment_id])
    assert len(runs) == 2 and {r.data.params["world_size"] for r in runs} == {"2"}
    first, second = sorted(runs, key=lambda r: r.info.start_time)
    assert second.info.start_time >= first.info.end_time  # no two at once on 2 CPUs
    a, b = _finals(tmp_path / "one"), _finals(tmp_path / "two")
    assert a.keys() == b.keys() and len(a) == 2
    for point in a:
        assert a[point].keys() == b[point].keys()
        for key, value in a[point].items():
            assert b[point][key] == pytest.approx(value, rel=1e-5, abs=1e-6), (point, key)


def test_a_killed_ray_task_is_retried_and_resumes_from_its_checkpoint(tmp_path, cluster):
    args = [
        "sweep",
        "smoke",
        "--grid",
        "seed=0",
        "train.steps=8",
        "train.checkpoint_every=2",
        "eval.max_prompts=8",
        "--executor",
        "ray",
        "--ray-address",
        cluster,
    ]
    proc = bench(*args, results=tmp_path, wait=False)
    start = time.time()
    while not list((tmp_path / "checkpoints").glob("*/latest")):
        assert proc.poll() is None and time.time() - start < 180, proc.stderr.read()[-2000:]
        time.sleep(0.1)
    c = client(f"sqlite:///{tmp_path}/mlflow.db")
    exp = c.get_experiment_by_name("smoke").experiment_id
    (run,) = c.search_runs([exp])
    os.kill(int(run.data.tags["bench.pid"]), signal.SIGKILL)  # the Ray worker running it
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-2000:]
    (run,) = c.search_runs([exp])
    assert run.info.status == "FINISHED"
    assert int(run.data.tags["bench.resumed_from_step"]) >= 2
    steps = sorted(m.step for m in c.get_metric_history(run.info.run_id, "train/loss"))
    assert steps == list(range(1, 9))


def test_a_remote_cluster_with_a_sqlite_store_is_one_line(tmp_path):
    done = bench(
        "compare", "smoke", "--executor", "ray", "--ray-address", "10.1.2.3:6379", results=tmp_path
    )
    assert done.returncode == 2
    last = (done.stdout + done.stderr).strip().splitlines()[-1]
    assert last.startswith("error: --executor ray on the cluster at 10.1.2.3:6379 logs from other")
