"""Command line: ``bench run | compare | report | list``. User mistakes print one line, exit 2."""

from __future__ import annotations

import functools
import os
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from bench.core import signals
from bench.core.errors import BenchError, RunFailed
from bench.core.progress import console
from bench.core.signals import terminate_as_interrupt

app = typer.Typer(
    add_completion=False,
    rich_markup_mode=None,  # help texts are plain: "[key=value ...]" is not markup
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="gvpo-bench: compare LLM post-training algorithms with one training loop.",
)

TrackingUri = Annotated[
    str | None,
    typer.Option(
        "--tracking-uri", help="MLflow URI (default: $MLFLOW_TRACKING_URI or sqlite under results/)"
    ),
]


def user_errors(fn):
    """The error boundary of every command: a user's mistake is one line and exit 2, a failed
    run one line and exit 1; ``--debug`` (or BENCH_DEBUG=1) shows the traceback instead."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (typer.Exit, KeyboardInterrupt):
            raise
        except Exception as e:
            if os.environ.get("BENCH_DEBUG") == "1":
                raise
            line, code = error_line(e)
            console.print(f"[red]error:[/red] {escape(line)}", highlight=False, soft_wrap=True)
            raise typer.Exit(code) from None

    return wrapper


def error_line(e: Exception) -> tuple[str, int]:
    """(one line, exit code) for an exception that reached a command."""
    if isinstance(e, BenchError):
        return str(e), 2
    if isinstance(e, RunFailed):
        return str(e), 1
    if isinstance(e, OSError) and e.strerror:  # disk full, permissions, a missing file
        where = f" {e.filename}" if e.filename else ""
        return f"cannot use{where}: {e.strerror}", 2
    first = (str(e).strip().splitlines() or [""])[0][:300]
    return f"internal error: {type(e).__name__}: {first} (--debug shows the traceback)", 1


@app.callback()
def options(
    debug: Annotated[bool, typer.Option("--debug", help="show tracebacks of errors")] = False,
):
    if debug:
        os.environ["BENCH_DEBUG"] = "1"


def _split(args: list[str] | None, default_preset: str | None) -> tuple[str | None, list[str]]:
    args = list(args or [])
    if args and "=" not in args[0]:
        return args[0], args[1:]
    return default_preset, args


@app.command()
@user_errors
def run(
    args: Annotated[
        list[str] | None,
        typer.Argument(help="PRESET then key=value overrides", metavar="PRESET [KEY=VALUE]"),
    ] = None,
    tracking_uri: TrackingUri = None,
    dry_run: Annotated[
        bool,
        typer.Option(
            "--dry-run",
            help="one step on a tiny stand-in model: checks config, data, template, reward",
        ),
    ] = False,
):
    """Train one run: bench run PRESET key=value ..."""
    from bench.config import load_config

    preset, overrides = _split(args, "arithmetic")
    cfg = load_config(preset, overrides)
    if dry_run:
        from bench.app.dryrun import dry_run as check
        from bench.plan import Workload

        print_plan(cfg, Workload(256, 1, 80.0, 0.4, 989.0))
        for key, value in check(cfg).items():
            console.print(f"{key}: {escape(str(value))}", highlight=False)
        console.print(
            f"dry run of '{preset}' ok: config, data, template, reward and one {cfg.algorithm} step"
        )
        return
    from bench.loop import train

    final = train(cfg, tracking_uri=tracking_uri)
    shown = {k: v for k, v in final.items() if k.startswith("eval/")}
    for k, v in shown.items():
        console.print(f"{k} = {v:.4f}")
    console.print(
        f"run {escape(cfg.name)} ({final['run_id']}) in experiment '{cfg.tracking.experiment}'"
    )


@app.command()
@user_errors
def compare(
    args: Annotated[
        list[str] | None,
        typer.Argument(help="[PRESET] then key=value overrides", metavar="[PRESET] [KEY=VALUE]"),
    ] = None,
    algorithms: Annotated[
        str | None, typer.Option(help="comma-separated, default: the preset's compare.algorithms")
    ] = None,
    seeds: Annotated[int | None, typer.Option(min=1, help="seeds 0..N-1 per algorithm")] = None,
    workers: Annotated[
        int, typer.Option(min=1, help="parallel runs (local processes, 1 torch thread each)")
    ] = 2,
    vary: Annotated[
        str | None, typer.Option(help="also run each value of one key: sampling.replay_ratio=0,0.5")
    ] = None,
    rerun: Annotated[
        bool, typer.Option("--rerun", help="run again configurations that already finished")
    ] = False,
    tracking_uri: TrackingUri = None,
):
    """Every algorithm x seed on the preset's task, then the report: bench compare PRESET ..."""
    from bench.app.compare import finished_configs, plan, run_all
    from bench.config import config_hash, load_config

    preset, overrides = _split(args, "arithmetic")
    if algorithms:
        overrides.append(f"compare.algorithms={algorithms}")
    if seeds is not None:
        overrides.append(f"compare.seeds={seeds}")
    variants = [[]]
    if vary:
        if "=" not in vary:
            raise BenchError(
                f"--vary '{vary}' must look like key=v1,v2 (e.g. sampling.replay_ratio=0,0.5)"
            )
        key, values = vary.split("=", 1)
        variants = [[f"{key}={v}"] for v in values.split(",")]
    threads = 1 if workers > 1 else 0
    cfgs = []
    for extra in variants:
        cfg = load_config(preset, [*overrides, *extra])
        cfgs += plan(cfg, cfg.compare.algorithms, cfg.compare.seeds, threads)
    if not rerun:
        done = finished_configs(cfgs, tracking_uri)
        todo = [c for c in cfgs if config_hash(c) not in done]
        if len(todo) < len(cfgs):
            console.print(
                f"{len(cfgs) - len(todo)} of {len(cfgs)} runs already finished in this store: "
                "reported, not run again (--rerun runs them)"
            )
        cfgs = todo
    outcomes = run_all(cfgs, workers, tracking_uri)
    _report_and_exit(outcomes, cfg.tracking.experiment, tracking_uri, cfg.compare.algorithms[0])


