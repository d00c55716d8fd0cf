"""The non-finite guard, on a real learner and a tiny model. The gradient norm that clipping
computes anyway decides: a non-finite loss or gradient (injected: a hook writes NaN into one
parameter's gradient, not an overflow that depends on the CPU's kernels) skips the step before
the optimiser or the schedule moves, with no copy of anything; a finite step that still leaves
non-finite weights stops the run in one line, or is undone with ``train.undo_nonfinite``."""

import pytest
import torch

from algorithms import ALGORITHMS
from bench.config import load_config
from bench.core.errors import RunFailed
from bench.memory import peak_allocated
from bench.models import build_tiny_model, build_tokenizer
from bench.rollout import HFSampler
from bench.update import Counters, Learner
from tests.helpers import with_lora

pytestmark = pytest.mark.numerics


def learner_and_batch(*overrides: str):
    cfg = load_config("smoke", ["algorithm=grpo", "sampling.max_new_tokens=4", *overrides])
    tok = build_tokenizer()
    torch.manual_seed(0)
    policy = build_tiny_model(cfg.model, tok).eval()
    reference = build_tiny_model(cfg.model, tok).eval()
    if cfg.model.lora.r:  # adapters (only they train) and the policy with them off
        policy, reference = with_lora(policy, cfg)
    learner = Learner.build(policy, reference, ALGORITHMS.get("grpo"), cfg)
    gen = HFSampler().generate(policy, tok, ["1+2=", "3+4="], 4, 4)
    return learner, learner.make_batch(gen, torch.tensor([0, 1, 2, 0, 1, 0, 0, 3.0]))


def snapshot(learner) -> tuple:
    params = [p.detach().clone() for p in learner.parameters()]
    state = [
        {k: v.clone() if torch.is_tensor(v) else v for k, v in learner.opt.state[p].items()}
        for p in learner.parameters()
    ]
    return params, state, learner.sched.state_dict()


def same(a: tuple, b: tuple) -> bool:
    (pa, sa, ka), (pb, sb, kb) = a, b
    params = all(torch.equal(x, y) for x, y in zip(pa, pb, strict=True))
    state = all(
        x.keys() == y.keys()
        and all(torch.equal(torch.as_tensor(x[k]), torch.as_tensor(y[k])) for k in x)
        for x, y in zip(sa, sb, strict=True)
    )
    return params and state and ka == kb


def nan_gradient(learner):
    """A hook that writes NaN into one parameter's gradient (its handle: ``.remove()``)."""
    return learner.parameters()[2].register_hook(lambda g: torch.full_like(g, float("nan")))


@pytest.mark.parametrize("lora", ["model.lora.r=0", "model.lora.r=4"])
def test_a_non_finite_gradient_skips_the_step_before_the_optimiser_moves(lora):
    learner, batch = learner_and_batch("train.max_skipped_steps=3", lora)
    counters = Counters()
    learner.update(batch, counters)  # a good step first: optimiser state and a schedule
    before = snapshot(learner)
    hook = nan_gradient(learner)
    metrics = learner.update(batch, counters)
    assert counters.skipped_steps == 1 and counters.skipped_in_a_row == 1
    assert same(before, snapshot(learner))  # weights, AdamW state (its step count) and schedule
    assert all(p.grad is None for p in learner.parameters())  # gradients zeroed
    assert metrics["train/grad_norm"] != metrics["train/grad_norm"]  # logged: NaN
    assert learner.undo.buffers is None  # no copy of the weights was ever taken
    learner.update(batch, counters)
    with pytest.raises(
        RunFailed, match="^3 optimiser steps in a row gave a non-finite loss or gradient"
    ):
        learner.update(batch, counters)
    hook.remove()
    assert all(torch.isfinite(p).all() for p in learner.parameters())


def test_a_good_step_after_a_skip_resets_the_count():
    learner, batch = learner_and_batch("train.max_skipped_steps=2")
    counters = Counters()
    hook = nan_gradient(learner)
    learner.update(batch, counters)
    hook.remove()
    learner.update(batch, counters)
    assert (counters.skipped_steps, counters.skipped_in_a_row) == (1, 0)


def poison_after_step(learner) -> None:
    """The optimiser's real step, then one weight goes to inf (a finite step gone wrong)."""
    step = learner.opt.step

    def poisoned(*a, **kw):
        step(*a, **kw)
        with torch.no_grad():
            learner.parameters()[3].view(-1)[0] = float("inf")

    learner.opt.step = poisoned


def test_a_finite_step_that_makes_weights_non_finite_stops_the_run_naming_the_lr():
    learner, batch = learner_and_batch("train.lr=0.002")
    poison_after_step(learner)
    with pytest.raises(
        RunFailed, match=r"finite gradient made the weights non-finite at train\.lr=0\.002"
    ):
        learner.update(batch, Counters())


def test_with_undo_a_step_with_non_finite_weights_is_undone_counted_and_stops_the_run():
    learner, batch = learner_and_batch("train.max_skipped_steps=2", "train.undo_nonfinite=true")
    counters = Counters()
    learner.update(batch, counters)
    before = snapshot(learner)
    poison_after_step(learner)
    learner.update(batch, counters)
    assert counters.skipped_steps == 1 and same(before, snapshot(learner))
    with pytest.raises(RunFailed, match="2 optimiser steps in a row"):
        learner.update(batch, counters)
    assert all(torch.isfinite(p).all() for p in learner.parameters())


def test_the_guard_costs_no_memory_and_the_undo_copy_costs_weights_and_state():
    """Peak bytes torch allocates over a learner's first three steps (AdamW's state is made in
    the first, the undo copy of weights and state in the second, so the third holds what every
    later step holds): the guard against the same steps with every check disabled, and against
    the undo copy."""
    import bench.update as update

    def peak(*overrides: str, checks: bool = True) -> tuple[int, int]:
        learner, batch = learner_and_batch(*overrides)
        saved = update.every, update.weights_finite
        if not checks:
            update.every, update.weights_finite = (lambda flag, world: True), (lambda *a: True)
        try:
            got = peak_allocated(lambda: [learner.update(batch, Counters()) for _ in range(3)])
        finally:
            update.every, update.weights_finite = saved
        weights_and_state = sum(p.numel() * p.element_size() * 3 for p in learner.parameters())
        return got, weights_and_state

    none, weights_and_state = peak(checks=False)
    guard, _ = peak()
    undo, _ = peak("train.undo_nonfinite=true")
    assert abs(guard - none) <= 64 * 1024  # the norms of the check: a few scalars per parameter
    assert undo - none >= 0.9 * weights_and_state  # the copy: weights + AdamW's two moments
