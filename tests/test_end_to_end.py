"""End to end on the tiny model: a 3-step run of each algorithm -> MLflow -> report."""

import json
import math
import re

import pandas as pd
import pytest
import torch

from algorithms import ALGORITHMS
from bench.config import load_config
from bench.loop import train
from bench.models import build_tiny_model, build_tokenizer
from bench.rollout import HFSampler
from bench.tracking import client
from bench.update import Counters, Learner
from reports import base_vs_final
from reports.report import build_report
from reports.summary import SUMMARY_COLUMNS


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    uri = f"sqlite:///{tmp_path_factory.mktemp('e2e') / 'mlflow.db'}"
    finals = {}
    for name in ALGORITHMS.names():
        cfg = load_config("smoke", [f"algorithm={name}", "tracking.experiment=e2e"])
        finals[name] = train(cfg, tracking_uri=uri)
    offline = [
        "algorithm=dpo",
        "sampling.source=dataset",
        "sampling.k=2",
        "tracking.experiment=e2e",
    ]
    finals["dpo[dataset]"] = train(load_config("smoke", offline), tracking_uri=uri)
    return uri, finals


def test_each_run_logs_params_tags_metrics_artifacts(store, tmp_path):
    uri, finals = store
    c = client(uri)
    for name, final in finals.items():
        run = c.get_run(final["run_id"])
        assert run.info.status == "FINISHED" and run.info.run_name == f"arithmetic__{name}__0"
        assert run.data.params["label"] == name and run.data.params["train.steps"] == "3"
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
        losses = c.get_metric_history(run.info.run_id, "train/loss")
        if name == "dpo[dataset]":  # offline pairs always have a reward spread
            assert len(losses) == 3 and run.data.metrics["dpo/pairs"] == 4
        # a step whose groups all have equal rewards gives DPO no pair: skipped and counted
        assert len(losses) + run.data.metrics["perf/empty_minibatches"] == 3 and losses
        for key in (
            "train/reward/mean",
            "train/grad_norm",
            "train/entropy",
            "perf/tokens_per_s",
            "train/kl_ref",
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
        assert {f"eval_samples/step_{s:06d}.jsonl" for s in steps} <= {
            f.path for f in c.list_artifacts(run.info.run_id, "eval_samples")
        }


def test_eval_samples_are_every_scored_completion_and_agree_with_the_metrics(store):
    """Each eval step's artifact holds the greedy and the k sampled completions of every eval
    problem, as scored: their mean is the logged accuracy and avg@k."""
    uri, finals = store
    run_id = finals["gvpo"]["run_id"]
    steps = base_vs_final.greedy_answers(uri, run_id)
    assert sorted(steps) == [0, 2, 3]
    c = client(uri)
    for m in c.get_metric_history(run_id, "eval/arithmetic/accuracy"):
        greedy = steps[m.step]
        assert list(greedy["problem"]) == list(range(20))  # smoke: eval.max_prompts 20
        assert greedy["correct"].mean() == pytest.approx(m.value)
        assert (greedy["extracted"].eq(greedy["gold"]) == greedy["correct"]).all()


def test_report_from_the_store(store, tmp_path):
    uri, _ = store
    result = build_report("e2e", uri, tmp_path / "rep")
    summary = pd.read_csv(tmp_path / "rep" / "summary.csv")
    assert list(summary.columns) == SUMMARY_COLUMNS
    acc = summary[summary.metric == "accuracy"]
    assert (
        sorted(acc.algorithm) == sorted([*ALGORITHMS.names(), "dpo[dataset]"])
        and (acc.n_seeds == 1).all()
    )
    assert (tmp_path / "rep" / "learning_curves.png").stat().st_size > 10_000
    text = result["report"].read_text()
    assert "learning_curves.png" in text and "| gvpo | arithmetic |" in text
    assert "## Final against base, problem by problem" in text and "**ppo**" in text


@pytest.mark.parametrize("name", ALGORITHMS.names())
def test_contract_two_optimiser_steps_change_the_parameters(name):
    """Through the loop's own make_batch/update, with the value head where one is needed."""
    algo = ALGORITHMS.get(name)
    cfg = load_config("smoke", [f"algorithm={name}", "train.lr=1e-2", "sampling.max_new_tokens=4"])
    torch.manual_seed(0)
    tok = build_tokenizer()
    model = build_tiny_model(cfg.model, tok).eval()
    reference = build_tiny_model(cfg.model, tok).eval()
    learner = Learner.build(model, reference, algo, cfg)
    trained = learner.parameters()
    before = [p.detach().clone() for p in trained]
    counters = Counters()
    for _ in range(2):
        gen = HFSampler().generate(model, tok, ["1+2=", "3+1="], 4, 4)
        rewards = torch.tensor([0.0, 1.0, 2.0, 0.0, 1.0, 0.0, 0.0, 3.0])  # a spread in every group
        metrics = learner.update(learner.make_batch(gen, rewards), counters)
        assert math.isfinite(metrics["train/loss"])
    assert counters.skipped_steps == 0 and counters.empty_minibatches == 0
    changed = sum(not torch.equal(a, b.detach()) for a, b in zip(before, trained, strict=True))
    assert changed == len(trained)  # every trained tensor moved (value head included)


def test_compare_with_two_workers_on_a_fresh_store_and_a_varied_key(tmp_path):
    """Two spawned workers share a brand-new SQLite store (created once by the parent); --vary
    adds a sensitivity plot and keeps the variants apart."""
    from typer.testing import CliRunner

    from bench.app.cli import app

    uri = f"sqlite:///{tmp_path / 'fresh.db'}"
    args = [
        "compare",
        "smoke",
        "--algorithms",
        "gvpo,grpo",
        "--seeds",
        "1",
        "--workers",
        "2",
        "--vary",
        "sampling.replay_ratio=0,0.5",
        "--tracking-uri",
        uri,
    ]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    runs = client(uri).search_runs([client(uri).get_experiment_by_name("smoke").experiment_id])
    assert len(runs) == 4 and all(r.info.status == "FINISHED" for r in runs)
    out = build_report("smoke", uri, tmp_path / "rep")
    assert set(out["summary"].algorithm) == {"gvpo", "grpo", "gvpo[replay=0.5]", "grpo[replay=0.5]"}
    assert (tmp_path / "rep" / "sensitivity_sampling.replay_ratio.png").exists()


def test_html_report_renders_in_a_real_browser(store, tmp_path):
    import shutil
    import subprocess

    import matplotlib.image as mpimg

    uri, _ = store
    result = build_report("e2e", uri, tmp_path / "rep")
    html = (tmp_path / "rep" / "report.html").read_text()
    assert "<table>" in html and html.count("data:image/png;base64,") >= 2
    assert not re.search(r'src="[^"]*\.png"', html)  # every image embedded
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("chromium is not installed (.ci/run installs Debian's chromium)")
    shot = tmp_path / "shot.png"
    subprocess.run(
        [
            chromium,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={tmp_path / 'profile'}",
            f"--screenshot={shot}",
            "--window-size=1200,4000",  # the plots sit below a table of every algorithm
            (tmp_path / "rep" / "report.html").as_uri(),
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )
    img = mpimg.imread(shot)[..., :3]
    assert img.shape[0] == 4000 and img.shape[1] == 1200
    dark = (img.mean(-1) < 0.3).mean()  # text and plot lines
    colour = (img.std(-1) > 0.1).mean()  # coloured plot lines / bands
    assert 0.001 < dark < 0.5 and colour > 0.0005, (dark, colour)
    assert result["report"].exists()


def test_report_selects_runs_by_filter(store, tmp_path):
    from bench.core.errors import BenchError

    uri, _ = store
    only = build_report("e2e", uri, tmp_path / "f", filter_string="params.algorithm = 'grpo'")
    assert set(only["summary"].algorithm) == {"grpo"}
    with pytest.raises(BenchError, match="bad --filter"):
        build_report("e2e", uri, tmp_path / "g", filter_string="params.algorithm == grpo")
