"""The one training loop. Every algorithm runs through ``train``: same prompts in the same order
per seed, same sampler, same optimiser, same eval protocol. An algorithm only supplies a loss;
the loop reads its declared needs (``Algorithm.needs``) and never branches on names.

``train`` reads top to bottom: ``set_up`` a run, evaluate, then per step ``draw`` groups,
``score`` them, build the batch and ``update`` (bench/update.py), ``log``, and evaluate every
``eval.every`` steps; ``finish`` always closes the MLflow run with its true status.
"""

from __future__ import annotations

import json
import random
import resource
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from rich.markup import escape

from algorithms import ALGORITHMS
from bench import checkpoint, distributed, dynamic, lora
from bench.config import RunConfig, config_hash, flatten, to_yaml
from bench.core.errors import BenchError
from bench.core.generation import Generation, Sampler, Source
from bench.core.paths import results_dir
from bench.core.progress import bar, console
from bench.core.rewards import overlong_penalty, score
from bench.distributed import World
from bench.dynamic import Drawn
from bench.evaluate import evaluate, jsonl, split_rows
from bench.models import load_policy, n_params
from bench.precision import compute_precision, frozen_reference, master_weights
from bench.sharding import shard_reference
from bench.sources import PreferencePairs, Rollouts
from bench.tracking import RankTracker, Tracker, resolve_uri
from bench.update import Counters, Learner
from bench.vllm_sampler import make_sampler
from tasks import TASKS, Task


def seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


class PromptStream:
    """Endless batches of rows: a fresh seeded permutation each pass over the train split. Its
    state (generator, pass order, position) is saved in mid-run checkpoints."""

    def __init__(self, rows: list[dict], per_step: int, seed: int):
        self.rows, self.per_step = rows, per_step
        self.rng = random.Random(seed)
        self.order: list[int] = []
        self.at = 0

    def __iter__(self):
        return self

    def __next__(self) -> list[dict]:
        if self.at + self.per_step > len(self.order):
            self.order = list(range(len(self.rows)))
            self.rng.shuffle(self.order)
            self.at = 0
        batch = [self.rows[i] for i in self.order[self.at : self.at + self.per_step]]
        self.at += self.per_step
        return batch

    def state_dict(self) -> dict:
        return {"rng": self.rng.getstate(), "order": self.order, "at": self.at}

    def load_state_dict(self, state: dict) -> None:
        self.rng.setstate(state["rng"])
        self.order, self.at = list(state["order"]), state["at"]


def prompt_stream(rows: list[dict], per_step: int, seed: int) -> PromptStream:
    return PromptStream(rows, per_step, seed)


def checkpoint_dir(run_id: str):
    return results_dir() / "checkpoints" / run_id


@dataclass
class Run:
    """Everything one training run holds while it goes."""

    cfg: RunConfig
    task: Task
    tokenizer: object
    learner: Learner
    sampler: Sampler
    source: Source
    stream: object  # prompt_stream generator
    tracker: Tracker | RankTracker
    world: World = field(default_factory=World)
    config_hash: str = ""
    counters: Counters = field(default_factory=Counters)
    samples: list[str] = field(default_factory=list)  # JSON lines of logged completions
    final: dict = field(default_factory=dict)  # the last value of every metric
    start: float = field(default_factory=time.time)

    def elapsed(self) -> float:
        return time.time() - self.start

    def resume_elapsed(self, seconds: float) -> None:
        """Go on counting from a checkpoint's elapsed time."""
        self.start = time.time() - seconds


def train_pool(cfg: RunConfig, task: Task) -> list[dict]:
    """The rows RL draws prompts from (offline: the task's preference pairs). Checked, with the
    eval split, before anything is logged: a data problem leaves no FAILED run behind."""
    if not split_rows(task, cfg.eval.split):
        raise BenchError(f"task '{task.name}' has no {cfg.eval.split} rows")
    rows = task.preference_rows() if cfg.sampling.source == "dataset" else task.train_rows()
    if cfg.eval.split == "validation":  # a tuning run: the validation rows are not trained on
        held = {r["prompt"] for r in task.validation_rows()}
        rows = [r for r in rows if r["prompt"] not in held]
    if not rows:
        raise BenchError(f"task '{task.name}' has no train rows")
    pool = rows[: cfg.train.prompt_pool] if cfg.train.prompt_pool else rows
    if len(pool) < cfg.train.prompts_per_step:  # checked before anything is logged
        raise BenchError(
            f"train.prompts_per_step={cfg.train.prompts_per_step} exceeds the {len(pool)} train prompts"
        )
    return pool


