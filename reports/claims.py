"""Verdicts on the GVPO paper's claims, from the final metrics of the runs of ``bench claims``.

Each function takes a DataFrame of finished runs, one row each (``algorithm``, ``seed``, the
varied setting, ``value`` = the final metric), and returns a ``Verdict`` with the p-value of
its pre-registered test for the claim and against it (reports/preregistration.py: test,
direction, alpha and seed count fixed before any run). ``decide`` corrects the claims' tests
together (Holm, separately for and against) and gives each its verdict: "holds" when the
adjusted p for it is below alpha (and any precondition holds), "contradicted" when the adjusted
p against it is, otherwise "not reproduced at this scale".
"""

from __future__ import annotations

from dataclasses import dataclass

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from reports.claim_tests import (  # noqa: E402
    format_p,
    holm,
    page_trend,
    paired_t_one_sided,
    spread_less,
    tost,
)
from reports.plots import finish_axes  # noqa: E402
from reports.preregistration import ALPHA  # noqa: E402

HOLDS, NOT_REPRODUCED, CONTRADICTED = "holds", "not reproduced at this scale", "contradicted"
MARGIN = 0.03  # the beta claim's equivalence margin (accuracy)


@dataclass
class Verdict:
    claim: str
    verdict: str
    statistic: str  # the number(s) behind the verdict, in words
    n: str  # runs and seeds it rests on
    figure: object = None  # None (or False) when not plotted
    p_for: float | None = None  # the pre-registered test's p for the claim (None: no test)
    p_against: float | None = None  # the same test's p in the other direction
    precondition: bool = True  # what else the claim needs (e.g. the bandit's fixed point)


