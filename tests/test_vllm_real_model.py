"""The real vLLM engine on the built-in real model (SmolLM2-135M-Instruct), in vLLM's own
environment (`make test-vllm`, where vLLM missing fails instead of skipping): greedy completions
on the task's chat prompts equal HF greedy, and after an optimiser step and a weight push the
engine's log-probs of its own samples equal the policy's."""

from __future__ import annotations

import os

import pytest
import torch

from algorithms import ALGORITHMS
from bench.config import load_config
from bench.models import load_policy
from bench.precision import frozen_reference
from bench.rollout import HFSampler, token_logps
from bench.update import Counters, Learner
from bench.vllm_sampler import VLLMSampler, vllm_available
from tasks import TASKS

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not vllm_available() and not os.environ.get("BENCH_REQUIRE_VLLM"),
        reason="vLLM is not installed in this environment (make test-vllm runs it)",
    ),
]
T = 16  # the preset's budget


@pytest.fixture(scope="module")
def real(tmp_path_factory):
    """(model, tokenizer, task, sampler): SmolLM2 in its chat format and one vLLM engine."""
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    cfg = load_config("smollm2_arithmetic")
    task = TASKS.get(cfg.task)(cfg.task_config())
    model, tok, _ = load_policy(cfg.model, task)
    task.bind_tokenizer(tok)
    return model.eval(), tok, task, VLLMSampler(enforce_eager=True, max_model_len=256)


def test_greedy_vllm_equals_hf_greedy_on_the_real_models_chat_prompts(real):
    model, tok, task, vllm = real
    prompts = [r["prompt"] for r in task.eval_rows()[:8]]
    assert all(p.startswith("<|im_start|>") for p in prompts)  # the chat template
    ours = vllm.generate(model, tok, prompts, 1, T, greedy=True)
    ref = HFSampler().generate(model, tok, prompts, 1, T, greedy=True)
    assert ours.texts == ref.texts
    assert torch.equal(ours.completion_mask, ref.completion_mask)


def test_after_a_step_and_a_push_vllms_log_probs_are_the_policys(real):
    """One GRPO update of the policy, the weights pushed, then vLLM samples at temperature 1 and
    returns each sampled token's log-prob: the policy's own log-probs of those tokens agree to
    1e-4 (both fp32)."""
    from vllm import SamplingParams

    model, tok, task, vllm = real
    cfg = load_config("smollm2_arithmetic", ["algorithm=grpo", "sampling.k=2", "train.lr=1e-4"])
    learner = Learner.build(model, frozen_reference(model, cfg), ALGORITHMS.get("grpo"), cfg)
    prompts = [r["prompt"] for r in task.train_rows()[:4]]
    gen = HFSampler().generate(model, tok, prompts, 2, T, temperature=0.7)
    before = {n: p.clone() for n, p in model.named_parameters()}
    learner.update(learner.make_batch(gen, torch.tensor([1.0, 0, 1, 0, 0, 1, 1, 0])), Counters())
    assert any(not torch.equal(p, before[n]) for n, p in model.named_parameters())
    vllm.weights_changed()
    vllm.sync(model, tok)  # the push
    params = SamplingParams(n=2, temperature=1.0, top_k=-1, max_tokens=T, logprobs=0, seed=0)
    outputs = vllm.llm.generate(
        [{"prompt_token_ids": tok(p, add_special_tokens=False)["input_ids"]} for p in prompts],
        params,
        use_tqdm=False,
    )
    worst = 0.0
    for prompt, out in zip(prompts, outputs, strict=True):
        p_ids = tok(prompt, add_special_tokens=False)["input_ids"]
        for c in out.outputs:
            ids = list(c.token_ids)
            theirs = torch.tensor([lp[t].logprob for lp, t in zip(c.logprobs, ids, strict=True)])
            seq = torch.tensor([p_ids + ids])
            with torch.no_grad():
                mine = token_logps(model, seq, torch.ones_like(seq), len(ids)).logp[0].double()
            worst = max(worst, (mine - theirs.double()).abs().max().item())
    print(f"largest |vLLM - policy| log-prob difference: {worst:.2e}")
    assert worst < 1e-4, worst