@app.command()
@user_errors
def sweep(
    args: Annotated[
        list[str] | None,
        typer.Argument(help="PRESET then key=value overrides", metavar="PRESET [KEY=VALUE]"),
    ] = None,
    grid: Annotated[
        list[str] | None, typer.Option(help="key=v1,v2 or key=0..4; repeat per key")
    ] = None,
    workers: Annotated[int, typer.Option(min=1, help="parallel runs (local processes)")] = 2,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="print the plan and what is already done")
    ] = False,
    tracking_uri: TrackingUri = None,
):
    """The cross product of a grid, resumable: bench sweep PRESET --grid algorithm=gvpo,grpo --grid seed=0..2."""
    from bench.app.compare import run_all
    from bench.app.sweep import finished_points, plan
    from bench.tracking import resolve_uri

    preset, overrides = _split(args, "arithmetic")
    if not grid:
        raise BenchError("bench sweep needs at least one --grid key=v1,v2")
    sid, points = plan(preset, overrides, grid, threads=1 if workers > 1 else 0)
    uri = resolve_uri(tracking_uri)
    done = finished_points(sid, {c.tracking.experiment for _, c in points}, uri)
    todo = [(p, c) for p, c in points if p not in done]
    console.print(
        f"sweep {sid}: {len(points)} points, {len(points) - len(todo)} finished, {len(todo)} to run"
    )
    if dry_run:
        for p, c in points:
            console.print(
                f"  {'done' if p in done else 'todo'}  {escape(c.name)}  {p}", highlight=False
            )
        return
    tags = [{"sweep.id": sid, "sweep.point": p} for p, _ in todo]
    outcomes = run_all([c for _, c in todo], workers, tracking_uri, tags)
    _report_and_exit(outcomes, points[0][1].tracking.experiment, tracking_uri)