def decide(verdicts: list[Verdict]) -> list[Verdict]:
    """Holm across the claims that have a test (for, and separately against), then each
    verdict; the statistic gains the raw and adjusted p-values."""
    tested = [v for v in verdicts if v.p_for is not None]
    adj_for = holm([v.p_for for v in tested])
    adj_against = holm([v.p_against for v in tested])
    for v, a, b in zip(tested, adj_for, adj_against, strict=True):
        v.verdict = (
            HOLDS if v.precondition and a < ALPHA else CONTRADICTED if b < ALPHA else NOT_REPRODUCED
        )
        v.statistic += (
            f"; p for the claim {format_p(v.p_for)} (Holm {format_p(a)}), "
            f"against {format_p(v.p_against)} (Holm {format_p(b)})"
        )
    return verdicts


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
    source and seed (the runs converge to pi*; that pi* is the unique optimum is the paper's
    theorem, not something runs can show); otherwise not reproduced (a run that has not
    converged says nothing against the fixed point). A threshold rule, not a test: no p."""
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
    return Verdict("GVPO converges to pi* ∝ pi_ref exp(R/beta)", verdict, statistic, n, fig)


def off_policy(tv: pd.DataFrame, replay: pd.DataFrame, plot: bool = True) -> Verdict:
    """The claim: GVPO gains from (or loses less to) replayed completions than GRPO. Per seed
    the interaction (gvpo at the largest replay - gvpo at 0) - (grpo at it - grpo at 0); one-
    sided paired t for > 0 (against: < 0). Precondition: GVPO reaches pi* (TV < 0.01) under
    every off-policy source on the bandit."""
    off = tv[(tv["algorithm"] == "gvpo") & (tv["source"] != "policy")]
    bandit_ok = bool(len(off) > 0 and off["value"].max() < 0.01)
    top = replay["replay_ratio"].max()
    ends = replay[replay["replay_ratio"].isin([0, top])]
    wide = ends.pivot_table(index="seed", columns=["algorithm", "replay_ratio"], values="value")
    wide = wide.dropna()
    claim = "off-policy robustness (sampling sources, replay)"
    if not {("gvpo", 0), ("gvpo", top), ("grpo", 0), ("grpo", top)} <= set(wide) or top == 0:
        return Verdict(claim, NOT_REPRODUCED, "no paired runs at replay 0 and above", "0")
    inter = (wide["gvpo", top] - wide["gvpo", 0]) - (wide["grpo", top] - wide["grpo", 0])
    d = inter.to_numpy()
    statistic = (
        f"bandit: gvpo's largest TV off-policy {off['value'].max():.2g}; arithmetic, per-seed "
        f"(gvpo at replay {top:g} - at 0) - (grpo at {top:g} - at 0) = {d.mean():+.3f} "
        f"(sd {d.std(ddof=1):.3f}; one-sided paired t)"
    )
    n = f"{len(off)} bandit runs; {len(replay)} arithmetic runs, {len(d)} paired seeds"
    fig = plot and _points(
        replay, "replay_ratio", "final accuracy with replayed completions", "accuracy"
    )
    return Verdict(
        claim,
        NOT_REPRODUCED,
        statistic,
        n,
        fig,
        paired_t_one_sided(d),
        paired_t_one_sided(-d),
        bandit_ok,
    )


def beta_insensitivity(beta: pd.DataFrame, plot: bool = True) -> Verdict:
    """GVPO's final accuracy across beta, paired by seed: each beta against the middle one by
    TOST within +-MARGIN (90% t-intervals; a pair with no spread has its difference as its
    interval); the claim's p is the largest (all must pass). Against: some beta differs from
    the middle by more than MARGIN (one-sided t beyond the margin; the smallest p, Bonferroni
    over the pairs)."""
    wide = beta.pivot_table(index="seed", columns="beta", values="value").dropna()
    middle = wide.columns[len(wide.columns) // 2]
    rows, against = [], []
    for b in wide.columns:
        if b == middle:
            continue
        d = (wide[b] - wide[middle]).to_numpy()
        rows.append((b, tost(d, MARGIN)))
        sign = 1.0 if d.mean() >= 0 else -1.0  # H1: farther than the margin, on d's side
        against.append(paired_t_one_sided(sign * d - MARGIN))
    p_for = max((r["p"] for _, r in rows), default=np.nan)
    p_against = min(1.0, min(against, default=np.nan) * max(len(against), 1))
    intervals = ", ".join(f"{b:g}: {r['low']:+.3f}..{r['high']:+.3f}" for b, r in rows)
    statistic = (
        f"90% intervals of each beta - beta {middle:g}: {intervals} (equivalence margin {MARGIN})"
    )
    fig = plot and _points(
        beta.assign(algorithm="gvpo"), "beta", "gvpo: final accuracy against beta", "accuracy"
    )
    n = f"{len(beta)} runs, {len(wide)} seeds"
    return Verdict("beta insensitivity", NOT_REPRODUCED, statistic, n, fig, p_for, p_against)


def k_scaling(k: pd.DataFrame, plot: bool = True) -> Verdict:
    """Final accuracy against k paired by seed. The claim's test is the equal-samples design
    (prompts x k fixed: only k changes): Page's trend test, one-sided up (against: down). The
    equal-prompts design (k = 8 also draws 4x the samples of k = 2) is reported as
    compute-confounded, not tested."""
    rows, parts = {}, []
    for mode, part in k.groupby("budget"):
        wide = part.pivot_table(index="seed", columns="k", values="value").dropna()
        rows[mode] = wide.sort_index(axis=1)
        parts.append(part.assign(algorithm=f"gvpo, equal {mode}"))
    fair = rows.get("samples")
    if fair is None or fair.shape[1] < 3 or len(fair) < 2:
        return Verdict(
            "k scaling", NOT_REPRODUCED, "fewer than 3 values of k at equal samples", str(len(k))
        )
    x = fair.to_numpy()
    means = "; ".join(
        f"equal {m}{' (compute-confounded, not tested)' if m == 'prompts' else ''}: "
        + ", ".join(f"k={c}: {v:.3f}" for c, v in w.mean().items())
        for m, w in rows.items()
    )
    fig = plot and _points(pd.concat(parts), "k", "gvpo: final accuracy against k", "accuracy")
    n = f"{len(k)} runs, {len(fair)} seeds at equal samples"
    statistic = f"{means}; Page's trend test at equal samples"
    return Verdict(
        "k scaling",
        NOT_REPRODUCED,
        statistic,
        n,
        fig,
        float(page_trend(x)),
        float(page_trend(x[:, ::-1])),
    )


def seed_variance(seeds: pd.DataFrame, plot: bool = True) -> Verdict:
    """The claim: GVPO's final accuracy varies less over seeds than each other algorithm's.
    One-sided Brown-Forsythe of gvpo's spread < each other's; both must reject, so the claim's
    p is the larger (an intersection-union test). Against: gvpo's spread larger than some
    other's (the smaller p, Bonferroni over the others)."""
    groups = {a: part["value"].to_numpy() for a, part in seeds.groupby("algorithm")}
    sd = {a: float(np.std(v, ddof=1)) for a, v in groups.items()}
    others = [a for a in groups if a != "gvpo"]
    if "gvpo" not in groups or not others:
        return Verdict("seed variance", NOT_REPRODUCED, "no gvpo or no other algorithm", "0")
    p_less = [float(spread_less(groups["gvpo"], groups[a])) for a in others]
    p_more = [float(spread_less(groups[a], groups["gvpo"])) for a in others]
    statistic = "std over seeds: " + ", ".join(f"{a} {v:.3f}" for a, v in sd.items())
    n = ", ".join(f"{a} {len(v)} seeds" for a, v in groups.items())
    fig = plot and _points(
        seeds.assign(x="final"), "algorithm", "final accuracy by seed", "accuracy"
    )
    p_against = min(1.0, min(p_more) * len(p_more))
    return Verdict("seed variance", NOT_REPRODUCED, statistic, n, fig, max(p_less), p_against)


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
        if v.figure:
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
