"""``bench compare``: every algorithm x seed on one task, same prompts and budget, then a report."""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass

from rich.markup import escape

from bench.app.executors import LocalExecutor
from bench.config import RunConfig
from bench.core.progress import bar, console
from bench.tracking import experiment_id, resolve_uri


@dataclass
class Outcome:
    name: str
    final: dict | None
    error: str | None


def plan(cfg: RunConfig, algorithms: list[str], seeds: int, threads: int) -> list[RunConfig]:
    """One config per (algorithm, seed); only the algorithm, the seed and the name differ."""
    train = dataclasses.replace(cfg.train, threads=threads) if threads else cfg.train
    return [
        dataclasses.replace(cfg, algorithm=a, seed=s, run_name="", train=train)
        for a in algorithms
        for s in range(seeds)
    ]


def theory_plan(
    cfg: RunConfig, algorithms: list[str], sources: list[str], seeds: int, threads: int
) -> list[RunConfig]:
    """algorithm x sampling source x seed on one preset (the bandit)."""
    return [
        dataclasses.replace(c, sampling=dataclasses.replace(c.sampling, source=src))
        for c in plan(cfg, algorithms, seeds, threads)
        for src in sources
    ]


def finished_configs(cfgs: list[RunConfig], tracking_uri: str | None) -> set[str]:
    """Config hashes (tag ``bench.config``) of ``cfgs`` that already have a FINISHED run."""
    from bench.tracking import client

    uri = resolve_uri(tracking_uri)
    c = client(uri)
    ids = [
        e.experiment_id
        for name in {cfg.tracking.experiment for cfg in cfgs}
        if (e := c.get_experiment_by_name(name)) is not None
    ]
    if not ids:
        return set()
    runs = c.search_runs(ids, "attributes.status = 'FINISHED'", max_results=10_000)
    return {r.data.tags.get("bench.config", "") for r in runs}


CLAIMED = "claimed"  # what _run_one returns for a configuration another process is running


def _run_one(
    cfg: RunConfig,
    tracking_uri: str | None,
    tags: dict | None,
    nproc: int = 1,
    rerun: bool = False,
    wait: bool = False,
) -> dict:
    """One run of a comparison or sweep, under the configuration's claim (bench/app/claim.py):
    ``{CLAIMED: ...}`` when another process has it (``wait``: once it is done), the final
    metrics of a FINISHED run of it when there is one (unless ``rerun``), else the run; a run
    of this config that was interrupted after a checkpoint is resumed from it."""
    from bench.app.claim import claim, finished, live_elsewhere
    from bench.app.resume import interrupted

    with claim(cfg, wait) as mine:
        if not mine:
            return {CLAIMED: "another process on this machine is running it"}
        while live_elsewhere(cfg, tracking_uri):
            if not wait:
                return {CLAIMED: "a run on another machine is running it"}
            time.sleep(10)
        done = None if rerun else finished(cfg, tracking_uri, tags)
        if done is not None:
            return done
        resume = interrupted(cfg, tracking_uri)
        if nproc > 1:
            from bench.app.launch import run_config

            return run_config(cfg, nproc, tracking_uri, tags or {}, resume)
        from bench.loop import train

        return train(cfg, tracking_uri=tracking_uri, tags=tags, resume=resume)


def run_all(
    cfgs: list[RunConfig],
    workers: int,
    tracking_uri: str | None,
    tags: list[dict] | None = None,
    *,
    nproc: int = 1,
    executor=None,
    rerun: bool = False,
) -> list[Outcome]:
    """Warm-start once in this process (cache), then run every config on the executor."""
    from bench.models import load_policy
    from tasks import TASKS

    for key in sorted({(c.task, repr(c.model), repr(c.task_config())) for c in cfgs}):
        c = next(c for c in cfgs if (c.task, repr(c.model), repr(c.task_config())) == key)
        task = TASKS.get(c.task)(c.task_config())
        task.prepare()
        load_policy(c.model, task)
    # Create the MLflow store and experiments here: concurrent first-time migrations of one
    # SQLite file by several workers corrupt it.
    for uri, exp in sorted(
        {(resolve_uri(tracking_uri or c.tracking.uri), c.tracking.experiment) for c in cfgs}
    ):
        experiment_id(uri, exp)
    tags = tags or [{} for _ in cfgs]
    # the whole label on the console: the run name and, in a sweep, the point (beta=0.1, ...)
    names = [
        " ".join(x for x in (c.name, t.get("sweep.point", "")) if x)
        for c, t in zip(cfgs, tags, strict=True)
    ]
    outcomes: list[Outcome | None] = [None] * len(cfgs)
    executor = executor or LocalExecutor(workers)
    jobs = [(c, tracking_uri, t, nproc, rerun, False) for c, t in zip(cfgs, tags, strict=True)]
    with bar() as progress:
        job = progress.add_task("runs", total=len(cfgs), info="")
        claimed = []  # indices of the runs another process has: waited for after the others
        for i, final, err in executor.map(_run_one, jobs):
            if final is not None and CLAIMED in final:
                claimed.append(i)
                continue
            _done(outcomes, progress, job, i, names[i], final, err)
        if claimed:
            console.print(f"{len(claimed)} run(s) taken by another process: waiting for them")
        for j, final, err in executor.map(_run_one, [(*jobs[i][:5], True) for i in claimed]):
            _done(outcomes, progress, job, claimed[j], names[claimed[j]], final, err)
    return [o for o in outcomes if o is not None]


def _done(outcomes, progress, job, i: int, name: str, final: dict | None, err: str | None) -> None:
    """Record and print one finished run of ``run_all``, and advance its progress bar."""
    outcomes[i] = Outcome(name, final, err)
    if err:
        console.print(f"[red]run {escape(name)} failed:[/red] {escape(err.splitlines()[0])}")
    else:
        acc = {k: v for k, v in final.items() if k.endswith("/accuracy")}
        shown = ", ".join(f"{k} {v:.3f}" for k, v in acc.items())
        wall = final.get("perf/wall_s", 0.0)
        console.print(f"done {escape(name)}: {shown} ({wall:.0f} s)", highlight=False)
    progress.update(job, advance=1, info=escape(name))