def set_up(
    cfg: RunConfig,
    sampler: Sampler | None,
    tracking_uri: str | None,
    tags: dict,
    resume: Path | None = None,
) -> Run:
    """Model, reference, learner, source and MLflow run of a training run (on each rank of a
    sharded run: rank 0 alone opens the MLflow run)."""
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    world = distributed.init(cfg.train.collective_timeout_s)
    algo = ALGORITHMS.get(cfg.algorithm)
    task = TASKS.get(cfg.task)(cfg.task_config())
    sampler = sampler or make_sampler(cfg.sampling, cfg.seed)
    if world.sharded:
        sampler = distributed.ShardedSampler(sampler, world)
    train_pool(cfg, task)  # the data's checks, before a model is loaded or anything logged
    with distributed.main_first(world):  # rank 0 warm-starts into the cache, the others load it
        policy, tokenizer, info = load_policy(cfg.model, task)
    policy = master_weights(policy)
    if lora.enabled(cfg.model.lora):  # adapters only train; the base is read again from info
        bf16 = cfg.train.precision == "bf16-mixed"
        policy = lora.attach(policy, cfg.model.lora, info["cache"], bf16, cfg.seed)
    task.bind_tokenizer(tokenizer)
    pool = train_pool(cfg, task)  # prompts in the model's format (chat template)
    seed_all(cfg.seed)
    reference = frozen_reference(policy, cfg)
    reference = shard_reference(reference, cfg.train.sharding, cfg.sampling.source, world)
    size = n_params(policy)
    learner = Learner.build(policy, reference, algo, cfg, world)
    if cfg.sampling.source == "dataset":  # offline preference pairs instead of sampling
        source = PreferencePairs(pool, cfg.sampling.max_new_tokens)
    else:
        source = Rollouts(cfg, task, sampler, reference, cfg.seed)
    tags = {
        **tags,
        "task_version": task.version,
        "model.cache": info["cache"],
        **info["tags"],
        "task.template": task.template,
        "model.n_params": str(size),
        "algorithm.source": algo.source,
        "bench.config": config_hash(cfg),
    }
    tracker = open_tracker(cfg, tracking_uri, tags, world, resume)
    stream = prompt_stream(pool, cfg.train.prompts_per_step, cfg.seed)
    run = Run(cfg, task, tokenizer, learner, sampler, source, stream, tracker, world=world)
    run.config_hash = tags["bench.config"]
    asked = getattr(cfg.task_config(), "template", "")
    if task.template and (task.template, asked) != ("base", "auto") and world.main:
        # a model's chat template or a format asked for by name (auto on a model without a chat
        # template stays quiet: the tiny default); after every check, so a mistake stays one line
        console.print(f"task {task.name}: {task.template} prompts (template={asked})")
    return run


def open_tracker(cfg: RunConfig, tracking_uri, tags: dict, world: World, resume: Path | None):
    """The run's MLflow run (rank 0; the checkpoint's run when resuming), its run id known to
    every rank."""
    tracker = None
    if world.main:
        uri = resolve_uri(tracking_uri or cfg.tracking.uri)
        if resume is not None:  # results/checkpoints/<run_id>/step-N
            tracker = Tracker.resume(uri, resume.parent.name, checkpoint.step_of(resume))
        else:
            params = flatten(cfg) | {"world_size": world.size}
            tracker = Tracker(uri, cfg.tracking.experiment, cfg.name, params, tags)
            tracker.log_text(to_yaml(cfg), "config.yaml")
    run_id = distributed.gather(tracker.run_id if tracker else None, world)[0]
    if world.launch is not None and world.main:
        (world.launch / "tracking_uri").write_text(tracker.uri)
        (world.launch / "run_id").write_text(run_id)
    return tracker or RankTracker(run_id)


def draw(run: Run) -> tuple[list[dict], Generation]:
    """The step's rows (each prompt k times, grouped) and their completions."""
    k = run.cfg.sampling.k
    rows = [r for r in next(run.stream) for _ in range(k)]
    prompts = [r["prompt"] for r in rows[::k]]
    with compute_precision(run.cfg, run.learner.policy):
        return rows, run.source.draw(run.learner.sampling_policy, run.tokenizer, prompts)


