"""GRPO / Dr. GRPO: hand-derived advantages, clipping, aggregation modes and KL estimators."""

import math

import pytest
import torch

from algorithms import dr_grpo, grpo
from bench.core.batch import PolicyOutput, RolloutBatch

A = 0.5 / (math.sqrt(0.5) + 1e-4)  # rewards [1, 0]: mean 0.5, unbiased std sqrt(0.5), eps 1e-4


def clip_batch(second_token_of_row1: bool = True):
    # row 0 (A > 0): ratios [1.1, 1.5] -> second clipped at 1.2
    # row 1 (A < 0): ratios [0.7, 1.0] -> first clipped at 0.8
    old = torch.full((2, 2), -1.0, dtype=torch.float64)
    ratios = torch.tensor([[1.1, 1.5], [0.7, 1.0]], dtype=torch.float64)
    logp = (old + ratios.log()).requires_grad_(True)
    mask = torch.tensor(
        [[1.0, 1.0], [1.0, 1.0 if second_token_of_row1 else 0.0]], dtype=torch.float64
    )
    batch = RolloutBatch(
        mask=mask,
        old_logp=old,
        rewards=torch.tensor([1.0, 0.0], dtype=torch.float64),
        group_ids=torch.tensor([0, 0]),
        ref_logp=old.clone(),
    )
    return batch, PolicyOutput(logp=logp)


def test_advantages_hand_derived():
    rewards = torch.tensor([1.0, 0.0, 3.0, 3.0])
    ids = torch.tensor([0, 0, 1, 1])
    adv = grpo.advantages(rewards, ids, grpo.Config())
    assert adv.tolist() == pytest.approx([A, -A, 0.0, 0.0], abs=1e-6)
    biased = grpo.advantages(rewards, ids, grpo.Config(std_unbiased=False, adv_eps=1e-12))
    assert biased.tolist() == pytest.approx([1.0, -1.0, 0.0, 0.0], abs=1e-6)  # population std 0.5
    raw = grpo.advantages(rewards, ids, dr_grpo.Config())
    assert raw.tolist() == pytest.approx([0.5, -0.5, 0.0, 0.0])


@pytest.mark.parametrize(
    ("mode", "expected_over_A"),
    [
        # tokens: row0 [-1.1A, -1.2A]; row1 [0.8A] (second masked)
        ("seq-mean-token-mean", (-1.15 + 0.8) / 2),
        ("token-mean", (-1.1 - 1.2 + 0.8) / 3),
        ("token-sum-norm", (-1.1 - 1.2 + 0.8) / (2 * 2)),
    ],
)
def test_clipped_loss_and_aggregation(mode, expected_over_A):
    batch, out = clip_batch(second_token_of_row1=False)
    loss, m = grpo.grpo_loss(batch, out, grpo.Config(beta=0.0, loss_agg=mode))
    assert loss.item() == pytest.approx(expected_over_A * A, abs=1e-9)
    assert m["policy/clipfrac"] == pytest.approx(2 / 3)


def test_clipping_inactive_inside_range_and_gradient_zero_when_clipped():
    batch, out = clip_batch()
    loss, _ = grpo.grpo_loss(batch, out, grpo.Config(beta=0.0))
    (g,) = torch.autograd.grad(loss, out.logp)
    # clipped tokens get no gradient; unclipped get -A * ratio / (2 tokens * 2 seqs)
    assert g[0, 1].item() == 0.0 and g[1, 0].item() == 0.0
    assert g[0, 0].item() == pytest.approx(-A * 1.1 / 4, rel=1e-9)
    assert g[1, 1].item() == pytest.approx(A * 1.0 / 4, rel=1e-9)


def test_wider_clip_range_makes_clipping_inactive():
    batch, out = clip_batch()
    loss, m = grpo.grpo_loss(batch, out, grpo.Config(beta=0.0, eps_low=0.5, eps_high=0.6))
    assert m["policy/clipfrac"] == 0.0
    assert loss.item() == pytest.approx(((-1.1 - 1.5) / 2 * A + (0.7 + 1.0) / 2 * A) / 2, abs=1e-9)


def test_kl_estimators_hand_derived():
    logp = torch.tensor([[0.0]])
    ref = torch.tensor([[math.log(0.5)]])  # d = ref - logp = log 0.5
    d = math.log(0.5)
    assert grpo.kl_per_token(logp, ref, "k1").item() == pytest.approx(-d)
    assert grpo.kl_per_token(logp, ref, "k2").item() == pytest.approx(0.5 * d * d)
    assert grpo.kl_per_token(logp, ref, "k3").item() == pytest.approx(0.5 - d - 1)


def test_kl_term_added_with_beta():
    batch, out = clip_batch()
    ref = batch.old_logp + math.log(0.5)  # k3 = 0.5 - log 0.5 - 1 on every token
    batch = RolloutBatch(
        mask=batch.mask,
        old_logp=batch.old_logp,
        rewards=batch.rewards,
        group_ids=batch.group_ids,
        ref_logp=ref,
    )
    base, _ = grpo.grpo_loss(batch, out, grpo.Config(beta=0.0))
    with_kl, m = grpo.grpo_loss(batch, out, grpo.Config(beta=0.04))
    # k3 per token with logp = old + log(ratio): d = log 0.5 - log ratio
    ratios = torch.tensor([[1.1, 1.5], [0.7, 1.0]], dtype=torch.float64)
    d = math.log(0.5) - ratios.log()
    k3 = (d.exp() - d - 1).mean(1).mean()
    assert (with_kl - base).item() == pytest.approx(0.04 * k3.item(), rel=1e-9)
    assert "train/kl_loss" in m


def test_dr_grpo_defaults_are_its_own():
    cfg = dr_grpo.Config()
    assert (cfg.scale_rewards, cfg.loss_agg, cfg.beta) == (False, "token-sum-norm", 0.0)
    assert (grpo.Config().scale_rewards, grpo.Config().loss_agg, grpo.Config().beta) == (
        True,
        "seq-mean-token-mean",
        0.04,
    )
