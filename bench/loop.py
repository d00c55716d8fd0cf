"""The one training loop. Every algorithm runs through ``train``: same prompts in the same order
per seed, same sampler, same optimiser, same eval protocol. An algorithm only supplies a loss;
the loop reads its declared needs (``Algorithm.needs``) and never branches on names.
"""

from __future__ import annotations

import copy
import json
import math
import random
import resource
import time

import numpy as np
import torch

from algorithms import ALGORITHMS
from bench.batch import PolicyOutput, RolloutBatch
from bench.config import RunConfig, flatten, to_yaml
from bench.evaluate import evaluate
from bench.models import load_policy, n_params
from bench.progress import bar
from bench.rewards import score
from bench.rollout import HFSampler, Sampler, token_logps
from bench.tracking import Tracker, resolve_uri
from tasks import TASKS


def seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def prompt_stream(rows: list[dict], per_step: int, seed: int):
    """Endless batches of rows: a fresh seeded permutation each epoch over the train split."""
    rng = random.Random(seed)
    while True:
        order = list(range(len(rows)))
        rng.shuffle(order)
        for s in range(0, len(order) - per_step + 1, per_step):
            yield [rows[i] for i in order[s : s + per_step]]


def minibatch_indices(group_ids: torch.Tensor, n: int, gen: torch.Generator) -> list[torch.Tensor]:
    """Row indices of n minibatches, each made of whole groups, groups shuffled."""
    groups = torch.unique(group_ids)
    perm = groups[torch.randperm(len(groups), generator=gen)]
    return [torch.nonzero(torch.isin(group_ids, chunk)).squeeze(1) for chunk in perm.chunk(n)]


def forward(model, batch: RolloutBatch, temperature: float) -> PolicyOutput:
    logp, ent = token_logps(
        model, batch.input_ids, batch.attention_mask, batch.mask.shape[1], temperature, entropy=True
    )
    return PolicyOutput(logp=logp, entropy=ent)


def group_reward_stats(rewards: torch.Tensor, k: int) -> dict[str, float]:
    g = rewards.view(-1, k)
    return {
        "train/reward/mean": rewards.mean().item(),
        "train/reward/std": rewards.std().item() if rewards.numel() > 1 else 0.0,
        "train/reward/frac_zero_std": (g.std(dim=1) == 0).float().mean().item(),
    }


