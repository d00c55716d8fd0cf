"""PPO: GAE against a plain reverse loop, rewards, hand-derived policy and value losses."""

import pytest
import torch

from algorithms import ppo
from bench.core.batch import PolicyOutput, RolloutBatch


def slow_gae(rewards, values, lengths, gamma, lam):
    out = []
    for r, v, n in zip(rewards.tolist(), values.tolist(), lengths, strict=True):
        adv = [0.0] * len(r)
        last = 0.0
        for t in reversed(range(n)):
            next_v = v[t + 1] if t + 1 < n else 0.0
            delta = r[t] + gamma * next_v - v[t]
            last = delta + gamma * lam * last
            adv[t] = last
        out.append(adv)
    return torch.tensor(out, dtype=torch.float64)


@pytest.mark.parametrize(("gamma", "lam"), [(1.0, 0.95), (0.9, 0.5), (1.0, 1.0)])
def test_gae_equals_reverse_loop(gamma, lam):
    g = torch.Generator().manual_seed(0)
    r = torch.randn(4, 6, generator=g, dtype=torch.float64)
    v = torch.randn(4, 6, generator=g, dtype=torch.float64)
    lengths = [6, 3, 1, 4]
    mask = (torch.arange(6)[None] < torch.tensor(lengths)[:, None]).double()
    adv, ret = ppo.gae(r, v, mask, gamma, lam)
    expected = slow_gae(r * mask, v * mask, lengths, gamma, lam)
    assert torch.allclose(adv, expected, atol=1e-12)
    assert torch.allclose(ret, (expected + v) * mask, atol=1e-12)


def test_gae_lambda_one_is_return_minus_value():
    r = torch.tensor([[0.0, 0.0, 1.0]], dtype=torch.float64)
    v = torch.tensor([[0.2, 0.4, 0.6]], dtype=torch.float64)
    adv, ret = ppo.gae(r, v, torch.ones(1, 3, dtype=torch.float64), 1.0, 1.0)
    assert adv.tolist()[0] == pytest.approx([0.8, 0.6, 0.4]) and ret.tolist()[0] == pytest.approx(
        [1, 1, 1]
    )


def test_token_rewards_kl_everywhere_score_at_last_token():
    old = torch.tensor([[-1.0, -2.0, -3.0]])
    ref = torch.tensor([[-1.5, -2.0, -2.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    r = ppo.token_rewards(torch.tensor([2.0]), old, ref, mask, kl_coef=0.1)
    assert r.tolist()[0] == pytest.approx([-0.05, 2.0, 0.0])


def test_losses_hand_derived():
    # one token per sequence, no discount: advantage = R - V_old, return = R
    mask = torch.ones(2, 1, dtype=torch.float64)
    old = torch.zeros(2, 1, dtype=torch.float64)
    values_old = torch.tensor([[0.5], [0.5]], dtype=torch.float64)
    batch = RolloutBatch(
        mask=mask,
        old_logp=old,
        rewards=torch.tensor([1.0, 0.0], dtype=torch.float64),
        group_ids=torch.tensor([0, 1]),
        ref_logp=old.clone(),
        values=values_old,
    )
    # advantages [0.5, -0.5] -> whitened [1, -1]; ratios e^0.1 and e^-0.3 (clipped at 0.8 for A<0)
    logp = torch.tensor([[0.1], [-0.3]], dtype=torch.float64)
    new_values = torch.tensor(
        [[0.9], [0.0]], dtype=torch.float64
    )  # first clipped to 0.7 by vf_clip
    loss, m = ppo.ppo_loss(batch, PolicyOutput(logp=logp, values=new_values), ppo.Config())
    pg = (-1.0 * torch.exp(torch.tensor(0.1)).item() + 0.8) / 2
    # value: row0 max((0.9-1)^2, (0.7-1)^2)=0.09; row1 max((0-0)^2, (0.3-0)^2)=0.09 -> 0.5*0.09
    vf = 0.5 * 0.09
    assert m["critic/vf_loss"] == pytest.approx(vf)
    assert loss.item() == pytest.approx(pg + 0.1 * vf)
    assert m["policy/clipfrac"] == pytest.approx(0.5)
