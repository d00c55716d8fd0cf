"""Property tests over every registered algorithm (generated from the registry)."""

from dataclasses import replace

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from algorithms import ALGORITHMS
from tests.helpers import output, random_batch

NAMES = ALGORITHMS.names()
shapes = st.tuples(st.integers(1, 4), st.integers(2, 5), st.integers(1, 6), st.integers(0, 10_000))


def loss_of(name, batch, logp):
    algo = ALGORITHMS.get(name)
    loss, metrics = algo.loss(batch, output(logp), algo.config())
    return loss, metrics


@settings(max_examples=25, deadline=None)
@given(name=st.sampled_from(NAMES), shape=shapes)
def test_masked_positions_do_not_matter(name, shape):
    G, k, T, seed = shape
    batch, logp = random_batch(G, k, T, seed)
    loss, _ = loss_of(name, batch, logp)
    junk = (
        torch.randn(logp.shape, dtype=logp.dtype, generator=torch.Generator().manual_seed(seed + 1))
        * 5
    )
    off = 1 - batch.mask
    changed = replace(
        batch,
        old_logp=batch.old_logp + junk * off,
        ref_logp=batch.ref_logp - junk * off,
        values=batch.values + junk * off,
    )
    loss2, _ = loss_of(name, changed, logp.detach() + junk * off)
    assert torch.allclose(loss, loss2, atol=1e-10)


@settings(max_examples=25, deadline=None)
@given(name=st.sampled_from(NAMES), shape=shapes)
def test_permuting_rows_changes_nothing(name, shape):
    G, k, T, seed = shape
    batch, logp = random_batch(G, k, T, seed)
    perm = torch.randperm(G * k, generator=torch.Generator().manual_seed(seed))
    loss, _ = loss_of(name, batch, logp)
    loss2, _ = loss_of(name, batch.select(perm), logp.detach()[perm])
    assert torch.allclose(loss, loss2, atol=1e-10)


@settings(max_examples=25, deadline=None)
@given(
    name=st.sampled_from([n for n in NAMES if ALGORITHMS.get(n).group_relative]),
    shape=shapes,
    shift=st.floats(-50, 50),
)
def test_group_reward_shift_changes_nothing(name, shape, shift):
    G, k, T, seed = shape
    batch, logp = random_batch(G, k, T, seed)
    shifts = torch.linspace(-1, 1, G, dtype=logp.dtype) * shift  # a different constant per group
    shifted = replace(batch, rewards=batch.rewards + shifts[batch.group_ids])
    loss, _ = loss_of(name, batch, logp)
    loss2, _ = loss_of(name, shifted, logp)
    assert torch.allclose(loss, loss2, atol=1e-8)


@settings(max_examples=25, deadline=None)
@given(name=st.sampled_from(NAMES), shape=shapes)
def test_losses_and_gradients_finite_in_fp32(name, shape):
    G, k, T, seed = shape
    batch, logp = random_batch(G, k, T, seed, dtype=torch.float32)
    loss, metrics = loss_of(name, batch, logp)
    (g,) = torch.autograd.grad(loss, logp)
    assert torch.isfinite(loss) and torch.isfinite(g).all()
    assert all(v == v for v in metrics.values())  # no NaN metric
