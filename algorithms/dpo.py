"""DPO: Direct Preference Optimization (Rafailov et al. 2023, Eq. 7), sigmoid loss.

    L = -log sigmoid(beta * ((lc - lrc) - (lr - lrr)))
with lc/lr the sequence log-probs of the chosen/rejected completion under the policy and
lrc/lrr under the reference. Online (from rollouts, the default here): in each group the
chosen completion has the highest reward and the rejected one the lowest; groups whose rewards
are all equal give no pair and are skipped and counted. Ties are broken by the reference
log-prob (highest for chosen, lowest for rejected) so that the choice does not depend on row
order. Offline pairs are groups of two with rewards 1 (chosen) and 0 (rejected).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from algorithms import Algorithm, Needs, register
from bench.core.batch import PolicyOutput, RolloutBatch, group_index, seq_sum


@dataclass(frozen=True)
class Config:
    beta: float = 0.1  # inverse temperature of the implicit reward (paper and TRL default: 0.1)


def pairs(rewards: Tensor, group_ids: Tensor, tiebreak: Tensor) -> tuple[Tensor, Tensor]:
    """(chosen rows [P], rejected rows [P]): best and worst of each group with a reward spread."""
    chosen, rejected = [], []
    for g in torch.unique(group_ids):
        rows = torch.nonzero(group_ids == g).squeeze(1)
        r = rewards[rows]
        if r.max() == r.min():
            continue
        top, bottom = rows[r == r.max()], rows[r == r.min()]
        chosen.append(top[tiebreak[top].argmax()])
        rejected.append(bottom[tiebreak[bottom].argmin()])
    empty = torch.zeros(0, dtype=torch.long)
    return (torch.stack(chosen), torch.stack(rejected)) if chosen else (empty, empty)


def select(batch: RolloutBatch, cfg: Config) -> Tensor:
    """Rows the loss uses (chosen and rejected of each pair): the loop forwards only these."""
    chosen, rejected = pairs(batch.rewards, batch.group_ids, seq_sum(batch.ref_logp, batch.mask))
    return torch.cat([chosen, rejected])


def sigmoid_loss(lc: Tensor, lr: Tensor, lrc: Tensor, lrr: Tensor, beta: float) -> Tensor:
    """Per-pair DPO loss [P]."""
    return -F.logsigmoid(beta * ((lc - lrc) - (lr - lrr)))


def dpo_loss(batch: RolloutBatch, out: PolicyOutput, cfg: Config) -> tuple[Tensor, dict]:
    chosen, rejected = pairs(batch.rewards, batch.group_ids, seq_sum(batch.ref_logp, batch.mask))
    n_groups = group_index(batch.group_ids)[1].shape[0]
    metrics = {
        "dpo/pairs": float(chosen.numel()),
        "dpo/skipped_groups": float(n_groups - chosen.numel()),
    }
    if chosen.numel() == 0:
        return out.logp.sum() * 0.0, metrics
    logp = seq_sum(out.logp, batch.mask)  # [B]
    ref = seq_sum(batch.ref_logp, batch.mask)  # [B]
    lc, lr, lrc, lrr = logp[chosen], logp[rejected], ref[chosen], ref[rejected]
    loss = sigmoid_loss(lc, lr, lrc, lrr, cfg.beta).mean()
    rc, rr = (cfg.beta * (lc - lrc)).detach(), (cfg.beta * (lr - lrr)).detach()
    metrics |= {
        "rewards/chosen": rc.mean().item(),
        "rewards/rejected": rr.mean().item(),
        "rewards/margins": (rc - rr).mean().item(),
        "rewards/accuracies": (rc > rr).float().mean().item(),
    }
    return loss, metrics


register(
    Algorithm(
        name="dpo",
        config=Config,
        loss=dpo_loss,
        needs=Needs(ref_logp=True),
        select=select,
        source="Rafailov et al. 2023: sigmoid loss, beta=0.1; online pairs = best/worst of each group",
    )
)
