"""A store that concurrent commands cannot corrupt, and run statuses that tell the truth: real
`bench` processes started together, killed with SIGKILL and SIGTERM, and interrupted with SIGINT.
The non-finite guard is tested in test_nonfinite.py."""

import contextlib
import os
import signal
import time
from pathlib import Path

import pytest

from tests.helpers import bench

QUICK = ["train.steps=1", "model.warmstart_steps=0", "eval.max_prompts=4", "eval.k=0"]


def statuses(results) -> dict[str, str]:
    from bench.tracking import client  # opens the store under its file lock, as bench does

    c = client(f"sqlite:///{results / 'mlflow.db'}")
    exps = [e.experiment_id for e in c.search_experiments()]
    return {r.info.run_name + "/" + r.info.run_id[:6]: r.info.status for r in c.search_runs(exps)}


@pytest.mark.slow
@pytest.mark.parametrize("repeat", range(1))
def test_four_runs_started_together_on_a_fresh_folder_all_finish(repeat, tmp_path):
    procs = [
        bench("run", "smoke", f"seed={s}", *QUICK, results=tmp_path, wait=False) for s in range(4)
    ]
    outs = [p.communicate(timeout=300) for p in procs]  # wait() could block on a full pipe
    assert [p.returncode for p in procs] == [0, 0, 0, 0], [err[-500:] for _, err in outs]
    assert sorted(statuses(tmp_path).values()) == ["FINISHED"] * 4
    assert bench("report", "smoke", results=tmp_path).returncode == 0  # the store reads


def training(results) -> bool:
    """A RUNNING run has logged a training step (its loop and signal handlers are up)."""
    from bench.tracking import client

    if not (results / "mlflow.db").exists():
        return False
    c = client(f"sqlite:///{results / 'mlflow.db'}")
    exps = [e.experiment_id for e in c.search_experiments()]
    runs = c.search_runs(exps, "attributes.status = 'RUNNING'") if exps else []
    return any(c.get_metric_history(r.info.run_id, "train/loss") for r in runs)


def wait_for_training(proc, results, timeout=300):
    """Until a run has logged a training step: an event in the store, not a clock."""
    deadline = time.time() + timeout
    while not training(results):
        assert proc.poll() is None, proc.stderr.read()
        assert time.time() < deadline, "the run never logged a step"
        time.sleep(0.3)


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_a_killed_run_is_reported_killed_and_counted(sig, tmp_path):
    bench("run", "smoke", "seed=9", *QUICK, results=tmp_path)  # one finished run to report
    long = [*QUICK[1:], "train.steps=100000"]
    proc = bench("run", "smoke", *long, results=tmp_path, wait=False)
    wait_for_training(proc, tmp_path)
    proc.send_signal(sig)
    proc.communicate(timeout=60)  # reads the pipes: wait() could block on a full one
    code = proc.returncode
    assert code == (-9 if sig == signal.SIGKILL else 143)
    out = bench("report", "smoke", results=tmp_path)  # opening the store reaps the dead run
    assert out.returncode == 0, out.stderr
    assert sorted(statuses(tmp_path).values()) == ["FINISHED", "KILLED"]
    assert "1 unfinished not used (1 KILLED)" in out.stderr


def processes_of(results) -> list[int]:
    """The pids of live processes that write to ``results`` (BENCH_RESULTS in their environment)."""
    mine = f"BENCH_RESULTS={results}".encode()
    pids = []
    for environ in Path("/proc").glob("[0-9]*/environ"):
        try:
            if mine in environ.read_bytes().split(b"\0"):
                pids.append(int(environ.parent.name))
        except OSError:  # gone meanwhile
            continue
    return pids


@pytest.mark.slow
def test_ctrl_c_on_a_comparison_stops_it_and_no_queued_run_starts(tmp_path):
    args = ["compare", "smoke", "--algorithms", "gvpo,grpo,dr_grpo", "--seeds", "2", *QUICK[1:]]
    proc = bench(*args, "train.steps=100000", results=tmp_path, wait=False)
    try:
        wait_for_training(proc, tmp_path, timeout=180)
        proc.send_signal(signal.SIGINT)
        # the workers get 5 s after SIGTERM, then SIGKILL: a hang would outlast the timeout
        proc.communicate(timeout=60)  # reads the pipes: wait() could block on a full one
        assert proc.returncode == 130
        deadline = time.time() + 60
        while processes_of(tmp_path):  # no process of the comparison is left to start one
            assert time.time() < deadline, processes_of(tmp_path)
            time.sleep(0.2)
        # a worker still there after the 5 s grace got SIGKILL: its run is marked KILLED by the
        # next command that opens the store (this process opened it already: reap as it would)
        from bench.tracking import client, reap_dead_runs

        reap_dead_runs(client(f"sqlite:///{tmp_path / 'mlflow.db'}"))
        runs = statuses(tmp_path)
        assert 1 <= len(runs) <= 2 and set(runs.values()) == {"KILLED"}, runs  # those in flight
    finally:  # a failure leaves no 100000-step comparison running
        for pid in processes_of(tmp_path):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


@pytest.mark.slow
def test_compare_skips_finished_configurations_unless_rerun(tmp_path):
    args = ["compare", "smoke", "--algorithms", "gvpo", "--seeds", "1", "--workers", "1", *QUICK]
    first = bench(*args, results=tmp_path)
    assert first.returncode == 0, first.stderr[-2000:]
    again = bench(*args, results=tmp_path)
    assert again.returncode == 0 and "1 of 1 runs already finished" in again.stderr
    assert len(statuses(tmp_path)) == 1
    assert bench(*args, "--rerun", results=tmp_path).returncode == 0
    assert len(statuses(tmp_path)) == 2


@pytest.mark.slow
def test_two_compares_started_together_run_each_configuration_once(tmp_path):
    """Each claims a configuration before running it (a lock the OS drops if it dies), leaves
    the ones the other holds for later, then reports those once finished: 4 configurations,
    4 FINISHED runs, and both reports use all 4."""
    args = ["compare", "smoke", "--algorithms", "gvpo,grpo", "--seeds", "2", "--workers", "1"]
    args += [*QUICK[:-1], "train.steps=3"]
    procs = [bench(*args, results=tmp_path, wait=False) for _ in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [err[-1000:] for _, err in outs]
    assert sorted(statuses(tmp_path).values()) == ["FINISHED"] * 4
    for out, err in outs:
        assert "Runs: 4 finished" in out + err
    assert any("taken by another process: waiting for them" in out + err for out, err in outs)
