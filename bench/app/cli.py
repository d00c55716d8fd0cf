"""Command line: ``bench run | compare | report | list``. User mistakes print one line, exit 2."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from bench.app import boundary
from bench.app.boundary import user_errors
from bench.app.tables import print_frame, print_plan, print_summary, report_and_exit
from bench.core.errors import BenchError
from bench.core.progress import console

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
    nproc: Annotated[
        int,
        typer.Option(min=1, help="processes (GPUs) of one sharded run: torchrun on this machine"),
    ] = 1,
    tag: Annotated[
        list[str] | None, typer.Option(help="extra MLflow tag of the run, KEY=VALUE; repeatable")
    ] = None,
    resume: Annotated[
        bool,
        typer.Option(
            "--resume",
            help="continue from the latest checkpoint of this run (or of RUN_ID given after it)",
        ),
    ] = False,
):
    """Train one run: bench run PRESET key=value ... [--resume [RUN_ID]]"""
    from bench.config import load_config
    from bench.distributed import launched

    preset, overrides = _split(args, "arithmetic")
    run_id = _run_id_of(overrides) if resume else None
    cfg = load_config(preset, overrides)
    if nproc > 1 and not launched() and not dry_run:
        from bench.app.launch import check_sharding, run_processes, without_nproc

        check_sharding(cfg, nproc)
        run_processes(nproc, without_nproc(sys.argv[1:]))
        console.print(f"run {escape(cfg.name)}: {nproc} processes finished")
        return
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

    path = None
    if resume:
        from bench.app.resume import checkpoint_to_resume

        path = checkpoint_to_resume(cfg, tracking_uri, run_id)
        if os.environ.get("RANK", "0") == "0":
            console.print(f"resuming {escape(cfg.name)} from {path}")
    final = train(cfg, tracking_uri=tracking_uri, tags=_tags(tag), resume=path)
    if os.environ.get("RANK", "0") != "0":
        return  # rank 0 reports
    shown = {k: v for k, v in final.items() if k.startswith("eval/")}
    for k, v in shown.items():
        console.print(f"{k} = {v:.4f}")
    console.print(
        f"run {escape(cfg.name)} ({final['run_id']}) in experiment '{cfg.tracking.experiment}'"
    )


def _run_id_of(overrides: list[str]) -> str | None:
    """The RUN_ID after --resume (it lands among the positional arguments), taken out."""
    ids = [a for a in overrides if "=" not in a]
    for a in ids:
        overrides.remove(a)
    if len(ids) > 1:
        raise BenchError(f"--resume takes one run id, got {', '.join(ids)}")
    return ids[0] if ids else None


def _tags(items: list[str] | None) -> dict[str, str]:
    bad = [t for t in items or [] if "=" not in t]
    if bad:
        raise BenchError(f"--tag '{bad[0]}' must look like KEY=VALUE")
    return dict(t.split("=", 1) for t in items or [])


Nproc = Annotated[
    int, typer.Option(min=1, help="processes (GPUs) per run: each run is launched by torchrun")
]
ExecutorName = Annotated[
    str, typer.Option("--executor", help="where runs go: local (processes here) or ray")
]
RayAddress = Annotated[
    str | None, typer.Option("--ray-address", help="a Ray cluster (default: start one here)")
]
MaxRetries = Annotated[
    int, typer.Option("--max-retries", min=0, help="Ray: retries of a run whose worker died")
]


def _executor(name, workers, nproc, address, retries, tracking_uri):
    from bench.app.executors import executor
    from bench.tracking import resolve_uri

    if name not in ("local", "ray"):
        raise BenchError(f"--executor {name}: choose local or ray")
    return executor(name, workers, nproc, address, retries, resolve_uri(tracking_uri))


@app.command()
@user_errors
def compare(
    args: Annotated[
        list[str] | None,
        typer.Argument(help="[PRESET] then key=value overrides", metavar="[PRESET] [KEY=VALUE]"),
    ] = None,
    algorithms: Annotated[
        str | None,
        typer.Option(help="comma-separated or all; default: the preset's compare.algorithms"),
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
    tune: Annotated[
        bool, typer.Option("--tune", help="tune each algorithm first (equal budgets), then test")
    ] = False,
    trials: Annotated[
        int | None, typer.Option(min=1, help="--tune: trials per algorithm (tune.trials)")
    ] = None,
    tune_seeds: Annotated[
        int | None, typer.Option(min=1, help="--tune: seeds per trial (tune.seeds)")
    ] = None,
    space: Annotated[
        list[str] | None,
        typer.Option(help="--tune: key=lo..hi[:log] or key=v1,v2 (repeatable; tune.space)"),
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="--tune: print the runs it would make, run none")
    ] = False,
    nproc: Nproc = 1,
    executor: ExecutorName = "local",
    ray_address: RayAddress = None,
    max_retries: MaxRetries = 2,
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
    if tune or trials or tune_seeds or space or dry_run:
        if not tune:
            raise BenchError("--trials, --tune-seeds, --space and --dry-run go with --tune")
        from bench.app.tune import compare_tuned

        where = _executor(executor, workers, nproc, ray_address, max_retries, tracking_uri)
        flags = {"trials": trials, "seeds": tune_seeds, "space": space or [], "dry_run": dry_run}
        compare_tuned(preset, overrides, flags, workers, nproc, where, tracking_uri)
        return
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
    where = _executor(executor, workers, nproc, ray_address, max_retries, tracking_uri)
    nproc = _checked(cfgs, nproc)
    outcomes = run_all(cfgs, workers, tracking_uri, nproc=nproc, executor=where, rerun=rerun)
    report_and_exit(outcomes, cfg.tracking.experiment, tracking_uri, cfg.compare.algorithms[0])


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
    nproc: Nproc = 1,
    executor: ExecutorName = "local",
    ray_address: RayAddress = None,
    max_retries: MaxRetries = 2,
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
    cfgs = [c for _, c in todo]
    where = _executor(executor, workers, nproc, ray_address, max_retries, tracking_uri)
    outcomes = run_all(
        cfgs, workers, tracking_uri, tags, nproc=_checked(cfgs, nproc), executor=where
    )
    report_and_exit(outcomes, points[0][1].tracking.experiment, tracking_uri)


def _checked(cfgs, nproc: int) -> int:
    """``nproc`` after checking that every run can take that many processes."""
    if nproc > 1:
        from bench.app.launch import check_sharding

        for cfg in cfgs:
            check_sharding(cfg, nproc)
    return nproc


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
    executor: ExecutorName = "local",
    ray_address: RayAddress = None,
    max_retries: MaxRetries = 2,
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
    where = _executor(executor, workers, 1, ray_address, max_retries, tracking_uri)
    outcomes = run_all(runs, workers, tracking_uri, executor=where)
    result = build_theory_report(cfg.tracking.experiment, tracking_uri)
    print_frame(tv_means(result["tv"]), "final TV(pi, pi*), mean over seeds, by sampling source")
    console.print(f"report: {result['report']}")
    failed = [o for o in outcomes if o.error]
    if failed:
        console.print(
            f"[red]{len(failed)} run(s) failed:[/red] {', '.join(o.name for o in failed)}"
        )
        raise typer.Exit(1)


@app.command()
@user_errors
def claims(
    seeds: Annotated[
        int | None,
        typer.Option(
            min=2,
            help="seeds per setting for every claim (default: each claim's pre-registered count)",
        ),
    ] = None,
    workers: Annotated[int, typer.Option(min=1, help="parallel runs (local processes)")] = 2,
    scale: Annotated[
        str, typer.Option(help="full (the CPU comparison) or smoke (a few steps: a quick check)")
    ] = "full",
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="list the experiments, runs to do and the time")
    ] = False,
    executor: ExecutorName = "local",
    ray_address: RayAddress = None,
    max_retries: MaxRetries = 2,
    tracking_uri: TrackingUri = None,
):
    """Each claim of the GVPO paper as one experiment, then a report with a verdict per claim."""
    from bench.app.claims import run_claims

    if scale not in ("full", "smoke"):
        raise BenchError(f"--scale: unknown scale '{scale}' (choose from: full, smoke)")
    where = _executor(executor, workers, 1, ray_address, max_retries, tracking_uri)
    if not run_claims(
        seeds=seeds,
        workers=workers,
        scale=scale,
        dry_run=dry_run,
        tracking_uri=tracking_uri,
        executor=where,
    ):
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
        str,
        typer.Option(
            help="prompt template: auto (chat if the model has one), base, chat; math also qwen_math"
        ),
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
    console.print(f"completions: {result['samples']}")


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
    print_summary(result["summary"])
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


@app.command()
@user_errors
def sync():
    """Send what runs spooled while their tracking server was away (results/spool/)."""
    from bench.core.errors import RunFailed
    from bench.spool import sync_all

    done, rejected = sync_all()
    if not done:
        console.print("nothing spooled: every run's calls reached its tracking server")
        return
    for where in rejected:
        console.print(escape(f"{where}: not sent"), highlight=False)
    for run_id, n, err in done:
        line = f"run {run_id}: {n} calls sent" if err is None else f"run {run_id}: not sent ({err})"
        console.print(escape(line), highlight=False)
    failed = [r for r, _, err in done if err]
    if failed:
        raise RunFailed(f"{len(failed)} spooled run(s) could not be sent; run bench sync again")
    if rejected:
        raise RunFailed(
            f"{len(rejected)} spooled line(s) were not calls and were not sent (listed above; "
            "kept in results/spool/*.rejected); every other call was sent"
        )


def main() -> None:
    boundary.main(app)


if __name__ == "__main__":
    main()
