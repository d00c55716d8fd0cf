"""``--executor ray`` on a local Ray cluster started here (loopback only, 2 CPUs): a sweep logs
what the local executor logs, and a run whose worker is killed is retried by Ray and resumes
from its checkpoint (no gap, no duplicate in its step history)."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from bench.tracking import client
from tests.helpers import CLOCK, bench
from tests.ray_cluster import free_ports, ray_cluster, ray_env

pytest.importorskip("ray")
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """A 2-CPU cluster of this module's own (its home, ports and temp folder; token
    authentication off, said explicitly to the cluster and to every driver)."""
    env = ray_env(tmp_path_factory.mktemp("home"), RAY_AUTH_MODE="disabled")
    with ray_cluster(env) as address:
        yield address, env


def _finals(results: Path) -> dict[str, dict]:
    c = client(f"sqlite:///{results}/mlflow.db")
    runs = c.search_runs([c.get_experiment_by_name("smoke").experiment_id])
    return {
        r.data.tags["sweep.point"]: {k: v for k, v in r.data.metrics.items() if k not in CLOCK}
        for r in runs
        if r.info.status == "FINISHED"
    }


def test_a_sweep_on_ray_logs_what_the_local_executor_logs(tmp_path, cluster):
    address, env = cluster
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
        address,
        results=tmp_path / "ray",
        env=env,
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
    address, env = cluster
    ray_args = ["--nproc", "2", "--executor", "ray", "--ray-address", address]
    two = bench("sweep", "smoke", *grid, *ray_args, results=tmp_path / "two", env=env)
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
    address, env = cluster
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
        address,
    ]
    proc = bench(*args, results=tmp_path, wait=False, env=env)
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


def _last_line(done) -> str:
    return (done.stdout + done.stderr).strip().splitlines()[-1]


ONE_STEP = ["--grid", "seed=0", "train.steps=1", "eval.max_prompts=4", "eval.k=0"]


def test_a_local_ray_sweep_leaves_nothing_that_breaks_a_later_cluster(tmp_path):
    """``--executor ray`` with no address starts a Ray instance here; Ray's own default would
    write ~/.ray/auth_token, after which a ``ray start`` cluster requires a token its drivers
    do not send (the next test starts such a cluster). Ours keeps the token in the process
    environment: the home has no ~/.ray at all afterwards."""
    home = tmp_path / "home"
    env = ray_env(home)
    local = bench("sweep", "smoke", *ONE_STEP, "--executor", "ray", results=tmp_path / "a", env=env)
    assert local.returncode == 0, local.stderr[-2000:]
    assert not (home / ".ray").exists()


def test_a_cluster_that_wants_a_token_the_driver_lacks_is_one_line(tmp_path):
    """A token in ~/.ray (left by an earlier local Ray) makes ``ray start`` enable token
    authentication; a driver with an explicit address does not send it unless told
    (RAY_AUTH_MODE=token): one line that says so, exit 2; told, the sweep runs."""
    home = tmp_path / "home"
    (home / ".ray").mkdir(parents=True)
    (home / ".ray" / "auth_token").write_text("a" * 64)
    env = ray_env(home)
    with ray_cluster(env) as address:
        args = [*ONE_STEP, "--executor", "ray", "--ray-address", address]
        refused = bench("sweep", "smoke", *args, results=tmp_path / "a", env=env)
        told = bench(
            "sweep", "smoke", *args, results=tmp_path / "b", env=env | {"RAY_AUTH_MODE": "token"}
        )
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert _last_line(refused).startswith(f"error: cannot connect to the Ray cluster at {address}")
    assert "RAY_AUTH_MODE=token" in _last_line(refused)
    assert told.returncode == 0, told.stderr[-2000:]


def test_an_address_nothing_answers_on_is_one_line_at_once(tmp_path):
    (port,) = free_ports(1)
    started = time.time()
    args = [*ONE_STEP, "--executor", "ray", "--ray-address", f"127.0.0.1:{port}"]
    done = bench("sweep", "smoke", *args, results=tmp_path, env=ray_env(tmp_path))
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert _last_line(done).startswith(
        f"error: cannot connect to the Ray cluster at 127.0.0.1:{port}"
    )
    assert time.time() - started < 120  # not Ray's minutes of retries
