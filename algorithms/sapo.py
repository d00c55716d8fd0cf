"""SAPO: Soft Adaptive Policy Optimization (arXiv 2511.20347).

    A_i   = (R_i - mean R) / (std R + eps)                          (as GRPO)
    g_t   = sigmoid(tau (rho_t - 1)) * 4 / tau,  tau = tau_pos if A_i > 0 else tau_neg
    L     = -mean_i mean_t g_t A_i
A smooth gate instead of PPO's hard clip: at rho = 1 its slope is 1 (the policy gradient), and
it fades as rho leaves 1, faster for negative advantages (tau_neg > tau_pos). Temperatures and
aggregation as TRL 1.16 (``loss_type="sapo"``: tau_pos 1.0, tau_neg 1.05; mean over tokens,
then over sequences); no KL.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from algorithms import Algorithm, Needs, grpo, register
from bench.core.batch import PolicyOutput, RolloutBatch, masked_mean


@dataclass(frozen=True)
class Config(grpo.GroupAdvantage):
    tau_pos: float = 1.0  # gate temperature for positive advantages (paper/TRL: 1.0)
    tau_neg: float = 1.05  # gate temperature for the others (paper/TRL: 1.05)
    beta: float = 0.0  # no KL term


def sapo_loss(batch: RolloutBatch, out: PolicyOutput, cfg: Config) -> tuple[torch.Tensor, dict]:
    mask = batch.mask
    adv = grpo.advantages(batch.rewards, batch.group_ids, cfg)[:, None]  # [B, 1]
    ratio = torch.exp(out.logp - batch.old_logp)
    tau = torch.where(adv > 0, cfg.tau_pos, cfg.tau_neg)
    gate = torch.sigmoid(tau * (ratio - 1)) * 4 / tau
    per_token = -gate * adv
    per_token, metrics = grpo.add_kl(per_token, batch, out, cfg)
    loss = grpo.aggregate(per_token, mask, "seq-mean-token-mean")
    metrics |= {
        "policy/gate_mean": masked_mean((gate * tau / 4).detach(), mask).item(),  # 0.5 on-policy
        "advantages/mean": adv.mean().item(),
    }
    return loss, metrics


register(
    Algorithm(
        name="sapo",
        config=Config,
        loss=sapo_loss,
        needs=Needs(ref_logp=True),  # KL to the reference is monitored (train/kl_ref)
        source="SAPO (arXiv 2511.20347): tau_pos=1.0, tau_neg=1.05 (TRL 1.16), no KL",
    )
)
