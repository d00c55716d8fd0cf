"""REINFORCE++ by hand and against verl's formula, written out here (verl is not installed):
``compute_reinforce_plus_plus_outcome_advantage`` (return-to-go, ``masked_whiten``) with the KL
in the reward (``apply_kl_penalty``, k1), then ``compute_policy_loss`` ("vanilla", token-mean).
The one documented difference: verl's dual clip (``clip_ratio_c`` = 3, a cap on the loss of a
negative-advantage token whose ratio passes 3) is not applied; below ratio 3 the two agree."""

import pytest
import torch

from algorithms import ALGORITHMS
from bench.core.batch import PolicyOutput, RolloutBatch

ALGO = ALGORITHMS.get("reinforce_pp")


def loss_and_grad(batch, logp, **cfg):
    logp = logp.clone().requires_grad_(True)
    loss, metrics = ALGO.loss(batch, PolicyOutput(logp=logp), ALGO.config(**cfg))
    (g,) = torch.autograd.grad(loss, logp)
    return loss, g, metrics


def test_by_hand_with_the_kl_in_the_reward():
    """Two completions of 3 and 2 tokens, scores 1 and 0, kl_coef 0.1, old - ref = 0.5 on the
    first token of row 0 and 1.0 on the second of row 1. Token rewards: (-0.05, 0, 1) and
    (0, -0.1); returns-to-go: (0.95, 1, 1) and (-0.1, -0.1); mean 0.55; centred (0.4, 0.45,
    0.45, -0.65, -0.65); unbiased variance 1.41 / 4 = 0.3525; on-policy, the gradient of the
    token-mean surrogate is -adv / 5 per active token."""
    mask = torch.tensor([[1.0, 1, 1], [1, 1, 0]], dtype=torch.float64)
    ref = torch.zeros(2, 3, dtype=torch.float64)
    old = torch.tensor([[0.5, 0, 0], [0, 1.0, 0]], dtype=torch.float64)
    batch = RolloutBatch(
        mask=mask,
        old_logp=old,
        ref_logp=ref,
        rewards=torch.tensor([1.0, 0.0], dtype=torch.float64),
        group_ids=torch.tensor([0, 1]),
    )
    loss, g, _ = loss_and_grad(batch, old, kl_coef=0.1)
    adv = torch.tensor([[0.4, 0.45, 0.45], [-0.65, -0.65, 0]], dtype=torch.float64)
    adv = adv / (0.3525 + 1e-8) ** 0.5
    assert loss.item() == pytest.approx(-(adv.sum() / 5).item(), abs=1e-12)  # = 0: whitened
    assert torch.allclose(g, -adv * mask / 5, atol=1e-12)


def verl_loss(old, logp, ref, scores, mask, kl_coef=0.001, gamma=1.0, clip=0.2, clip_c=None):
    """verl's pieces, line for line (trainer/ppo/core_algos.py and ray_trainer.py)."""
    last = mask.sum(-1).long() - 1
    token_scores = torch.zeros_like(logp)
    token_scores[torch.arange(len(last)), last] = scores
    token_level_rewards = token_scores - kl_coef * (old - ref)  # apply_kl_penalty, "kl"
    returns = torch.zeros_like(token_level_rewards)
    running_return = 0
    for t in reversed(range(token_level_rewards.shape[1])):
        running_return = token_level_rewards[:, t] + gamma * running_return
        returns[:, t] = running_return
        running_return = running_return * mask[:, t]
    mean = (returns * mask).sum() / mask.sum()
    var = (((returns - mean) ** 2) * mask).sum() / mask.sum() * mask.sum() / (mask.sum() - 1)
    advantages = (returns - mean) * torch.rsqrt(var + 1e-8) * mask
    ratio = torch.exp(logp - old)
    pg_losses1 = -advantages * ratio
    pg_losses2 = -advantages * torch.clamp(ratio, 1 - clip, 1 + clip)
    clip_pg_losses1 = torch.maximum(pg_losses1, pg_losses2)
    if clip_c is not None:  # dual clip
        pg_losses3 = -advantages * clip_c
        clip_pg_losses2 = torch.min(pg_losses3, clip_pg_losses1)
        clip_pg_losses1 = torch.where(advantages < 0, clip_pg_losses2, clip_pg_losses1)
    return (clip_pg_losses1 * mask).sum() / mask.sum()  # agg_loss "token-mean"


def random_rollout(seed: int, spread: float):
    g = torch.Generator().manual_seed(seed)
    B, T = 8, 6
    lengths = torch.randint(1, T + 1, (B,), generator=g)
    mask = (torch.arange(T)[None] < lengths[:, None]).double()
    logp = -torch.rand(B, T, generator=g, dtype=torch.float64) * 3
    old = logp + spread * torch.randn(B, T, generator=g, dtype=torch.float64)
    ref = logp + 0.5 * torch.randn(B, T, generator=g, dtype=torch.float64)
    scores = torch.randint(0, 2, (B,), generator=g).double()
    return logp, old, ref, scores, mask


@pytest.mark.parametrize("seed", range(5))
def test_equals_verls_formula_off_policy(seed):
    logp, old, ref, scores, mask = random_rollout(seed, spread=0.3)
    assert torch.exp(logp - old)[mask.bool()].max() < 3  # below the dual clip: no difference
    batch = RolloutBatch(
        mask=mask, old_logp=old, ref_logp=ref, rewards=scores, group_ids=torch.arange(8)
    )
    loss, g, metrics = loss_and_grad(batch, logp, kl_coef=0.05)
    leaf = logp.clone().requires_grad_(True)
    expected = verl_loss(old, leaf, ref, scores, mask, kl_coef=0.05, clip_c=3.0)
    (g_verl,) = torch.autograd.grad(expected, leaf)
    assert abs(loss.item() - expected.item()) < 1e-12
    assert torch.allclose(g, g_verl, atol=1e-12)
    assert 0 < metrics["policy/clipfrac"] < 1


def test_the_dual_clip_is_the_one_documented_difference():
    logp, old, ref, scores, mask = random_rollout(0, spread=2.0)  # ratios far past 3
    batch = RolloutBatch(
        mask=mask, old_logp=old, ref_logp=ref, rewards=scores, group_ids=torch.arange(8)
    )
    loss, _, _ = loss_and_grad(batch, logp)
    assert abs(loss.item() - verl_loss(old, logp, ref, scores, mask).item()) < 1e-12
    assert abs(loss.item() - verl_loss(old, logp, ref, scores, mask, clip_c=3.0).item()) > 1e-3
