"""vLLM rollouts: conversion of vLLM outputs into a Generation and weight following, checked
against a recording stand-in for the vllm package; plus, where vLLM is installed (its own
environment here: see README), the real engine against HF generate."""

import contextlib
import os
import sys
import types
from types import SimpleNamespace

import pytest
import torch

from bench import lora
from bench.config import ModelConfig, SamplingConfig, load_config
from bench.core.errors import BenchError
from bench.models import build_tiny_model, build_tokenizer
from bench.rollout import HFSampler
from bench.vllm_sampler import VLLMSampler, make_sampler, vllm_available
from tests.helpers import with_lora

SMALL = ModelConfig(hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64)


class FakeLLM:
    """Records what the sampler asks of vLLM; completions are scripted per prompt."""

    def __init__(self, script, **kwargs):
        self.kwargs, self.script, self.calls, self.loaded = kwargs, script, [], []

    def generate(self, requests, params, use_tqdm=True):
        self.calls.append((requests, params))
        per_request = params if isinstance(params, list) else [params] * len(requests)
        return [
            SimpleNamespace(
                outputs=[
                    SimpleNamespace(token_ids=ids, finish_reason=reason)
                    for ids, reason in self.script[tuple(r["prompt_token_ids"])]
                ][: p.n]
            )
            for r, p in zip(requests, per_request, strict=True)
        ]

    def apply_model(self, fn):
        model = SimpleNamespace(load_weights=lambda weights: self.loaded.append(dict(weights)))
        return [fn(model)]

    def collective_rpc(self, method, kwargs):
        """Recent vLLM's in-place reload: taken where the real vllm package is importable (its
        reload module found), as in the vLLM environment once the real-engine test has run."""
        assert method == "reload_weights" and kwargs["is_checkpoint_format"]
        self.loaded.append(dict(kwargs["weights_iterator"]))

    def reset_prefix_cache(self):
        pass


@pytest.fixture
def fake_vllm(monkeypatch):
    holder = {}

    def llm(**kwargs):
        holder["llm"] = FakeLLM(holder["script"], **kwargs)
        return holder["llm"]

    module = types.ModuleType("vllm")
    module.LLM = llm
    module.SamplingParams = lambda **kw: SimpleNamespace(**kw)
    monkeypatch.setitem(sys.modules, "vllm", module)
    return holder


def test_outputs_become_a_generation_in_group_order(fake_vllm):
    tok = build_tokenizer()
    model = build_tiny_model(SMALL, tok)
    eos = tok.eos_token_id
    enc = lambda s: tok(s, add_special_tokens=False)["input_ids"]  # noqa: E731
    fake_vllm["script"] = {
        tuple(enc("1+2=")): [
            (enc("3") + [eos], "stop"),
            (enc("3"), "stop"),
            (enc("12345"), "length"),
        ],
        tuple(enc("33-14+2=")): [
            (enc("21") + [eos], "stop"),
            (enc("2"), "length"),
            ([eos], "stop"),
        ],
    }
    torch.manual_seed(0)
    gen = VLLMSampler(seed=3).generate(model, tok, ["1+2=", "33-14+2="], 3, 5, temperature=0.7)
    assert gen.texts == ["3", "3", "12345", "21", "2", ""]
    # EOS kept (or added when vLLM stopped on it without returning it), masked after it
    assert gen.completion_mask.tolist() == [
        [1, 1, 0, 0, 0],
        [1, 1, 0, 0, 0],
        [1, 1, 1, 1, 1],
        [1, 1, 1, 0, 0],
        [1, 0, 0, 0, 0],
        [1, 0, 0, 0, 0],
    ]
    assert gen.truncated.tolist() == [False, False, True, False, True, False]
    assert gen.completion_ids[1, 1].item() == eos and gen.completion_ids[1, 2] == tok.pad_token_id
    assert torch.equal(gen.prompt_ids[0], gen.prompt_ids[2])  # k rows per prompt, in order
    llm = fake_vllm["llm"]
    requests, params = llm.calls[0]
    assert requests[0]["prompt_token_ids"] == enc("1+2=")  # left padding stripped
    assert (params.n, params.temperature, params.max_tokens, params.top_k) == (3, 0.7, 5, -1)
    assert getattr(params, "seed", None) is None  # a seed shared by all requests correlates them
    assert llm.kwargs["seed"] == 3 and llm.kwargs["dtype"] == "float32"


def test_weights_are_pushed_when_and_only_when_they_change(fake_vllm):
    tok = build_tokenizer()
    model = build_tiny_model(SMALL, tok)
    other = build_tiny_model(SMALL, tok)
    fake_vllm["script"] = {
        tuple(tok("1", add_special_tokens=False)["input_ids"]): [([5], "length")]
    }
    sampler = VLLMSampler()
    sampler.generate(model, tok, ["1"], 1, 1)
    sampler.generate(model, tok, ["1"], 1, 1, greedy=True)
    assert sampler.weight_pushes == 1  # at start only: nothing changed in between
    opt = torch.optim.AdamW(model.parameters(), lr=0.1, fused=True)
    model(input_ids=torch.tensor([[3, 4]])).logits.sum().backward()
    opt.step()  # fused: parameter version counters do not move, the loop reports the update
    sampler.weights_changed()
    sampler.generate(model, tok, ["1"], 1, 1)
    assert sampler.weight_pushes == 2
    pushed = fake_vllm["llm"].loaded[-1]
    name, param = next(iter(model.named_parameters()))
    assert torch.equal(pushed[name], param.detach())  # the stepped weights, not the checkpoint's
    sampler.generate(other, tok, ["1"], 1, 1)  # another model (the reference source)
    assert sampler.weight_pushes == 3
    assert fake_vllm["llm"].calls[1][1].temperature == 0.0  # greedy


