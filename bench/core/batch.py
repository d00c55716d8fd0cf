"""The two data types every algorithm sees: a frozen rollout batch and the policy's output on it.

Shapes: B = completions in the batch (prompts x k), T = completion length (padded to
max_new_tokens), P = prompt length (left-padded). Per-token tensors are aligned with the
completion tokens: ``logp[b, t] = log pi(y_t | x, y_<t)``.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

import torch
from torch import Tensor


@dataclass(frozen=True)
class RolloutBatch:
    mask: Tensor  # [B, T] 1 on completion tokens (EOS included), 0 on padding
    old_logp: Tensor  # [B, T] behaviour log-probs, recomputed with the training model (the loop
    # fills them from the first forward when the policy is updated once per rollout batch)
    rewards: Tensor  # [B] scalar reward per completion
    group_ids: Tensor  # [B] prompt index: rows with the same id form one group of k
    ref_logp: Tensor | None = (
        None  # [B, T] reference-policy log-probs (if the algorithm needs them)
    )
    values: Tensor | None = None  # [B, T] value estimates of the behaviour critic (PPO)
    input_ids: Tensor | None = None  # [B, P+T] prompt (left-padded) + completion (right-padded)
    attention_mask: Tensor | None = None  # [B, P+T]

    @property
    def size(self) -> int:
        return self.rewards.shape[0]

    def to(self, device) -> RolloutBatch:
        """Every tensor field on ``device`` (the model's)."""
        moved = {
            f.name: getattr(self, f.name).to(device)
            for f in fields(self)
            if isinstance(getattr(self, f.name), Tensor)
        }
        return replace(self, **moved)

    def select(self, idx: Tensor) -> RolloutBatch:
        """Rows ``idx`` of every tensor field (a minibatch)."""
        picked = {
            f.name: getattr(self, f.name)[idx]
            for f in fields(self)
            if isinstance(getattr(self, f.name), Tensor)
        }
        return replace(self, **picked)


@dataclass(frozen=True)
class PolicyOutput:
    logp: Tensor  # [B, T] log-probs of the completion tokens under the current policy (with grad)
    entropy: Tensor | None = None  # [B, T] token entropy, detached
    values: Tensor | None = None  # [B, T] value-head estimates (with grad), PPO only


def masked_mean(x: Tensor, mask: Tensor) -> Tensor:
    """Mean of x over positions where mask is 1 (0 if the mask is empty)."""
    return (x * mask).sum() / mask.sum().clamp(min=1)


def seq_sum(x: Tensor, mask: Tensor) -> Tensor:
    """Sum over completion tokens: [B, T] -> [B]. Sequence log-prob = SUM of token log-probs."""
    return (x * mask).sum(-1)


def group_index(group_ids: Tensor) -> tuple[Tensor, Tensor]:
    """(inverse [B] in 0..G-1, counts [G]) for arbitrary group ids (rows need not be sorted)."""
    _, inverse, counts = torch.unique(group_ids, return_inverse=True, return_counts=True)
    return inverse, counts


def group_mean(x: Tensor, group_ids: Tensor) -> Tensor:
    """Mean of x [B] over each row's group, broadcast back to [B]."""
    inv, counts = group_index(group_ids)
    sums = torch.zeros(counts.shape[0], dtype=x.dtype, device=x.device).index_add(0, inv, x)
    return (sums / counts.to(x.dtype))[inv]


def group_std(x: Tensor, group_ids: Tensor, unbiased: bool = True) -> Tensor:
    """Standard deviation of x [B] within each row's group, broadcast to [B]."""
    inv, counts = group_index(group_ids)
    dev2 = (x - group_mean(x, group_ids)) ** 2
    ss = torch.zeros(counts.shape[0], dtype=x.dtype, device=x.device).index_add(0, inv, dev2)
    denom = (counts - 1 if unbiased else counts).clamp(min=1).to(x.dtype)
    return (ss / denom).sqrt()[inv]
