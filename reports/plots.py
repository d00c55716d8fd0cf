"""Matplotlib figures from DataFrames (no MLflow access here)."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402


def learning_curves(curve: pd.DataFrame, title: str, ylabel: str, base_value: float | None = None):
    """Mean over seeds with a +-1 std band, one line per algorithm; baseline as a dashed line."""
    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=120)
    for algo, c in curve.groupby("algorithm"):
        c = c.sort_values("step")
        n = int(c["n"].max())
        (line,) = ax.plot(c["step"], c["mean"], marker="o", ms=3, label=f"{algo} (n={n})")
        ax.fill_between(
            c["step"], c["mean"] - c["std"], c["mean"] + c["std"], color=line.get_color(), alpha=0.2
        )
    if base_value is not None and base_value == base_value:
        ax.axhline(base_value, color="grey", ls="--", lw=1, label="warm-start baseline")
    return finish_axes(fig, ax, "training step", ylabel, title)


def finish_axes(fig, ax, xlabel: str, ylabel: str, title: str):
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(frameon=False, fontsize=8)
    fig.tight_layout()
    return fig


def sensitivity_plot(sens: pd.DataFrame, param: str, ylabel: str, title: str):
    """Final metric vs one hyperparameter, mean +- std over seeds, one line per algorithm."""
    fig, ax = plt.subplots(figsize=(5.2, 3.6), dpi=120)
    for algo, c in sens.groupby("algorithm"):
        c = c.sort_values("value")
        ax.errorbar(
            c["value"],
            c["mean"],
            yerr=c["std"],
            marker="o",
            capsize=3,
            label=f"{algo} (n={int(c['n'].max())})",
        )
    return finish_axes(fig, ax, param, ylabel, title)


def stability_panel(panels: dict[str, pd.DataFrame], title: str):
    """One subplot per training signal (curves() frames), mean over seeds per algorithm."""
    keys = [k for k, c in panels.items() if not c.empty]
    fig, axes = plt.subplots(
        1, max(len(keys), 1), figsize=(3.4 * max(len(keys), 1), 3.0), dpi=120, squeeze=False
    )
    for ax, key in zip(axes[0], keys, strict=False):
        for algo, c in panels[key].groupby("algorithm"):
            c = c.sort_values("step")
            ax.plot(c["step"], c["mean"], lw=1, label=algo)
        ax.set_title(key, fontsize=9)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    if keys:
        axes[0][0].legend(frameon=False, fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def curves_by_compute(panels: dict[str, pd.DataFrame], ylabel: str, title: str):
    """Eval metric vs compute: one panel per x axis (frames with algorithm, x, mean, std)."""
    fig, axes = plt.subplots(
        1, len(panels), figsize=(5.0 * len(panels), 3.6), dpi=120, squeeze=False
    )
    for ax, (xlabel, c_all) in zip(axes[0], panels.items(), strict=True):
        for algo, c in c_all.groupby("algorithm"):
            c = c.sort_values("x")
            (line,) = ax.plot(c["x"], c["mean"], marker="o", ms=3, label=algo)
            ax.fill_between(
                c["x"],
                c["mean"] - c["std"],
                c["mean"] + c["std"],
                color=line.get_color(),
                alpha=0.15,
            )
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    axes[0][0].legend(frameon=False, fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def kl_reward_frontier(kl: pd.DataFrame, reward: pd.DataFrame, title: str, window: int = 10):
    """Training reward vs KL to the reference (rolling means over steps), one path per algorithm."""
    fig, ax = plt.subplots(figsize=(5.2, 3.8), dpi=120)
    both = kl.merge(reward, on=["algorithm", "step"], suffixes=("_kl", "_r"))
    for algo, c in both.groupby("algorithm"):
        c = c.sort_values("step")
        x = c["mean_kl"].rolling(window, min_periods=1).mean()
        y = c["mean_r"].rolling(window, min_periods=1).mean()
        (line,) = ax.plot(x, y, lw=1.2, label=algo)
        ax.plot(x.iloc[-1:], y.iloc[-1:], "o", color=line.get_color())
    return finish_axes(fig, ax, "KL(pi || pi_ref) per sequence", "train reward", title)


def seed_spread(final: pd.DataFrame, ylabel: str, title: str):
    """Box plot of the final metric per algorithm over seeds, with the seeds as points."""
    labels = sorted(final["algorithm"].unique())
    data = [final[final["algorithm"] == a]["final"].to_numpy() for a in labels]
    fig, ax = plt.subplots(figsize=(1.2 * len(labels) + 2, 3.6), dpi=120)
    ax.boxplot(data, tick_labels=labels, widths=0.5)
    for i, d in enumerate(data, start=1):
        ax.plot([i] * len(d), d, "o", ms=4, alpha=0.7)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    return fig
