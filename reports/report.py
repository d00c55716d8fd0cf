"""``bench report EXPERIMENT``: results/reports/<experiment>/{report.md, summary.csv, learning_curves.png}."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from bench.errors import BenchError
from bench.paths import results_dir
from bench.tracking import resolve_uri
from reports.collect import history_frame, runs_frame
from reports.html import write_html
from reports.plots import (
    curves_by_compute,
    kl_reward_frontier,
    learning_curves,
    seed_spread,
    sensitivity_plot,
    stability_panel,
)
from reports.stability import paired_difference, stability_summary
from reports.summary import curves, curves_vs, final_values, latest_finished, sensitivity, summarize

EVAL_METRICS = ["accuracy", "avg_at_k", "maj_at_k", "pass_at_k", "gold_reward", "proxy_reward"]
SWEPT = ["sampling.replay_ratio", "algorithm.beta", "sampling.k", "train.lr"]  # sensitivity plots
TRAIN_KEYS = [
    "train/grad_norm",
    "train/entropy",
    "train/kl_ref",
    "policy/clipfrac",
    "train/loss",
    "train/reward/mean",
]
COMPUTE_KEYS = {"tokens generated": "perf/cum_tokens_generated", "wall-clock (s)": "perf/elapsed_s"}
PERF_KEYS = ["perf/wall_s", "perf/tokens_generated", "perf/tokens_trained", "perf/peak_rss_mb"]


def md_table(df: pd.DataFrame, floatfmt: str = "{:.3f}") -> str:
    def fmt(v):
        return floatfmt.format(v) if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(df.columns) + " |", "|" + "---|" * len(df.columns)]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines)


def build_report(
    experiment: str,
    tracking_uri: str | None = None,
    out_dir: Path | None = None,
    filter_string: str = "",
) -> dict:
    """Collect finished runs of ``experiment`` and write the report files. Returns paths + summary."""
    uri = resolve_uri(tracking_uri)
    runs = runs_frame(experiment, uri, filter_string)
    if runs.empty or "params.algorithm" not in runs:
        raise BenchError(f"experiment '{experiment}' has no runs to report")
    runs = latest_finished(runs)
    if runs.empty:
        raise BenchError(f"experiment '{experiment}' has no finished runs to report")
    tasks = sorted(runs["params.task"].unique())
    keys = [f"eval/{t}/{m}" for t in tasks for m in EVAL_METRICS] + PERF_KEYS + TRAIN_KEYS
    keys += list(COMPUTE_KEYS.values())
    history = history_frame(list(runs["run_id"]), keys, uri)
    summary = summarize(runs, history, EVAL_METRICS)
    out = out_dir or results_dir() / "reports" / experiment
    out.mkdir(parents=True, exist_ok=True)
    summary.to_csv(out / "summary.csv", index=False)
    plots = []
    for task in tasks:
        task_runs = runs[runs["params.task"] == task]
        key = f"eval/{task}/accuracy"
        base = summary[(summary.task == task) & (summary.metric == "accuracy")]["base_value"]
        fig = learning_curves(
            curves(task_runs, history, key),
            f"{experiment}: {task}",
            "eval accuracy (greedy)",
            float(base.mean()) if len(base) else None,
        )
        name = "learning_curves.png" if len(tasks) == 1 else f"learning_curves_{task}.png"
        fig.savefig(out / name)
        plots.append(name)
    for task in tasks:
        task_runs = runs[runs["params.task"] == task]
        for param in SWEPT:
            col = f"params.{param}"
            if (
                col not in task_runs
                or task_runs.groupby("params.algorithm")[col].nunique().max() < 2
            ):
                continue
            sens = sensitivity(task_runs, history, f"eval/{task}/accuracy", param)
            name = (
                f"sensitivity_{param}.png" if len(tasks) == 1 else f"sensitivity_{task}_{param}.png"
            )
            sensitivity_plot(sens, param, "final eval accuracy", f"{experiment}: {task}").savefig(
                out / name
            )
            plots.append(name)
    perf = (
        history[history["key"].isin(PERF_KEYS)]
        .sort_values("step")
        .groupby(["run_id", "key"])["value"]
        .last()
        .unstack()
    )
    by_label = runs.set_index("run_id")[["params.label"]]
    perf = perf.join(by_label).groupby("params.label").mean()
    perf = perf.reset_index().rename(columns={"params.label": "algorithm"})
    for task in tasks:
        task_runs = runs[runs["params.task"] == task]
        key = f"eval/{task}/accuracy"
        suffix = "" if len(tasks) == 1 else f"_{task}"
        panels = {x: curves_vs(task_runs, history, key, xkey) for x, xkey in COMPUTE_KEYS.items()}
        if all(not p.empty for p in panels.values()):
            curves_by_compute(panels, "eval accuracy", f"{experiment}: {task} vs compute").savefig(
                out / f"curves_by_compute{suffix}.png"
            )
            plots.append(f"curves_by_compute{suffix}.png")
        final = (
            task_runs.set_index("run_id")[["params.label"]]
            .join(final_values(history, key).rename("final"))
            .dropna()
        )
        if not final.empty:
            fig = seed_spread(
                final.rename(columns={"params.label": "algorithm"}),
                "final eval accuracy",
                f"{experiment}: {task} by seed",
            )
            fig.savefig(out / f"seed_spread{suffix}.png")
            plots.append(f"seed_spread{suffix}.png")
    for task in tasks:
        task_runs = runs[runs["params.task"] == task]
        gold = curves_vs(task_runs, history, f"eval/{task}/gold_reward", "train/kl_ref")
        proxy = curves_vs(task_runs, history, f"eval/{task}/proxy_reward", "train/kl_ref")
        if not gold.empty and not proxy.empty:
            name = "overoptimisation.png" if len(tasks) == 1 else f"overoptimisation_{task}.png"
            fig = curves_by_compute(
                {"KL to reference (proxy reward)": proxy, "KL to reference (gold reward)": gold},
                "reward",
                f"{experiment}: {task}, proxy vs gold",
            )
            fig.savefig(out / name)
            plots.append(name)
    kl, reward = curves(runs, history, "train/kl_ref"), curves(runs, history, "train/reward/mean")
    if not kl.empty and not reward.empty:
        kl_reward_frontier(kl, reward, f"{experiment}: reward vs KL").savefig(
            out / "kl_reward_frontier.png"
        )
        plots.append("kl_reward_frontier.png")
    fig = stability_panel(
        {k: curves(runs, history, k) for k in TRAIN_KEYS[:4]}, f"{experiment}: training signals"
    )
    fig.savefig(out / "stability_panel.png")
    plots.append("stability_panel.png")
    stability = pd.concat(
        [
            stability_summary(runs[runs["params.task"] == t], history, f"eval/{t}/accuracy").assign(
                task=t
            )
            for t in tasks
        ]
    )
    stability.to_csv(out / "stability.csv", index=False)
    paired = paired_table(runs, history, tasks)
    text = [
        f"# Report: {experiment}",
        "",
        f"Tracking URI: `{uri}`  ",
        f"Runs: {len(runs)} finished (newest per task x algorithm x seed), tasks: {', '.join(tasks)}",
        "",
        "## Final eval metrics (mean over seeds, 95% t-interval)",
        "",
        md_table(summary),
        "",
        "`base_value` is the step-0 value: the warm-start model before any RL update.",
        "",
        "## Plots",
        "",
        *[f"![{p}]({p})" for p in plots],
        "",
        "## Stability (per run, mean over seeds)",
        "",
        "collapses: times eval accuracy fell > 0.05 below its running best; max_drawdown: largest",
        "such fall; grad_spikes: grad-norm > 10x its running median; non_finite: NaN/inf losses,",
        "grad norms and skipped steps; auc: mean level of the eval curve.",
        "",
        md_table(stability),
        "",
        "## Paired differences in final accuracy (by seed, 95% bootstrap interval)",
        "",
        md_table(paired)
        if not paired.empty
        else "(needs at least two algorithms with the same seeds)",
        "",
        "## Compute per run (mean over seeds)",
        "",
        md_table(perf, "{:.1f}") if not perf.empty else "(no perf metrics)",
        "",
    ]
    (out / "report.md").write_text("\n".join(text))
    write_html(out / "report.md")
    return {
        "dir": out,
        "summary": summary,
        "report": out / "report.md",
        "plots": [out / p for p in plots],
    }


def paired_table(runs: pd.DataFrame, history: pd.DataFrame, tasks: list[str]) -> pd.DataFrame:
    """Each label against the first one (alphabetical, or gvpo if present), paired by seed."""
    from reports.summary import final_values

    rows = []
    for task in tasks:
        key = f"eval/{task}/accuracy"
        t = runs[runs["params.task"] == task].set_index("run_id")
        final = (
            t[["params.label", "params.seed"]]
            .join(final_values(history, key).rename("final"))
            .dropna()
        )
        wide = final.pivot_table(index="params.seed", columns="params.label", values="final")
        labels = sorted(wide.columns)
        if len(labels) < 2:
            continue
        ref = "gvpo" if "gvpo" in labels else labels[0]
        for other in labels:
            if other == ref:
                continue
            both = wide[[ref, other]].dropna()
            if len(both) < 2:
                continue
            d = paired_difference(both[ref].to_numpy(), both[other].to_numpy())
            rows.append({"task": task, "comparison": f"{ref} - {other}", "n_seeds": len(both), **d})
    return pd.DataFrame(rows)
