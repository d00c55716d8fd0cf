"""Verdicts on the GVPO paper's claims, from the final metrics of the runs of ``bench claims``.

Each function takes a DataFrame of finished runs, one row each (``algorithm``, ``seed``, the
varied setting, ``value`` = the final metric), and returns a ``Verdict``: "holds",
"not reproduced at this scale" or "contradicted", the statistic behind it, and a figure. The
rules are written next to each function; tests at few seeds can only be inconclusive, and the
verdict then says "not reproduced at this scale", never "holds".
"""

from __future__ import annotations

from dataclasses import dataclass

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from scipy import stats  # noqa: E402

from reports.plots import finish_axes  # noqa: E402
from reports.statistics import compare_pair  # noqa: E402

HOLDS, NOT_REPRODUCED, CONTRADICTED = "holds", "not reproduced at this scale", "contradicted"
ALPHA = 0.05


@dataclass
class Verdict:
    claim: str
    verdict: str
    statistic: str  # the number(s) behind the verdict, in words
    n: str  # runs and seeds it rests on
    figure: object = None


def _points(df: pd.DataFrame, x: str, title: str, ylabel: str, logy: bool = False):
    """Every run as a dot, the mean per algorithm as a line, against ``x``."""
    fig, ax = plt.subplots(figsize=(5.2, 3.4), dpi=120)
    for i, (algo, part) in enumerate(df.groupby("algorithm")):
        xs = sorted(part[x].unique(), key=_order)
        pos = {v: j for j, v in enumerate(xs)}
        jitter = (i - 0.5) * 0.08
        ax.scatter([pos[v] + jitter for v in part[x]], part["value"], s=12, alpha=0.6)
        means = part.groupby(x)["value"].mean().reindex(xs)
        ax.plot([pos[v] + jitter for v in xs], means.to_numpy(), marker="o", label=str(algo))
        ax.set_xticks(range(len(xs)), [str(v) for v in xs])
    if logy:
        ax.set_yscale("log")
    return finish_axes(fig, ax, x, ylabel, title)


def _order(v):
    try:
        return (0, float(v))
    except (TypeError, ValueError):
        return (1, str(v))


def unique_optimum(tv: pd.DataFrame) -> Verdict:
    """Bandit, every sampling source: GVPO's final TV(pi, pi*). Holds if below 0.01 for every
    source and seed; otherwise not reproduced (a run that has not converged says nothing
    against the fixed point)."""
    g = tv[tv["algorithm"] == "gvpo"]
    worst = g["value"].max()
    others = tv[tv["algorithm"] != "gvpo"].groupby("algorithm")["value"].median()
    verdict = HOLDS if worst < 0.01 else NOT_REPRODUCED
    statistic = (
        f"gvpo's largest final TV to pi* over sources and seeds: {worst:.2g}; median of the others: "
        + ", ".join(f"{a} {v:.2g}" for a, v in others.items())
    )
    n = f"{len(tv)} runs: {tv['algorithm'].nunique()} algorithms x {tv['source'].nunique()} sources x {tv['seed'].nunique()} seeds"
    fig = _points(tv, "source", "final TV(pi, pi*) on the bandit", "TV", logy=True)
    return Verdict("unique optimum pi* ∝ pi_ref exp(R/beta)", verdict, statistic, n, fig)


def off_policy(tv: pd.DataFrame, replay: pd.DataFrame) -> Verdict:
    """Holds if GVPO reaches pi* (TV < 0.01) under every off-policy source on the bandit AND beats
    GRPO on arithmetic at replay 0.5 by the paired sign-flip test; contradicted if GRPO beats it
    significantly; otherwise not reproduced."""
    off = tv[(tv["algorithm"] == "gvpo") & (tv["source"] != "policy")]
    bandit_ok = len(off) > 0 and off["value"].max() < 0.01
    at = replay[replay["replay_ratio"] == replay["replay_ratio"].max()]
    wide = at.pivot_table(index="seed", columns="algorithm", values="value").dropna()
    row = (
        compare_pair(wide["gvpo"].to_numpy(), wide["grpo"].to_numpy())
        if {"gvpo", "grpo"} <= set(wide)
        else None
    )
    if row is None:
        return Verdict("off-policy robustness", NOT_REPRODUCED, "no paired runs", "0")
    better = row["p_sign_flip"] < ALPHA and row["mean_diff"] > 0
    worse = row["p_sign_flip"] < ALPHA and row["mean_diff"] < 0
    verdict = CONTRADICTED if worse else HOLDS if bandit_ok and better else NOT_REPRODUCED
    statistic = (
        f"bandit: gvpo's largest TV off-policy {off['value'].max():.2g}; arithmetic at replay "
        f"{at['replay_ratio'].max():g}: gvpo - grpo = {row['mean_diff']:+.3f} "
        f"(t 95% CI {row['t_low']:+.3f}..{row['t_high']:+.3f}, sign-flip p = {row['p_sign_flip']:.3g})"
    )
    n = f"{len(off)} bandit runs; {len(replay)} arithmetic runs, {row['n_seeds']} paired seeds"
    fig = _points(replay, "replay_ratio", "final accuracy with replayed completions", "accuracy")
    return Verdict("off-policy robustness (sampling sources, replay)", verdict, statistic, n, fig)


