"""Report pieces on synthetic DataFrames with known answers."""

import math

import pandas as pd
import pytest

from reports.plots import learning_curves
from reports.summary import curves, latest_finished, mean_ci, summarize


def runs_and_history():
    runs = pd.DataFrame(
        {
            "run_id": ["a", "b", "c", "old"],
            "status": ["FINISHED"] * 4,
            "start_time": [2, 3, 4, 1],
            "params.task": ["t"] * 4,
            "params.algorithm": ["x", "x", "x", "x"],
            "params.label": ["x", "x", "x", None],
            "params.seed": ["0", "1", "2", "0"],
        }
    )
    rows = []
    for rid, final in [("a", 0.5), ("b", 0.6), ("c", 0.7), ("old", 0.0)]:
        rows += [(rid, "eval/t/accuracy", 0, 0.2), (rid, "eval/t/accuracy", 10, final)]
    return runs, pd.DataFrame(rows, columns=["run_id", "key", "step", "value"])


def test_latest_finished_replaces_reruns():
    runs, _ = runs_and_history()
    kept = latest_finished(runs)
    assert sorted(kept.run_id) == ["a", "b", "c"]  # "old" (seed 0, earlier) is replaced by "a"


def test_mean_ci_hand_derived():
    mean, std, lo, hi = mean_ci([0.5, 0.6, 0.7])
    assert mean == pytest.approx(0.6) and std == pytest.approx(0.1)
    half = 4.302652729911275 * 0.1 / math.sqrt(3)  # t(0.975, df=2)
    assert (lo, hi) == pytest.approx((0.6 - half, 0.6 + half))
    assert math.isnan(mean_ci([0.3])[2])


def test_summary_and_curves():
    runs, history = runs_and_history()
    runs = latest_finished(runs)
    s = summarize(runs, history, ["accuracy"])
    row = s.iloc[0]
    assert (row.algorithm, row.task, row.n_seeds, row.metric) == ("x", "t", 3, "accuracy")
    assert row["mean"] == pytest.approx(0.6) and row.base_value == pytest.approx(0.2)
    c = curves(runs, history, "eval/t/accuracy")
    assert (
        c[c.step == 10]["mean"].item() == pytest.approx(0.6) and c[c.step == 0]["std"].item() == 0
    )
    fig = learning_curves(c, "title", "acc", 0.2)
    assert len(fig.axes[0].lines) == 2  # the algorithm and the baseline


def test_varied_params_split_labels_and_sensitivity():
    from reports.summary import sensitivity

    runs, history = runs_and_history()
    runs = runs[runs.run_id != "old"].copy()
    runs["params.algorithm.beta"] = ["0.1", "0.2", "0.2"]
    kept = latest_finished(runs)
    assert sorted(kept["params.label"]) == [
        "x[algorithm.beta=0.1]",
        "x[algorithm.beta=0.2]",
        "x[algorithm.beta=0.2]",
    ]
    sens = sensitivity(kept, history, "eval/t/accuracy", "algorithm.beta")
    assert sens["value"].tolist() == [0.1, 0.2]
    assert sens["mean"].tolist() == pytest.approx([0.5, 0.65]) and sens["n"].tolist() == [1, 2]


def test_compute_axes_frontier_and_seed_spread_plots():
    from reports.plots import curves_by_compute, kl_reward_frontier, seed_spread
    from reports.summary import curves_vs

    runs, history = runs_and_history()
    runs = latest_finished(runs)
    extra = [
        (rid, "perf/cum_tokens_generated", s, float(s * 100))
        for rid in ("a", "b", "c")
        for s in (0, 10)
    ]
    history = pd.concat([history, pd.DataFrame(extra, columns=history.columns)])
    c = curves_vs(runs, history, "eval/t/accuracy", "perf/cum_tokens_generated")
    assert c[c.step == 10][["x", "mean"]].iloc[0].tolist() == pytest.approx([1000.0, 0.6])
    fig = curves_by_compute({"tokens": c}, "acc", "t")
    assert len(fig.axes[0].lines) == 1
    kl = pd.DataFrame({"algorithm": "x", "step": [1, 2], "mean": [0.1, 0.2]})
    reward = pd.DataFrame({"algorithm": "x", "step": [1, 2], "mean": [0.3, 0.5]})
    assert len(kl_reward_frontier(kl, reward, "t").axes[0].lines) == 2  # path and end point
    final = pd.DataFrame({"algorithm": ["x", "x", "y"], "final": [0.5, 0.6, 0.7]})
    assert seed_spread(final, "acc", "t").axes[0].get_xticklabels()[1].get_text() == "y"
