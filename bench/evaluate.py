"""Evaluation on a task's eval split: greedy accuracy and sampled avg@k / maj@k / pass@k."""

from __future__ import annotations

from collections import Counter

import torch

from bench.config import EvalConfig, SamplingConfig
from bench.rollout import Sampler


def majority(answers: list[str]) -> str:
    """Most common (stripped) answer; ties go to the first seen."""
    return Counter(a.strip() for a in answers).most_common(1)[0][0]


def evaluate(
    model, tokenizer, task, sampler: Sampler, ecfg: EvalConfig, scfg: SamplingConfig, seed: int
) -> dict[str, float]:
    """Metrics named ``eval/<task>/<metric>``. Unscorable answers count as wrong and are counted."""
    rows = task.eval_rows()[: ecfg.max_prompts]
    prompts = [r["prompt"] for r in rows]
    greedy = sampler.generate(model, tokenizer, prompts, 1, scfg.max_new_tokens, greedy=True)
    ok = [task.is_correct(c, r) for c, r in zip(greedy.texts, rows, strict=True)]
    metrics = {"accuracy": sum(bool(x) for x in ok) / len(rows)}
    unscorable = sum(x is None for x in ok)
    if ecfg.k > 0:
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            sampled = sampler.generate(
                model,
                tokenizer,
                prompts,
                ecfg.k,
                scfg.max_new_tokens,
                temperature=ecfg.temperature,
                top_p=scfg.top_p,
            )
        k = ecfg.k
        per_prompt = [sampled.texts[i * k : (i + 1) * k] for i in range(len(rows))]
        hits = [[task.is_correct(c, r) for c in cs] for cs, r in zip(per_prompt, rows, strict=True)]
        unscorable += sum(h is None for hs in hits for h in hs)
        maj = [task.is_correct(majority(cs), r) for cs, r in zip(per_prompt, rows, strict=True)]
        metrics |= {
            "avg_at_k": sum(bool(h) for hs in hits for h in hs) / (len(rows) * k),
            "pass_at_k": sum(any(bool(h) for h in hs) for hs in hits) / len(rows),
            "maj_at_k": sum(bool(m) for m in maj) / len(rows),
        }
    metrics["unscorable"] = float(unscorable)
    metrics |= task.policy_metrics(model)
    return {f"eval/{task.name}/{k}": v for k, v in metrics.items()}
