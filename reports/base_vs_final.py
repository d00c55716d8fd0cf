"""Did a run improve on the model it started from? Each run's final greedy answers against its
step-0 answers on the same eval problems: McNemar's exact test (a two-sided binomial test on
the problems that changed), valid for a single run; Holm across the runs of a report. Also a
few of each algorithm's final completions (the eval_samples artifacts) to read."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import pandas as pd
from scipy.stats import binomtest

from bench.tracking import client
from reports.claim_tests import format_p, holm
from reports.tables import md_table

SAMPLES_DIR = "eval_samples"


def greedy_answers(uri: str, run_id: str, ends_only: bool = False) -> dict[int, pd.DataFrame]:
    """step -> that eval's greedy records (task, problem, completion, extracted, gold, correct);
    ``ends_only``: the first and the last eval only (all a comparison with base needs)."""
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # a bar per file
    c = client(uri)
    files = {
        int(Path(a.path).stem.removeprefix("step_")): a.path
        for a in c.list_artifacts(run_id, SAMPLES_DIR)
    }
    if ends_only and files:
        files = {s: files[s] for s in {min(files), max(files)}}
    steps = {}
    with tempfile.TemporaryDirectory() as tmp:
        for step, item in sorted(files.items()):
            path = Path(c.download_artifacts(run_id, item, tmp))
            records = [json.loads(line) for line in path.read_text().splitlines() if line]
            frame = pd.DataFrame(records)
            if not frame.empty:
                steps[step] = frame[frame["mode"] == "greedy"]
    return steps


def mcnemar(base: pd.Series, final: pd.Series) -> tuple[int, int, float]:
    """(gained, lost, exact two-sided p): problems wrong at base and right at the end, the
    reverse, and the binomial test of gained against gained + lost at 1/2."""
    gained = int((~base & final).sum())
    lost = int((base & ~final).sum())
    p = binomtest(gained, gained + lost, 0.5).pvalue if gained + lost else 1.0
    return gained, lost, float(p)


def base_vs_final(runs: pd.DataFrame, uri: str) -> tuple[pd.DataFrame, dict[str, pd.DataFrame]]:
    """One row per run and task with eval samples at step 0 and a later step; and each
    algorithm's final records (its first seed) for reading."""
    rows, finals = [], {}
    for _, run in runs.sort_values(["params.label", "params.seed"]).iterrows():
        steps = greedy_answers(uri, run["run_id"], ends_only=True)
        if 0 not in steps or max(steps) == 0:
            continue
        base, final = steps[0], steps[max(steps)]
        finals.setdefault(run["params.label"], final)
        for task, b in base.groupby("task"):
            pair = b.merge(final[final["task"] == task], on="problem", suffixes=("_b", "_f"))
            ok_b, ok_f = pair["correct_b"].fillna(False), pair["correct_f"].fillna(False)
            gained, lost, p = mcnemar(ok_b.astype(bool), ok_f.astype(bool))
            rows.append(
                {
                    "algorithm": run["params.label"],
                    "seed": run["params.seed"],
                    "task": task,
                    "problems": len(pair),
                    "base": ok_b.mean(),
                    "final": ok_f.mean(),
                    "gained": gained,
                    "lost": lost,
                    "p": p,
                }
            )
    table = pd.DataFrame(rows)
    if not table.empty:
        table["p_holm"] = holm(table["p"].tolist())
        table["verdict"] = [
            "no detectable change" if q >= 0.05 else ("better" if g > l else "worse")
            for q, g, l in zip(table["p_holm"], table["gained"], table["lost"], strict=True)
        ]
    return table, finals


def printable(table: pd.DataFrame) -> pd.DataFrame:
    out = table.copy()
    out["p"] = out["p"].map(format_p)
    out["p_holm"] = out["p_holm"].map(format_p)
    return out


def examples(finals: dict[str, pd.DataFrame], n: int = 3) -> list[str]:
    """Markdown: the first ``n`` final greedy completions of each algorithm."""
    lines = []
    for algorithm, frame in finals.items():
        lines += [f"**{algorithm}**", ""]
        for r in frame.head(n).itertuples():
            mark = "right" if r.correct else "wrong"
            text = r.completion.replace("\n", " ").replace("|", "\\|")[:160]
            lines.append(f"- `{text}` -> read `{r.extracted}`, gold `{r.gold}`: {mark}")
        lines.append("")
    return lines


def section(runs: pd.DataFrame, uri: str) -> str:
    table, finals = base_vs_final(runs, uri)
    if table.empty:
        return ""
    return "\n".join(
        [
            "## Final against base, problem by problem",
            "",
            "Each run's final greedy answers against its own step-0 answers on the same eval",
            "problems. `gained`: wrong at base, right at the end; `lost`: the reverse. p: McNemar's",
            "exact test (two-sided binomial on gained vs lost), valid for one run; `p_holm`: Holm",
            "across the rows of this table; the verdict uses `p_holm` at 0.05.",
            "",
            md_table(printable(table)),
            "",
            "### Final completions (first eval problems, first seed)",
            "",
            *examples(finals),
        ]
    )
