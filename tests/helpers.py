"""Random rollout batches for algorithm tests."""

from __future__ import annotations

import torch

from bench.batch import PolicyOutput, RolloutBatch


def random_batch(groups: int, k: int, T: int, seed: int = 0, dtype=torch.float64):
    """(batch, logp leaf): behaviour/reference log-probs near the policy's, binary-ish rewards."""
    g = torch.Generator().manual_seed(seed)
    B = groups * k
    logp = (-torch.rand(B, T, generator=g, dtype=dtype) * 2).requires_grad_(True)
    old = logp.detach() + 0.1 * torch.randn(B, T, generator=g, dtype=dtype)
    ref = logp.detach() + 0.3 * torch.randn(B, T, generator=g, dtype=dtype)
    lengths = torch.randint(1, T + 1, (B,), generator=g)
    mask = (torch.arange(T)[None, :] < lengths[:, None]).to(dtype)
    rewards = torch.randint(0, 3, (B,), generator=g).to(dtype)
    values = torch.randn(B, T, generator=g, dtype=dtype)
    batch = RolloutBatch(
        mask=mask,
        old_logp=old,
        rewards=rewards,
        group_ids=torch.arange(groups).repeat_interleave(k),
        ref_logp=ref,
        values=values,
    )
    return batch, logp


def output(logp, values=None) -> PolicyOutput:
    """Policy output on a random batch; values move a little from the batch's old values."""
    if values is None:
        values = torch.cos(logp * 3)  # depends on logp, so masked/permuted inputs stay consistent
    return PolicyOutput(logp=logp, entropy=torch.zeros_like(logp), values=values)