def beta_insensitivity(beta: pd.DataFrame, margin: float = 0.03) -> Verdict:
    """GVPO's final accuracy across beta, paired by seed. Holds if every beta's paired 95%
    t-interval against the middle beta lies within +-``margin`` (an equivalence test: with few
    seeds or noisy runs its intervals are wide and it fails); contradicted if the Friedman test finds a difference and the means span
    0.05 or more; otherwise not reproduced."""
    wide = beta.pivot_table(index="seed", columns="beta", values="value").dropna()
    means = wide.mean()
    spread = float(means.max() - means.min())
    p = float(stats.friedmanchisquare(*[wide[c] for c in wide]).pvalue) if len(wide) >= 2 else 1.0
    middle = wide.columns[len(wide.columns) // 2]
    pairs = [compare_pair(wide[b].to_numpy(), wide[middle].to_numpy()) for b in wide if b != middle]
    widest = max((max(abs(r["t_low"]), abs(r["t_high"])) for r in pairs), default=np.inf)
    equivalent = bool(np.isfinite(widest) and widest < margin)
    verdict = (
        HOLDS if equivalent else CONTRADICTED if p < ALPHA and spread >= 0.05 else NOT_REPRODUCED
    )
    statistic = (
        f"means span {spread:.3f} across beta {', '.join(f'{b:g}' for b in means.index)}; paired t-intervals "
        f"against beta {middle:g} reach {widest:.3f} (equivalence margin {margin}); Friedman p = {p:.3g}"
    )
    fig = _points(
        beta.assign(algorithm="gvpo"), "beta", "gvpo: final accuracy against beta", "accuracy"
    )
    return Verdict(
        "beta insensitivity", verdict, statistic, f"{len(beta)} runs, {len(wide)} seeds", fig
    )


def k_scaling(k: pd.DataFrame) -> Verdict:
    """Final accuracy against k, at equal prompts per step (more samples) and at equal samples per
    step (fewer prompts), paired by seed. Holds if accuracy rises with k at equal prompts (Page's
    trend test); contradicted if it falls significantly; otherwise not reproduced."""
    rows, parts = [], []
    for mode, part in k.groupby("budget"):
        wide = (
            part.pivot_table(index="seed", columns="k", values="value").dropna().sort_index(axis=1)
        )
        if wide.shape[1] >= 3 and len(wide) >= 2:
            up = float(stats.page_trend_test(wide.to_numpy()).pvalue)
            down = float(stats.page_trend_test(wide.to_numpy()[:, ::-1]).pvalue)
            rows.append((mode, up, down, wide.mean()))
        parts.append(part.assign(algorithm=f"gvpo, equal {mode}"))
    equal_prompts = next((r for r in rows if r[0] == "prompts"), None)
    if equal_prompts is None:
        return Verdict("k scaling", NOT_REPRODUCED, "fewer than 3 values of k", str(len(k)))
    _, up, down, _ = equal_prompts
    verdict = HOLDS if up < ALPHA else CONTRADICTED if down < ALPHA else NOT_REPRODUCED
    statistic = "; ".join(
        f"equal {m}: means "
        + ", ".join(f"k={c}: {v:.3f}" for c, v in means.items())
        + f" (Page trend p up {u:.3g}, down {d:.3g})"
        for m, u, d, means in rows
    )
    fig = _points(pd.concat(parts), "k", "gvpo: final accuracy against k", "accuracy")
    return Verdict("k scaling", verdict, statistic, f"{len(k)} runs", fig)


def seed_variance(seeds: pd.DataFrame) -> Verdict:
    """Spread of final accuracy over seeds, gvpo vs grpo vs dr_grpo (Brown-Forsythe test). Holds
    if the spreads differ and gvpo's is the smallest; contradicted if they differ and gvpo's is
    the largest; otherwise not reproduced."""
    groups = {a: part["value"].to_numpy() for a, part in seeds.groupby("algorithm")}
    sd = {a: float(np.std(v, ddof=1)) for a, v in groups.items()}
    p = float(stats.levene(*groups.values(), center="median").pvalue)
    smallest, largest = min(sd, key=sd.get), max(sd, key=sd.get)
    verdict = (
        HOLDS
        if p < ALPHA and smallest == "gvpo"
        else CONTRADICTED
        if p < ALPHA and largest == "gvpo"
        else NOT_REPRODUCED
    )
    statistic = (
        "std over seeds: "
        + ", ".join(f"{a} {v:.3f}" for a, v in sd.items())
        + f"; Brown-Forsythe p = {p:.3g}"
    )
    n = ", ".join(f"{a} {len(v)} seeds" for a, v in groups.items())
    fig = _points(seeds.assign(x="final"), "algorithm", "final accuracy by seed", "accuracy")
    return Verdict("seed variance", verdict, statistic, n, fig)


def summary_markdown(verdicts: list[Verdict], provenance: str) -> str:
    """The verdict table (what docs/results.md carries, generated)."""
    lines = [provenance, "", "| claim | verdict | statistic | runs |", "|---|---|---|---|"]
    lines += [f"| {v.claim} | **{v.verdict}** | {v.statistic} | {v.n} |" for v in verdicts]
    return "\n".join(lines)


def write_report(verdicts: list[Verdict], out, provenance: str):
    """report.md (+ report.html, figures) under ``out``; returns the report's path."""
    from reports.html import write_html

    out.mkdir(parents=True, exist_ok=True)
    lines = [
        "# The GVPO paper's claims at CPU scale",
        "",
        summary_markdown(verdicts, provenance),
        "",
    ]
    for i, v in enumerate(verdicts, 1):
        name = f"claim{i}.png"
        if v.figure is not None:
            v.figure.savefig(out / name)
            plt.close(v.figure)
        lines += [f"## {i}. {v.claim}: {v.verdict}", "", v.statistic, "", f"![{name}]({name})", ""]
    lines += [
        "Rules (reports/claims.py): a claim **holds** only when a test valid at the seeds at hand",
        "finds it; an inconclusive test is **not reproduced at this scale**; a significant effect",
        "against it is **contradicted**.",
        "",
    ]
    path = out / "report.md"
    path.write_text("\n".join(lines))
    write_html(path)
    return path
