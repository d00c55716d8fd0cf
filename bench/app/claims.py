"""``bench claims``: each claim of the GVPO paper as one experiment at CPU scale, then one report
with a verdict per claim (reports/claims.py has the rules).

Every run is a point of a sweep (tagged ``sweep.id``/``sweep.point``, experiment ``claims``):
re-running the command skips points that finished, and runs shared by two claims (e.g. gvpo at
beta 0.1, k 4 and seed s) run once (found by their ``bench.config`` hash).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import pandas as pd

from bench.config import RunConfig, config_hash, load_config
from reports.preregistration import BETAS

SOURCES = ["policy", "reference", "uniform", "mixture"]
EXPERIMENT = "claims"


@dataclass
class Experiment:
    name: str  # the claim it tests
    preset: str
    overrides: list[str]
    points: list[list[str]]  # one override list per run
    seconds_per_run: float  # measured on the 2-core CPU at full scale, for --dry-run
    metric: str = "accuracy"  # the final eval metric the claim is judged on
    cfgs: list[RunConfig] = field(default_factory=list)


def seeds_of(name: str, seeds: int | None) -> list[str]:
    """``seed=s`` overrides: ``seeds`` of them, or the claim's pre-registered count
    (reports/preregistration.py; 5 for the bandit's threshold rule)."""
    from reports.preregistration import PLANS

    n = seeds or (PLANS[name].seeds if name in PLANS else 5)
    return [f"seed={s}" for s in range(n)]


def experiments(seeds: int | None, scale: str) -> list[Experiment]:
    """The five experiments, each at its pre-registered seed count unless ``seeds`` is given;
    ``scale="smoke"``: a few steps each (tests, a quick look)."""
    smoke = scale == "smoke"
    seed_list = seeds_of("optimum", seeds)
    arith, bandit_steps = ("smoke", ["train.steps=20"]) if smoke else ("arithmetic", [])
    algos = ["gvpo", "grpo"] if smoke else ["gvpo", "grpo", "dr_grpo", "dpo", "ppo"]
    return [
        Experiment(
            "optimum", "bandit", bandit_steps,
            [[f"algorithm={a}", f"sampling.source={s}", x] for a in algos for s in SOURCES for x in seed_list], 5.0, "tv_to_optimum",
        ),
        Experiment(
            "offpolicy", "offpolicy" if scale == "full" else arith, ["train.prompt_pool=40"] if scale == "smoke" else [],
            [[f"algorithm={a}", f"sampling.replay_ratio={r}", x] for a in ("gvpo", "grpo") for r in (0, 0.25, 0.5) for x in seeds_of("offpolicy", seeds)], 22.0,
        ),
        Experiment(
            "beta", arith, ["algorithm=gvpo"],
            [[f"algorithms.gvpo.beta={b}", x] for b in BETAS for x in seeds_of("beta", seeds)], 22.0,
        ),
        Experiment(
            "k", arith, ["algorithm=gvpo"],
            [[f"sampling.k={k}", f"train.prompts_per_step={p}", x] for k, p in k_budgets(scale) for x in seeds_of("k", seeds)], 22.0,
        ),
        Experiment(
            "seeds", arith, [],
            [[f"algorithm={a}", x] for a in ("gvpo", "grpo", "dr_grpo") for x in seeds_of("seeds", seeds)], 22.0,
        ),
    ]  # fmt: skip


def k_budgets(scale: str) -> list[tuple[int, int]]:
    """(k, prompts per step): equal prompts (32; smoke 4) for k = 2, 4, 8, and equal samples."""
    p = 4 if scale == "smoke" else 32
    return [(2, p), (4, p), (8, p), (2, 2 * p), (8, p // 2)]


def resolve(exps: list[Experiment], threads: int) -> list[Experiment]:
    """Validate every point into a config (before anything runs)."""
    for e in exps:
        extra = [f"train.threads={threads}"] if threads else []
        cfgs = [load_config(e.preset, [*e.overrides, *p, *extra]) for p in e.points]
        e.cfgs = [
            dataclasses.replace(
                c, tracking=dataclasses.replace(c.tracking, experiment=EXPERIMENT, log_samples=0)
            )
            for c in cfgs
        ]
    return exps


def unique_runs(exps: list[Experiment]) -> dict[str, tuple[RunConfig, dict]]:
    """config hash -> (config, tags) over all experiments: a run two claims share runs once."""
    out = {}
    for e in exps:
        for p, cfg in zip(e.points, e.cfgs, strict=True):
            out.setdefault(
                config_hash(cfg),
                (cfg, {"sweep.id": f"claims.{e.name}", "sweep.point": " ".join(p)}),
            )
    return out


def estimate_seconds(exps: list[Experiment], todo: set[str], workers: int) -> float:
    per = {config_hash(c): e.seconds_per_run for e in exps for c in e.cfgs}
    return sum(per[h] for h in todo) / max(workers, 1) + (60 if todo else 0)  # + the warm start


def finals(exps: list[Experiment], tracking_uri: str | None) -> dict[str, pd.DataFrame]:
    """Per experiment, one row per finished run: algorithm, seed, the varied settings, value."""
    from reports.collect import history_frame, runs_frame
    from reports.summary import final_values

    runs = runs_frame(EXPERIMENT, tracking_uri)
    runs = runs[runs["status"] == "FINISHED"].sort_values("start_time")
    by_hash = runs.drop_duplicates("tags.bench.config", keep="last").set_index("tags.bench.config")
    out = {}
    for e in exps:
        rows = []
        p0 = next((c.train.prompts_per_step for c in e.cfgs if c.sampling.k == 4), 0)
        for cfg in e.cfgs:
            h = config_hash(cfg)
            if h not in by_hash.index:
                continue
            prompts, k = cfg.train.prompts_per_step, cfg.sampling.k
            budgets = [
                b
                for b, same in (("prompts", prompts == p0), ("samples", prompts * k == 4 * p0))
                if same and e.name == "k"
            ]
            for budget in budgets or [""]:
                rows.append(
                    {
                        "run_id": by_hash.loc[h, "run_id"],
                        "key": f"eval/{cfg.task}/{e.metric}",
                        "algorithm": cfg.algorithm,
                        "seed": cfg.seed,
                        "source": cfg.sampling.source,
                        "replay_ratio": cfg.sampling.replay_ratio,
                        "beta": getattr(cfg.algo_config(), "beta", None),
                        "k": k,
                        "budget": budget,
                    }
                )
        frame = pd.DataFrame(rows)
        if not frame.empty:
            history = history_frame(
                list(frame["run_id"]), sorted(frame["key"].unique()), tracking_uri
            )
            values = {k: final_values(history, k) for k in frame["key"].unique()}
            frame["value"] = [
                values[k].get(r) for r, k in zip(frame["run_id"], frame["key"], strict=True)
            ]
        out[e.name] = frame
    return out


def verdicts(frames: dict[str, pd.DataFrame]) -> list:
    from reports import claims as judge

    tv = frames["optimum"]
    return judge.decide(
        [
            judge.unique_optimum(tv),
            judge.off_policy(tv, frames["offpolicy"]),
            judge.beta_insensitivity(frames["beta"]),
            judge.k_scaling(frames["k"]),
            judge.seed_variance(frames["seeds"]),
        ]
    )


def run_claims(
    *, seeds: int, workers: int, scale: str, dry_run: bool, tracking_uri, executor=None
) -> bool:
    """Plan (and unless ``dry_run`` run) the experiments, then write the report. False if a run
    failed."""
    import time

    from bench.app.compare import finished_configs, run_all
    from bench.core.paths import results_dir
    from bench.core.progress import console
    from bench.tracking import cpu_model
    from reports.claims import summary_markdown, write_report

    exps = resolve(experiments(seeds, scale), threads=1 if workers > 1 else 0)
    runs = unique_runs(exps)
    done = finished_configs([cfg for cfg, _ in runs.values()], tracking_uri)
    todo = [h for h in runs if h not in done]
    for e in exps:
        mine = {config_hash(cfg) for cfg in e.cfgs}
        console.print(f"{e.name}: {len(e.points)} runs ({len(mine - done)} to do)", highlight=False)
    eta = estimate_seconds(exps, set(todo), workers)
    console.print(
        f"{len(runs)} distinct runs, {len(todo)} to do: about {eta / 60:.0f} min with {workers} workers"
    )
    if dry_run:
        return True
    start = time.time()
    outcomes = run_all(
        [runs[h][0] for h in todo],
        workers,
        tracking_uri,
        [runs[h][1] for h in todo],
        executor=executor,
    )
    found = verdicts(finals(exps, tracking_uri))
    provenance = (
        f"{time.strftime('%Y-%m-%d')}, `bench claims{f' --seeds {seeds}' if seeds else ''} --scale {scale}`, {cpu_model()}, "
        f"{len(todo)} runs in {(time.time() - start) / 60:.1f} min"
    )
    path = write_report(found, results_dir() / "reports" / "claims", provenance)
    console.print(summary_markdown(found, provenance), highlight=False, markup=False)
    console.print(f"report: {path}")
    return not any(o.error for o in outcomes)
