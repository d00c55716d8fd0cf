"""The one training loop. Every algorithm runs through ``train``: same prompts in the same order
per seed, same sampler, same optimiser, same eval protocol. An algorithm only supplies a loss;
the loop reads its declared needs (``Algorithm.needs``) and never branches on names.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import random
import resource
import time

import numpy as np
import torch
from rich.markup import escape

from algorithms import ALGORITHMS, Algorithm
from bench.batch import PolicyOutput, RolloutBatch, seq_sum
from bench.config import RunConfig, flatten, to_yaml
from bench.errors import BenchError
from bench.evaluate import evaluate
from bench.models import load_policy, n_params
from bench.progress import bar
from bench.rewards import score
from bench.rollout import PreferencePairs, Sampler, model_device, token_logps
from bench.sources import Rollouts
from bench.tracking import Tracker, resolve_uri
from bench.vllm_sampler import make_sampler
from tasks import TASKS


def seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def prompt_stream(rows: list[dict], per_step: int, seed: int):
    """Endless batches of rows: a fresh seeded permutation each pass over the train split."""
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


def forward(model, batch: RolloutBatch, temperature: float, value_head=None) -> PolicyOutput:
    T = batch.mask.shape[1]
    res = token_logps(
        model,
        batch.input_ids,
        batch.attention_mask,
        T,
        temperature,
        entropy=True,
        hidden=value_head is not None,
    )
    values = value_head(res.hidden).squeeze(-1) if value_head is not None else None
    return PolicyOutput(logp=res.logp, entropy=res.entropy, values=values)


def reward_stats(rewards: torch.Tensor, k: int) -> dict[str, float]:
    g = rewards.view(-1, k)
    return {
        "train/reward/mean": rewards.mean().item(),
        "train/reward/std": rewards.std().item() if rewards.numel() > 1 else 0.0,
        "train/reward/frac_zero_std": (g.std(dim=1) == 0).float().mean().item(),
    }


def make_batch(
    policy, reference, value_head, algo: Algorithm, gen, rewards, k: int, cfg: RunConfig
) -> RolloutBatch:
    """Rollouts -> RolloutBatch with what the algorithm declared it needs."""
    T, temp = cfg.sampling.max_new_tokens, cfg.sampling.temperature
    ids, attn = gen.input_ids, gen.attention_mask
    old = gen.behaviour_logp  # off-policy rows: the log-probs they were drawn with
    values = ref = None
    with torch.no_grad():
        # With one update per rollout batch the policy has not moved when the loss is taken, so
        # the first forward's log-probs (and values) are the behaviour ones: ``update`` fills them.
        # Off-policy rows come with their behaviour log-probs; values are the current critic's.
        if cfg.train.epochs * cfg.train.minibatches > 1:
            res = token_logps(policy, ids, attn, T, temp, hidden=value_head is not None)
            old = res.logp if old is None else old
            values = value_head(res.hidden).squeeze(-1) if value_head is not None else None
        if algo.needs.ref_logp:
            ref = token_logps(reference, ids, attn, T, temp).logp
    return RolloutBatch(
        mask=gen.completion_mask.float(),
        old_logp=old,
        rewards=rewards,
        group_ids=torch.arange(rewards.shape[0] // k).repeat_interleave(k),
        ref_logp=ref,
        values=values,
        input_ids=ids,
        attention_mask=attn,
    ).to(model_device(policy))


def update(
    policy, value_head, opt, sched, algo, algo_cfg, batch: RolloutBatch, cfg: RunConfig, gen, totals
) -> dict:
    """epochs x minibatches optimiser steps on one rollout batch; returns mean step metrics."""
    collected: dict[str, list[float]] = {}
    params = [p for group in opt.param_groups for p in group["params"]]
    for _ in range(cfg.train.epochs):
        for idx in minibatch_indices(batch.group_ids, cfg.train.minibatches, gen):
            mb = batch.select(idx)
            if algo.select is not None:  # e.g. DPO uses only the best and worst of each group
                mb = mb.select(algo.select(mb, algo_cfg))
                if mb.size == 0:
                    totals["empty_minibatches"] += 1
                    continue
            out = forward(policy, mb, cfg.sampling.temperature, value_head)
            if mb.old_logp is None:
                mb = dataclasses.replace(mb, old_logp=out.logp.detach())
            if mb.values is None and out.values is not None:
                mb = dataclasses.replace(mb, values=out.values.detach())
            loss, m = algo.loss(mb, out, algo_cfg)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            gn = torch.nn.utils.clip_grad_norm_(params, cfg.train.max_grad_norm).item()
            if math.isfinite(gn) and math.isfinite(loss.item()):
                opt.step()
                sched.step()
            else:  # counted, never silently applied
                totals["skipped_steps"] += 1
                opt.zero_grad(set_to_none=True)
            m |= {
                "train/loss": loss.item(),
                "train/grad_norm": gn,
                "train/entropy": (out.entropy * mb.mask).sum().item()
                / max(mb.mask.sum().item(), 1),
            }
            if mb.ref_logp is not None:  # sequence KL(behaviour || reference), k1 estimate
                m["train/kl_ref"] = seq_sum(mb.old_logp - mb.ref_logp, mb.mask).mean().item()
            for key, v in m.items():
                collected.setdefault(key, []).append(v)
            totals["tokens_trained"] += mb.mask.sum().item()
    return {key: float(np.mean(v)) for key, v in collected.items()}


def trainables(policy, algo: Algorithm, cfg: RunConfig):
    """(value head or None, the optimiser over everything trained, the lr schedule)."""
    value_head = None
    if algo.needs.values:  # a linear value head on the policy's last hidden state (shared backbone)
        value_head = torch.nn.Linear(policy.config.hidden_size, 1).to(model_device(policy))
        torch.nn.init.zeros_(value_head.weight)
        torch.nn.init.zeros_(value_head.bias)
    params = list(policy.parameters()) + (list(value_head.parameters()) if value_head else [])
    if cfg.train.optimizer == "sgd":
        opt = torch.optim.SGD(params, lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
    else:
        fused = all(p.device.type in ("cpu", "cuda") for p in params)  # one kernel for all params
        opt = torch.optim.AdamW(
            params, lr=cfg.train.lr, weight_decay=cfg.train.weight_decay, fused=fused
        )
    warm = max(cfg.train.warmup_steps, 0)
    total = max(cfg.train.steps * cfg.train.epochs * cfg.train.minibatches, 1)

    def factor(step: int) -> float:  # step = optimiser steps taken so far
        if warm and step < warm:
            return (step + 1) / warm
        if cfg.train.schedule == "linear":
            return max(0.0, 1 - (step - warm) / max(total - warm, 1))
        return 1.0

    sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
    return value_head, opt, sched


def checkpoint_dir(run_id: str):
    from bench.paths import results_dir

    return results_dir() / "checkpoints" / run_id


def train(
    cfg: RunConfig,
    sampler: Sampler | None = None,
    tracking_uri: str | None = None,
    tags: dict | None = None,
) -> dict:
    """Run one training run; returns the final metrics (and run_id). Logs to MLflow as it goes.
    ``tags`` are added to the run's MLflow tags (e.g. the sweep id)."""
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    algo = ALGORITHMS.get(cfg.algorithm)
    algo_cfg = cfg.algo_config()
    task = TASKS.get(cfg.task)(cfg.task_config())
    sampler = sampler or make_sampler(cfg.sampling, cfg.seed)
    offline = cfg.sampling.source == "dataset"  # offline preference pairs instead of sampling
    train_rows = task.preference_rows() if offline else task.train_rows()
    pool = train_rows[: cfg.train.prompt_pool] if cfg.train.prompt_pool else train_rows
    if len(pool) < cfg.train.prompts_per_step:  # checked before anything is logged
        raise BenchError(
            f"train.prompts_per_step={cfg.train.prompts_per_step} exceeds the {len(pool)} train prompts"
        )
    policy, tokenizer, info = load_policy(cfg.model, task)
    task.bind_tokenizer(tokenizer)
    seed_all(cfg.seed)
    reference = copy.deepcopy(policy).eval().requires_grad_(False)
    if offline:
        source = PreferencePairs(train_rows, cfg.sampling.max_new_tokens)
    else:
        source = Rollouts(cfg, task, sampler, reference, cfg.seed)
    value_head, opt, sched = trainables(policy, algo, cfg)
    tags = {
        **(tags or {}),
        "task_version": task.version,
        "model.cache": info["cache"],
        "model.n_params": str(n_params(policy)),
        "algorithm.source": algo.source,
    }
    tracker = Tracker(
        resolve_uri(tracking_uri or cfg.tracking.uri),
        cfg.tracking.experiment,
        cfg.name,
        flatten(cfg),
        tags,
    )
    tracker.log_text(to_yaml(cfg), "config.yaml")
    k = cfg.sampling.k
    stream = prompt_stream(pool, cfg.train.prompts_per_step, cfg.seed)
    mb_gen = torch.Generator().manual_seed(cfg.seed)
    samples: list[str] = []
    totals = {
        "tokens_generated": 0.0,
        "tokens_trained": 0.0,
        "skipped_steps": 0.0,
        "empty_minibatches": 0.0,
        "unscorable": 0.0,
    }
    final: dict = {}
    start, status = time.time(), "FAILED"

    def run_eval(step: int) -> None:
        m = evaluate(
            policy, tokenizer, task, sampler, cfg.eval, cfg.sampling, seed=10_000 + cfg.seed
        )
        tracker.log_metrics(m, step)
        tracker.flush()  # eval points show up in the MLflow UI as soon as they exist
        final.update(m)

    try:
        with bar() as progress:
            job = progress.add_task(escape(cfg.name), total=cfg.train.steps, info="")
            run_eval(0)
            tracker.log_metrics(
                {"perf/cum_tokens_generated": 0.0, "perf/elapsed_s": time.time() - start}, 0
            )
            for step in range(1, cfg.train.steps + 1):
                t0 = time.time()
                rows = [r for r in next(stream) for _ in range(k)]  # each prompt k times
                prompts = [r["prompt"] for r in rows]
                gen = source.draw(policy, tokenizer, prompts[::k])
                rewards, n_none = (
                    (gen.rewards, 0)
                    if gen.rewards is not None
                    else score(task.reward, prompts, gen.texts, rows)
                )
                batch = make_batch(policy, reference, value_head, algo, gen, rewards, k, cfg)
                metrics = update(
                    policy, value_head, opt, sched, algo, algo_cfg, batch, cfg, mb_gen, totals
                )
                sampler.weights_changed()
                lengths = batch.mask.sum(-1)
                totals["tokens_generated"] += lengths.sum().item()
                totals["unscorable"] += n_none
                dt = time.time() - t0
                metrics |= reward_stats(rewards, k) | {
                    "train/reward/unscorable_frac": n_none / len(rewards),
                    "response_length/mean": lengths.mean().item(),
                    "response_length/max": lengths.max().item(),
                    "response_length/clip_ratio": gen.truncated.float().mean().item(),
                    "perf/step_s": dt,
                    "perf/tokens_per_s": lengths.sum().item() / dt,
                    "perf/lr": sched.get_last_lr()[0],
                    "rollout/replay_frac": getattr(source, "last_replay_frac", 0.0),
                    "perf/cum_tokens_generated": totals["tokens_generated"],  # x axes for reports
                    "perf/elapsed_s": time.time() - start,
                }
                tracker.log_metrics(metrics, step)
                final.update(metrics)
                if cfg.tracking.log_samples:
                    triples = zip(prompts, gen.texts, rewards.tolist(), strict=True)
                    samples += [
                        json.dumps({"step": step, "prompt": p, "completion": c, "reward": r})
                        for p, c, r in triples
                    ][: cfg.tracking.log_samples]
                if step % cfg.eval.every == 0 or step == cfg.train.steps:
                    run_eval(step)
                progress.update(job, advance=1, info=f"reward {rewards.mean():.3f}")
        if cfg.train.save_checkpoint:
            path = checkpoint_dir(tracker.run_id)
            policy.save_pretrained(path)
            tokenizer.save_pretrained(path)
            tracker.set_tags({"checkpoint": str(path)})
        status = "FINISHED"
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        perf = {f"perf/{key}": v for key, v in totals.items()}
        perf["perf/wall_s"] = time.time() - start
        perf["perf/peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        tracker.log_metrics(perf, cfg.train.steps)
        final.update(perf)
        if samples:
            tracker.log_text("\n".join(samples) + "\n", "samples.jsonl")
        tracker.end(status)
    final["run_id"] = tracker.run_id
    return final
