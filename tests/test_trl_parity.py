"""Cross-checks against TRL's own loss code (pinned trl==1.16.0 in the dev extra).

TRL 1.16 defaults differ from the papers (loss_type="dapo", beta=0.0, use_bias_correction_kl=
True): they are set explicitly here. Models are in eval mode (TRL divides by the gradient
accumulation steps in train mode). Inputs include off-policy old and reference log-probs.
"""

from __future__ import annotations

import pytest
import torch

from algorithms import ALGORITHMS
from bench.config import ModelConfig
from bench.core.batch import PolicyOutput, RolloutBatch
from bench.models import build_tiny_model, build_tokenizer
from bench.rollout import token_logps

trl = pytest.importorskip("trl", reason="trl is not installed (pip install -e '.[dev]')")
from datasets import Dataset  # noqa: E402
from trl.trainer.utils import nanstd  # noqa: E402

pytestmark = pytest.mark.numerics  # rounding-sensitive: also run on a second kernel set

TINY = ModelConfig(hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64)
G, K, P, T = 3, 4, 5, 6  # groups, group size, prompt length, completion length


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny_qwen2")
    tok = build_tokenizer()
    torch.manual_seed(0)
    build_tiny_model(TINY, tok).save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)


def rollout(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    B = G * K
    prompt_ids = torch.randint(3, 200, (B // K, P), generator=g).repeat_interleave(K, 0)
    completion_ids = torch.randint(3, 200, (B, T), generator=g)
    lengths = torch.randint(2, T + 1, (B,), generator=g)
    cmask = (torch.arange(T)[None] < lengths[:, None]).long()
    rewards = torch.randint(0, 3, (B,), generator=g).float()
    return prompt_ids, completion_ids, cmask, rewards, g


def grpo_trainer(model_dir, tmp_path, **kw):
    args = trl.GRPOConfig(
        bf16=False,
        output_dir=str(tmp_path),
        report_to="none",
        use_cpu=True,
        num_generations=K,
        per_device_train_batch_size=G * K,
        max_completion_length=T,
        **{"epsilon": 0.2, **kw},
    )
    ds = Dataset.from_dict({"prompt": ["1+1="] * 4})
    trainer = trl.GRPOTrainer(
        model=model_dir,
        reward_funcs=lambda prompts, completions, **_: [0.0] * len(prompts),
        args=args,
        train_dataset=ds,
    )
    trainer.model.eval()
    return trainer


GROUP = dict(scale_rewards="group")  # TRL's group-std advantages, as GRPO's paper


@pytest.mark.parametrize(
    ("ours", "overrides", "trl_kwargs"),
    [
        (
            "grpo",
            {},
            dict(loss_type="grpo", beta=0.04, use_bias_correction_kl=False, **GROUP),
        ),
        ("dr_grpo", {}, dict(loss_type="dr_grpo", beta=0.0, scale_rewards="none")),
        ("dapo", {}, dict(loss_type="dapo", beta=0.0, epsilon_high=0.28, **GROUP)),
        # sequence ratios move ~0.1 here: a wider clip than the paper's 3e-4/4e-4 keeps some
        # sequences unclipped, so both branches of the min are compared
        (
            "gspo",
            dict(eps_low=0.05, eps_high=0.08),
            dict(
                loss_type="grpo",
                importance_sampling_level="sequence",
                epsilon=0.05,
                epsilon_high=0.08,
                beta=0.0,
                **GROUP,
            ),
        ),  # fmt: skip
        # a cap the off-policy ratios here reach (the default 5.0 they never do)
        ("cispo", dict(eps_max=1.2), dict(loss_type="cispo", epsilon_high=1.2, beta=0.0, **GROUP)),
        ("sapo", {}, dict(loss_type="sapo", beta=0.0, **GROUP)),
    ],
)
def test_grpo_losses_equal_trl(ours, overrides, trl_kwargs, model_dir, tmp_path):
    trainer = grpo_trainer(model_dir, tmp_path, **trl_kwargs)
    prompt_ids, completion_ids, cmask, rewards, g = rollout()
    ids = torch.cat([prompt_ids, completion_ids], 1)
    attn = torch.cat([torch.ones_like(prompt_ids), cmask], 1)
    logp = token_logps(trainer.model, ids, attn, T).logp
    old = logp.detach() + 0.3 * torch.randn(logp.shape, generator=g)  # off-policy: ratios clip
    ref = logp.detach() + 0.5 * torch.randn(logp.shape, generator=g)
    algo = ALGORITHMS.get(ours)
    group_ids = torch.arange(G).repeat_interleave(K)
    # TRL's advantages (grpo_trainer._generate_and_score_completions), with its own nanstd
    grouped = rewards.view(G, K)
    adv = rewards - grouped.mean(1).repeat_interleave(K)
    if trl_kwargs["scale_rewards"] == "group":
        adv = adv / (nanstd(grouped, dim=1).repeat_interleave(K) + 1e-4)
    inputs = dict(
        prompt_ids=prompt_ids,
        prompt_mask=torch.ones_like(prompt_ids),
        completion_ids=completion_ids,
        completion_mask=cmask,
        advantages=adv,
        old_per_token_logps=old,
        ref_per_token_logps=ref,
        num_items_in_batch=cmask.sum().float(),
    )
    expected = trainer._compute_loss(trainer.model, inputs)
    batch = RolloutBatch(
        mask=cmask.float(), old_logp=old, rewards=rewards, group_ids=group_ids, ref_logp=ref
    )
    loss, metrics = algo.loss(batch, PolicyOutput(logp=logp), algo.config(**overrides))
    assert abs(loss.item() - expected.item()) <= 1e-6, (loss.item(), expected.item())
    if "policy/clipfrac" in metrics:  # both clipped and unclipped tokens are exercised
        assert 0 < metrics["policy/clipfrac"] < 1
    g_ours = torch.autograd.grad(loss, trainer.model.model.embed_tokens.weight, retain_graph=True)[
        0
    ]
    g_trl = torch.autograd.grad(expected, trainer.model.model.embed_tokens.weight)[0]
    assert torch.allclose(g_ours, g_trl, atol=1e-6)


def test_dpo_loss_equals_trl(model_dir, tmp_path):
    args = trl.DPOConfig(
        output_dir=str(tmp_path),
        bf16=False,
        report_to="none",
        use_cpu=True,
        beta=0.1,
        loss_type=["sigmoid"],
        per_device_train_batch_size=4,
    )
    ds = Dataset.from_dict({"prompt": ["1+1="] * 4, "chosen": ["2"] * 4, "rejected": ["3"] * 4})
    trainer = trl.DPOTrainer(model=model_dir, args=args, train_dataset=ds)
    trainer.model.eval()
    with torch.no_grad():  # move the policy away from the reference
        g = torch.Generator().manual_seed(3)
        for p in trainer.model.parameters():
            p.add_(0.5 * torch.randn(p.shape, generator=g))
    prompt_ids, completion_ids, cmask, _, _ = rollout(seed=1)
    n = 4  # pairs: rows [chosen_0..3, rejected_0..3], the same prompt for a pair
    prompts = prompt_ids[:n].repeat(2, 1)
    ids = torch.cat([prompts, completion_ids[: 2 * n]], 1)
    cm = cmask[: 2 * n]
    attn = torch.cat([torch.ones_like(prompts), cm], 1)
    inputs = dict(
        input_ids=ids,
        attention_mask=attn,
        completion_mask=torch.cat([torch.zeros_like(prompts), cm], 1),
    )
    expected = trainer._compute_loss(trainer.model, inputs, return_outputs=False)
    logp = token_logps(trainer.model, ids, attn, T).logp
    with torch.no_grad():
        ref = token_logps(trainer.ref_model, ids, attn, T).logp
    # our online pairs: each pair is a group of two with rewards 1 (chosen) and 0 (rejected)
    order = torch.stack([torch.arange(n), torch.arange(n) + n], 1).reshape(-1)
    batch = RolloutBatch(
        mask=cm[order].float(),
        old_logp=logp.detach()[order],
        rewards=torch.tensor([1.0, 0.0] * n),
        group_ids=torch.arange(n).repeat_interleave(2),
        ref_logp=ref[order],
    )
    algo = ALGORITHMS.get("dpo")
    loss, _ = algo.loss(batch, PolicyOutput(logp=logp[order]), algo.config())
    assert abs(loss.item() - expected.item()) <= 1e-6, (loss.item(), expected.item())
    assert abs(loss.item() - 0.6931) > 1e-3  # policy != reference: not the trivial log 2


def test_rloo_loss_equals_trl(model_dir, tmp_path):
    """TRL's RLOOTrainer: a k1 KL penalty summed per sequence in the reward (old vs reference),
    the leave-one-out baseline, a clipped ratio of whole-sequence probabilities, the mean over
    sequences. Its advantages are made in ``_generate_and_score_completions`` (which needs a
    generation): written out here as TRL computes them."""
    args = trl.RLOOConfig(
        output_dir=str(tmp_path),
        bf16=False,
        report_to="none",
        use_cpu=True,
        num_generations=K,
        per_device_train_batch_size=G * K,
        max_completion_length=T,
        beta=0.05,
        epsilon=0.2,
    )
    ds = Dataset.from_dict({"prompt": ["1+1="] * 4})
    reward = lambda prompts, completions, **_: [0.0] * len(prompts)  # noqa: E731
    trainer = trl.RLOOTrainer(model=model_dir, reward_funcs=reward, args=args, train_dataset=ds)
    trainer.model.eval()
    prompt_ids, completion_ids, cmask, rewards, g = rollout(seed=2)
    ids = torch.cat([prompt_ids, completion_ids], 1)
    attn = torch.cat([torch.ones_like(prompt_ids), cmask], 1)
    logp = token_logps(trainer.model, ids, attn, T).logp
    old = logp.detach() + 0.1 * torch.randn(logp.shape, generator=g)  # sequence ratios clip
    ref = logp.detach() + 0.5 * torch.randn(logp.shape, generator=g)
    # TRL (rloo_trainer._generate_and_score_completions), beta != 0, num_generations > 1:
    kl = ((old - ref) * cmask).sum(-1)
    penalised = rewards - 0.05 * kl
    grouped = penalised.view(-1, K)
    baselines = (grouped.sum(1, keepdim=True) - grouped) / (K - 1)
    adv = penalised - baselines.view(-1)
    inputs = dict(
        prompt_ids=prompt_ids,
        prompt_mask=torch.ones_like(prompt_ids),
        completion_ids=completion_ids,
        completion_mask=cmask,
        old_logps=(old * cmask).sum(1),
        advantages=adv,
    )
    expected = trainer._compute_loss(trainer.model, inputs)
    batch = RolloutBatch(
        mask=cmask.float(),
        old_logp=old,
        rewards=rewards,
        group_ids=torch.arange(G).repeat_interleave(K),
        ref_logp=ref,
    )
    algo = ALGORITHMS.get("rloo")
    loss, _ = algo.loss(batch, PolicyOutput(logp=logp), algo.config())
    assert abs(loss.item() - expected.item()) <= 1e-6, (loss.item(), expected.item())
    ratio = torch.exp(((logp.detach() - old) * cmask).sum(-1))
    outside = ((ratio - 1).abs() > 0.2).float().mean()
    assert 0 < outside < 1  # clipped and unclipped sequences both exercised
    weight = trainer.model.model.embed_tokens.weight
    g_ours = torch.autograd.grad(loss, weight, retain_graph=True)[0]
    g_trl = torch.autograd.grad(expected, weight)[0]
    assert torch.allclose(g_ours, g_trl, atol=1e-6)


@pytest.mark.slow
def test_throughput_benchmark_runs_both_trainers(tmp_path):
    """benchmarks/grpo_vs_trl.py end to end at toy size (a smoke check that it keeps working
    against the pinned TRL, not a timing): both trainers take their steps and it prints the
    two ratios."""
    import os
    import re
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).parents[1] / "benchmarks" / "grpo_vs_trl.py"
    args = ["--steps", "2", "--repeats", "1", "--prompts", "2", "--warmstart-steps", "0"]
    proc = subprocess.run(
        [sys.executable, str(script), *args],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
        env={**os.environ, "BENCH_RESULTS": str(tmp_path)},
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    for name in ("grpo", "trl_grpo", "gvpo"):
        assert re.search(rf"^{name} +\d+\.\d+ steps/s +\(\d+\.\d+ s for 2 steps", proc.stdout, re.M)
    ratio = re.search(r"ours/TRL GRPO throughput ratio: (\d+\.\d+)x", proc.stdout)
    step_ratio = re.search(r"GVPO/GRPO step-time ratio: +(\d+\.\d+)", proc.stdout)
    assert ratio and float(ratio.group(1)) > 0 and step_ratio and float(step_ratio.group(1)) > 0
