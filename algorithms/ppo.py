"""PPO for language models (Ouyang et al. 2022 / Stiennon et al. 2020 style).

Per-token reward: r_t = -kl_coef * (old_logp_t - ref_logp_t), plus the task score at the last
completion token. Advantages by GAE (Schulman et al. 2016) with gamma=1, lambda=0.95 over the
old values, whitened over the batch; clipped policy loss (0.2) and clipped value loss:
    total = pg_loss + vf_coef * vf_loss.
The value head is a linear layer on the policy's last hidden state (shared backbone): PPO then
costs one forward per minibatch like every other algorithm here, with no second model.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from algorithms import Algorithm, Needs, register
from algorithms._common import clipped_pg
from bench.core.batch import PolicyOutput, RolloutBatch, masked_mean


@dataclass(frozen=True)
class Config:
    kl_coef: float = 0.05  # per-token k1 KL penalty in the reward (Ouyang et al.: 0.02-0.05)
    gamma: float = 1.0  # discount over tokens
    lam: float = 0.95  # GAE lambda
    clip: float = 0.2  # policy ratio clip range
    vf_clip: float = 0.2  # value clip range around the old values
    vf_coef: float = 0.1  # weight of the value loss in the total
    whiten: bool = True  # whiten advantages over the batch (masked)


def token_rewards(
    rewards: Tensor, old_logp: Tensor, ref_logp: Tensor, mask: Tensor, kl_coef: float
) -> Tensor:
    """[B, T]: -kl_coef * k1 KL on every token, plus the score on the last completion token."""
    r = -kl_coef * (old_logp - ref_logp) * mask
    last = (mask.sum(-1).long() - 1).clamp(min=0)
    return r.scatter_add(1, last[:, None], rewards[:, None].to(r.dtype))


def gae(
    rewards: Tensor, values: Tensor, mask: Tensor, gamma: float, lam: float
) -> tuple[Tensor, Tensor]:
    """(advantages, returns), both [B, T]; values past the end of a completion count as 0."""
    values = values * mask
    rewards = rewards * mask
    adv = torch.zeros_like(rewards)
    last = torch.zeros_like(rewards[:, 0])
    T = rewards.shape[1]
    for t in reversed(range(T)):
        next_v = values[:, t + 1] if t + 1 < T else torch.zeros_like(last)
        delta = rewards[:, t] + gamma * next_v - values[:, t]
        last = delta + gamma * lam * last
        adv[:, t] = last
    adv = adv * mask
    return adv, (adv + values) * mask


def whiten(x: Tensor, mask: Tensor, eps: float = 1e-8) -> Tensor:
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean) ** 2, mask)
    return (x - mean) * torch.rsqrt(var + eps) * mask


def ppo_loss(batch: RolloutBatch, out: PolicyOutput, cfg: Config) -> tuple[Tensor, dict]:
    mask = batch.mask
    r = token_rewards(batch.rewards, batch.old_logp, batch.ref_logp, mask, cfg.kl_coef)
    adv, returns = gae(r, batch.values, mask, cfg.gamma, cfg.lam)
    if cfg.whiten:
        adv = whiten(adv, mask)
    pg, clipped = clipped_pg(out.logp, batch.old_logp, adv, cfg.clip, cfg.clip)
    pg_loss = masked_mean(pg, mask)
    v_clipped = batch.values + torch.clamp(out.values - batch.values, -cfg.vf_clip, cfg.vf_clip)
    vf = torch.maximum((out.values - returns) ** 2, (v_clipped - returns) ** 2)
    vf_loss = 0.5 * masked_mean(vf, mask)
    loss = pg_loss + cfg.vf_coef * vf_loss
    with torch.no_grad():
        resid = (
            masked_mean((returns - batch.values) ** 2, mask)
            - masked_mean(returns - batch.values, mask) ** 2
        )
        var_ret = masked_mean(returns**2, mask) - masked_mean(returns, mask) ** 2
        metrics = {
            "policy/clipfrac": masked_mean(clipped.float(), mask).item(),
            "policy/approx_kl": 0.5 * masked_mean((out.logp - batch.old_logp) ** 2, mask).item(),
            "critic/vf_loss": vf_loss.item(),
            "critic/explained_var": (1 - resid / var_ret.clamp(min=1e-8)).item(),
            "policy/pg_loss": pg_loss.item(),
            "advantages/mean": masked_mean(adv, mask).item(),
            "advantages/min": adv[mask > 0].min().item() if mask.any() else 0.0,
            "advantages/max": adv[mask > 0].max().item() if mask.any() else 0.0,
        }
    return loss, metrics


register(
    Algorithm(
        name="ppo",
        config=Config,
        loss=ppo_loss,
        needs=Needs(ref_logp=True, values=True),
        group_relative=False,
        source="Ouyang et al. 2022 style: k1 KL 0.05 in the reward, GAE(1, 0.95), clip 0.2, value clip 0.2",
    )
)