def rewards_of(run: Run, rows: list[dict], gen: Generation) -> tuple[torch.Tensor, int]:
    """(rewards [B], unscorable count): the source's own (offline pairs) or the task's reward,
    with the overlong punishment when ``reward.overlong_cache`` is set."""
    if gen.rewards is not None:
        return gen.rewards, 0
    rewards, n_none = score(run.task.reward, [r["prompt"] for r in rows], gen.texts, rows)
    r = run.cfg.reward
    if r.overlong_cache:
        lengths = gen.completion_mask.sum(-1)
        budget = run.cfg.sampling.max_new_tokens
        rewards = rewards + overlong_penalty(lengths, budget, r.overlong_cache, r.overlong_penalty)
    return rewards, n_none


def draw_scored(run: Run) -> Drawn:
    """One rollout draw of the step's prompts, scored."""
    rows, gen = draw(run)
    rewards, n_none = rewards_of(run, rows, gen)
    tokens = int(gen.completion_mask.sum().item())
    return Drawn(rows, gen, rewards, n_none, tokens, groups_drawn=len(rows) // run.cfg.sampling.k)


def warn(run: Run, message: str) -> None:
    if run.world.main:
        console.print(f"[yellow]warning:[/yellow] {escape(message)}", highlight=False)


def rollout_metrics(run: Run, d: Drawn) -> dict:
    k, gen, rewards = run.cfg.sampling.k, d.gen, d.rewards
    lengths = gen.completion_mask.sum(-1).float()
    g = rewards.view(-1, k)
    return {
        "train/reward/mean": rewards.mean().item(),
        "train/reward/std": rewards.std().item() if rewards.numel() > 1 else 0.0,
        "train/reward/frac_zero_std": (g.std(dim=1) == 0).float().mean().item(),
        "train/reward/unscorable_frac": d.unscorable / (d.groups_drawn * k),
        "response_length/mean": lengths.mean().item(),
        "response_length/max": lengths.max().item(),
        "response_length/clip_ratio": gen.truncated.float().mean().item(),
        "rollout/replay_frac": run.source.replay_frac,
        "rollout/draws": d.draws,  # > 1 only with sampling.dynamic
        "rollout/groups_drawn": d.groups_drawn,
        "rollout/groups_kept": len(rewards) // k,
    }


def train_step(run: Run, step: int) -> dict[str, float]:
    """Draw (and with sampling.dynamic draw again), score, build the batch, update; returns the
    step's metrics."""
    t0 = time.time()
    s = run.cfg.sampling
    d = dynamic.fill(
        lambda: draw_scored(run), s.k, s.dynamic, run.tokenizer.pad_token_id, lambda m: warn(run, m)
    )
    batch = run.learner.make_batch(d.gen, d.rewards)
    metrics = run.learner.update(batch, run.counters)
    run.sampler.weights_changed()
    run.counters.tokens_generated += d.tokens
    run.counters.unscorable += d.unscorable
    dt = time.time() - t0
    keep_samples(run, step, d.rows, d.gen, d.rewards)
    return (
        metrics
        | rollout_metrics(run, d)
        | {
            "perf/step_s": dt,
            "perf/tokens_per_s": d.tokens / dt,
            "perf/lr": run.learner.sched.get_last_lr()[0],
            "perf/cum_tokens_generated": run.counters.tokens_generated,  # x axes for reports
            "perf/elapsed_s": run.elapsed(),
        }
    )


def keep_samples(run: Run, step: int, rows: list[dict], gen: Generation, rewards) -> None:
    """The first ``tracking.log_samples`` completions of the step, for samples.jsonl."""
    n = run.cfg.tracking.log_samples
    triples = zip([r["prompt"] for r in rows][:n], gen.texts[:n], rewards.tolist()[:n], strict=True)
    run.samples += [
        json.dumps({"step": step, "prompt": p, "completion": c, "reward": r}) for p, c, r in triples
    ]


def log(run: Run, metrics: dict[str, float], step: int) -> None:
    run.tracker.log_metrics(metrics, step)
    run.final.update(metrics)


def run_eval(run: Run, step: int) -> None:
    cfg = run.cfg
    policy = run.learner.sampling_policy
    samples: list[dict] = []
    with compute_precision(cfg, policy):
        m = evaluate(
            policy,
            run.tokenizer,
            run.task,
            run.sampler,
            cfg.eval,
            cfg.sampling,
            seed=10_000 + cfg.seed,
            samples=samples,
        )
    log(run, m, step)
    run.tracker.log_text(jsonl(samples), eval_samples_name(step))
    run.tracker.flush()  # eval points show up in the MLflow UI as soon as they exist


def eval_samples_name(step: int) -> str:
    """The artifact with every completion scored by the eval at ``step``."""
    return f"eval_samples/step_{step:06d}.jsonl"


def save_final_checkpoint(run: Run) -> None:
    if not run.world.main:
        return
    path = checkpoint_dir(run.tracker.run_id)
    policy = run.learner.sampling_policy
    if lora.is_lora(policy):  # the adapter (PEFT's format); merged weights on request
        lora.save_adapter(policy, path)
        if run.cfg.model.lora.save_merged:
            lora.save_merged(policy, path / "merged")
            run.tokenizer.save_pretrained(path / "merged")
            run.tracker.set_tags({"checkpoint.merged": str(path / "merged")})
    else:
        policy.save_pretrained(path)
    run.tokenizer.save_pretrained(path)
    run.tracker.set_tags({"checkpoint": str(path)})


def finish(run: Run, status: str) -> None:
    """Totals, samples and the run's status; called on success, error and Ctrl-C alike. A run
    that checkpoints and stopped early logs its totals when it finishes after ``--resume``."""
    if status == "FINISHED" or not run.cfg.train.checkpoint_every:
        perf = run.counters.as_metrics()
        perf["perf/wall_s"] = run.elapsed()
        perf["perf/peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        log(run, perf, run.cfg.train.steps)
        if run.samples:
            run.tracker.log_text("\n".join(run.samples) + "\n", "samples.jsonl")
    run.tracker.end(status)


def start(run: Run, resume: Path | None) -> int:
    """The first step to run: 1 after the step-0 eval, or the step after the checkpoint."""
    if resume is not None:
        return checkpoint.restore(run, resume) + 1
    run_eval(run, 0)
    log(run, {"perf/cum_tokens_generated": 0.0, "perf/elapsed_s": run.elapsed()}, 0)
    return 1


def after_step(run: Run, step: int) -> None:
    """The evals and checkpoints due after ``step``."""
    cfg = run.cfg
    if step % cfg.eval.every == 0 or step == cfg.train.steps:
        run_eval(run, step)
    every = cfg.train.checkpoint_every
    if every and step % every == 0 and step < cfg.train.steps:
        checkpoint.save(run, step)


def ended(run: Run, status: str, error: BaseException) -> str:
    """The status of a run that stopped on ``error``, its reason tagged: under sharding a rank
    that failed first is named (``bench.failed_rank``), and the run is FAILED even when this
    rank was only stopped because of it."""
    reason = {"bench.end": (str(error).splitlines() or [type(error).__name__])[0][:500]}
    if run.world.sharded:
        if status == "FAILED":
            distributed.record_failure(error)
        first = distributed.first_failure(run.world)
        if first is not None:
            status, reason = "FAILED", {"bench.failed_rank": first[0], "bench.end": first[1]}
    if status == "FAILED":
        run.tracker.set_tags(reason)
    return status


def train(
    cfg: RunConfig,
    sampler: Sampler | None = None,
    tracking_uri: str | None = None,
    tags: dict | None = None,
    resume: Path | None = None,
) -> dict:
    """Run one training run; returns the final metrics (and run_id). Logs to MLflow as it goes.
    ``tags`` are added to the run's MLflow tags (e.g. the sweep id). ``resume``: a mid-run
    checkpoint (bench/checkpoint.py) the run continues from, in its own MLflow run."""
    run = set_up(cfg, sampler, tracking_uri, tags or {}, resume)
    status = "FAILED"
    try:
        first = start(run, resume)
        with bar() as progress:
            job = progress.add_task(
                escape(cfg.name), total=cfg.train.steps, completed=first - 1, info=""
            )
            for step in range(first, cfg.train.steps + 1):
                metrics = train_step(run, step)
                log(run, metrics, step)
                after_step(run, step)
                reward = metrics["train/reward/mean"]
                progress.update(job, advance=1, info=f"reward {reward:.3f}")
        if cfg.train.save_checkpoint:
            save_final_checkpoint(run)
        status = "FINISHED"
    except KeyboardInterrupt as e:
        status = ended(run, "KILLED", e)
        raise
    except Exception as e:  # the reason, in one line, next to the FAILED status
        status = ended(run, "FAILED", e)
        raise
    finally:
        finish(run, status)
    checkpoint.clear(run)  # once FINISHED: a kill before this leaves garbage, not a lost run
    return run.final | {"run_id": run.tracker.run_id}
