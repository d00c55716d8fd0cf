"""Stability metrics from a run's curves (the way the GVPO paper talks about stability), and
per run, averaged over seeds. Tests between algorithms are in reports/statistics.py.

Every function takes plain sequences or DataFrames, so each is testable on hand-made curves.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd


def collapse_count(values: Sequence[float], drop: float) -> int:
    """Times the curve falls more than ``drop`` below its running best. One collapse lasts until
    the curve is back within ``drop`` of the best, so a long slump counts once."""
    best, down, count = -math.inf, False, 0
    for v in values:
        best = max(best, v)
        if not down and best - v > drop:
            count, down = count + 1, True
        elif down and best - v <= drop:
            down = False
    return count


def max_drawdown(values: Sequence[float]) -> float:
    """Largest fall from a running best to a later value (0 for a non-decreasing curve)."""
    best, worst = -math.inf, 0.0
    for v in values:
        best = max(best, v)
        worst = max(worst, best - v)
    return worst


def spikes(values: Sequence[float], factor: float = 10.0, warmup: int = 5) -> int:
    """Values above ``factor`` x the running median of all earlier values (after ``warmup``)."""
    seen: list[float] = []
    count = 0
    for v in values:
        if len(seen) >= warmup and math.isfinite(v) and v > factor * float(np.median(seen)):
            count += 1
        if math.isfinite(v):
            seen.append(v)
    return count


def non_finite(values: Sequence[float]) -> int:
    return sum(not math.isfinite(v) for v in values)


def mean_level(steps: Sequence[float], values: Sequence[float]) -> float:
    """Area under the curve divided by the step range (trapezoids): the curve's average level."""
    s, v = np.asarray(steps, float), np.asarray(values, float)
    if len(s) < 2 or s[-1] == s[0]:
        return float(v.mean()) if len(v) else float("nan")
    return float(np.sum((v[1:] + v[:-1]) / 2 * np.diff(s)) / (s[-1] - s[0]))


def run_stability(history: pd.DataFrame, eval_key: str, drop: float = 0.05) -> pd.DataFrame:
    """One row per run: collapses, max_drawdown, grad_spikes, non_finite, auc, best, final."""
    rows = []
    for run_id, h in history.groupby("run_id"):
        ev = h[h["key"] == eval_key].sort_values("step")
        gn = h[h["key"] == "train/grad_norm"].sort_values("step")["value"].tolist()
        loss = h[h["key"] == "train/loss"]["value"].tolist()
        skipped = h[h["key"] == "perf/skipped_steps"]["value"]
        e = ev["value"].tolist()
        rows.append(
            {
                "run_id": run_id,
                "collapses": collapse_count(e, drop),
                "max_drawdown": max_drawdown(e),
                "grad_spikes": spikes(gn),
                "non_finite": non_finite(loss)
                + non_finite(gn)
                + (int(skipped.iloc[-1]) if len(skipped) else 0),
                "auc": mean_level(ev["step"].tolist(), e),
                "best": max(e) if e else float("nan"),
                "final": e[-1] if e else float("nan"),
            }
        )
    return pd.DataFrame(rows)


def stability_summary(
    runs: pd.DataFrame, history: pd.DataFrame, eval_key: str, drop: float = 0.05
) -> pd.DataFrame:
    """Per label (algorithm): the mean over seeds of each per-run stability metric, and a
    bootstrap 95% interval of the final value."""
    per_run = run_stability(history, eval_key, drop).merge(
        runs[["run_id", "params.label"]], on="run_id"
    )
    out = per_run.drop(columns="run_id").groupby("params.label").mean(numeric_only=True)
    out.insert(0, "n_seeds", per_run.groupby("params.label").size())
    return out.reset_index().rename(columns={"params.label": "algorithm"})
