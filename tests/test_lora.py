"""LoRA (``model.lora``): PEFT adapters in the policy, the reference = the same model with its
adapters off, only adapters (and a value head) trained, saved in PEFT's format, merged on
request, and every algorithm stepping through the one loop with them."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM

from algorithms import ALGORITHMS
from bench import checkpoint, lora
from bench.config import load_config
from bench.evaluate import evaluate_model
from bench.loop import train
from bench.models import _load_pretrained, build_tiny_model, build_tokenizer
from bench.rollout import HFSampler, token_logps
from bench.tracking import client
from bench.update import Counters, Learner
from tests.helpers import with_lora

PROMPTS = ["1+2=", "3+4=", "5+5=", "9+1="]


def tiny(*overrides: str):
    cfg = load_config("smoke", ["model.lora.r=4", "model.num_layers=2", *overrides])
    tok = build_tokenizer()
    torch.manual_seed(0)
    return cfg, build_tiny_model(cfg.model, tok).eval(), tok


def ids(tok) -> torch.Tensor:
    return torch.tensor([tok("12+34=46", add_special_tokens=False)["input_ids"]] * 2)


def test_b_zero_is_the_base_model_and_adapters_off_give_its_logits_exactly():
    cfg, policy, tok = tiny()
    x = ids(tok)
    base = policy(x).logits
    lora.attach(policy, cfg.model.lora, "", bf16=False)
    assert torch.equal(policy(x).logits, base)  # B = 0 at step 0: the policy is the base
    policy, _ = with_lora(policy, cfg)  # B random: the adapters now change the model
    assert (policy(x).logits - base).abs().max() > 1e-3
    with lora.adapters_off(policy):
        assert torch.equal(policy(x).logits, base)
    assert lora.adapters_on(policy)  # switched back on
    trainable = [n for n, p in policy.named_parameters() if p.requires_grad]
    assert trainable and all(".lora_A." in n or ".lora_B." in n for n in trainable)
    # all-linear: q, k, v, o, gate, up, down in each of the 2 layers, an A and a B each
    assert len(trainable) == 2 * 7 * 2


@pytest.mark.parametrize("name", ALGORITHMS.names())
def test_every_algorithm_steps_and_only_adapters_and_the_value_head_change(name):
    cfg, policy, tok = tiny(f"algorithm={name}", "sampling.max_new_tokens=4", "train.lr=0.01")
    policy, reference = with_lora(policy, cfg)
    learner = Learner.build(policy, reference, ALGORITHMS.get(name), cfg)
    before = {n: p.detach().clone() for n, p in learner.model.named_parameters()}
    gen = HFSampler().generate(policy, tok, PROMPTS, 4, 4)
    rewards = torch.tensor([0, 1, 2, 0, 1, 0, 0, 3, 1, 1, 0, 2, 0, 0, 1, 3.0])
    metrics = learner.update(learner.make_batch(gen, rewards), Counters())
    assert all(torch.isfinite(torch.tensor(v)) for v in metrics.values()), metrics
    changed = {n for n, p in learner.model.named_parameters() if not torch.equal(p, before[n])}
    assert changed and all(".lora_" in n or n.startswith("value_head.") for n in changed)
    assert any(".lora_A." in n for n in changed) and any(".lora_B." in n for n in changed)
    trained = {id(p) for p in learner.parameters()}
    assert trained == {id(p) for p in learner.model.parameters() if p.requires_grad}


def test_a_checkpoint_holds_only_the_adapters_the_value_head_and_their_adamw_state():
    cfg, policy, tok = tiny("algorithm=ppo", "sampling.max_new_tokens=4")
    policy, reference = with_lora(policy, cfg)
    learner = Learner.build(policy, reference, ALGORITHMS.get("ppo"), cfg)
    gen = HFSampler().generate(policy, tok, PROMPTS, 4, 4)
    rewards = torch.tensor([0, 1, 2, 0, 1, 0, 0, 3, 1, 1, 0, 2, 0, 0, 1, 3.0])
    learner.update(learner.make_batch(gen, rewards), Counters())
    state = checkpoint._weights_state(learner)
    trained = {n for n, p in learner.model.named_parameters() if p.requires_grad}
    assert set(state["model"]) == trained and len(trained) == 2 * 7 * 2 + 2
    assert set(state["optim"]["state"]) == trained


def test_the_reference_log_probs_are_the_base_models():
    cfg, policy, tok = tiny("algorithm=grpo", "sampling.max_new_tokens=4")
    gen = HFSampler().generate(policy, tok, PROMPTS[:2], 2, 4)
    base = token_logps(policy, gen.input_ids, gen.attention_mask, 4).logp
    policy, reference = with_lora(policy, cfg)
    learner = Learner.build(policy, reference, ALGORITHMS.get("grpo"), cfg)
    batch = learner.make_batch(gen, torch.tensor([0, 1, 1, 0.0]))
    mask = gen.completion_mask.bool()
    torch.testing.assert_close(batch.ref_logp[mask], base[mask], rtol=0, atol=1e-6)
    adapted = token_logps(policy, gen.input_ids, gen.attention_mask, 4).logp
    assert (adapted - batch.ref_logp)[mask].abs().max() > 1e-4  # the adapters act


def test_saved_adapter_and_merged_weights_give_the_adapter_models_logits(tmp_path):
    cfg, policy, tok = tiny()
    policy.save_pretrained(tmp_path / "base")
    tok.save_pretrained(tmp_path / "base")
    policy = lora.attach(policy, cfg.model.lora, str(tmp_path / "base"), bf16=False)
    policy, _ = with_lora(policy, cfg)
    x = ids(tok)
    want = policy(x).logits
    lora.save_adapter(policy, tmp_path / "adapter")
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert config["r"] == 4 and config["base_model_name_or_path"] == str(tmp_path / "base")
    fresh = AutoModelForCausalLM.from_pretrained(tmp_path / "base")  # PEFT itself reads it
    peft = PeftModel.from_pretrained(fresh, tmp_path / "adapter").eval()
    torch.testing.assert_close(peft(x).logits, want, rtol=0, atol=1e-5)
    lora.save_merged(policy, tmp_path / "merged")
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged").eval()
    torch.testing.assert_close(merged(x).logits, want, rtol=0, atol=1e-5)
    tok.save_pretrained(tmp_path / "adapter")
    loaded, _ = _load_pretrained(str(tmp_path / "adapter"))  # what bench eval reads
    torch.testing.assert_close(loaded(x).logits, want, rtol=0, atol=1e-5)


def test_bf16_mixed_holds_the_base_in_bf16_and_adapters_and_adamw_in_fp32():
    cfg, policy, tok = tiny(
        "algorithm=grpo", "train.precision=bf16-mixed", "sampling.max_new_tokens=4"
    )
    policy, reference = with_lora(policy, cfg)
    learner = Learner.build(policy, reference, ALGORITHMS.get("grpo"), cfg)
    gen = HFSampler().generate(policy, tok, PROMPTS, 4, 4)
    rewards = torch.tensor([0, 1, 2, 0, 1, 0, 0, 3, 1, 1, 0, 2, 0, 0, 1, 3.0])
    learner.update(learner.make_batch(gen, rewards), Counters())
    for name, p in policy.named_parameters():
        want = torch.float32 if ".lora_" in name else torch.bfloat16
        assert p.dtype == want, name
    state = [t for p in learner.parameters() for t in learner.opt.state[p].values()]
    assert state and all(t.dtype == torch.float32 for t in state if t.dim())


def test_gradient_checkpointing_gives_the_same_adapter_gradient():
    grads = []
    for ckpt in ("false", "true"):
        cfg, policy, tok = tiny(
            "algorithm=gvpo", "sampling.max_new_tokens=4", f"model.gradient_checkpointing={ckpt}"
        )
        policy, reference = with_lora(policy, cfg)
        learner = Learner.build(policy, reference, ALGORITHMS.get("gvpo"), cfg)
        torch.manual_seed(1)
        gen = HFSampler().generate(policy, tok, PROMPTS, 4, 4)
        rewards = torch.tensor([0, 1, 2, 0, 1, 0, 0, 3, 1, 1, 0, 2, 0, 0, 1, 3.0])
        learner.backward(learner.make_batch(gen, rewards))
        grads.append([p.grad.clone() for p in learner.parameters()])
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


def test_a_lora_run_saves_its_adapter_and_bench_eval_reads_the_run_and_the_merged_folder(
    tracking_uri,
):
    args = ["model.lora.r=4", "model.lora.save_merged=true", "train.save_checkpoint=true"]
    done = train(load_config("smoke", args), tracking_uri=tracking_uri)
    tags = client(tracking_uri).get_run(done["run_id"]).data.tags
    folder = Path(tags["checkpoint"])
    assert (folder / "adapter_model.safetensors").is_file()
    assert not (folder / "model.safetensors").exists()  # the adapter, not the whole model
    assert tags["checkpoint.merged"] == str(folder / "merged")
    accuracy = []
    for what in (done["run_id"], tags["checkpoint.merged"]):
        out = evaluate_model(
            what, ["arithmetic"], k=1, max_new_tokens=8, limit=10, tracking_uri=tracking_uri
        )
        accuracy.append(json.loads(out["json"].read_text())["metrics"])
    assert accuracy[0]["eval/arithmetic/accuracy"] == accuracy[1]["eval/arithmetic/accuracy"]


def test_sampling_from_the_reference_samples_the_base_model(tracking_uri):
    """sampling.source=mixture with LoRA: the reference's half of each group comes from the
    policy with its adapters off, and its behaviour log-probs are the base model's."""
    cfg, policy, tok = tiny("algorithm=grpo", "sampling.max_new_tokens=4")
    policy, reference = with_lora(policy, cfg)
    base = build_tiny_model(cfg.model, tok).eval()  # the same seed: the base weights
    with lora.sampling_model(reference) as model:
        assert model is policy and not lora.adapters_on(policy)
        torch.manual_seed(3)
        got = HFSampler().generate(model, tok, PROMPTS, 2, 4)
    assert lora.adapters_on(policy)
    torch.manual_seed(3)
    want = HFSampler().generate(base, tok, PROMPTS, 2, 4)
    assert got.texts == want.texts
    done = train(
        load_config("smoke", ["model.lora.r=4", "sampling.source=mixture", "train.steps=2"]),
        tracking_uri=tracking_uri,
    )
    assert done["perf/skipped_steps"] == 0 and math.isfinite(done["train/loss"])
