"""``bench compare PRESET --tune``: an equal tuning budget for every algorithm, then the test.

Each algorithm gets exactly ``tune.trials`` trials of the same search (Optuna's TPE sampler,
seeded per algorithm, or random search) over the declared space: its shared keys (``train.lr``)
and its own (``algorithms.<name>.<key>``). A trial is ``tune.seeds`` runs on the tuning seeds
(1000, 1001, ...) scored on the task's validation split (``eval.split=validation``: rows the
tuning run does not train on, never eval rows); its value is their mean final accuracy. Then
each algorithm's best configuration runs on the test seeds (0..n-1, disjoint) on the eval split.
Trials of all algorithms run round by round through the usual executors; every run is an
MLflow run tagged ``tune.study``, ``tune.trial`` (tuning) or ``tune.chosen`` (test).

Resume: run the same command again. The samplers are seeded and a trial's runs are found
FINISHED by their config (as any comparison's are), so the search replays the recorded trials
without running them and goes on from there: the same trials, the same choice.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass

from bench.config import RunConfig, load_config
from bench.core.errors import BenchError

TUNING_SEED0 = 1000  # tuning seeds are 1000, 1001, ...: never a test seed (0..n-1)


@dataclass(frozen=True)
class Key:
    """One searched key: a float or int range (``log``), or a list of choices."""

    name: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    integer: bool = False
    choices: tuple[str, ...] = ()

    def distribution(self):
        import optuna

        if self.choices:
            return optuna.distributions.CategoricalDistribution(self.choices)
        if self.integer:
            return optuna.distributions.IntDistribution(int(self.low), int(self.high), log=self.log)
        return optuna.distributions.FloatDistribution(self.low, self.high, log=self.log)

    def applies_to(self, algorithm: str) -> bool:
        parts = self.name.split(".")
        return parts[0] != "algorithms" or parts[1] == algorithm


def parse_key(name: str, spec: str) -> Key:
    """``lo..hi``, ``lo..hi:log`` or ``v1,v2,...`` -> Key; a malformed spec is a BenchError."""
    spec = str(spec).strip()
    if ".." not in spec:
        choices = tuple(v.strip() for v in spec.split(",") if v.strip())
        if not choices:
            raise BenchError(f"tune.space.{name}: no values in '{spec}' (use lo..hi or v1,v2)")
        return Key(name, choices=choices)
    rng, _, scale = spec.partition(":")
    if scale not in ("", "log"):
        raise BenchError(f"tune.space.{name}: '{spec}': the scale after ':' must be log")
    lo_text, hi_text = (t.strip() for t in rng.split("..", 1))
    try:
        low, high = float(lo_text), float(hi_text)
    except ValueError:
        raise BenchError(f"tune.space.{name}: '{spec}' is not lo..hi with two numbers") from None
    if not low < high:
        raise BenchError(f"tune.space.{name}: empty range '{spec}' (lo must be below hi)")
    if scale == "log" and low <= 0:
        raise BenchError(f"tune.space.{name}: a log range needs lo > 0, got '{spec}'")
    integer = all(t.lstrip("-").isdigit() for t in (lo_text, hi_text))
    return Key(name, low, high, log=scale == "log", integer=integer)


def space_of(cfg: RunConfig, extra: dict[str, str], preset: str, overrides: list[str]) -> list[Key]:
    """The preset's ``tune.space`` with ``--space`` entries on top, every key checked by loading
    the config with it set (for the algorithm whose key it is)."""
    specs = {**cfg.tune.space, **extra}
    if not specs:
        raise BenchError("--tune needs a search space: a preset 'tune.space' or --space key=lo..hi")
    keys = [parse_key(k, v) for k, v in specs.items()]
    for key in keys:
        algo = key.name.split(".")[1] if key.name.startswith("algorithms.") else cfg.algorithm
        value = key.choices[0] if key.choices else key.low
        value = int(value) if key.integer else value
        load_config(preset, [*overrides, f"algorithm={algo}", f"{key.name}={value}"])
    return keys


def study_id(preset: str, overrides: list[str], keys: list[Key], cfg: RunConfig) -> str:
    """What identifies a tuning: preset, overrides, space, trials, seeds, sampler."""
    text = json.dumps(
        [preset, sorted(overrides), [dataclasses.astuple(k) for k in keys], repr(cfg.tune)],
        default=str,
    )
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def make_study(algorithm: str, sampler: str, trials: int):
    """A maximising study with its sampler seeded from the algorithm's name (stable across
    processes): TPE after a quarter of the trials (at least 2) drawn at random."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    seed = int(hashlib.sha256(algorithm.encode()).hexdigest()[:8], 16)
    if sampler == "random":
        chosen = optuna.samplers.RandomSampler(seed=seed)
    else:
        chosen = optuna.samplers.TPESampler(seed=seed, n_startup_trials=max(2, trials // 4))
    return optuna.create_study(direction="maximize", sampler=chosen)


def overrides_of(params: dict) -> list[str]:
    return [f"{k}={v}" for k, v in sorted(params.items())]


def trial_configs(
    preset: str, overrides: list[str], algorithm: str, params: dict, seeds: list[int], threads: int
) -> list[RunConfig]:
    base = [*overrides, f"algorithm={algorithm}", *overrides_of(params)]
    cfgs = [load_config(preset, [*base, f"seed={s}"]) for s in seeds]
    return [
        dataclasses.replace(c, run_name="", train=dataclasses.replace(c.train, threads=threads))
        if threads
        else c
        for c in cfgs
    ]


def trial_value(outcomes, metric: str) -> float:
    """Mean of the runs' final ``metric``; nan when any run failed."""
    values = [o.final.get(metric, math.nan) if o.final else math.nan for o in outcomes]
    return float(sum(values) / len(values))


def tune(
    preset: str,
    overrides: list[str],
    cfg: RunConfig,
    keys: list[Key],
    run_rounds,
    threads: int = 0,
) -> dict[str, dict]:
    """Run every algorithm's trials round by round; returns {algorithm: best params}.
    ``run_rounds(cfgs, tags) -> outcomes`` runs one round's configs (all algorithms)."""
    import optuna

    val = [*overrides, "eval.split=validation"]
    seeds = [TUNING_SEED0 + i for i in range(cfg.tune.seeds)]
    sid = study_id(preset, overrides, keys, cfg)
    metric = f"eval/{cfg.task}/accuracy"
    studies = {a: make_study(a, cfg.tune.sampler, cfg.tune.trials) for a in cfg.compare.algorithms}
    for n in range(cfg.tune.trials):
        asked, cfgs, tags = {}, [], []
        for a, study in studies.items():
            dists = {k.name: k.distribution() for k in keys if k.applies_to(a)}
            trial = study.ask(dists)
            asked[a] = (trial, len(cfgs))
            trial_cfgs = trial_configs(preset, val, a, trial.params, seeds, threads)
            cfgs += [
                dataclasses.replace(c, run_name=f"{c.task}__{a}__trial{n}__{c.seed}")
                for c in trial_cfgs
            ]
            tag = {
                "tune.study": f"{sid}:{a}",
                "tune.trial": str(n),
                "tune.params": json.dumps(trial.params),
            }
            tags += [tag] * len(seeds)
        outcomes = run_rounds(cfgs, tags)
        for a, (trial, at) in asked.items():
            value = trial_value(outcomes[at : at + len(seeds)], metric)
            if math.isnan(value):
                studies[a].tell(trial, state=optuna.trial.TrialState.FAIL)
            else:
                studies[a].tell(trial, value)
    return {a: best_params(s) for a, s in studies.items()}


def best_params(study) -> dict:
    done = [t for t in study.trials if t.value is not None]
    if not done:
        raise BenchError("every tuning trial failed: no configuration to test")
    return max(done, key=lambda t: (t.value, -t.number)).params  # ties: the earliest trial


def chosen_configs(
    preset: str, overrides: list[str], cfg: RunConfig, best: dict[str, dict], threads: int
) -> tuple[list[RunConfig], list[dict]]:
    """Each algorithm's chosen configuration on the test seeds 0..n-1, on the eval split."""
    if cfg.compare.seeds > TUNING_SEED0:
        raise BenchError(f"--seeds {cfg.compare.seeds}: test seeds must stay below {TUNING_SEED0}")
    cfgs, tags = [], []
    for a, params in best.items():
        seeds = list(range(cfg.compare.seeds))
        cfgs += trial_configs(preset, overrides, a, params, seeds, threads)
        tags += [{"tune.chosen": json.dumps(params)}] * len(seeds)
    return cfgs, tags


def compare_tuned(
    preset: str | None,
    overrides: list[str],
    flags: dict,
    workers: int,
    nproc: int,
    executor,
    tracking_uri: str | None,
) -> None:
    """``bench compare --tune``: tune, test, report (experiment ``<experiment>_tuned``)."""
    from bench.app.compare import run_all
    from bench.app.tables import report_and_exit
    from bench.core.progress import console

    overrides = list(overrides)
    if flags["trials"]:
        overrides.append(f"tune.trials={flags['trials']}")
    if flags["seeds"]:
        overrides.append(f"tune.seeds={flags['seeds']}")
    cfg = load_config(preset, overrides)
    overrides.append(f"tracking.experiment={cfg.tracking.experiment}_tuned")
    cfg = load_config(preset, overrides)
    extra = {}
    for item in flags["space"]:
        if "=" not in item:
            raise BenchError(f"--space '{item}' must look like key=lo..hi[:log] or key=v1,v2")
        key, spec = item.split("=", 1)
        extra[key] = spec
    keys = space_of(cfg, extra, preset, overrides)
    t = cfg.tune
    n_tune = len(cfg.compare.algorithms) * t.trials * t.seeds
    n_test = len(cfg.compare.algorithms) * cfg.compare.seeds
    console.print(
        f"tuning {len(cfg.compare.algorithms)} algorithms x {t.trials} trials x {t.seeds} seeds "
        f"({t.sampler}) over {', '.join(k.name for k in keys)}: {n_tune} runs on the "
        f"validation split, then {n_test} test runs; experiment '{cfg.tracking.experiment}'",
        highlight=False,
    )
    if flags["dry_run"]:
        per = seconds_per_run(cfg, tracking_uri)
        when = (
            f"about {(n_tune + n_test) * per / workers / 60:.0f} min with {workers} workers "
            f"(the median finished run of this task and length in this store: {per:.0f} s)"
            if per
            else "time unknown: no finished run of this task and length in this store yet"
        )
        console.print(f"dry run: {n_tune + n_test} runs, {when}", highlight=False)
        return
    if nproc > 1:  # every run must be able to take that many processes
        from bench.app.launch import check_sharding

        check_sharding(cfg, nproc)
    threads = 1 if workers > 1 else 0
    outcomes = []

    def run_rounds(cfgs, tags):
        done = run_all(cfgs, workers, tracking_uri, tags, nproc=nproc, executor=executor)
        outcomes.extend(done)
        return done

    best = tune(preset, overrides, cfg, keys, run_rounds, threads)
    for a, params in best.items():
        console.print(f"chosen for {a}: {params}", highlight=False)
    cfgs, tags = chosen_configs(preset, overrides, cfg, best, threads)
    tested = run_all(cfgs, workers, tracking_uri, tags, nproc=nproc, executor=executor)
    report_and_exit(
        outcomes + tested, cfg.tracking.experiment, tracking_uri, cfg.compare.algorithms[0]
    )


def seconds_per_run(cfg: RunConfig, tracking_uri: str | None) -> float:
    """Median wall-clock of the store's finished runs of this task and step count (0: none)."""
    import statistics

    from bench.tracking import client, resolve_uri

    c = client(resolve_uri(tracking_uri))
    ids = [e.experiment_id for e in c.search_experiments()]
    if not ids:
        return 0.0
    where = (
        f"attributes.status = 'FINISHED' and params.task = '{cfg.task}' "
        f"and params.`train.steps` = '{cfg.train.steps}'"
    )
    walls = [
        r.data.metrics["perf/wall_s"]
        for r in c.search_runs(ids, where, max_results=1000)
        if "perf/wall_s" in r.data.metrics
    ]
    return statistics.median(walls) if walls else 0.0
