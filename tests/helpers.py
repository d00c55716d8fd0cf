"""Random rollout batches for algorithm tests; tiny models of other architectures."""

from __future__ import annotations

import torch

from bench.core.batch import PolicyOutput, RolloutBatch


def random_batch(groups: int, k: int, T: int, seed: int = 0, dtype=torch.float64):
    """(batch, logp leaf): behaviour/reference log-probs near the policy's, binary-ish rewards."""
    g = torch.Generator().manual_seed(seed)
    B = groups * k
    logp = (-torch.rand(B, T, generator=g, dtype=dtype) * 2).requires_grad_(True)
    old = logp.detach() + 0.1 * torch.randn(B, T, generator=g, dtype=dtype)
    ref = logp.detach() + 0.3 * torch.randn(B, T, generator=g, dtype=dtype)
    lengths = torch.randint(1, T + 1, (B,), generator=g)
    mask = (torch.arange(T)[None, :] < lengths[:, None]).to(dtype)
    rewards = torch.randint(0, 3, (B,), generator=g).to(dtype)
    values = torch.randn(B, T, generator=g, dtype=dtype)
    batch = RolloutBatch(
        mask=mask,
        old_logp=old,
        rewards=rewards,
        group_ids=torch.arange(groups).repeat_interleave(k),
        ref_logp=ref,
        values=values,
    )
    return batch, logp


def output(logp, values=None) -> PolicyOutput:
    """Policy output on a random batch; values move a little from the batch's old values."""
    if values is None:
        values = torch.cos(logp * 3)  # depends on logp, so masked/permuted inputs stay consistent
    return PolicyOutput(logp=logp, entropy=torch.zeros_like(logp), values=values)


ARCHS = {  # tiny configs of other architectures: what a real checkpoint brings to the same code
    "llama": {},
    "gemma2": {},  # sliding-window layers, logit soft-capping (eager attention only)
    "phi3": {},  # fused qkv
    "qwen3_moe": {},  # mixture-of-experts MLP
    "gpt2": {"n_embd": 32, "n_layer": 2, "n_head": 2, "n_positions": 128},  # learned positions
    "gpt_neox": {"num_key_value_heads": None, "head_dim": None},
}


def arch_model(arch: str, tok, attn_implementation: str | None = None, seed: int = 0):
    """A randomly initialised tiny model of ``arch`` (eval mode) for the byte-level tokenizer,
    built from a transformers config: no download."""
    from transformers import AutoConfig, AutoModelForCausalLM

    ids = {"pad_token_id": tok.pad_token_id, "eos_token_id": tok.eos_token_id}
    base = {
        "vocab_size": len(tok),
        "hidden_size": 32,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "num_key_value_heads": 1,
        "head_dim": 16,
        "intermediate_size": 64,
        "max_position_embeddings": 128,
        "bos_token_id": tok.eos_token_id,
        **ids,
    }
    kw = {"vocab_size": len(tok), **ids, **ARCHS[arch]} if arch == "gpt2" else base | ARCHS[arch]
    kw = {k: v for k, v in kw.items() if v is not None}
    torch.manual_seed(seed)
    config = AutoConfig.for_model(arch, **kw)
    impl = {"attn_implementation": attn_implementation} if attn_implementation else {}
    return AutoModelForCausalLM.from_config(config, **impl).eval()


def bench(*args, results, wait=True, timeout=300, env=None):
    """`bench ARGS` as a real subprocess with its results under ``results`` (no progress bars),
    in ``env`` (default: this process's): the finished process, or the running one when
    ``wait`` is False."""
    import os
    import subprocess
    import sys

    env = {**(os.environ if env is None else env), "BENCH_PROGRESS": "0"}
    env["BENCH_RESULTS"] = str(results)
    cmd = [sys.executable, "-m", "bench.app.cli", *args]
    if wait:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    return subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        preexec_fn=interruptible,
    )


def interruptible() -> None:
    """Ctrl-C as a terminal delivers it: a shell's background job (make test-all &) starts its
    children with SIGINT ignored, and Python then installs no KeyboardInterrupt handler; a test
    that sends SIGINT gives its process the default disposition back."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)


# wall-clock metrics differ between any two runs; every other metric of a deterministic run
# is compared exactly
CLOCK = frozenset(
    {"perf/step_s", "perf/tokens_per_s", "perf/elapsed_s", "perf/wall_s", "perf/peak_rss_mb"}
)


def histories(client, run) -> dict[str, list[tuple[int, float]]]:
    """Every non-clock metric of an MLflow run: its (step, value) history, sorted."""
    return {
        key: sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, key))
        for key in run.data.metrics
        if key not in CLOCK
    }


def with_lora(policy, cfg, seed: int = 0):
    """``policy`` with LoRA adapters (``cfg.model.lora``) whose B is random, so that they change
    the model from the start, and its reference (the same model, adapters off)."""
    from bench import lora

    if not lora.is_lora(policy):
        policy = lora.attach(policy, cfg.model.lora, "", cfg.train.precision == "bf16-mixed")
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in policy.named_parameters():
            if ".lora_B." in name:
                p.copy_(0.1 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return policy, lora.AdaptersOff(policy)
