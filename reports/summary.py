"""Summary tables over seeds: mean, std and a 95% t-interval per algorithm x task x metric."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from scipy import stats

SUMMARY_COLUMNS = [
    "algorithm",
    "task",
    "n_seeds",
    "metric",
    "mean",
    "std",
    "ci_low",
    "ci_high",
    "base_value",
]


NOT_CONFIG = {"params.train.threads"}  # how a run was executed, not what it computes


def latest_finished(runs: pd.DataFrame) -> pd.DataFrame:
    """Finished runs, keeping the newest per configuration (all params, seed included), so a
    re-run replaces the old one. ``params.label`` (algorithm plus rollout setting, e.g.
    ``dpo[dataset]``) gets any other param that varies between runs of the same label appended,
    e.g. ``gvpo[algorithm.beta=0.2]``, so sweeps over a key stay apart in tables and plots."""
    done = runs[runs["status"] == "FINISHED"].copy()
    if "params.label" not in done:
        done["params.label"] = None
    done["params.label"] = done["params.label"].fillna(done["params.algorithm"])
    config = [c for c in done.columns if c.startswith("params.") and c not in NOT_CONFIG]
    done = done.sort_values("start_time").drop_duplicates(config, keep="last")
    fixed = {"params.seed", "params.label"}
    varying = [
        c
        for c in config
        if c not in fixed and done.groupby("params.label")[c].nunique(dropna=False).max() > 1
    ]
    if varying:
        extra = (
            done[varying]
            .astype(str)
            .apply(lambda r: ",".join(f"{c[7:]}={v}" for c, v in r.items()), axis=1)
        )
        done["params.label"] = done["params.label"] + "[" + extra + "]"
    return done


def mean_ci(values: np.ndarray, level: float = 0.95) -> tuple[float, float, float, float]:
    """(mean, std, ci_low, ci_high) with a Student-t interval; NaN interval for one value."""
    n = len(values)
    mean = float(np.mean(values))
    if n < 2:
        return mean, float("nan"), float("nan"), float("nan")
    std = float(np.std(values, ddof=1))
    half = stats.t.ppf(0.5 + level / 2, n - 1) * std / math.sqrt(n)
    return mean, std, mean - half, mean + half


def final_values(history: pd.DataFrame, key: str) -> pd.Series:
    """Value at the last logged step of ``key``, per run_id."""
    h = history[history["key"] == key].sort_values("step")
    return h.groupby("run_id")["value"].last()


def base_values(history: pd.DataFrame, key: str) -> pd.Series:
    """Value at step 0 (before any update: the warm-start baseline), per run_id."""
    h = history[(history["key"] == key) & (history["step"] == 0)]
    return h.groupby("run_id")["value"].first()


def summarize(runs: pd.DataFrame, history: pd.DataFrame, metrics: list[str]) -> pd.DataFrame:
    """One row per algorithm x task x metric. ``metrics`` are short names (eval/<task>/<name>)."""
    rows = []
    for (task, algo), group in runs.groupby(["params.task", "params.label"]):
        ids = group["run_id"]
        for metric in metrics:
            key = f"eval/{task}/{metric}"
            final = final_values(history, key).reindex(ids).dropna().to_numpy()
            if len(final) == 0:
                continue
            base = base_values(history, key).reindex(ids).dropna()
            mean, std, lo, hi = mean_ci(final)
            rows.append(
                [
                    algo,
                    task,
                    len(final),
                    metric,
                    mean,
                    std,
                    lo,
                    hi,
                    float(base.mean()) if len(base) else float("nan"),
                ]
            )
    return pd.DataFrame(rows, columns=SUMMARY_COLUMNS)


def curves(
    runs: pd.DataFrame, history: pd.DataFrame, key: str, by: tuple[str, ...] = ("params.label",)
) -> pd.DataFrame:
    """Mean and std over seeds at each step, per ``by`` columns of ``runs`` (the label comes
    back as column ``algorithm``): columns [*by], step, mean, std, min, max, n."""
    h = history[history["key"] == key].merge(runs[["run_id", *by]], on="run_id")
    g = h.groupby([*by, "step"])["value"]
    out = pd.DataFrame(
        {
            "mean": g.mean(),
            "std": g.std(ddof=1).fillna(0.0),
            "min": g.min(),
            "max": g.max(),
            "n": g.count(),
        }
    )
    return out.reset_index().rename(columns={"params.label": "algorithm"})


def sensitivity(runs: pd.DataFrame, history: pd.DataFrame, key: str, param: str) -> pd.DataFrame:
    """Final ``key`` vs the value of ``param`` per algorithm: algorithm, value, mean, std, n."""
    final = final_values(history, key).rename("final")
    df = runs.set_index("run_id")[["params.algorithm", f"params.{param}"]].join(final).dropna()
    df["value"] = pd.to_numeric(df[f"params.{param}"])
    g = df.groupby(["params.algorithm", "value"])["final"]
    out = pd.DataFrame(
        {"mean": g.mean(), "std": g.std(ddof=1).fillna(0.0), "n": g.count()}
    ).reset_index()
    return out.rename(columns={"params.algorithm": "algorithm"})


def curves_vs(runs: pd.DataFrame, history: pd.DataFrame, key: str, xkey: str) -> pd.DataFrame:
    """``key`` against another logged quantity (e.g. cumulative tokens) at the same steps,
    averaged over seeds per step: algorithm, step, x, mean, std."""
    h = history[history["key"].isin([key, xkey])].pivot_table(
        index=["run_id", "step"], columns="key", values="value"
    )
    if key not in h or xkey not in h:
        return pd.DataFrame(columns=["algorithm", "step", "x", "mean", "std"])
    h = h.dropna().reset_index().merge(runs[["run_id", "params.label"]], on="run_id")
    g = h.groupby(["params.label", "step"])
    out = pd.DataFrame(
        {"x": g[xkey].mean(), "mean": g[key].mean(), "std": g[key].std(ddof=1).fillna(0.0)}
    )
    return out.reset_index().rename(columns={"params.label": "algorithm"})