def train(
    cfg: RunConfig, sampler: Sampler | None = None, tracking_uri: str | None = None
) -> dict[str, float]:
    """Run one training run; returns the final metrics. Logs to MLflow as it goes."""
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    algo = ALGORITHMS.get(cfg.algorithm)
    algo_cfg = cfg.algo_config()
    task = TASKS.get(cfg.task)(cfg.task_config())
    sampler = sampler or HFSampler()
    policy, tokenizer, info = load_policy(cfg.model, task)
    seed_all(cfg.seed)
    reference = copy.deepcopy(policy).eval().requires_grad_(False)
    opt = torch.optim.AdamW(
        policy.parameters(), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay
    )
    warm = max(cfg.train.warmup_steps, 0)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warm) if warm else 1.0
    )
    tracker = Tracker(
        resolve_uri(tracking_uri or cfg.tracking.uri),
        cfg.tracking.experiment,
        cfg.name,
        flatten(cfg),
        {
            "task_version": task.version,
            "model.cache": info["cache"],
            "model.n_params": str(n_params(policy)),
            "algorithm.source": algo.source,
        },
    )
    tracker.log_text(to_yaml(cfg), "config.yaml")
    k, T = cfg.sampling.k, cfg.sampling.max_new_tokens
    stream = prompt_stream(task.train_rows(), cfg.train.prompts_per_step, cfg.seed)
    mb_gen = torch.Generator().manual_seed(cfg.seed)
    samples: list[str] = []
    totals = {
        "tokens_generated": 0.0,
        "tokens_trained": 0.0,
        "skipped_steps": 0.0,
        "unscorable": 0.0,
    }
    start = time.time()
    final: dict[str, float] = {}
    status = "FAILED"

    def run_eval(step: int) -> None:
        m = evaluate(
            policy, tokenizer, task, sampler, cfg.eval, cfg.sampling, seed=10_000 + cfg.seed
        )
        tracker.log_metrics(m, step)
        final.update(m)

    try:
        with bar() as progress:
            job = progress.add_task(cfg.name, total=cfg.train.steps, info="")
            run_eval(0)
            for step in range(1, cfg.train.steps + 1):
                t0 = time.time()
                rows = next(stream)
                prompts = [r["prompt"] for r in rows]
                gen = sampler.generate(
                    policy, tokenizer, prompts, k, T, cfg.sampling.temperature, cfg.sampling.top_p
                )
                rep_rows = [r for r in rows for _ in range(k)]
                rewards, n_none = score(
                    task.reward, [r["prompt"] for r in rep_rows], gen.texts, rep_rows
                )
                input_ids, attn = gen.input_ids, gen.attention_mask
                with torch.no_grad():
                    old_logp, _ = token_logps(policy, input_ids, attn, T, cfg.sampling.temperature)
                    ref_logp = (
                        token_logps(reference, input_ids, attn, T, cfg.sampling.temperature)[0]
                        if algo.needs.ref_logp
                        else None
                    )
                batch = RolloutBatch(
                    mask=gen.completion_mask.float(),
                    old_logp=old_logp,
                    rewards=rewards,
                    group_ids=torch.arange(len(prompts)).repeat_interleave(k),
                    ref_logp=ref_logp,
                    input_ids=input_ids,
                    attention_mask=attn,
                )
                step_metrics: dict[str, list[float]] = {}
                for _ in range(cfg.train.epochs):
                    for idx in minibatch_indices(batch.group_ids, cfg.train.minibatches, mb_gen):
                        mb = batch.select(idx)
                        out = forward(policy, mb, cfg.sampling.temperature)
                        loss, m = algo.loss(mb, out, algo_cfg)
                        opt.zero_grad(set_to_none=True)
                        loss.backward()
                        gn = torch.nn.utils.clip_grad_norm_(
                            policy.parameters(), cfg.train.max_grad_norm
                        ).item()
                        if not (math.isfinite(gn) and math.isfinite(loss.item())):
                            totals["skipped_steps"] += 1
                            opt.zero_grad(set_to_none=True)
                        else:
                            opt.step()
                            sched.step()
                        m |= {
                            "train/loss": loss.item(),
                            "train/grad_norm": gn,
                            "train/entropy": (out.entropy * mb.mask).sum().item()
                            / mb.mask.sum().clamp(min=1).item(),
                        }
                        for key, v in m.items():
                            step_metrics.setdefault(key, []).append(v)
                        totals["tokens_trained"] += mb.mask.sum().item()
                lengths = batch.mask.sum(-1)
                totals["tokens_generated"] += lengths.sum().item()
                totals["unscorable"] += n_none
                dt = time.time() - t0
                metrics = {key: float(np.mean(v)) for key, v in step_metrics.items()}
                metrics |= group_reward_stats(rewards, k)
                metrics |= {
                    "train/reward/unscorable_frac": n_none / len(rewards),
                    "response_length/mean": lengths.mean().item(),
                    "response_length/max": lengths.max().item(),
                    "response_length/clip_ratio": gen.truncated.float().mean().item(),
                    "perf/step_s": dt,
                    "perf/tokens_per_s": lengths.sum().item() / dt,
                    "perf/lr": sched.get_last_lr()[0],
                }
                if ref_logp is not None:
                    metrics["train/kl_ref"] = (
                        ((old_logp - ref_logp) * batch.mask).sum(-1).mean().item()
                    )
                tracker.log_metrics(metrics, step)
                final.update(metrics)
                if cfg.tracking.log_samples:
                    samples += [
                        json.dumps({"step": step, "prompt": p, "completion": c, "reward": r})
                        for p, c, r in zip(
                            [r["prompt"] for r in rep_rows],
                            gen.texts,
                            rewards.tolist(),
                            strict=True,
                        )
                    ][: cfg.tracking.log_samples]
                if step % cfg.eval.every == 0 or step == cfg.train.steps:
                    run_eval(step)
                progress.update(job, advance=1, info=f"reward {rewards.mean():.3f}")
        status = "FINISHED"
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        wall = time.time() - start
        perf = {f"perf/{k}": v for k, v in totals.items()}
        perf |= {
            "perf/wall_s": wall,
            "perf/peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        }
        tracker.log_metrics(perf, cfg.train.steps)
        final.update(perf)
        if samples:
            tracker.log_text("\n".join(samples) + "\n", "samples.jsonl")
        tracker.end(status)
    final["run_id"] = tracker.run_id  # type: ignore[assignment]
    return final
