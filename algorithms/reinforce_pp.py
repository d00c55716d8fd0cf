"""REINFORCE++ (Hu 2025, arXiv 2501.03262), as verl's ``reinforce_plus_plus`` estimator.

Per-token reward: r_t = -kl_coef * (old_logp_t - ref_logp_t) on every token (k1, in the reward),
plus the task score on the last completion token. Return-to-go G_t = sum_{s >= t} gamma^(s-t)
r_s; advantages = G whitened over every active token of the batch the loss sees (global
normalisation, no critic, no group baseline: verl's ``masked_whiten``, unbiased variance,
1e-8 under the root). Loss: PPO's clipped surrogate on token ratios (0.2), mean over the
batch's active tokens (verl's default ``token-mean``). Not group-relative: a shift of one
group's rewards moves the global mean.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from algorithms import Algorithm, Needs, register
from algorithms._common import clipped_pg
from algorithms.ppo import token_rewards
from bench.core.batch import PolicyOutput, RolloutBatch, masked_mean


@dataclass(frozen=True)
class Config:
    kl_coef: float = 0.001  # k1 KL penalty in the reward (verl's algorithm.kl_ctrl.kl_coef)
    gamma: float = 1.0  # discount over tokens (verl: algorithm.gamma)
    clip: float = 0.2  # ratio clip range (verl's clip_ratio)


def returns_to_go(rewards: Tensor, mask: Tensor, gamma: float) -> Tensor:
    """[B, T]: G_t = r_t + gamma * G_{t+1}, reset after each completion's last token."""
    returns = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[:, 0])
    for t in reversed(range(rewards.shape[1])):
        running = rewards[:, t] + gamma * running
        returns[:, t] = running
        running = running * mask[:, t]
    return returns


def whiten(x: Tensor, mask: Tensor) -> Tensor:
    """(x - mean) / sqrt(var + 1e-8) over the masked entries, unbiased variance (verl)."""
    mean = masked_mean(x, mask)
    n = mask.sum()
    var = masked_mean((x - mean) ** 2, mask) * n / (n - 1).clamp(min=1)
    return (x - mean) * torch.rsqrt(var + 1e-8)


def reinforce_pp_loss(batch: RolloutBatch, out: PolicyOutput, cfg: Config):
    mask = batch.mask
    r = token_rewards(batch.rewards, batch.old_logp, batch.ref_logp, mask, cfg.kl_coef)
    adv = whiten(returns_to_go(r, mask, cfg.gamma), mask) * mask  # [B, T]
    per_token, clipped = clipped_pg(out.logp, batch.old_logp, adv, cfg.clip, cfg.clip)
    loss = masked_mean(per_token, mask)
    metrics = {
        "policy/clipfrac": masked_mean(clipped.float(), mask).item(),
        "advantages/mean": masked_mean(adv, mask).item(),
    }
    return loss, metrics


register(
    Algorithm(
        name="reinforce_pp",
        config=Config,
        loss=reinforce_pp_loss,
        needs=Needs(ref_logp=True),
        group_relative=False,
        source="Hu 2025 (arXiv 2501.03262), verl reinforce_plus_plus: kl_coef=0.001 (k1 in the "
        "reward), gamma=1, clip 0.2, token-mean",
    )
)
