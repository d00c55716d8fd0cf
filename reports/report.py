"""``bench report EXPERIMENT``: results/reports/<experiment>/{report.md, summary.csv, learning_curves.png}."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from bench.core.errors import BenchError
from bench.core.paths import results_dir
from bench.tracking import resolve_uri
from reports import base_vs_final, tuning
from reports.collect import history_frame, runs_frame
from reports.comparison import comparison_section
from reports.html import write_html
from reports.plots import (
    curves_by_compute,
    kl_reward_frontier,
    learning_curves,
    seed_spread,
    sensitivity_plot,
    stability_panel,
)
from reports.stability import stability_summary
from reports.summary import curves, curves_vs, final_values, latest_finished, sensitivity, summarize
from reports.tables import md_table

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


@dataclass
class Collected:
    """What a report is made from: finished runs, their metric histories, their tasks."""

    experiment: str
    uri: str
    runs: pd.DataFrame
    history: pd.DataFrame
    tasks: list[str]
    out: Path
    unfinished: pd.DataFrame  # KILLED, FAILED and RUNNING runs: counted and listed, not used
    trials: pd.DataFrame  # tuning runs (bench compare --tune): reported apart, never compared

    def task_runs(self, task: str) -> pd.DataFrame:
        return self.runs[self.runs["params.task"] == task]

    def name(self, stem: str, task: str) -> str:
        """File name of a per-task plot: no task suffix when the report has one task."""
        return f"{stem}.png" if len(self.tasks) == 1 else f"{stem}_{task}.png"


def collect(experiment: str, uri: str, filter_string: str, out: Path) -> Collected:
    runs, trials = tuning.split_trials(runs_frame(experiment, uri, filter_string))
    if runs.empty or "params.algorithm" not in runs:
        raise BenchError(f"experiment '{experiment}' has no runs to report")
    unfinished = runs[runs["status"] != "FINISHED"]
    runs = latest_finished(runs)
    if runs.empty:
        raise BenchError(f"experiment '{experiment}' has no finished runs to report")
    tasks = sorted(runs["params.task"].unique())
    keys = [f"eval/{t}/{m}" for t in tasks for m in EVAL_METRICS] + PERF_KEYS + TRAIN_KEYS
    keys += list(COMPUTE_KEYS.values())
    history = history_frame(list(runs["run_id"]), keys, uri)
    out.mkdir(parents=True, exist_ok=True)
    return Collected(experiment, uri, runs, history, tasks, out, unfinished, trials)


def machines_line(runs: pd.DataFrame) -> str:
    """The machines the runs came from; a warning when one comparison mixes machines."""
    cols = ["tags.machine.cpu", "tags.machine.threads", "tags.machine.device"]
    if "tags.machine.cpu" not in runs:
        return "Machines: not recorded (runs older than the provenance tags)"
    seen = runs[[c for c in cols if c in runs]].fillna("?").astype(str).drop_duplicates()
    names = "; ".join(", ".join(r) for r in seen.itertuples(index=False))
    if len(seen) > 1:
        return f"**Warning: runs from {len(seen)} different machines** (timings and float rounding differ): {names}"
    return f"Machine: {names}"


def runs_line(c: Collected) -> str:
    """One line: what the report uses, and the unfinished runs it does not."""
    line = f"Runs: {len(c.runs)} finished (newest per task x algorithm x seed) used"
    if c.unfinished.empty:
        return line
    counts = c.unfinished["status"].value_counts()
    names = ", ".join(c.unfinished["run_name"].astype(str))
    parts = ", ".join(f"{n} {s}" for s, n in counts.items())
    return f"{line}; {len(c.unfinished)} unfinished not used ({parts}): {names}"


def build_report(
    experiment: str,
    tracking_uri: str | None = None,
    out_dir: Path | None = None,
    filter_string: str = "",
    reference: str | None = None,
    target: float | None = None,
) -> dict:
    """Collect finished runs of ``experiment`` and write the report files. Returns paths + summary.
    ``reference``: the label every other one is paired against (default: the first label);
    ``target``: a difference to say how many seeds would detect."""
    uri = resolve_uri(tracking_uri)
    c = collect(experiment, uri, filter_string, out_dir or results_dir() / "reports" / experiment)
    summary = summarize(c.runs, c.history, EVAL_METRICS)
    summary.to_csv(c.out / "summary.csv", index=False)
    plots = [
        *plot_learning_curves(c, summary),
        *plot_sensitivity(c),
        *plot_compute_and_seeds(c),
        *plot_overoptimisation(c),
        *plot_training_signals(c),
    ]
    stability = pd.concat(
        [
            stability_summary(c.task_runs(t), c.history, f"eval/{t}/accuracy").assign(task=t)
            for t in c.tasks
        ]
    )
    stability.to_csv(c.out / "stability.csv", index=False)
    compared = comparison_section(
        c.runs, c.history, c.tasks, c.out, reference=reference, target=target
    )
    plots += compared.plots
    tuned_text, tuned_plots = tuning.section(c.runs, c.trials, c.tasks[0], c.out)
    compared_text = "\n".join([tuned_text, compared.markdown, base_vs_final.section(c.runs, c.uri)])
    text = markdown(c, summary, plots, stability, compared_text, perf_table(c))
    plots += tuned_plots  # shown in their own section
    (c.out / "report.md").write_text(text)
    write_html(c.out / "report.md")
    return {
        "dir": c.out,
        "runs": runs_line(c),
        "machines": machines_line(c.runs),
        "summary": summary,
        "report": c.out / "report.md",
        "plots": [c.out / p for p in plots],
    }


def plot_learning_curves(c: Collected, summary: pd.DataFrame) -> list[str]:
    names = []
    for task in c.tasks:
        key = f"eval/{task}/accuracy"
        base = summary[(summary.task == task) & (summary.metric == "accuracy")]["base_value"]
        fig = learning_curves(
            curves(c.task_runs(task), c.history, key),
            f"{c.experiment}: {task}",
            "eval accuracy (greedy)",
            float(base.mean()) if len(base) else None,
        )
        names.append(c.name("learning_curves", task))
        fig.savefig(c.out / names[-1])
    return names


def plot_sensitivity(c: Collected) -> list[str]:
    """Final accuracy against each hyperparameter that varies within an algorithm."""
    names = []
    for task in c.tasks:
        task_runs = c.task_runs(task)
        for param in SWEPT:
            col = f"params.{param}"
            if (
                col not in task_runs
                or task_runs.groupby("params.algorithm")[col].nunique().max() < 2
            ):
                continue
            sens = sensitivity(task_runs, c.history, f"eval/{task}/accuracy", param)
            one = len(c.tasks) == 1
            names.append(f"sensitivity_{param}.png" if one else f"sensitivity_{task}_{param}.png")
            title = f"{c.experiment}: {task}"
            sensitivity_plot(sens, param, "final eval accuracy", title).savefig(c.out / names[-1])
    return names


def plot_compute_and_seeds(c: Collected) -> list[str]:
    """Accuracy against tokens and wall-clock, and the final accuracy of every seed."""
    names = []
    for task in c.tasks:
        task_runs, key = c.task_runs(task), f"eval/{task}/accuracy"
        panels = {x: curves_vs(task_runs, c.history, key, xkey) for x, xkey in COMPUTE_KEYS.items()}
        if all(not p.empty for p in panels.values()):
            names.append(c.name("curves_by_compute", task))
            title = f"{c.experiment}: {task} vs compute"
            curves_by_compute(panels, "eval accuracy", title).savefig(c.out / names[-1])
        final = (
            task_runs.set_index("run_id")[["params.label"]]
            .join(final_values(c.history, key).rename("final"))
            .dropna()
        )
        if not final.empty:
            names.append(c.name("seed_spread", task))
            fig = seed_spread(
                final.rename(columns={"params.label": "algorithm"}),
                "final eval accuracy",
                f"{c.experiment}: {task} by seed",
            )
            fig.savefig(c.out / names[-1])
    return names


def plot_overoptimisation(c: Collected) -> list[str]:
    """Proxy and gold reward against KL to the reference (tasks with a gold reward)."""
    names = []
    for task in c.tasks:
        runs = c.task_runs(task)
        gold = curves_vs(runs, c.history, f"eval/{task}/gold_reward", "train/kl_ref")
        proxy = curves_vs(runs, c.history, f"eval/{task}/proxy_reward", "train/kl_ref")
        if gold.empty or proxy.empty:
            continue
        names.append(c.name("overoptimisation", task))
        fig = curves_by_compute(
            {"KL to reference (proxy reward)": proxy, "KL to reference (gold reward)": gold},
            "reward",
            f"{c.experiment}: {task}, proxy vs gold",
        )
        fig.savefig(c.out / names[-1])
    return names


def plot_training_signals(c: Collected) -> list[str]:
    names = []
    kl, reward = (
        curves(c.runs, c.history, "train/kl_ref"),
        curves(c.runs, c.history, "train/reward/mean"),
    )
    if not kl.empty and not reward.empty:
        title = f"{c.experiment}: reward vs KL"
        kl_reward_frontier(kl, reward, title).savefig(c.out / "kl_reward_frontier.png")
        names.append("kl_reward_frontier.png")
    panels = {k: curves(c.runs, c.history, k) for k in TRAIN_KEYS[:4]}
    stability_panel(panels, f"{c.experiment}: training signals").savefig(
        c.out / "stability_panel.png"
    )
    return [*names, "stability_panel.png"]


def perf_table(c: Collected) -> pd.DataFrame:
    """Compute per run (wall-clock, tokens, memory), mean over seeds per label."""
    perf = (
        c.history[c.history["key"].isin(PERF_KEYS)]
        .sort_values("step")
        .groupby(["run_id", "key"])["value"]
        .last()
        .unstack()
    )
    perf = perf.join(c.runs.set_index("run_id")[["params.label"]]).groupby("params.label").mean()
    return perf.reset_index().rename(columns={"params.label": "algorithm"})


def markdown(c: Collected, summary, plots, stability, compared: str, perf) -> str:
    lines = [
        f"# Report: {c.experiment}",
        "",
        f"Tracking URI: `{c.uri}`  ",
        f"{runs_line(c)}  ",
        f"Tasks: {', '.join(c.tasks)}  ",
        f"{tuning.header(c.runs, c.trials)}  ",
        machines_line(c.runs),
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
        compared,
        "",
        "## Compute per run (mean over seeds)",
        "",
        md_table(perf, "{:.1f}") if not perf.empty else "(no perf metrics)",
        "",
    ]
    return "\n".join(lines)
