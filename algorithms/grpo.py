"""GRPO: Group Relative Policy Optimization (Shao et al. 2024, DeepSeekMath, Eq. 3).

    A_i   = (R_i - mean R) / (std R + eps)                       (group-relative advantage)
    rho_t = exp(logp_t - old_logp_t)                              (per-token ratio)
    loss_t = -min(rho_t A_i, clip(rho_t, 1-eps_low, 1+eps_high) A_i) + beta * k3_t
    k3_t  = exp(ref_t - logp_t) - (ref_t - logp_t) - 1            (Schulman's k3 estimator)
aggregated per token as `loss_agg` says (paper: mean over tokens, then over sequences).
Every place where frameworks differ is a field below, logged as an MLflow param.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from algorithms import Algorithm, Needs, register
from algorithms._common import clipped_pg
from bench.core.batch import PolicyOutput, RolloutBatch, group_mean, group_std, masked_mean, seq_sum

LossAgg = Literal["seq-mean-token-mean", "token-mean", "token-sum-norm"]


@dataclass(frozen=True)
class GroupAdvantage:
    """The group-relative advantage and the KL term, shared by the GRPO family."""

    beta: float = 0.04  # KL coefficient against the reference policy (paper: 0.04)
    scale_rewards: bool = True  # divide by the group std (Dr. GRPO: False)
    std_unbiased: bool = True  # std with Bessel correction (torch/TRL default)
    adv_eps: float = 1e-4  # eps added to the std in the denominator (TRL: 1e-4)
    kl_estimator: Literal["k1", "k2", "k3"] = "k3"  # per-token KL estimator (paper: k3)


@dataclass(frozen=True)
class Config(GroupAdvantage):
    eps_low: float = 0.2  # lower clip range of the ratio (paper: 0.2)
    eps_high: float = 0.2  # upper clip range (DAPO's clip-higher raises it to 0.28)
    loss_agg: LossAgg = "seq-mean-token-mean"  # how token losses become one number
    kl_in: Literal["loss", "reward"] = "loss"  # KL as a loss term (paper) or a reward penalty


def advantages(rewards: Tensor, group_ids: Tensor, cfg: GroupAdvantage) -> Tensor:
    """Group-relative advantage per completion, [B]."""
    adv = rewards - group_mean(rewards, group_ids)
    if cfg.scale_rewards:
        adv = adv / (group_std(rewards, group_ids, cfg.std_unbiased) + cfg.adv_eps)
    return adv


def kl_per_token(logp: Tensor, ref_logp: Tensor, estimator: str) -> Tensor:
    """Estimate of KL(pi_theta || pi_ref) per token, [B, T]."""
    d = ref_logp - logp
    if estimator == "k1":
        return -d
    if estimator == "k2":
        return 0.5 * d**2
    return torch.exp(d) - d - 1


def add_kl(per_token: Tensor, batch: RolloutBatch, out: PolicyOutput, cfg: GroupAdvantage):
    """(per_token + beta * KL(pi || pi_ref) per token, {"train/kl_loss": its mean}); unchanged
    when beta is 0."""
    if not cfg.beta:
        return per_token, {}
    kl = kl_per_token(out.logp, batch.ref_logp, cfg.kl_estimator)
    return per_token + cfg.beta * kl, {"train/kl_loss": masked_mean(kl.detach(), batch.mask).item()}


def aggregate(per_token: Tensor, mask: Tensor, mode: str) -> Tensor:
    """[B, T] token losses -> scalar. token-sum-norm divides by B * T (T = max_new_tokens)."""
    if mode == "seq-mean-token-mean":
        return ((per_token * mask).sum(-1) / mask.sum(-1).clamp(min=1)).mean()
    if mode == "token-mean":
        return masked_mean(per_token, mask)
    if mode == "token-sum-norm":
        return (per_token * mask).sum() / (mask.shape[0] * mask.shape[1])
    raise ValueError(f"unknown loss_agg '{mode}'")


def grpo_loss(batch: RolloutBatch, out: PolicyOutput, cfg: Config) -> tuple[Tensor, dict]:
    mask = batch.mask
    rewards = batch.rewards
    if cfg.beta and cfg.kl_in == "reward":
        kl_seq = seq_sum(kl_per_token(batch.old_logp, batch.ref_logp, "k1"), mask)
        rewards = rewards - cfg.beta * kl_seq
    adv = advantages(rewards, batch.group_ids, cfg)  # [B]
    per_token, clipped = clipped_pg(
        out.logp, batch.old_logp, adv[:, None], cfg.eps_low, cfg.eps_high
    )
    metrics = {}
    if cfg.kl_in == "loss":
        per_token, metrics = add_kl(per_token, batch, out, cfg)
    loss = aggregate(per_token, mask, cfg.loss_agg)
    metrics |= {
        "policy/clipfrac": masked_mean(clipped.float(), mask).item(),
        "advantages/mean": adv.mean().item(),
        "advantages/min": adv.min().item(),
        "advantages/max": adv.max().item(),
    }
    return loss, metrics


register(
    Algorithm(
        name="grpo",
        config=Config,
        loss=grpo_loss,
        needs=Needs(ref_logp=True),
        source="Shao et al. 2024 (DeepSeekMath): eps=0.2, beta=0.04, k3 KL in the loss",
    )
)
