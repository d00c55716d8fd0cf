import os

import pytest

os.environ.update(
    HF_HUB_OFFLINE="1",
    HF_DATASETS_OFFLINE="1",
    MLFLOW_DISABLE_TELEMETRY="true",
    TOKENIZERS_PARALLELISM="false",
    RAY_USAGE_STATS_ENABLED="0",
    BENCH_PROGRESS="0",
)
os.environ.pop("MLFLOW_TRACKING_URI", None)


@pytest.fixture(autouse=True, scope="session")
def _results_dir(tmp_path_factory):
    """All generated output (MLflow store, model cache, reports) in one temporary folder."""
    path = tmp_path_factory.mktemp("results")
    os.environ["BENCH_RESULTS"] = str(path)
    # one cache of warm-started models for every test, also those with results folders of
    # their own (subprocesses inherit it): each model is built once per session
    os.environ["BENCH_CACHE"] = str(path / "cache")
    os.environ.setdefault("HF_HOME", str(path / "hf"))
    yield path


@pytest.fixture
def tracking_uri(tmp_path):
    return f"sqlite:///{tmp_path / 'mlflow.db'}"
