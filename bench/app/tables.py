"""What commands print: summary tables, a DataFrame, the memory plan."""

from __future__ import annotations

import typer
from rich.markup import escape
from rich.table import Table

from bench.core.progress import console


def print_frame(frame, title: str, floatfmt: str = "{:.4f}") -> None:
    """A DataFrame as a rich table on the console."""
    table = Table(title=title)
    for col in frame.columns:
        table.add_column(str(col))
    for row in frame.itertuples(index=False):
        table.add_row(
            *[floatfmt.format(v) if isinstance(v, float) else escape(str(v)) for v in row]
        )
    console.print(table)


def report_and_exit(
    outcomes, experiment: str, tracking_uri: str | None, reference: str | None = None
) -> None:
    """Report from MLflow (whatever finished), then exit 1 if any run failed."""
    from reports.report import build_report

    result = build_report(experiment, tracking_uri, reference=reference)
    print_summary(result["summary"])
    console.print(result["runs"], highlight=False)
    console.print(result["machines"], highlight=False, markup=False)
    console.print(f"report: {result['report']}")
    failed = [o for o in outcomes if o.error]
    if failed:
        names = ", ".join(escape(o.name) for o in failed)
        console.print(f"[red]{len(failed)} run(s) failed:[/red] {names} (re-run to retry them)")
        raise typer.Exit(1)


def print_summary(summary) -> None:
    table = Table(title="final eval: mean ± std over seeds, 95% CI; base = warm-start model")
    for col in ("task", "algorithm", "metric", "n", "mean ± std", "95% CI", "base"):
        table.add_column(col)
    for r in summary[summary.metric.isin(["accuracy", "avg_at_k"])].itertuples():
        ci = f"{r.ci_low:.3f}-{r.ci_high:.3f}" if r.n_seeds > 1 else "-"
        table.add_row(
            r.task,
            escape(r.algorithm),
            r.metric,
            str(r.n_seeds),
            f"{r.mean:.3f} ± {r.std:.3f}",
            ci,
            f"{r.base_value:.3f}",
        )
    console.print(table)


def print_plan(cfg, workload) -> bool:
    """The memory and compute tables of ``cfg`` on stdout (a verdict that it does not fit on
    stderr, as an error); True if it fits."""
    from rich.console import Console

    from algorithms import ALGORITHMS
    from bench.plan import GB, make_plan

    p = make_plan(cfg, workload, needs_ref=ALGORITHMS.get(cfg.algorithm).needs.ref_logp)
    w = workload
    table = Table(
        title=f"memory per GPU: {w.gpus} x {w.gpu_memory_gb:g} GB, prompts of {w.prompt_tokens} tokens"
    )
    table.add_column("item")
    table.add_column("GB", justify="right")
    for item, size in p.memory:
        table.add_row(escape(item), f"{size / GB:.2f}")
    table.add_row("[bold]total[/bold]", f"[bold]{p.total / GB:.2f}[/bold]")
    out = Console()
    out.print(table)
    flops = ", ".join(f"{k} {v / 1e12:,.1f}" for k, v in p.flops.items())
    out.print(f"TFLOP per step: {flops}", highlight=False)
    out.print(
        f"{cfg.train.steps} steps: {p.gpu_hours:,.1f} GPU-hours at {w.utilization:.0%} of "
        f"{w.gpu_tflops:g} TFLOP/s",
        highlight=False,
    )
    if p.fits:
        out.print(p.verdict, highlight=False)
    else:
        console.print(f"[red]error:[/red] {p.verdict}", highlight=False)
    return p.fits
