"""RLOO: REINFORCE with a leave-one-out baseline (Ahmadian et al. 2024), as TRL 1.16's RLOOTrainer."""

from dataclasses import dataclass

import torch

from algorithms import Algorithm, Needs, register
from bench.core.batch import group_index, group_mean, seq_sum


@dataclass(frozen=True)
class Config:
    beta: float = 0.05  # KL penalty in the reward, beta * sum_t (old - ref) (TRL's default)
    eps: float = 0.2  # clip range of the sequence ratio pi / pi_old (TRL's epsilon)


def rloo_loss(batch, out, cfg):
    rewards = batch.rewards - cfg.beta * seq_sum(batch.old_logp - batch.ref_logp, batch.mask)
    inv, counts = group_index(batch.group_ids)
    k = counts[inv].to(rewards.dtype)  # [B] size of each row's group
    loo = k / (k - 1).clamp(min=1)  # R_i - mean of the others = k/(k-1) (R_i - mean R)
    adv = (rewards - group_mean(rewards, batch.group_ids)) * loo
    ratio = torch.exp(seq_sum(out.logp - batch.old_logp, batch.mask))  # sequence ratio
    clipped = ratio.clamp(1 - cfg.eps, 1 + cfg.eps)
    loss = -torch.min(ratio * adv, clipped * adv).mean()
    return loss, {"advantages/mean": adv.mean().item()}


register(Algorithm("rloo", Config, rloo_loss, Needs(ref_logp=True), source=__doc__))
