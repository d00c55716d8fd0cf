"""The MLflow tracking server as a real component: train against it, then report from it."""

import os
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

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def server(tmp_path):
    port = free_port()
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
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 90
    while time.time() < deadline:
        try:
            if urllib.request.urlopen(f"{url}/health", timeout=2).status == 200:
                break
        except OSError:
            time.sleep(0.5)
    else:
        proc.kill()
        pytest.fail("mlflow server did not answer /health within 90 s")
    yield url
    os.killpg(proc.pid, 15)
    proc.wait(timeout=30)


def test_train_and_report_through_the_server(server, tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", server)  # the standard variable, no --tracking-uri
    final = train(load_config("smoke", ["tracking.experiment=served"]))
    result = build_report("served", out_dir=tmp_path / "rep")
    assert result["summary"].iloc[0]["algorithm"] == "gvpo" and final["run_id"]
    assert (tmp_path / "rep" / "report.html").exists()
    from bench.tracking import client

    files = {f.path for f in client(server).list_artifacts(final["run_id"])}
    assert {"config.yaml", "samples.jsonl"} <= files
