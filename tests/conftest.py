"""The suite is hermetic: everything it writes (MLflow stores, model caches, Ray sessions, temp
files of subprocesses such as torchrun's) goes under one folder of this session, with a home of
its own (Ray keeps its auth token in ~/.ray, matplotlib its caches in ~/.cache), so nothing a
user's tools left on the machine changes a test, and no test leaves anything behind. The folder
is removed when the session passes, and kept (its path printed) when it fails."""

import os
import shutil
import tempfile
from pathlib import Path

import pytest

SESSION = Path(tempfile.mkdtemp(prefix="bench-tests-"))  # short: Ray's socket paths fit in it
for sub in ("home", "tmp", "ray"):
    (SESSION / sub).mkdir()
for key in [k for k in os.environ if k.startswith(("RAY_", "MLFLOW_"))]:
    del os.environ[key]  # a user's cluster address, auth mode or tracking server is not the tests'
os.environ.update(
    HOME=str(SESSION / "home"),
    TMPDIR=str(SESSION / "tmp"),
    RAY_TMPDIR=str(SESSION / "ray"),
    HF_HUB_OFFLINE="1",
    HF_DATASETS_OFFLINE="1",
    MLFLOW_DISABLE_TELEMETRY="true",
    TOKENIZERS_PARALLELISM="false",
    RAY_USAGE_STATS_ENABLED="0",
    BENCH_PROGRESS="0",
)
os.environ.setdefault("HF_HOME", str(SESSION / "hf"))
tempfile.tempdir = None  # tempfile and pytest's tmp_path now use TMPDIR


def pytest_sessionfinish(session, exitstatus):
    if exitstatus == 0:
        shutil.rmtree(SESSION, ignore_errors=True)
    else:
        print(f"\nthe failed session's files are kept in {SESSION}")


@pytest.fixture(autouse=True, scope="session")
def _results_dir(tmp_path_factory):
    """All generated output (MLflow store, model cache, reports) in one temporary folder."""
    path = tmp_path_factory.mktemp("results")
    os.environ["BENCH_RESULTS"] = str(path)
    # one cache of warm-started models for every test, also those with results folders of
    # their own (subprocesses inherit it): each model is built once per session
    os.environ["BENCH_CACHE"] = str(path / "cache")
    yield path


@pytest.fixture
def tracking_uri(tmp_path):
    return f"sqlite:///{tmp_path / 'mlflow.db'}"
