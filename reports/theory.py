"""``bench theory`` report: each algorithm's fixed point on the bandit under each sampling source.

From MLflow alone: TV(pi_t, pi*) vs step (one panel per sampling source), summary.csv with one row
per algorithm x source (metric ``tv_to_optimum``, plus kl_to_optimum, expected_reward, kl_to_ref),
and the first prompt's final policy next to pi_ref and pi*.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from bench.core.errors import BenchError  # noqa: E402
from bench.core.paths import results_dir  # noqa: E402
from bench.tracking import resolve_uri  # noqa: E402
from reports.collect import history_frame, runs_frame  # noqa: E402
from reports.html import write_html  # noqa: E402
from reports.summary import curves, latest_finished, summarize  # noqa: E402
from reports.tables import md_table  # noqa: E402

METRICS = ["tv_to_optimum", "kl_to_optimum", "expected_reward", "kl_to_ref"]
ALGO, SOURCE = "params.algorithm", "params.sampling.source"


def tv_panels(curve: pd.DataFrame, title: str):
    """One panel per sampling source, one line per algorithm (mean over seeds, min-max band), log y."""
    sources = list(dict.fromkeys(curve[SOURCE]))
    fig, axes = plt.subplots(
        1, len(sources), figsize=(3.6 * len(sources), 3.4), dpi=120, sharey=True, squeeze=False
    )
    for ax, src in zip(axes[0], sources, strict=True):
        for algo, c in curve[curve[SOURCE] == src].groupby(ALGO):
            c = c.sort_values("step")
            (line,) = ax.plot(c["step"], c["mean"], label=algo)
            ax.fill_between(c["step"], c["min"], c["max"], color=line.get_color(), alpha=0.2)
        ax.set_yscale("log")
        ax.set_title(f"sampling: {src}")
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("TV(pi_t, pi*)")
    axes[0][-1].legend(frameon=False, fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def build_theory_report(
    experiment: str, tracking_uri: str | None = None, out_dir: Path | None = None
) -> dict:
    uri = resolve_uri(tracking_uri)
    runs = runs_frame(experiment, uri)
    if runs.empty or "params.task" not in runs:
        raise BenchError(f"experiment '{experiment}' has no runs to report")
    runs = latest_finished(runs[runs["params.task"] == "bandit"])
    if runs.empty:
        raise BenchError(f"experiment '{experiment}' has no finished bandit runs")
    Y = int(runs["params.task.n_responses"].iloc[0])
    table_keys = [
        f"eval/bandit/x0/{w}/y{j}" for w in ("policy", "reference", "optimum") for j in range(Y)
    ]
    history = history_frame(
        list(runs["run_id"]), [f"eval/bandit/{m}" for m in METRICS] + table_keys, uri
    )
    summary = summarize(runs, history, METRICS)
    out = out_dir or results_dir() / "reports" / experiment
    out.mkdir(parents=True, exist_ok=True)
    summary.to_csv(out / "summary.csv", index=False)
    curve = curves(runs, history, "eval/bandit/tv_to_optimum", by=(ALGO, SOURCE))
    tv_panels(curve, f"{experiment}: distance to the KL-constrained optimum").savefig(
        out / "tv_to_optimum.png"
    )
    tv, fixed = final_tables(history, runs, Y)
    text = [
        f"# Theory check: {experiment}",
        "",
        "Tabular bandit with an exact optimum pi* ∝ pi_ref·exp(R/beta); every algorithm gets the same",
        f"beta ({runs['params.task.beta'].iloc[0]}). Runs: {len(runs)} (algorithm x sampling source x seed).",
        "",
        "## Final TV(pi, pi*) by sampling source (mean and std over seeds)",
        "",
        md_table(tv, "{:.4f}"),
        "",
        "![tv_to_optimum.png](tv_to_optimum.png)",
        "",
        "## Fixed points: the first prompt's final policy (on-policy sampling, mean over seeds)",
        "",
        md_table(fixed, "{:.4f}"),
        "",
        "`summary.csv`: one row per algorithm[source] x metric; base_value = step 0 (pi = pi_ref).",
        "",
    ]
    (out / "report.md").write_text("\n".join(text))
    write_html(out / "report.md")
    return {"dir": out, "summary": summary, "tv": tv, "fixed": fixed, "report": out / "report.md"}


def final_tables(history: pd.DataFrame, runs: pd.DataFrame, Y: int):
    """(final TV to pi* by algorithm x source, mean and std over seeds; the first prompt's
    reference, target and final on-policy policies)."""
    final = history.sort_values("step").groupby(["run_id", "key"])["value"].last().unstack()
    final = final.join(runs.set_index("run_id")[[ALGO, SOURCE]])
    tv = (
        final.groupby([ALGO, SOURCE])["eval/bandit/tv_to_optimum"]
        .agg(["mean", "std"])
        .unstack(SOURCE)
    )
    tv.columns = [f"{src} ({stat})" for stat, src in tv.columns]
    tv = tv.reset_index().rename(columns={ALGO: "algorithm"})
    on_policy = (
        final[final[SOURCE] == "policy"]
        .groupby(ALGO)[[f"eval/bandit/x0/policy/y{j}" for j in range(Y)]]
        .mean()
    )
    fixed = pd.DataFrame(
        [
            ["pi_ref", *final[[f"eval/bandit/x0/reference/y{j}" for j in range(Y)]].iloc[0]],
            ["pi* (target)", *final[[f"eval/bandit/x0/optimum/y{j}" for j in range(Y)]].iloc[0]],
        ]
        + [
            [f"{a} (final, on-policy)", *row]
            for a, row in zip(on_policy.index, on_policy.to_numpy(), strict=True)
        ],
        columns=["policy", *[f"y{j}" for j in range(Y)]],
    )
    return tv, fixed


def tv_means(tv: pd.DataFrame) -> pd.DataFrame:
    """The TV table without its std columns, sources as plain column names."""
    means = tv[[c for c in tv.columns if not c.endswith("(std)")]]
    return means.rename(columns=lambda c: c.replace(" (mean)", ""))