@app.command()
@user_errors
def theory(
    args: Annotated[
        list[str] | None,
        typer.Argument(help="[PRESET] then key=value overrides", metavar="[PRESET] [KEY=VALUE]"),
    ] = None,
    sources: Annotated[
        str, typer.Option(help="comma-separated sampling sources")
    ] = "policy,reference,uniform,mixture",
    seeds: Annotated[int, typer.Option(min=1, help="seeds 0..N-1 per algorithm and source")] = 2,
    workers: Annotated[int, typer.Option(min=1, help="parallel runs (local processes)")] = 2,
    tracking_uri: TrackingUri = None,
):
    """Each algorithm's fixed point on the bandit under each sampling source: bench theory."""
    from bench.app.compare import run_all, theory_plan
    from bench.config import load_config
    from reports.theory import build_theory_report, tv_means

    preset, overrides = _split(args, "bandit")
    names = [x.strip() for x in sources.split(",") if x.strip()]
    cfgs = [
        load_config(preset, [*overrides, f"sampling.source={src}"]) for src in names
    ]  # validates each
    cfg = cfgs[0]
    runs = theory_plan(cfg, cfg.compare.algorithms, names, seeds, threads=1 if workers > 1 else 0)
    outcomes = run_all(runs, workers, tracking_uri)
    result = build_theory_report(cfg.tracking.experiment, tracking_uri)
    print_frame(tv_means(result["tv"]), "final TV(pi, pi*), mean over seeds, by sampling source")
    console.print(f"report: {result['report']}")
    failed = [o for o in outcomes if o.error]
    if failed:
        console.print(
            f"[red]{len(failed)} run(s) failed:[/red] {', '.join(o.name for o in failed)}"
        )
        raise typer.Exit(1)


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


def _report_and_exit(
    outcomes, experiment: str, tracking_uri: str | None, reference: str | None = None
) -> None:
    """Report from MLflow (whatever finished), then exit 1 if any run failed."""
    from reports.report import build_report

    result = build_report(experiment, tracking_uri, reference=reference)
    _print_summary(result["summary"])
    console.print(result["runs"], highlight=False)
    console.print(result["machines"], highlight=False, markup=False)
    console.print(f"report: {result['report']}")
    failed = [o for o in outcomes if o.error]
    if failed:
        names = ", ".join(escape(o.name) for o in failed)
        console.print(f"[red]{len(failed)} run(s) failed:[/red] {names} (re-run to retry them)")
        raise typer.Exit(1)


def _print_summary(summary) -> None:
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


def config_hash(cfg) -> str:
    from bench.config import config_hash as hash_of

    return hash_of(cfg)


def cpu_model() -> str:
    from bench.tracking import cpu_model as model

    return model()


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


@app.command()
@user_errors
def claims(
    seeds: Annotated[
        int, typer.Option(min=2, help="seeds per setting (the seed-variance claim uses at least 8)")
    ] = 5,
    workers: Annotated[int, typer.Option(min=1, help="parallel runs (local processes)")] = 2,
    scale: Annotated[
        str, typer.Option(help="full (the CPU comparison) or smoke (a few steps: a quick check)")
    ] = "full",
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="list the experiments, runs to do and the time")
    ] = False,
    tracking_uri: TrackingUri = None,
):
    """Each claim of the GVPO paper as one experiment, then a report with a verdict per claim."""
    import time

    from bench.app import claims as c
    from bench.app.compare import finished_configs, run_all
    from bench.core.paths import results_dir
    from reports.claims import summary_markdown, write_report

    if scale not in ("full", "smoke"):
        raise BenchError(f"--scale: unknown scale '{scale}' (choose from: full, smoke)")
    exps = c.resolve(c.experiments(seeds, scale), threads=1 if workers > 1 else 0)
    runs = c.unique_runs(exps)
    done = finished_configs([cfg for cfg, _ in runs.values()], tracking_uri)
    todo = [h for h in runs if h not in done]
    for e in exps:
        mine = {config_hash(cfg) for cfg in e.cfgs}
        console.print(f"{e.name}: {len(e.points)} runs ({len(mine - done)} to do)", highlight=False)
    eta = c.estimate_seconds(exps, set(todo), workers)
    console.print(
        f"{len(runs)} distinct runs, {len(todo)} to do: about {eta / 60:.0f} min with {workers} workers"
    )
    if dry_run:
        return
    start = time.time()
    outcomes = run_all(
        [runs[h][0] for h in todo], workers, tracking_uri, [runs[h][1] for h in todo]
    )
    verdicts = c.verdicts(c.finals(exps, tracking_uri))
    provenance = (
        f"{time.strftime('%Y-%m-%d')}, `bench claims --seeds {seeds} --scale {scale}`, {cpu_model()}, "
        f"{len(todo)} runs in {(time.time() - start) / 60:.1f} min"
    )
    path = write_report(verdicts, results_dir() / "reports" / "claims", provenance)
    console.print(summary_markdown(verdicts, provenance), highlight=False, markup=False)
    console.print(f"report: {path}")
    if any(o.error for o in outcomes):
        raise typer.Exit(1)


