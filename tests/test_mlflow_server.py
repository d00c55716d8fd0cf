"""The MLflow tracking server as a real component: train against it, then report from it."""

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from bench.config import load_config
from bench.loop import train
from reports.report import build_report


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(tmp_path: Path, port: int) -> subprocess.Popen:
    """``mlflow server`` on ``port`` with its store under ``tmp_path``, answering /health."""
    mlflow = Path(sys.executable).with_name("mlflow")
    proc = subprocess.Popen(
        [
            str(mlflow),
            "server",
            "--backend-store-uri",
            f"sqlite:///{tmp_path / 'server.db'}",
            "--default-artifact-root",
            str(tmp_path / "artifacts"),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.time() + 90
    while time.time() < deadline:
        try:
            if urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2).status == 200:
                return proc
        except OSError:
            time.sleep(0.5)
    proc.kill()
    pytest.fail("mlflow server did not answer /health within 90 s")


def stop_server(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)


@pytest.fixture
def server(tmp_path):
    port = free_port()
    proc = start_server(tmp_path, port)
    yield f"http://127.0.0.1:{port}"
    stop_server(proc)


@pytest.mark.slow
def test_train_and_report_through_the_server(server, tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", server)  # the standard variable, no --tracking-uri
    final = train(load_config("smoke", ["tracking.experiment=served"]))
    result = build_report("served", out_dir=tmp_path / "rep")
    assert result["summary"].iloc[0]["algorithm"] == "gvpo" and final["run_id"]
    assert (tmp_path / "rep" / "report.html").exists()
    from bench.tracking import client

    files = {f.path for f in client(server).list_artifacts(final["run_id"])}
    assert {"config.yaml", "samples.jsonl"} <= files


def _has_logged(c, key: str) -> bool:
    exp = c.get_experiment_by_name("smoke")
    runs = c.search_runs([exp.experiment_id]) if exp else []
    return bool(runs) and key in runs[0].data.metrics


@pytest.mark.slow
def test_a_server_outage_longer_than_the_retry_window_loses_nothing(tmp_path):
    """The server killed mid-run and restarted on the same store, an outage far longer than
    the client's retry window (shortened to 0 retries and a 2 s timeout): the run goes on,
    spools, replays once the server answers again, and the server's history equals that of the
    same run logged without an outage, each step once, every value bitwise. Once it has
    spooled (metrics go out every 5 s: 120 steps leave it training well past that), the run is
    paused (SIGSTOP) while the server restarts, so it is still training when the server is back
    however slow the restart is. (A run that ends during an outage leaves its spool to
    ``bench sync``: the next test.)"""
    from bench.tracking import client
    from tests.helpers import bench, histories

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = start_server(tmp_path, port)
    args = ["run", "smoke", "train.steps=120", "eval.every=1000", "eval.max_prompts=8"]
    os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = "0"
    os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] = "2"
    try:
        cut = bench(*args, "--tracking-uri", url, results=tmp_path / "cut", wait=False)
        whole = bench(*args, results=tmp_path / "whole", wait=False)  # its own SQLite store
        c = client(url)
        deadline = time.time() + 120
        while not _has_logged(c, "train/loss"):
            assert time.time() < deadline and cut.poll() is None
            time.sleep(0.5)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        while not list((tmp_path / "cut" / "spool").glob("*.jsonl")):  # it trains on, spooling
            assert time.time() < deadline and cut.poll() is None
            time.sleep(0.05)
        cut.send_signal(signal.SIGSTOP)
        try:
            proc = start_server(tmp_path, port)
        finally:
            cut.send_signal(signal.SIGCONT)
        out, err = cut.communicate(timeout=300)
        whole.communicate(timeout=300)  # reads its pipes: wait() could block on a full one
        assert whole.returncode == 0
        text = out + err
        assert cut.returncode == 0, text[-2000:]
        assert text.count("unreachable") == 1 and text.count("spooled calls sent") == 1, text
        assert not list((tmp_path / "cut" / "spool").glob("*.jsonl"))  # nothing left behind
        (a,) = c.search_runs([c.get_experiment_by_name("smoke").experiment_id])
        local = client(f"sqlite:///{tmp_path / 'whole'}/mlflow.db")
        (b,) = local.search_runs([local.get_experiment_by_name("smoke").experiment_id])
        assert a.info.status == "FINISHED" and a.data.metrics.keys() == b.data.metrics.keys()
        assert histories(c, a) == histories(local, b)
    finally:
        os.environ.pop("MLFLOW_HTTP_REQUEST_MAX_RETRIES")
        os.environ.pop("MLFLOW_HTTP_REQUEST_TIMEOUT")
        stop_server(proc)


def spooled_run(tmp_path):
    """(store URI, its client, a run id): the run a spool in ``tmp_path/spool`` belongs to."""
    from bench.tracking import client

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    os.environ["BENCH_RESULTS"] = str(tmp_path)
    try:
        c = client(uri)
        return uri, c, c.create_run(c.create_experiment("spooled")).info.run_id
    finally:
        os.environ.pop("BENCH_RESULTS")


def test_bench_sync_sends_a_spool_once_in_order_and_resumes_a_cut_replay(tmp_path):
    """A spool as a run leaves it (header, then calls): ``bench sync`` sends the calls not sent
    yet (``.sent`` says 2 were, before a replay was cut), in order, then removes the spool; a
    call the server stored although the client gave up on it is not stored twice (the store
    ignores an exact duplicate); a second ``bench sync`` has nothing to do."""
    import json

    from tests.helpers import bench

    uri, c, run_id = spooled_run(tmp_path)
    calls = [{"op": "header", "uri": uri, "run_id": run_id}]
    calls += [{"op": "log_batch", "metrics": [["loss", float(s), 1000 + s, s]]} for s in range(5)]
    calls += [{"op": "log_text", "text": "done\n", "name": "note.txt"}]
    calls += [{"op": "set_terminated", "status": "FINISHED"}]
    spool = tmp_path / "spool"
    spool.mkdir()
    (spool / f"{run_id}.jsonl").write_text("".join(json.dumps(x) + "\n" for x in calls))
    (spool / f"{run_id}.sent").write_text("2")  # steps 0 and 1 went out before a cut replay
    from mlflow.entities import Metric

    # step 2 went out too, but its answer was lost: the client gave up, the server stored it
    c.log_batch(run_id, metrics=[Metric("loss", 2.0, 1002, 2)])
    done = bench("sync", results=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"run {run_id}: 5 calls sent" in done.stdout + done.stderr
    history = sorted((m.step, m.value) for m in c.get_metric_history(run_id, "loss"))
    assert history == [(2, 2.0), (3, 3.0), (4, 4.0)]  # the unsent ones, once each
    assert c.get_run(run_id).info.status == "FINISHED"
    assert not list(spool.iterdir())
    again = bench("sync", results=tmp_path)
    assert "nothing spooled" in again.stdout + again.stderr


def test_bench_sync_names_each_line_that_is_not_a_call_and_sends_the_rest(tmp_path):
    """Lines that are not spooled calls (not JSON, an unknown op, a call missing a field, a
    metric of the wrong shape) are named by file and line, kept in ``<run_id>.rejected``, and
    not sent; the good calls around them are sent in order; exit 1 with one error line. A file
    whose first line is not a spool header is named and kept."""
    import json

    from tests.helpers import bench

    uri, c, run_id = spooled_run(tmp_path)
    good = [{"op": "log_batch", "metrics": [["loss", float(s), 1000 + s, s]]} for s in range(3)]
    bad = [
        "{this is not json",
        json.dumps({"op": "log_metric", "key": "loss"}),
        json.dumps({"op": "log_text", "text": "no name"}),
        json.dumps({"op": "log_batch", "metrics": [["loss", 1.0]]}),
    ]
    lines = [json.dumps({"op": "header", "uri": uri, "run_id": run_id})]
    lines += [json.dumps(good[0]), bad[0], bad[1], json.dumps(good[1]), bad[2], bad[3]]
    lines += [json.dumps(good[2]), json.dumps({"op": "set_terminated", "status": "FINISHED"})]
    spool = tmp_path / "spool"
    spool.mkdir()
    path = spool / f"{run_id}.jsonl"
    path.write_text("\n".join(lines) + "\n")
    done = bench("sync", results=tmp_path)
    out = done.stdout + done.stderr
    assert done.returncode == 1 and "Traceback" not in done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("error: 4 spooled line(s) were not calls and were not sent")
    for number, reason in [(3, "not JSON"), (4, "not a spooled call"), (6, "log_text with a bad")]:
        assert f"{path}:{number}: {reason}" in out
    assert f"{path}:7: log_batch with a bad or missing 'metrics'" in out
    assert f"run {run_id}: 4 calls sent" in out
    history = sorted((m.step, m.value) for m in c.get_metric_history(run_id, "loss"))
    assert history == [(0, 0.0), (1, 1.0), (2, 2.0)]
    assert c.get_run(run_id).info.status == "FINISHED"
    assert (spool / f"{run_id}.rejected").read_text().splitlines() == bad
    assert not path.exists()
    (spool / "stray.jsonl").write_text("not a header\n")
    stray = bench("sync", results=tmp_path)
    assert stray.returncode == 1
    assert f"{spool / 'stray.jsonl'}:1: not a spool header" in stray.stdout + stray.stderr
    assert (spool / "stray.jsonl").exists()  # kept
