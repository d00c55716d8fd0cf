"""DPO: hand-derived loss, online pair selection, and the rows-selection hook."""

import math

import pytest
import torch

from algorithms import dpo
from bench.core.batch import PolicyOutput, RolloutBatch
from tests.helpers import output, random_batch


def test_sigmoid_loss_hand_derived():
    # (lc - lrc) - (lr - lrr) = 1 - (-1) = 2; beta 0.1 -> -log sigmoid(0.2) = log(1 + e^-0.2)
    loss = dpo.sigmoid_loss(
        torch.tensor([0.0]), torch.tensor([-3.0]), torch.tensor([-1.0]), torch.tensor([-2.0]), 0.1
    )
    assert loss.item() == pytest.approx(math.log1p(math.exp(-0.2)), abs=1e-7)


def test_pairs_best_worst_ties_and_skips():
    rewards = torch.tensor([0.0, 1.0, 1.0, 0.5, 2.0, 2.0, 2.0, 2.0, 0.0, 0.0, 3.0, 1.0])
    ids = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2])
    tiebreak = torch.tensor([0.0, 0.1, 0.9, 0.0, 0, 0, 0, 0, 0.3, 0.2, 0.0, 0.0])
    chosen, rejected = dpo.pairs(rewards, ids, tiebreak)
    # group 0: best rows 1,2 (tie -> higher tiebreak: 2), worst row 0; group 1 all equal: skipped;
    # group 2: best row 10, worst rows 8,9 (tie -> lower tiebreak: 9)
    assert chosen.tolist() == [2, 10] and rejected.tolist() == [0, 9]


def test_loss_on_selected_rows_equals_loss_on_full_batch():
    batch, logp = random_batch(groups=4, k=4, T=3, seed=2)
    cfg = dpo.Config()
    full, m = dpo.dpo_loss(batch, output(logp), cfg)
    idx = dpo.select(batch, cfg)
    part, _ = dpo.dpo_loss(batch.select(idx), output(logp[idx]), cfg)
    assert torch.allclose(full, part) and len(idx) == 2 * m["dpo/pairs"]


def test_metrics_and_no_pair_batch():
    batch, logp = random_batch(groups=2, k=3, T=2, seed=0)
    _, m = dpo.dpo_loss(batch, output(logp), dpo.Config())
    assert {"rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies"} <= set(m)
    flat = RolloutBatch(
        mask=batch.mask,
        old_logp=batch.old_logp,
        rewards=torch.ones(6, dtype=torch.float64),
        group_ids=batch.group_ids,
        ref_logp=batch.ref_logp,
    )
    loss, m = dpo.dpo_loss(flat, PolicyOutput(logp=logp), dpo.Config())
    (g,) = torch.autograd.grad(loss, logp)
    assert loss.item() == 0.0 and m["dpo/skipped_groups"] == 2 and g.abs().max() == 0
