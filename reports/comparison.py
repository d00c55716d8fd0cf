"""The comparison part of a report: paired tests by seed (valid at the seed count at hand),
seeds needed, and rliable aggregates across tasks x seeds."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from reports.aggregates import (
    aggregate_table,
    improvement_table,
    percentile_coverage,
    profiles_figure,
    score_matrices,
)
from reports.claim_tests import format_p, holm
from reports.statistics import compare_pair, sign_flip_verdict
from reports.summary import final_values
from reports.tables import md_table


def finals_frame(runs: pd.DataFrame, history: pd.DataFrame, tasks: list[str]) -> pd.DataFrame:
    """(algorithm, task, seed, value): the final eval accuracy of every run."""
    parts = []
    for task in tasks:
        t = runs[runs["params.task"] == task].set_index("run_id")[["params.label", "params.seed"]]
        final = t.join(final_values(history, f"eval/{task}/accuracy").rename("value")).dropna()
        parts.append(
            final.rename(columns={"params.label": "algorithm", "params.seed": "seed"}).assign(
                task=task
            )
        )
    return (
        pd.concat(parts, ignore_index=True)
        if parts
        else pd.DataFrame(columns=["algorithm", "task", "seed", "value"])
    )


def paired_table(
    finals: pd.DataFrame, reference: str | None = None, target: float | None = None
) -> pd.DataFrame:
    """Each label against ``reference`` (default: the first label), paired by seed, per task."""
    rows = []
    for task, part in finals.groupby("task"):
        wide = part.pivot_table(index="seed", columns="algorithm", values="value")
        labels = list(wide.columns)
        ref = reference if reference in labels else (labels[0] if labels else None)
        for other in [label for label in labels if label != ref]:
            both = wide[[ref, other]].dropna()
            if len(both) < 2:
                continue
            stats = compare_pair(both[ref].to_numpy(), both[other].to_numpy(), target=target)
            rows.append({"task": task, "comparison": f"{ref} - {other}", **stats})
    return with_holm(pd.DataFrame(rows))


def with_holm(paired: pd.DataFrame) -> pd.DataFrame:
    """Holm-adjusted p-values across every comparison of the report (all pairs and tasks), and
    the verdicts from the adjusted sign-flip p."""
    if paired.empty:
        return paired
    paired = paired.copy()
    paired["p_sign_flip_holm"] = holm(list(paired["p_sign_flip"]))
    paired["t_p_holm"] = holm(list(paired["t_p"]))
    paired["verdict"] = [
        sign_flip_verdict(p, n)
        for p, n in zip(paired["p_sign_flip_holm"], paired["n_seeds"], strict=True)
    ]
    return paired


P_COLUMNS = ("p_sign_flip", "p_sign_flip_holm", "smallest_p", "t_p", "t_p_holm")


SEED_COLUMNS = {"seeds_for_observed", "seeds_for_target"}


def printable(paired: pd.DataFrame) -> pd.DataFrame:
    """p-values as numbers people read (``2.4e-05``, ``0.0625``), not ``0.000``; seed counts as
    whole numbers (``6``, not ``6.000``), ``-`` where there is none."""
    out = paired.assign(**{c: paired[c].map(format_p) for c in P_COLUMNS if c in paired})
    for c in SEED_COLUMNS & set(out):
        out[c] = out[c].map(lambda v: "-" if v is None or v != v else str(int(v)))
    return out


def coverage_note(scores: dict) -> str:
    """What the bootstrap intervals really cover with the runs at hand."""
    runs = min(m.shape[0] for m in scores.values())
    if runs < 2:
        return "One run per algorithm and task: no interval (shown as -)."
    return (
        f"With {runs} runs per task such an interval covers the true mean in about "
        f"{percentile_coverage(runs):.0%} of cases, not 95% (simulated, normal scores)."
    )


@dataclass
class Comparison:
    markdown: str
    paired: pd.DataFrame
    aggregates: pd.DataFrame = field(default_factory=pd.DataFrame)
    improvement: pd.DataFrame = field(default_factory=pd.DataFrame)
    plots: list[str] = field(default_factory=list)


def comparison_section(
    runs: pd.DataFrame,
    history: pd.DataFrame,
    tasks: list[str],
    out: Path,
    *,
    reference: str | None = None,
    target: float | None = None,
) -> Comparison:
    finals = finals_frame(runs, history, tasks)
    paired = paired_table(finals, reference, target)
    lines = [
        "## Paired differences in final accuracy (by seed)",
        "",
        "Exact sign-flip permutation test (all 2^n sign patterns) and paired t-test. With n seeds",
        "the smallest two-sided p the sign-flip test can give is 2/2^n (0.25 for 3 seeds): with",
        "fewer than 6 seeds that test cannot reach 0.05 (the t-test can, if the differences are",
        "near normal). `_holm`: p adjusted by Holm across every comparison of this report; the",
        "verdict uses the adjusted sign-flip p. `seeds_for_observed`: paired seeds at which the",
        "sign-flip test (unadjusted, 0.05) has 80% simulated power at the observed difference and",
        "spread (noisy with few seeds: the spread itself is estimated from them).",
        "",
        md_table(printable(paired))
        if not paired.empty
        else "(needs at least two algorithms with 2+ common seeds)",
        "",
    ]
    result = Comparison("", paired)
    if finals["algorithm"].nunique() >= 2:
        scores = score_matrices(finals)
        if all(s.size for s in scores.values()):
            result.aggregates = aggregate_table(scores)
            result.improvement = improvement_table(scores)
            profiles_figure(
                scores, "final accuracy across tasks x seeds", result.aggregates
            ).savefig(out / "rliable.png")
            result.plots.append("rliable.png")
            result.aggregates.to_csv(out / "aggregates.csv", index=False)
            lines += [
                "## Aggregates across tasks x seeds (rliable)",
                "",
                "IQM and mean with 95% stratified bootstrap (percentile) intervals, and the",
                "probability that a run of X beats a run of Y (Agarwal et al. 2021; computed with",
                f"the rliable package). {coverage_note(scores)}",
                "",
                md_table(result.aggregates),
                "",
                md_table(result.improvement),
                "",
            ]
    result.markdown = "\n".join(lines)
    return result
