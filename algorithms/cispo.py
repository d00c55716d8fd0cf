"""CISPO: Clipped IS-weight Policy Optimization (MiniMax-M1, arXiv 2506.13585).

    A_i   = (R_i - mean R) / (std R + eps)                          (group-relative, as GRPO)
    w_t   = sg(min(rho_t, eps_max)),  rho_t = exp(logp_t - old_logp_t)
    L     = -sum_t w_t A_i logp_t / (active tokens of the batch)
The importance weight is clipped and detached instead of the update being clipped, so every
token keeps a gradient (no token is dropped as PPO's clip drops them). eps_max = 5.0 as TRL
recommends (ScaleRL, arXiv 2510.13786); no lower bound, no KL. TRL: ``loss_type="cispo"``
(whose ``epsilon_high`` is this eps_max).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from algorithms import Algorithm, Needs, grpo, register
from bench.core.batch import PolicyOutput, RolloutBatch, masked_mean


@dataclass(frozen=True)
class Config(grpo.GroupAdvantage):
    eps_max: float = 5.0  # cap of the detached importance weight (TRL/ScaleRL: 5.0)
    beta: float = 0.0  # no KL term (paper)
    loss_agg: grpo.LossAgg = "token-mean"  # over the batch's active tokens (paper, TRL)


def cispo_loss(batch: RolloutBatch, out: PolicyOutput, cfg: Config) -> tuple[torch.Tensor, dict]:
    mask = batch.mask
    adv = grpo.advantages(batch.rewards, batch.group_ids, cfg)[:, None]  # [B, 1]
    ratio = torch.exp(out.logp - batch.old_logp)
    weight = torch.clamp(ratio, max=cfg.eps_max).detach()
    per_token = -weight * adv * out.logp
    per_token, metrics = grpo.add_kl(per_token, batch, out, cfg)
    loss = grpo.aggregate(per_token, mask, cfg.loss_agg)
    capped = (ratio > cfg.eps_max) & (adv > 0)  # as TRL's cispo_clip_ratio
    metrics |= {
        "policy/clipfrac": masked_mean(capped.float(), mask).item(),
        "advantages/mean": adv.mean().item(),
    }
    return loss, metrics


register(
    Algorithm(
        name="cispo",
        config=Config,
        loss=cispo_loss,
        needs=Needs(ref_logp=True),  # KL to the reference is monitored (train/kl_ref)
        source="MiniMax-M1 (arXiv 2506.13585); eps_max=5.0 (TRL, ScaleRL); token-mean, no KL",
    )
)