@app.command("plan")
@user_errors
def plan_(
    args: Annotated[
        list[str] | None,
        typer.Argument(help="PRESET then key=value overrides", metavar="PRESET [KEY=VALUE]"),
    ] = None,
    gpus: Annotated[int, typer.Option(min=1, help="GPUs of one run (FSDP shards over them)")] = 1,
    gpu_memory: Annotated[float, typer.Option(min=1, help="GB of memory per GPU")] = 80.0,
    utilization: Annotated[
        float, typer.Option(min=0.01, max=1.0, help="share of peak FLOP/s a step achieves")
    ] = 0.4,
    gpu_tflops: Annotated[float, typer.Option(min=1, help="the GPU's dense bf16 peak")] = 989.0,
    prompt_tokens: Annotated[int, typer.Option(min=1, help="assumed prompt length")] = 256,
):
    """Per-GPU memory, FLOPs and GPU-hours of a preset, from its model config: bench plan PRESET."""
    from bench.config import load_config
    from bench.plan import Workload

    preset, overrides = _split(args, "arithmetic")
    cfg = load_config(preset, overrides)
    workload = Workload(prompt_tokens, gpus, gpu_memory, utilization, gpu_tflops)
    if not print_plan(cfg, workload):
        raise typer.Exit(2)


@app.command("eval")
@user_errors
def eval_(
    model: Annotated[
        str, typer.Argument(help="HF model id or checkpoint folder ('tiny' = untrained tiny model)")
    ],
    tasks: Annotated[str, typer.Option(help="comma-separated, e.g. math500,aime24,gsm8k")],
    k: Annotated[
        int, typer.Option(min=1, help="samples per problem for avg@k / maj@k / pass@k")
    ] = 4,
    max_new_tokens: Annotated[int, typer.Option(min=1, help="completion budget")] = 512,
    limit: Annotated[int, typer.Option(min=0, help="first N problems of each task (0 = all)")] = 0,
    temperature: Annotated[
        float, typer.Option(min=1e-6, help="sampling temperature of the k samples")
    ] = 1.0,
    seed: Annotated[int, typer.Option(help="sampling seed")] = 0,
    template: Annotated[
        str, typer.Option(help="math prompt template: base, qwen_math or chat")
    ] = "",
    lm_eval: Annotated[
        bool, typer.Option("--lm-eval", help="also run the tasks through lm-eval (greedy)")
    ] = False,
    engine: Annotated[str, typer.Option(help="sampling engine: hf (generate) or vllm")] = "hf",
    tracking_uri: TrackingUri = None,
):
    """Evaluate a model on tasks' eval splits, logged to MLflow (experiment 'eval') and JSON."""
    from bench.evaluate import evaluate_model

    names = [t.strip() for t in tasks.split(",") if t.strip()]
    result = evaluate_model(
        model,
        names,
        k=k,
        max_new_tokens=max_new_tokens,
        limit=limit,
        temperature=temperature,
        seed=seed,
        template=template,
        tracking_uri=tracking_uri,
        lm_eval=lm_eval,
        engine=engine,
    )
    table = Table(title=f"bench eval {escape(model)}")
    table.add_column("metric")
    table.add_column("value")
    for key, value in result["metrics"].items():
        table.add_row(key, f"{value:.4f}")
    console.print(table)
    console.print(f"json: {result['json']}")


