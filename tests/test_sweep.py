"""Sweeps: grid parsing, the plan, resuming after failures and after a kill."""

import os
import signal
import subprocess
import sys
import time

import pytest
from typer.testing import CliRunner

from bench.app.cli import app
from bench.app.sweep import parse_grid, parse_values, plan, points
from bench.core.errors import BenchError
from bench.tracking import client


def test_grid_values_and_points():
    assert parse_values("0..3") == ["0", "1", "2", "3"] and parse_values("a,b") == ["a", "b"]
    grid = parse_grid(["algorithm=gvpo,grpo", "seed=0..1"])
    assert points(grid) == [
        ["algorithm=gvpo", "seed=0"],
        ["algorithm=gvpo", "seed=1"],
        ["algorithm=grpo", "seed=0"],
        ["algorithm=grpo", "seed=1"],
    ]
    with pytest.raises(BenchError, match="must look like key=v1,v2"):
        parse_grid(["seed"])
    with pytest.raises(BenchError, match="two integers"):
        parse_grid(["seed=a..b"])


def test_plan_validates_every_point_and_maps_the_selected_algorithms_beta():
    sid, pts = plan("smoke", [], ["algorithm=gvpo,grpo", "algorithm.beta=0.05,0.2"], threads=0)
    assert len(pts) == 4 and len(sid) == 12
    assert [c.algo_config().beta for _, c in pts] == [0.05, 0.2, 0.05, 0.2]
    assert (
        plan("smoke", [], ["algorithm=gvpo,grpo", "algorithm.beta=0.05,0.2"], 0)[0] == sid
    )  # stable id
    with pytest.raises(BenchError, match="did you mean 'beta'"):
        plan("smoke", [], ["algorithm.betta=0.1"], threads=0)


def finished(uri):
    c = client(uri)
    exp = c.get_experiment_by_name("smoke")
    runs = c.search_runs([exp.experiment_id], max_results=1000)
    return [r for r in runs if r.info.status == "FINISHED"], runs


def test_rerun_skips_finished_points_and_retries_failed_ones(tracking_uri):
    args = [
        "sweep",
        "smoke",
        "--grid",
        "seed=0..2",
        "--workers",
        "1",
        "--tracking-uri",
        tracking_uri,
    ]
    first = CliRunner().invoke(app, args)
    assert first.exit_code == 0, first.output
    done, _ = finished(tracking_uri)
    assert sorted(r.data.tags["sweep.point"] for r in done) == ["seed=0", "seed=1", "seed=2"]
    client(tracking_uri).set_terminated(done[0].info.run_id, "FAILED")  # as if it had crashed
    again = CliRunner().invoke(app, args)
    assert "3 points, 2 finished, 1 to run" in " ".join(again.output.split())
    done, everything = finished(tracking_uri)
    assert sorted(r.data.tags["sweep.point"] for r in done) == ["seed=0", "seed=1", "seed=2"]
    assert len(everything) == 4  # the failed run is kept, not overwritten
    dry = CliRunner().invoke(app, [*args, "--dry-run"])
    assert "3 finished, 0 to run" in " ".join(dry.output.split())


@pytest.mark.slow
def test_killed_sweep_resumes_to_the_exact_set_of_points(tmp_path):
    uri = f"sqlite:///{tmp_path / 'kill.db'}"
    cmd = [
        sys.executable,
        "-m",
        "bench.app.cli",
        "sweep",
        "smoke",
        "--grid",
        "seed=0..5",
        "--workers",
        "1",
        "--tracking-uri",
        uri,
    ]
    proc = subprocess.Popen(
        cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            time.sleep(0.5)
            try:
                if len(finished(uri)[0]) >= 2:
                    break
            except Exception:  # the store may not exist yet
                continue
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    before = {r.data.tags["sweep.point"] for r in finished(uri)[0]}
    assert 2 <= len(before) < 6
    result = CliRunner().invoke(app, cmd[3:])
    assert result.exit_code == 0, result.output
    done, _ = finished(uri)
    points_done = [r.data.tags["sweep.point"] for r in done]
    assert sorted(points_done) == [
        f"seed={i}" for i in range(6)
    ]  # each point finished exactly once
