"""GVPO loss: hand-derived values, a slow loop from the paper, and the gradient identity."""

import math

import pytest
import torch

from algorithms import gvpo
from bench.core.batch import PolicyOutput, RolloutBatch
from tests.helpers import output, random_batch


def hand_batch():
    # Two groups: k=3 and k=2. ref = -1 everywhere; l_i = sum of (logp - ref) over the mask.
    # l = [0.5, -0.5, 1.0 | 2.0, 0.0]; row 1's second token is masked (99 must not count).
    delta = torch.tensor(
        [[0.25, 0.25], [-0.5, 99.0], [1.0, 0.0], [1.5, 0.5], [0.0, 0.0]], dtype=torch.float64
    )
    mask = torch.tensor([[1, 1], [1, 0], [1, 1], [1, 1], [1, 1]], dtype=torch.float64)
    ref = -torch.ones(5, 2, dtype=torch.float64)
    batch = RolloutBatch(
        mask=mask,
        old_logp=ref.clone(),
        rewards=torch.tensor([1.0, 0, 0, 0, 1], dtype=torch.float64),
        group_ids=torch.tensor([0, 0, 0, 1, 1]),
        ref_logp=ref,
    )
    return batch, PolicyOutput(logp=(ref + delta).requires_grad_(True))


def test_hand_derived_two_groups():
    batch, out = hand_batch()
    # group 0: beta*l centred = [1/60, -1/12, 1/15], R centred = [2/3, -1/3, -1/3]
    #   diffs [-0.65, 0.25, 0.4] -> 0.5 * 0.645 / (3-1) = 0.16125
    # group 1: beta*l centred = [0.1, -0.1], R centred = [-0.5, 0.5] -> 0.5 * 0.72 / 1 = 0.36
    loss, m = gvpo.gvpo_loss(batch, out, gvpo.Config(beta=0.1))
    assert loss.item() == pytest.approx((0.16125 + 0.36) / 2, abs=1e-12)
    loss_sum, _ = gvpo.gvpo_loss(batch, out, gvpo.Config(beta=0.1, mean_over_groups=False))
    assert loss_sum.item() == pytest.approx(0.52125, abs=1e-12)
    # |w| = [0.65, 0.25, 0.4, 0.6, 0.6]
    assert m["gvpo/abs_weight"] == pytest.approx(0.5, abs=1e-12)


def slow_gvpo(batch, logp, beta):
    """Paper formula, one group and one sample at a time, plain Python floats."""
    total, groups = 0.0, sorted(set(batch.group_ids.tolist()))
    for gid in groups:
        rows = [i for i in range(batch.size) if batch.group_ids[i].item() == gid]
        l = [
            sum(
                (logp[i, t] - batch.ref_logp[i, t]).item()
                for t in range(logp.shape[1])
                if batch.mask[i, t] > 0
            )
            for i in rows
        ]
        r = [batch.rewards[i].item() for i in rows]
        k = len(rows)
        lbar, rbar = sum(l) / k, sum(r) / k
        total += sum(
            0.5 * ((beta * li - beta * lbar) - (ri - rbar)) ** 2
            for li, ri in zip(l, r, strict=False)
        ) / (k - 1)
    return total / len(groups)


@pytest.mark.parametrize("seed", range(5))
def test_vectorised_equals_slow_loop(seed):
    batch, logp = random_batch(groups=3, k=4, T=5, seed=seed)
    loss, _ = gvpo.gvpo_loss(batch, output(logp), gvpo.Config(beta=0.3))
    assert loss.item() == pytest.approx(slow_gvpo(batch, logp, 0.3), rel=1e-10)


@pytest.mark.parametrize("anchor", ["reference", "old"])
def test_gradient_equals_weighted_logprob_gradient(anchor):
    batch, logp = random_batch(groups=4, k=4, T=6, seed=7)
    cfg = gvpo.Config(beta=0.1, anchor=anchor)
    loss, _ = gvpo.gvpo_loss(batch, output(logp), cfg)
    (g_mse,) = torch.autograd.grad(loss, logp)
    anchor_logp = batch.ref_logp if anchor == "reference" else batch.old_logp
    l = ((logp - anchor_logp) * batch.mask).sum(-1)
    w = gvpo.weights(l.detach(), batch.rewards, batch.group_ids, cfg.beta)
    seq_logp = (logp * batch.mask).sum(-1)  # grad log pi(y_i) = grad of the sequence log-prob
    G, k = 4, 4
    surrogate = -(cfg.beta / (k - 1)) * (w * seq_logp).sum() / G
    (g_sur,) = torch.autograd.grad(surrogate, logp)
    assert torch.allclose(g_mse, g_sur, atol=1e-6)
    assert g_mse.abs().max() > 1e-4  # the check is not vacuous


def test_weights_sum_to_zero_per_group():
    batch, logp = random_batch(groups=5, k=3, T=4, seed=1)
    l = (logp.detach() * batch.mask).sum(-1)
    w = gvpo.weights(l, batch.rewards, batch.group_ids, 0.2).view(5, 3)
    assert torch.allclose(w.sum(1), torch.zeros(5, dtype=w.dtype), atol=1e-12)


def test_zero_loss_at_optimum():
    # centred beta*l equal to centred rewards: the loss and its gradient vanish
    beta = 0.5
    rewards = torch.tensor([1.0, 0.0, 0.5, 2.0], dtype=torch.float64)
    l = rewards / beta + 3.0  # any per-group constant shift is allowed
    ref = torch.full((4, 1), -2.0, dtype=torch.float64)
    logp = (ref + l[:, None]).requires_grad_(True)
    batch = RolloutBatch(
        mask=torch.ones(4, 1, dtype=torch.float64),
        old_logp=ref,
        rewards=rewards,
        group_ids=torch.zeros(4, dtype=torch.long),
        ref_logp=ref,
    )
    loss, _ = gvpo.gvpo_loss(batch, PolicyOutput(logp=logp), gvpo.Config(beta=beta))
    (g,) = torch.autograd.grad(loss, logp)
    assert loss.item() == pytest.approx(0.0, abs=1e-24)
    assert g.abs().max().item() < 1e-12


def test_equal_rewards_still_give_gradient():
    batch, logp = random_batch(groups=2, k=4, T=3, seed=3)
    batch = RolloutBatch(
        mask=batch.mask,
        old_logp=batch.old_logp,
        rewards=torch.ones(8, dtype=torch.float64),
        group_ids=batch.group_ids,
        ref_logp=batch.ref_logp,
    )
    loss, _ = gvpo.gvpo_loss(batch, output(logp), gvpo.Config())
    (g,) = torch.autograd.grad(loss, logp)
    assert loss.item() > 0 and g.abs().max().item() > 1e-6
    assert math.isfinite(loss.item())