@app.command("train-rm")
@user_errors
def train_rm(
    task: Annotated[
        str, typer.Option(help="task whose preference pairs train the model")
    ] = "hh_rlhf",
    steps: Annotated[int, typer.Option(min=1, help="optimiser steps")] = 300,
    batch: Annotated[int, typer.Option(min=1, help="pairs per step")] = 32,
    lr: Annotated[float, typer.Option(min=1e-12, max=10.0, help="AdamW learning rate")] = 1e-3,
    model: Annotated[
        str, typer.Option(help="'tiny' or a HF id / folder for the backbone")
    ] = "tiny",
    max_length: Annotated[int, typer.Option(min=2, help="tokens of prompt + response kept")] = 256,
    pandalm: Annotated[
        bool, typer.Option("--pandalm", help="also score PandaLM's human-labelled pairs")
    ] = False,
    tracking_uri: TrackingUri = None,
):
    """Train a Bradley-Terry reward model on a task's preference pairs; held-out pairwise accuracy."""
    from bench.app.train_rm import train_and_log
    from bench.core.reward_model import RMConfig

    cfg = RMConfig(name_or_path=model, steps=steps, batch=batch, lr=lr, max_length=max_length)
    metrics, out = train_and_log(task, cfg, pandalm=pandalm, tracking_uri=tracking_uri)
    for key, value in metrics.items():
        console.print(f"{key} = {value:.4f}")
    console.print(f"reward model: {out}")


@app.command()
@user_errors
def report(
    experiment: Annotated[str, typer.Argument(help="MLflow experiment name")],
    tracking_uri: TrackingUri = None,
    out: Annotated[
        Path | None, typer.Option(help="output folder (default results/reports/EXPERIMENT)")
    ] = None,
    filter: Annotated[
        str,
        typer.Option(
            "--filter", help="MLflow filter on tags/params: \"params.algorithm = 'gvpo'\""
        ),
    ] = "",
    reference: Annotated[
        str | None,
        typer.Option(help="label the others are paired against (default: the first label)"),
    ] = None,
    detect: Annotated[
        float | None,
        typer.Option(help="also say how many seeds would detect this difference (e.g. 0.02)"),
    ] = None,
):
    """Tables, plots and report.md for an experiment, from MLflow alone."""
    from reports.report import build_report

    result = build_report(experiment, tracking_uri, out, filter, reference, detect)
    _print_summary(result["summary"])
    console.print(result["runs"], highlight=False)
    console.print(result["machines"], highlight=False, markup=False)
    console.print(f"report: {result['report']}")


@app.command("list")
@user_errors
def list_():
    """Registered algorithms, tasks and presets."""
    from algorithms import ALGORITHMS
    from bench.config import preset_names
    from tasks import TASKS

    for kind, names in (
        ("algorithms", ALGORITHMS.names()),
        ("tasks", TASKS.names()),
        ("presets", preset_names()),
    ):
        console.print(f"[bold]{kind}[/bold]: {', '.join(names)}")
    for name in ALGORITHMS.names():
        console.print(f"  {name}: {ALGORITHMS.get(name).source}", highlight=False)


def main() -> None:
    terminate_as_interrupt()  # SIGTERM ends a run KILLED, as Ctrl-C does
    try:
        code = _invoke()
    except KeyboardInterrupt:
        if signals.received["SIGTERM"]:
            console.print("terminated")
            sys.exit(143)
        console.print("interrupted")
        sys.exit(130)
    sys.exit(code)


def _invoke() -> int:
    """Run the app; a usage error is one line and exit 2."""
    try:
        code = app(standalone_mode=False)
        if code == 130:  # typer returns its answer to KeyboardInterrupt (SIGINT, our SIGTERM)
            raise KeyboardInterrupt
        return code if isinstance(code, int) else 0
    except typer.Exit as e:
        if e.exit_code == 130:  # typer's own answer to KeyboardInterrupt (SIGINT or our SIGTERM)
            raise KeyboardInterrupt from None
        return e.exit_code
    except typer.TyperException as e:  # click's usage errors: a bad option, command or value
        message = e.format_message() if hasattr(e, "format_message") else str(e)
        if type(e).__name__ == "NoArgsIsHelpError":  # `bench` alone: the help
            console.print(message, highlight=False, markup=False)
            return 0
        console.print(f"[red]error:[/red] {escape(message.splitlines()[0])}", highlight=False)
        return getattr(e, "exit_code", 2)


if __name__ == "__main__":
    main()