def test_engine_choice_and_missing_vllm(monkeypatch):
    assert isinstance(make_sampler(SamplingConfig()), HFSampler)
    monkeypatch.setitem(sys.modules, "vllm", None)  # import vllm -> ImportError
    with pytest.raises(BenchError, match="sampling.engine=vllm needs vLLM"):
        make_sampler(SamplingConfig(engine="vllm"))


# skipped in the main environment; `make test-vllm` sets BENCH_REQUIRE_VLLM=1, where a missing
# engine fails instead (a test that never runs catches nothing)
@pytest.mark.skipif(
    not vllm_available() and not os.environ.get("BENCH_REQUIRE_VLLM"),
    reason="vLLM is not installed in this environment (make test-vllm runs it)",
)
def test_real_vllm_follows_the_policy_weights(monkeypatch):
    """Greedy vLLM rollouts equal HF greedy generate, before and after the weights change."""
    monkeypatch.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", "1")
    monkeypatch.setenv("VLLM_CPU_OMP_THREADS_BIND", "nobind")
    tok = build_tokenizer()
    torch.manual_seed(0)
    model = build_tiny_model(ModelConfig(), tok).eval()
    prompts = ["12+34=", "7*8=", "100-1="]
    vllm_sampler = VLLMSampler(enforce_eager=True, max_model_len=64)
    for _ in range(2):
        ours = vllm_sampler.generate(model, tok, prompts, 2, 8, greedy=True)
        ref = HFSampler().generate(model, tok, prompts, 2, 8, greedy=True)
        assert ours.texts == ref.texts
        assert torch.equal(ours.completion_mask, ref.completion_mask)
        with torch.no_grad():  # a different policy: the engine must follow it
            for p in model.parameters():
                p.add_(0.05 * torch.randn_like(p))
    assert vllm_sampler.weight_pushes == 2
    # the same prompt twice in one call: independent draws, not one random stream reused
    twice = vllm_sampler.generate(model, tok, ["12+34=", "12+34="], 32, 8)
    assert twice.texts[:32] != twice.texts[32:]
    assert len(set(twice.texts[:32])) > 8
    # LoRA: the engine gets the merged weights; with the adapters off (the reference), the base
    cfg = load_config("smoke", ["model.lora.r=8"])
    model, _ = with_lora(model, cfg, seed=1)
    for adapters in (True, False):
        with contextlib.nullcontext() if adapters else lora.adapters_off(model):
            ours = vllm_sampler.generate(model, tok, prompts, 2, 8, greedy=True)
            ref = HFSampler().generate(model, tok, prompts, 2, 8, greedy=True)
        assert ours.texts == ref.texts, adapters
    assert vllm_sampler.weight_pushes == 5  # + the draws above, LoRA on, LoRA off


def test_a_lora_policy_is_pushed_merged_under_the_base_names(fake_vllm):
    tok = build_tokenizer()
    model = build_tiny_model(SMALL, tok).eval()
    names = {n for n, _ in model.named_parameters()}
    model, _ = with_lora(model, load_config("smoke", ["model.lora.r=4"]))
    fake_vllm["script"] = {tuple(tok("1", add_special_tokens=False)["input_ids"]): [([5], "stop")]}
    sampler = VLLMSampler()
    sampler.generate(model, tok, ["1"], 1, 1)
    pushed = fake_vllm["llm"].loaded[-1]
    assert set(pushed) == names  # no adapter or base_layer names reach the engine
    layer = model.model.layers[0].self_attn.q_proj
    a, b = layer.lora_A["default"].weight, layer.lora_B["default"].weight
    want = layer.base_layer.weight + b @ a * layer.scaling["default"]
    torch.testing.assert_close(pushed["model.layers.0.self_attn.q_proj.weight"], want)
    with lora.adapters_off(model):  # the same model object sampling as the reference: the base
        sampler.generate(model, tok, ["1"], 1, 1)
    assert sampler.weight_pushes == 2
    assert torch.equal(fake_vllm["llm"].loaded[-1]["model.layers.0.self_attn.q_proj.weight"],
                       layer.base_layer.weight)  # fmt: skip


def test_unknown_engine_is_a_one_line_error():
    from typer.testing import CliRunner

    from bench.app.cli import app

    res = CliRunner().invoke(app, ["eval", "tiny", "--tasks", "arithmetic", "--engine", "vlm"])
    assert res.exit_code == 2 and "did you mean 'vllm'" in res.output
    assert "Traceback" not in res.output
    res = CliRunner().invoke(app, ["run", "smoke", "sampling.engine=vlm", "--dry-run"])
    assert res.exit_code == 2 and "sampling.engine" in res.output and "Traceback" not in res.output


def test_keys_of_a_sharded_run_become_one_seed_per_request(fake_vllm):
    """A sharded run's prompt keys reach vLLM as per-request seeds (distinct per prompt, so not
    correlated), whichever rank's engine serves the prompt; greedy calls take no seed."""
    tok = build_tokenizer()
    model = build_tiny_model(SMALL, tok)
    enc = lambda s: tok(s, add_special_tokens=False)["input_ids"]  # noqa: E731
    fake_vllm["script"] = {tuple(enc(p)): [([5], "length")] * 2 for p in ("1", "2")}
    sampler = VLLMSampler()
    keys = torch.tensor([-(2**63) + 7, 12345])
    sampler.generate(model, tok, ["1", "2"], 2, 1, keys=keys)
    _, params = fake_vllm["llm"].calls[-1]
    assert [p.seed for p in params] == [7, 12345] and all(p.n == 2 for p in params)
    sampler.generate(model, tok, ["1", "2"], 2, 1, keys=keys, greedy=True)
    assert getattr(fake_vllm["llm"].calls[-1][1], "seed", None) is None
