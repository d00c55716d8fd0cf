"""Mixed precision done right (fp32 master weights, bf16 autocast compute), the refusal of AdamW
on bf16 weights, and activation checkpointing: same gradients, fewer saved bytes, sampler intact."""

import copy
import subprocess
import sys

import pytest
import torch

from algorithms import ALGORITHMS
from bench.config import load_config
from bench.core.errors import BenchError
from bench.memory import SavedBytes, enable_checkpointing
from bench.models import build_tiny_model, build_tokenizer
from bench.rollout import HFSampler, _has_kv_cache
from bench.update import Counters, Learner

pytestmark = pytest.mark.numerics  # rounding-sensitive: also run on a second kernel set

PROMPTS = ["1+2=", "33-14+2=", "9", "7+7="]


def setup(overrides=(), algorithm="grpo"):
    cfg = load_config("smoke", [f"algorithm={algorithm}", "sampling.max_new_tokens=5", *overrides])
    tok = build_tokenizer()
    torch.manual_seed(0)
    policy = build_tiny_model(cfg.model, tok).eval()
    reference = copy.deepcopy(policy).requires_grad_(False)
    return cfg, tok, policy, reference


def batch_for(learner, tok, seed=0):
    torch.manual_seed(seed)
    gen = HFSampler().generate(learner.policy, tok, PROMPTS, 4, 5)
    rewards = torch.tensor([0, 1, 2, 0, 1, 0, 0, 1, 0, 3, 0, 1, 2, 2, 0, 1], dtype=torch.float32)
    return learner.make_batch(gen, rewards)


def changed_fraction(before, after) -> float:
    n = sum(b.numel() for b in before)
    return sum((a != b).sum().item() for a, b in zip(after, before, strict=True)) / n


def test_bf16_mixed_at_lr_1e_6_moves_most_weights_where_pure_bf16_does_not():
    cfg, tok, policy, reference = setup(["train.precision=bf16-mixed", "train.lr=1e-6"])
    learner = Learner.build(policy, reference, ALGORITHMS.get("grpo"), cfg)
    before = [p.detach().clone() for p in learner.parameters()]
    for step in range(3):
        learner.update(batch_for(learner, tok, step), Counters())
    assert all(p.dtype == torch.float32 for p in learner.parameters())  # fp32 master weights
    assert all(s.dtype == torch.float32 for st in learner.opt.state.values() for s in st.values())
    mixed = changed_fraction(before, [p.detach() for p in learner.parameters()])
    # the same three steps with the weights themselves in bf16: most updates round away
    cfg32, tok, policy, reference = setup(["train.lr=1e-6"])
    pure = Learner.build(
        policy.to(torch.bfloat16), reference.to(torch.bfloat16), ALGORITHMS.get("grpo"), cfg32
    )
    before = [p.detach().clone() for p in pure.parameters()]
    for step in range(3):
        pure.update(batch_for(pure, tok, step), Counters())
    lost = changed_fraction(before, [p.detach() for p in pure.parameters()])
    assert mixed > 0.9 and lost < 0.2, (mixed, lost)


def test_bf16_mixed_gradients_agree_with_fp32_to_bf16_tolerance():
    grads = {}
    for precision in ("fp32", "bf16-mixed"):
        cfg, tok, policy, reference = setup([f"train.precision={precision}"], "gvpo")
        learner = Learner.build(policy, reference, ALGORITHMS.get("gvpo"), cfg)
        batch = batch_for(learner, tok)
        learner.opt.zero_grad()
        learner.backward(batch)
        grads[precision] = torch.cat([p.grad.flatten() for p in learner.parameters()])
    a, b = grads["fp32"], grads["bf16-mixed"]
    assert torch.nn.functional.cosine_similarity(a, b, dim=0) > 0.99
    assert (a - b).norm() / a.norm() < 0.1
    assert not torch.equal(a, b)  # bf16 compute really happened


def test_bf16_weights_without_bf16_mixed_are_refused_with_one_line():
    with pytest.raises(BenchError, match="train.precision=bf16-mixed"):
        load_config("smoke", ["model.dtype=bfloat16"])
    load_config("smoke", ["model.dtype=bfloat16", "train.precision=bf16-mixed"])  # fine
    out = subprocess.run(
        [sys.executable, "-m", "bench.app.cli", "run", "smoke", "model.dtype=bfloat16"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 2 and "Traceback" not in out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "model.dtype=bfloat16" in lines[0] and "bf16-mixed" in lines[0]


def test_activation_checkpointing_same_gradients_fewer_saved_bytes_sampler_unchanged():
    result = {}
    for ckpt in (False, True):
        cfg, tok, policy, reference = setup([], "ppo")
        if ckpt:
            assert enable_checkpointing(policy) == cfg.model.num_layers
        learner = Learner.build(policy, reference, ALGORITHMS.get("ppo"), cfg)
        torch.nn.init.normal_(learner.value_head.weight, std=0.5)
        batch = batch_for(learner, tok)
        learner.opt.zero_grad()
        saved = SavedBytes(exclude=learner.parameters())
        with saved():
            learner.backward(batch)
        grads = [p.grad.clone() for p in learner.parameters()]
        torch.manual_seed(3)
        tokens = HFSampler().generate(policy, tok, PROMPTS, 2, 6).completion_ids
        result[ckpt] = (grads, saved.bytes, tokens, _has_kv_cache(policy))
    (g0, b0, t0, kv0), (g1, b1, t1, kv1) = result[False], result[True]
    for a, b in zip(g0, g1, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)
    assert b1 < b0, (b0, b1)
    assert kv0 and kv1 and torch.equal(t0, t1)  # the sampler keeps its KV cache and its draws
