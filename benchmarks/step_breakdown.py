"""Where a training step's time goes on a real model, and the training forward/backward's FLOP/s
as a share of this machine's measured fp32 matmul peak.

    python benchmarks/step_breakdown.py [--preset smollm2_arithmetic] [--algorithm grpo] [--steps 4]

One step of the preset's workload, split into: sampling (the HF sampler), reward, reference
log-probs (with the behaviour ones when the algorithm needs them: ``make_batch``), the training
forward + backward, and the optimiser (clipping + AdamW). Median over ``--steps`` steps after
one warm-up step. FLOPs are counted as 2 x parameters per token forward and 4 x backward (the
dense rule; attention over these short rows adds little) over the tokens the packed forward
computes: each prompt once per group, then its rows' completion tokens.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("BENCH_PROGRESS", "0")

import torch  # noqa: E402

from algorithms import ALGORITHMS  # noqa: E402
from bench.config import load_config  # noqa: E402
from bench.core.rewards import score  # noqa: E402
from bench.models import load_policy  # noqa: E402
from bench.precision import frozen_reference  # noqa: E402
from bench.rollout import HFSampler  # noqa: E402
from bench.update import Learner  # noqa: E402
from benchmarks.memory import matmul_peak  # noqa: E402
from tasks import TASKS  # noqa: E402


def one_step(learner: Learner, sampler, tok, task, rows: list[dict], cfg) -> dict[str, float]:
    k, T = cfg.sampling.k, cfg.sampling.max_new_tokens
    times = {}
    t = time.perf_counter()
    gen = sampler.generate(
        learner.sampling_policy,
        tok,
        [r["prompt"] for r in rows],
        k,
        T,
        temperature=cfg.sampling.temperature,
    )
    times["sampling"] = time.perf_counter() - t
    t = time.perf_counter()
    rep = [r for r in rows for _ in range(k)]
    rewards, _ = score(task.reward, [r["prompt"] for r in rep], gen.texts, rep)
    times["reward"] = time.perf_counter() - t
    t = time.perf_counter()
    batch = learner.make_batch(gen, rewards)
    times["reference"] = time.perf_counter() - t
    t = time.perf_counter()
    learner.opt.zero_grad(set_to_none=True)
    learner.backward(batch)
    times["train fwd+bwd"] = time.perf_counter() - t
    t = time.perf_counter()
    torch.nn.utils.clip_grad_norm_(learner.parameters(), cfg.train.max_grad_norm)
    learner.opt.step()
    learner.opt.zero_grad(set_to_none=True)
    times["optimiser"] = time.perf_counter() - t
    # the packed forward runs each prompt once for its k rows, then the rows' completions
    T = batch.mask.shape[1]
    prompts = batch.attention_mask[::k, :-T].sum() if T else batch.attention_mask[::k].sum()
    times["tokens"] = float(prompts + batch.mask.sum())
    return times


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--preset", default="smollm2_arithmetic")
    p.add_argument("--algorithm", default="grpo")
    p.add_argument("--steps", type=int, default=4)
    args = p.parse_args()
    cfg = load_config(args.preset, [f"algorithm={args.algorithm}"])
    task = TASKS.get(cfg.task)(cfg.task_config())
    policy, tok, _ = load_policy(cfg.model, task)
    task.bind_tokenizer(tok)
    learner = Learner.build(
        policy, frozen_reference(policy, cfg), ALGORITHMS.get(args.algorithm), cfg
    )
    sampler, pool = HFSampler(), task.train_rows()
    n = cfg.train.prompts_per_step
    steps = [
        one_step(learner, sampler, tok, task, pool[s * n : (s + 1) * n], cfg)
        for s in range(args.steps + 1)
    ][1:]
    parts = {key: statistics.median(s[key] for s in steps) for key in steps[0]}
    tokens = parts.pop("tokens")
    total = sum(parts.values())
    params = sum(q.numel() for q in policy.parameters())
    peak = matmul_peak(torch.float32)
    achieved = 6 * params * tokens / parts["train fwd+bwd"]
    print(
        f"preset={args.preset} algorithm={args.algorithm} threads={torch.get_num_threads()} "
        f"params={params / 1e6:.1f}M rows={n * cfg.sampling.k} tokens/step={tokens:.0f}"
    )
    print("| part | seconds | share |\n|---|---|---|")
    for key, v in parts.items():
        print(f"| {key} | {v:.2f} | {v / total:.0%} |")
    print(f"| step | {total:.2f} | 100% |")
    print(
        f"training fwd+bwd: {achieved / 1e9:.0f} GFLOP/s = {achieved / peak:.0%} of the measured "
        f"fp32 matmul peak ({peak / 1e9:.0f} GFLOP/s, 2048^2)"
    )


if __name__ == "__main__":
    main()
