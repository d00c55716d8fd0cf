"""Micro-batches give the one-pass gradient exactly: for every registered algorithm (float64,
tiny model), splits of one sequence, half a group, mixed sizes and a token budget accumulate the
same gradient (to 1e-9) and report the same loss and metrics as one forward over the minibatch."""

import copy

import pytest
import torch
from transformers.models.qwen2.modeling_qwen2 import Qwen2RMSNorm

from algorithms import ALGORITHMS
from bench.accumulate import micro_batches
from bench.config import load_config
from bench.loop import train
from bench.models import build_tiny_model, build_tokenizer
from bench.rollout import HFSampler
from bench.update import Learner
from tests.helpers import with_lora

pytestmark = pytest.mark.numerics  # rounding-sensitive: also run on a second kernel set

K, PROMPTS = 4, ["1+2=", "33-14+2=", "9", "7+7="]


@pytest.fixture(autouse=True)
def float64_norms(monkeypatch):
    """Qwen2's RMSNorm computes in float32 whatever the model's dtype, so a float64 model's
    gradient is float32-accurate where a shared prompt's norm sums the upstream gradients of
    its k rows (one packed forward) instead of taking them one by one (a split group): ~1e-7
    relative. The norm in the model's dtype isolates the accumulation maths at 1e-9."""

    def forward(self, h):
        return self.weight * (
            h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.variance_epsilon)
        )

    monkeypatch.setattr(Qwen2RMSNorm, "forward", forward)


def learner_and_batch(name: str, overrides=(), lora: bool = False):
    cfg = load_config("smoke", [f"algorithm={name}", "sampling.max_new_tokens=5", *overrides])
    tok = build_tokenizer()
    torch.manual_seed(0)
    policy = build_tiny_model(cfg.model, tok).double().eval()
    if lora:  # the reference: the same model with its (random, so non-zero) adapters off
        cfg = load_config(
            "smoke",
            [f"algorithm={name}", "sampling.max_new_tokens=5", "model.lora.r=4", *overrides],
        )
        policy, reference = with_lora(policy, cfg)
    else:
        reference = copy.deepcopy(policy)
        with torch.no_grad():  # a reference that differs from the policy: non-zero log-ratios
            for p in reference.parameters():
                p.add_(0.05 * torch.randn_like(p))
    learner = Learner.build(policy, reference, ALGORITHMS.get(name), cfg)
    if learner.value_head is not None:  # a critic that says something
        torch.nn.init.normal_(learner.value_head.weight, std=0.5)
    gen = HFSampler().generate(policy, tok, PROMPTS, K, 5)
    rewards = torch.tensor([0, 1, 2, 0, 1, 1, 1, 1, 0, 3, 0, 1, 2, 2, 0, 1], dtype=torch.float64)
    batch = learner.make_batch(gen, rewards)
    if learner.algo.select is not None:  # the rows the loss uses, as Learner.update does
        batch = batch.select(learner.algo.select(batch, learner.algo_cfg))
    return learner, batch


def gradient(learner, batch, parts=None):
    learner.opt.zero_grad(set_to_none=True)
    loss, metrics, _, _ = learner.backward(batch, parts)
    grads = [p.grad.clone() for p in learner.parameters()]
    return loss.item(), metrics, grads


def splits(B: int) -> dict[str, list[torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    perm = torch.randperm(B, generator=g)
    sizes, mixed, at = [1, 3, 2, 5, 1, 4], [], 0
    for n in sizes * B:
        if at >= B:
            break
        mixed.append(perm[at : at + n])
        at += n
    return {
        "one sequence each": [torch.tensor([i]) for i in range(B)],
        "half a group each": list(torch.arange(B).split(K // 2)),
        "mixed sizes, shuffled rows": mixed,
    }


def assert_every_split_gives_the_one_pass_gradient(learner, batch) -> list[torch.Tensor]:
    loss, metrics, expected = gradient(learner, batch)
    assert any(g.abs().sum() > 0 for g in expected)
    for label, parts in splits(batch.size).items():
        got_loss, got_metrics, got = gradient(learner, batch, parts)
        assert got_loss == pytest.approx(loss, rel=1e-12, abs=1e-12), label
        assert got_metrics == pytest.approx(metrics, rel=1e-9, abs=1e-12), label
        for a, b in zip(got, expected, strict=True):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-9, msg=label)
    return expected


@pytest.mark.parametrize("name", ALGORITHMS.names())
def test_any_split_accumulates_the_one_pass_gradient(name):
    assert_every_split_gives_the_one_pass_gradient(*learner_and_batch(name))


@pytest.mark.parametrize("name", ["gvpo", "grpo", "dpo", "ppo"])
def test_with_lora_any_split_accumulates_the_one_pass_adapter_gradient(name):
    learner, batch = learner_and_batch(name, lora=True)
    trained = [n for n, p in learner.model.named_parameters() if p.requires_grad]
    assert all(".lora_" in n or "value_head" in n for n in trained)
    assert len(assert_every_split_gives_the_one_pass_gradient(learner, batch)) == len(trained)


@pytest.mark.parametrize("name", ["gvpo", "grpo", "ppo"])
def test_a_token_budget_splits_and_still_gives_the_one_pass_gradient(name):
    learner, batch = learner_and_batch(name)
    _, _, expected = gradient(learner, batch)
    budgeted, _ = learner_and_batch(name, ["train.micro_batch_tokens=20"])
    parts = micro_batches(batch.attention_mask.sum(-1).tolist(), 20)
    assert len(parts) > 2
    _, _, got = gradient(budgeted, batch)
    for a, b in zip(got, expected, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-9)


def test_micro_batches_respect_the_budget_and_cover_every_row_once():
    tokens = [7, 3, 12, 5, 5, 1, 9, 30]
    parts = micro_batches(tokens, 12)
    assert sorted(torch.cat(parts).tolist()) == list(range(len(tokens)))
    for p in parts:
        assert sum(tokens[i] for i in p) <= 12 or len(p) == 1  # a longer sequence goes alone
    assert [len(p) for p in micro_batches(tokens, 1)] == [1] * len(tokens)
    assert len(micro_batches(tokens, 0)) == 1 and len(micro_batches(tokens, 1000)) == 1


@pytest.mark.slow
def test_a_run_with_micro_batches_logs_what_the_plain_run_logs(tracking_uri):
    plain = train(load_config("smoke", ["algorithm=gvpo"]), tracking_uri=tracking_uri)
    cut = train(
        load_config("smoke", ["algorithm=gvpo", "train.micro_batch_tokens=16"]),
        tracking_uri=tracking_uri,
    )
    for key in ("train/loss", "train/grad_norm", "train/reward/mean", "eval/arithmetic/accuracy"):
        assert cut[key] == pytest.approx(plain[key], rel=1e-4, abs=1e-6), key
