"""End to end on the tiny model: a 3-step run of each algorithm -> MLflow -> report."""

import json

import pandas as pd
import pytest
import torch

from algorithms import ALGORITHMS
from bench.batch import RolloutBatch
from bench.config import load_config
from bench.loop import forward, train
from bench.models import build_tiny_model, build_tokenizer
from bench.rollout import HFSampler, token_logps
from bench.tracking import client
from reports.report import build_report
from reports.summary import SUMMARY_COLUMNS

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    uri = f"sqlite:///{tmp_path_factory.mktemp('e2e') / 'mlflow.db'}"
    finals = {}
    for name in ALGORITHMS.names():
        cfg = load_config("smoke", [f"algorithm={name}", "tracking.experiment=e2e"])
        finals[name] = train(cfg, tracking_uri=uri)
    return uri, finals


def test_each_run_logs_params_tags_metrics_artifacts(store, tmp_path):
    uri, finals = store
    c = client(uri)
    for name, final in finals.items():
        run = c.get_run(final["run_id"])
        assert run.info.status == "FINISHED" and run.info.run_name == f"arithmetic__{name}__0"
        assert run.data.params["algorithm"] == name and run.data.params["train.steps"] == "3"
        for tag in (
            "git.sha",
            "git.dirty",
            "version.torch",
            "version.transformers",
            "task_version",
        ):
            assert tag in run.data.tags
        steps = [m.step for m in c.get_metric_history(run.info.run_id, "eval/arithmetic/accuracy")]
        assert steps == [0, 2, 3]
        assert len(c.get_metric_history(run.info.run_id, "train/loss")) == 3
        for key in (
            "train/reward/mean",
            "train/grad_norm",
            "train/kl_ref",
            "train/entropy",
            "perf/tokens_per_s",
            "response_length/mean",
            "perf/peak_rss_mb",
            "perf/tokens_generated",
        ):
            assert key in run.data.metrics, key
        files = {f.path for f in c.list_artifacts(run.info.run_id)}
        assert {"config.yaml", "samples.jsonl"} <= files
        local = c.download_artifacts(run.info.run_id, "samples.jsonl", str(tmp_path))
        with open(local) as f:
            first = json.loads(f.readline())
        assert set(first) == {"step", "prompt", "completion", "reward"}


def test_report_from_the_store(store, tmp_path):
    uri, _ = store
    result = build_report("e2e", uri, tmp_path / "rep")
    summary = pd.read_csv(tmp_path / "rep" / "summary.csv")
    assert list(summary.columns) == SUMMARY_COLUMNS
    acc = summary[summary.metric == "accuracy"]
    assert sorted(acc.algorithm) == ALGORITHMS.names() and (acc.n_seeds == 1).all()
    assert (tmp_path / "rep" / "learning_curves.png").stat().st_size > 10_000
    text = result["report"].read_text()
    assert "learning_curves.png" in text and "| gvpo | arithmetic |" in text


@pytest.mark.parametrize("name", ALGORITHMS.names())
def test_contract_two_optimiser_steps_change_the_parameters(name):
    algo = ALGORITHMS.get(name)
    torch.manual_seed(0)
    tok = build_tokenizer()
    from bench.config import ModelConfig

    model = build_tiny_model(
        ModelConfig(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64), tok
    ).eval()
    before = [p.detach().clone() for p in model.parameters()]
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for step in range(2):
        gen = HFSampler().generate(model, tok, ["1+2=", "3-1="], 4, 4)
        with torch.no_grad():
            old = token_logps(model, gen.input_ids, gen.attention_mask, 4)[0]
        batch = RolloutBatch(
            mask=gen.completion_mask.float(),
            old_logp=old,
            rewards=torch.arange(8, dtype=torch.float32) % 3,
            group_ids=torch.arange(2).repeat_interleave(4),
            ref_logp=old - 0.1 * step,
            input_ids=gen.input_ids,
            attention_mask=gen.attention_mask,
        )
        loss, _ = algo.loss(batch, forward(model, batch, 1.0), algo.config())
        opt.zero_grad()
        loss.backward()
        opt.step()
    changed = sum(
        not torch.equal(a, b.detach()) for a, b in zip(before, model.parameters(), strict=False)
    )
    assert changed >= len(before) - 1  # every trained tensor moved
