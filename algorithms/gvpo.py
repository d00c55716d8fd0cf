"""GVPO: Group Variance Policy Optimization (Zhang et al. 2025, arXiv 2504.19599).

Per prompt x with k completions, rewards R_i and anchor policy pi_a:
    l_i = log pi_theta(y_i|x) - log pi_a(y_i|x)          (sequence sums of token log-probs)
    w_i = (R_i - mean R) - beta * (l_i - mean l)          (sums to zero in each group)
    L   = 1/(k-1) * sum_i 0.5 * ((beta*l_i - mean beta*l) - (R_i - mean R))^2
whose gradient is -(beta/(k-1)) * sum_i w_i * grad log pi_theta(y_i|x) with w detached (paper
Eq. 10-11). No importance ratio, no clipping; groups with equal rewards still give a gradient
whenever the l_i differ.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from torch import Tensor

from algorithms import Algorithm, Needs, register
from bench.core.batch import PolicyOutput, RolloutBatch, group_index, group_mean, group_std, seq_sum


@dataclass(frozen=True)
class Config:
    beta: float = 0.1  # KL strength; paper / authors' verl recipe use 0.1
    anchor: Literal["reference", "old"] = "reference"  # pi_a: fixed pi_ref, or the behaviour policy
    mean_over_groups: bool = (
        True  # divide the sum over groups by G (empirical E_x); False = plain sum
    )


def weights(l: Tensor, rewards: Tensor, group_ids: Tensor, beta: float) -> Tensor:
    """w_i = (R_i - R̄) - beta (l_i - l̄), [B]; zero-sum in each group."""
    return (rewards - group_mean(rewards, group_ids)) - beta * (l - group_mean(l, group_ids))


def gvpo_loss(batch: RolloutBatch, out: PolicyOutput, cfg: Config) -> tuple[Tensor, dict]:
    anchor = batch.ref_logp if cfg.anchor == "reference" else batch.old_logp
    l = seq_sum(out.logp - anchor, batch.mask)  # [B]
    w = weights(l, batch.rewards, batch.group_ids, cfg.beta)  # [B], depends on theta through l
    inv, counts = group_index(batch.group_ids)
    k = counts[inv].to(l.dtype)  # [B]
    loss = (0.5 * w**2 / (k - 1).clamp(min=1)).sum()  # Eq. 10: squared zero-sum residuals
    if cfg.mean_over_groups:
        loss = loss / counts.shape[0]
    w = w.detach()
    metrics = {
        "gvpo/abs_weight": w.abs().mean().item(),
        "gvpo/logratio_std": group_std(l.detach(), batch.group_ids).mean().item(),
        "advantages/mean": w.mean().item(),
        "advantages/min": w.min().item(),
        "advantages/max": w.max().item(),
    }
    return loss, metrics


register(
    Algorithm(
        name="gvpo",
        config=Config,
        loss=gvpo_loss,
        needs=Needs(ref_logp=True),
        source="Zhang et al. 2025 (arXiv 2504.19599) and the authors' verl recipe: beta=0.1, k=4",
    )
)
