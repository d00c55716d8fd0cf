"""GSPO: Group Sequence Policy Optimization (Zheng et al. 2025, arXiv 2507.18071).

    A_i   = (R_i - mean R) / (std R + eps)                          (as GRPO)
    s_i   = exp(mean_t (logp_t - old_logp_t))                      (length-normalised sequence ratio)
    L     = -mean_i min(s_i A_i, clip(s_i, 1-eps_low, 1+eps_high) A_i)
Clip ranges from the paper (3e-4 / 4e-4: a sequence ratio moves far less than a token's); no
KL term. TRL: ``importance_sampling_level="sequence"`` with ``loss_type="grpo"``; with
``beta > 0`` the KL term is added per token as TRL does (k3, mean over tokens then sequences).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from algorithms import Algorithm, Needs, grpo, register
from bench.core.batch import PolicyOutput, RolloutBatch, seq_sum


@dataclass(frozen=True)
class Config(grpo.GroupAdvantage):
    eps_low: float = 3e-4  # lower clip range of the sequence ratio (paper: 3e-4)
    eps_high: float = 4e-4  # upper clip range (paper: 4e-4)
    beta: float = 0.0  # no KL term (paper)


def sequence_ratio(logp, old_logp, mask):
    """[B]: exp of the mean per-token log-ratio over each completion's tokens."""
    return torch.exp(seq_sum(logp - old_logp, mask) / mask.sum(-1).clamp(min=1))


def gspo_loss(batch: RolloutBatch, out: PolicyOutput, cfg: Config) -> tuple[torch.Tensor, dict]:
    mask = batch.mask
    adv = grpo.advantages(batch.rewards, batch.group_ids, cfg)  # [B]
    ratio = sequence_ratio(out.logp, batch.old_logp, mask)
    clipped_ratio = torch.clamp(ratio, 1 - cfg.eps_low, 1 + cfg.eps_high)
    per_seq = -torch.min(ratio * adv, clipped_ratio * adv)
    per_token = per_seq[:, None].expand_as(mask)
    per_token, metrics = grpo.add_kl(per_token, batch, out, cfg)
    loss = grpo.aggregate(per_token, mask, "seq-mean-token-mean")
    clipped = ((ratio < 1 - cfg.eps_low) & (adv < 0)) | ((ratio > 1 + cfg.eps_high) & (adv > 0))
    metrics |= {
        "policy/clipfrac": clipped.float().mean().item(),  # share of sequences clipped
        "advantages/mean": adv.mean().item(),
    }
    return loss, metrics


register(
    Algorithm(
        name="gspo",
        config=Config,
        loss=gspo_loss,
        needs=Needs(ref_logp=True),  # KL to the reference is monitored (train/kl_ref)
        source="Zheng et al. 2025 (arXiv 2507.18071): sequence ratio, eps 3e-4/4e-4, no KL",
    )
)
