"""``bench compare --tune``: the search space, equal budgets, a planted optimum found, seeds and
splits kept apart, and a killed tuning resumed to the same choice with no run made twice."""

import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from bench.app.compare import Outcome
from bench.app.tune import TUNING_SEED0, Key, chosen_configs, parse_key, tune
from bench.config import load_config
from bench.core.errors import BenchError
from bench.loop import train_pool
from tasks import TASKS


def test_space_specs_parse_into_optuna_distributions():
    assert parse_key("train.lr", "1e-5..1e-3:log") == Key("train.lr", 1e-5, 1e-3, log=True)
    assert parse_key("train.steps", "10..40") == Key("train.steps", 10, 40, integer=True)
    assert parse_key("algorithms.gvpo.beta", "0.05, 0.1,0.2").choices == ("0.05", "0.1", "0.2")
    for bad, says in [
        ("1e-3..1e-5", "empty range"),
        ("0..1:log", "lo > 0"),
        ("1..2:ln", "must be log"),
        ("a..b", "two numbers"),
        (",", "no values"),
    ]:
        with pytest.raises(BenchError, match=says):
            parse_key("train.lr", bad)


GRID = ("1e-05", "3e-05", "0.0001", "0.0003", "0.001", "0.003", "0.01")
BEST = {"gvpo": 1e-4, "grpo": 1e-3}  # planted: the best learning rates differ by 10x


def planted(cfgs, tags):
    """Each run's score peaks at its algorithm's planted lr (a smooth bump in log lr)."""
    return [
        Outcome(
            c.name,
            {"eval/arithmetic/accuracy": -((math.log10(c.train.lr / BEST[c.algorithm])) ** 2)},
            None,
        )
        for c in cfgs
    ]


def test_a_planted_optimum_is_found_for_each_algorithm_with_equal_budgets():
    overrides = ["compare.algorithms=gvpo,grpo", "tune.trials=12", "tune.seeds=1"]
    cfg = load_config("smoke", overrides)
    calls = []

    def run_rounds(cfgs, tags):
        calls.append([(c.algorithm, c.seed, c.eval.split) for c in cfgs])
        return planted(cfgs, tags)

    best = tune("smoke", overrides, cfg, [Key("train.lr", choices=GRID)], run_rounds)
    for algo, lr in BEST.items():  # within one grid step of the planted value
        assert abs(GRID.index(best[algo]["train.lr"]) - GRID.index(repr(lr))) <= 1, best
    assert len(calls) == 12  # 12 rounds, each one trial of every algorithm on every tuning seed
    assert all(
        sorted(r) == [("grpo", 1000, "validation"), ("gvpo", 1000, "validation")] for r in calls
    )


def test_tuning_and_test_seeds_and_splits_are_apart():
    cfg = load_config("smoke", ["compare.algorithms=gvpo", "compare.seeds=3"])
    cfgs, tags = chosen_configs("smoke", [], cfg, {"gvpo": {"train.lr": 1e-3}}, 0)
    assert [c.seed for c in cfgs] == [0, 1, 2] and all(c.eval.split == "eval" for c in cfgs)
    assert all(c.train.lr == 1e-3 for c in cfgs) and "tune.chosen" in tags[0]
    assert max(c.seed for c in cfgs) < TUNING_SEED0
    with pytest.raises(BenchError, match="test seeds"):
        chosen_configs("smoke", [], load_config("smoke", ["compare.seeds=1001"]), {"gvpo": {}}, 0)


@pytest.mark.parametrize("name", TASKS.names())
def test_the_validation_split_is_disjoint_from_eval_and_not_trained_on(name):
    task = TASKS.get(name)(TASKS.get(name).Config())
    try:
        validation = task.validation_rows()
    except BenchError:  # eval-only tasks: no train rows, so nothing to tune on
        return
    prompts = {r["prompt"] for r in validation}
    assert not prompts & {r["prompt"] for r in task.eval_rows()}
    if not validation:  # the bandit: its eval reads the whole table
        return
    cfg = load_config(
        "smoke", [f"task={name}", "eval.split=validation", "train.prompts_per_step=1"]
    )
    assert not prompts & {r["prompt"] for r in train_pool(cfg, task)}


TUNE = [
    "compare", "smoke", "--tune", "--trials", "3", "--tune-seeds", "1", "--seeds", "1",
    "--algorithms", "gvpo,grpo", "--workers", "1", "--space", "train.lr=1e-4..1e-2:log",
]  # fmt: skip


def _bench(results: Path, *args) -> subprocess.Popen:
    env = os.environ | {"BENCH_PROGRESS": "0", "BENCH_RESULTS": str(results)}
    cmd = [sys.executable, "-m", "bench", *args]
    return subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
    )


def _chosen(output: str) -> list[str]:
    return sorted(line for line in output.splitlines() if line.startswith("chosen for"))


def _finished_per_config(results: Path) -> dict[str, int]:
    from mlflow.tracking import MlflowClient

    c = MlflowClient(f"sqlite:///{results}/mlflow.db")
    exp = c.get_experiment_by_name("smoke_tuned").experiment_id
    counts = {}
    for r in c.search_runs([exp], "attributes.status = 'FINISHED'"):
        h = r.data.tags["bench.config"]
        counts[h] = counts.get(h, 0) + 1
    return counts


@pytest.mark.slow
def test_a_killed_tuning_resumes_to_the_same_choice_without_running_a_trial_twice(tmp_path):
    whole = _bench(tmp_path / "whole", *TUNE)
    out, _ = whole.communicate(timeout=600)
    assert whole.returncode == 0, out[-2000:]
    cut = _bench(tmp_path / "cut", *TUNE)
    done = 0
    for line in cut.stdout:  # killed with SIGKILL once three tuning runs have finished
        done += line.startswith("done ")
        if done == 3:
            cut.send_signal(signal.SIGKILL)
            break
    cut.wait()
    assert cut.returncode == -signal.SIGKILL
    assert sum(_finished_per_config(tmp_path / "cut").values()) == 3
    again = _bench(tmp_path / "cut", *TUNE)
    out2, _ = again.communicate(timeout=600)
    assert again.returncode == 0, out2[-2000:]
    assert _chosen(out2) == _chosen(out) and len(_chosen(out)) == 2
    counts = _finished_per_config(tmp_path / "cut")
    assert len(counts) == 8 and set(counts.values()) == {1}  # 6 trial runs + 2 test runs, once each


def test_dry_run_counts_the_runs_and_runs_none(tmp_path):
    args = ["compare", "smoke", "--tune", "--trials", "3", "--tune-seeds", "2", "--seeds", "4"]
    done = _bench(tmp_path, *args, "--algorithms", "gvpo,grpo", "--dry-run")
    out, _ = done.communicate(timeout=300)
    assert done.returncode == 0, out[-2000:]
    assert "dry run: 20 runs" in out  # 2 algorithms x (3 trials x 2 seeds + 4 test seeds)
    assert "no finished run" in out
    from mlflow.tracking import MlflowClient

    c = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    assert not c.search_runs([e.experiment_id for e in c.search_experiments()])
