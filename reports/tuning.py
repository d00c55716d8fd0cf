"""How a comparison was tuned (``bench compare --tune``): the budget each algorithm spent, the
values chosen, the tuning curves (best validation score against trials spent) and the
sensitivity of the validation score to each tuned key. From the tuning runs' MLflow tags alone
(``tune.study``, ``tune.trial``, ``tune.params``) and the test runs' ``tune.chosen``."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from reports.tables import md_table  # noqa: E402

TRIAL_TAG = "tags.tune.trial"


def split_trials(runs: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(the comparison's runs, the tuning runs): tuning runs are scored on the validation split
    and must not enter the comparison's tables."""
    if TRIAL_TAG not in runs:
        return runs, runs.iloc[0:0]
    is_trial = runs[TRIAL_TAG].notna()
    return runs[~is_trial], runs[is_trial]


def trials_table(trials: pd.DataFrame, task: str) -> pd.DataFrame:
    """One row per (algorithm, trial): its params and the mean final validation accuracy."""
    if trials.empty:
        return pd.DataFrame()
    done = trials[trials["status"] == "FINISHED"]
    key = f"metrics.eval/{task}/accuracy"
    rows = []
    for (algo, n), g in done.groupby(["params.algorithm", TRIAL_TAG]):
        rows.append(
            {
                "algorithm": algo,
                "trial": int(n),
                "seeds": len(g),
                "value": g[key].astype(float).mean() if key in g else float("nan"),
                "tokens": g.get("metrics.perf/tokens_generated", pd.Series(dtype=float)).sum(),
                "seconds": g.get("metrics.perf/wall_s", pd.Series(dtype=float)).sum(),
                "steps": int(g["params.train.steps"].iloc[0]),
                **json.loads(g["tags.tune.params"].iloc[0]),
            }
        )
    return pd.DataFrame(rows).sort_values(["algorithm", "trial"]) if rows else pd.DataFrame()


def budget_table(table: pd.DataFrame, chosen: dict[str, str]) -> pd.DataFrame:
    out = []
    for algo, g in table.groupby("algorithm"):
        out.append(
            {
                "algorithm": algo,
                "trials": len(g),
                "seeds / trial": int(g["seeds"].max()),
                "steps / run": int(g["steps"].max()),
                "tokens generated": int(g["tokens"].sum()),
                "seconds (summed over runs)": round(float(g["seconds"].sum())),
                "best validation accuracy": g["value"].max(),
                "chosen": chosen.get(algo, "-"),
            }
        )
    return pd.DataFrame(out)


def curves_figure(table: pd.DataFrame, title: str):
    """Best validation score so far against trials spent, one line per algorithm."""
    fig, ax = plt.subplots(figsize=(6.0, 3.8), dpi=120)
    for algo, g in table.groupby("algorithm"):
        g = g.sort_values("trial")
        ax.plot(g["trial"] + 1, g["value"].cummax(), marker="o", ms=3, label=algo)
    ax.set_xlabel("trials spent (equal for every algorithm)")
    ax.set_ylabel("best validation accuracy so far")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(frameon=False, fontsize=8)
    fig.tight_layout()
    return fig


def sensitivity_figure(table: pd.DataFrame, keys: list[str], title: str):
    """Validation score against each tuned key, one point per trial, coloured by algorithm."""
    fig, axes = plt.subplots(1, len(keys), figsize=(4.0 * len(keys), 3.4), dpi=120, squeeze=False)
    for ax, key in zip(axes[0], keys, strict=True):
        for algo, g in table.dropna(subset=[key]).groupby("algorithm"):
            x = pd.to_numeric(g[key], errors="coerce")
            ax.scatter(x if x.notna().all() else g[key], g["value"], s=14, label=algo)
            if key.endswith("lr") or (x.notna().all() and x.min() > 0 and x.max() / x.min() > 20):
                ax.set_xscale("log")
        ax.set_xlabel(key)
        ax.set_ylabel("validation accuracy")
        ax.grid(alpha=0.3)
    axes[0][0].legend(frameon=False, fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def header(runs: pd.DataFrame, trials: pd.DataFrame) -> str:
    if trials.empty:
        return "Tuning: untuned: preset settings (the same for every seed)"
    per = trials.groupby("params.algorithm")[TRIAL_TAG].nunique()
    return (
        f"Tuning: tuned on the validation split, {int(per.max())} trials per algorithm "
        "(see How it was tuned); the tables below are the chosen settings on the test seeds"
    )


def section(runs: pd.DataFrame, trials: pd.DataFrame, task: str, out: Path) -> tuple[str, list]:
    """Markdown and plot names of the tuning section ('' when the comparison was not tuned)."""
    table = trials_table(trials, task)
    if table.empty:
        return "", []
    chosen = {}
    if "tags.tune.chosen" in runs:
        for algo, g in runs.dropna(subset=["tags.tune.chosen"]).groupby("params.algorithm"):
            chosen[algo] = g["tags.tune.chosen"].iloc[0]
    keys = [
        c
        for c in table.columns
        if c not in {"algorithm", "trial", "seeds", "value", "tokens", "seconds", "steps"}
    ]
    curves_figure(table, f"{task}: tuning curves").savefig(out / "tuning_curves.png")
    sensitivity_figure(table, keys, f"{task}: validation accuracy by tuned value").savefig(
        out / "tuning_sensitivity.png"
    )
    plt.close("all")
    text = [
        "## How it was tuned",
        "",
        "Each algorithm: the same number of trials of the same search over its keys (Optuna), each",
        "trial the mean final accuracy of its tuning seeds (1000, 1001, ...) on the task's",
        "validation split (rows those runs did not train on; never eval rows). The chosen",
        "configuration (the best trial) then ran on the test seeds, on the eval split.",
        "",
        md_table(budget_table(table, chosen)),
        "",
        "![tuning_curves.png](tuning_curves.png)",
        "![tuning_sensitivity.png](tuning_sensitivity.png)",
    ]
    return "\n".join(text), ["tuning_curves.png", "tuning_sensitivity.png"]
