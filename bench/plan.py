"""``bench plan``: per-GPU memory and compute of a preset, from the model's config alone.

Memory (bytes per GPU): fp32 master weights, the bf16 compute copy (bf16-mixed), fp32
gradients, AdamW's two fp32 states, the frozen reference, the activations saved for backward by
one micro-batch, the log-prob chunk, and the vLLM engine's share. Under ``--gpus N`` the
sharding divides what it shards: ``train.sharding=fsdp`` the master weights, gradients,
optimiser states (and the copy to undo a step) over the N GPUs, with one layer's bf16 compute
copy gathered at a time; ``ddp`` nothing (each GPU holds everything, the batch is split). The
frozen reference is sharded the same way under fsdp (one layer gathered at a time) unless the run
samples from it (then, and under ddp, it is whole on every GPU), and the HF sampler under fsdp
decodes with a full fp32 copy of the policy (bench/sharding.py).

The activation model counts what HF's Qwen2/Llama decoder saves for backward per token, per
layer: 8h + 4i + 2kv + a + 2 values (h hidden, i MLP width, kv key/value width, a heads), the
layer input alone under checkpointing, plus the log-softmax of the scored tokens (V each) when
log-probs are not chunked. It is calibrated against the bytes saved for backward measured on CPU
(tests/test_plan.py: within 15% over Qwen2 and Llama shapes, depths, lengths, with and without
checkpointing and chunking; table in docs/memory.md). Under bf16 autocast the measured bytes
were within 8% of fp32's (norms and residuals stay fp32; matmul inputs gain bf16 copies), so
the fp32 count is used for both.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from bench.config import REFERENCE_SOURCES, RunConfig
from bench.core.errors import BenchError
from bench.pretrained import gguf_config, gguf_of

GB = 1024**3


@dataclass(frozen=True)
class Shape:
    """What the plan needs of a decoder-only transformer's config."""

    vocab: int
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    tied: bool
    qkv_bias: bool = True  # Qwen2: biases on q, k, v; Llama: none

    @property
    def params(self) -> int:
        h, q, kv = self.hidden, self.heads * self.head_dim, self.kv_heads * self.head_dim
        bias = (q + 2 * kv) if self.qkv_bias else 0
        layer = h * q + 2 * h * kv + bias + q * h + 3 * h * self.intermediate + 2 * h
        return self.vocab * h * (1 if self.tied else 2) + self.layers * layer + h

    def linears(self) -> dict[str, tuple[int, int]]:
        """(in, out) of each linear layer of a decoder layer, by name."""
        h, q, kv, i = (
            self.hidden,
            self.heads * self.head_dim,
            self.kv_heads * self.head_dim,
            self.intermediate,
        )
        return {
            "q_proj": (h, q), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (q, h),
            "gate_proj": (h, i), "up_proj": (h, i), "down_proj": (i, h),
        }  # fmt: skip

    def adapter_params(self, r: int, targets: list[str]) -> int:
        """Parameters of rank-r LoRA adapters (A: r x in, B: out x r) on the targeted linears of
        every layer (all-linear: all seven; the LM head is never adapted)."""
        every = "all-linear" in targets
        chosen = [io for name, io in self.linears().items() if every or name in targets]
        return self.layers * sum(r * (a + b) for a, b in chosen)

    def layer_values_per_token(self) -> int:
        kv = self.kv_heads * self.head_dim
        return 8 * self.hidden + 4 * self.intermediate + 2 * kv + self.heads + 2


BUILT_IN = {  # the presets' checkpoints (their config.json), so a plan needs no download
    "Qwen/Qwen2.5-Math-7B": Shape(152064, 3584, 18944, 28, 28, 4, 128, False),
    "Qwen/Qwen2.5-Math-1.5B": Shape(151936, 1536, 8960, 28, 12, 2, 128, True),
}


def shape_of(model_cfg) -> Shape:
    """From the built-in table, a local folder's config.json, or the HF cache (never weights)."""
    name = model_cfg.name_or_path
    if name == "tiny":
        h, a = model_cfg.hidden_size, model_cfg.num_heads
        return Shape(258, h, model_cfg.intermediate_size, model_cfg.num_layers, a, a, h // a, True)
    if name in BUILT_IN:
        return BUILT_IN[name]
    gguf = gguf_of(name, model_cfg.gguf_file)
    if gguf is not None:  # the config in the GGUF's metadata
        return _from_config(gguf_config(gguf[0]))
    path = Path(name) / "config.json"
    if path.exists():
        return _from_config(json.loads(path.read_text()))
    try:
        from transformers import AutoConfig

        return _from_config(AutoConfig.from_pretrained(name, local_files_only=True).to_dict())
    except OSError:
        raise BenchError(
            f"bench plan: no config for model.name_or_path='{name}' (a local folder, the HF cache, "
            f"or one of: {', '.join(BUILT_IN)})"
        ) from None


def _from_config(c: dict) -> Shape:
    heads = c["num_attention_heads"]
    return Shape(
        vocab=c["vocab_size"],
        hidden=c["hidden_size"],
        intermediate=c["intermediate_size"],
        layers=c["num_hidden_layers"],
        heads=heads,
        kv_heads=c.get("num_key_value_heads") or heads,
        head_dim=c.get("head_dim") or c["hidden_size"] // heads,
        tied=bool(c.get("tie_word_embeddings", False)),
        qkv_bias=bool(c.get("attention_bias", c.get("model_type") == "qwen2")),
    )


def activation_bytes(s: Shape, tokens: int, scored: int, checkpointing: bool, chunk: int) -> int:
    """Bytes saved for backward by one forward of ``tokens`` tokens, ``scored`` of them scored."""
    h, d = s.hidden, s.head_dim
    per_layer = h if checkpointing else s.layer_values_per_token()
    common = 2 * d + 3 + h + (0 if checkpointing else h)  # positions, embeddings, final norm
    head = (4 if chunk else s.vocab) + h + (h if checkpointing else 0)
    return 4 * (tokens * (s.layers * per_layer + common) + scored * head)


@dataclass(frozen=True)
class Workload:
    prompt_tokens: int  # assumed prompt length (the plan does not read the data)
    gpus: int
    gpu_memory_gb: float
    utilization: float  # share of the GPU's peak FLOP/s a step achieves
    gpu_tflops: float  # the GPU's dense bf16 peak


def micro_batch(cfg: RunConfig, w: Workload) -> tuple[int, int]:
    """(tokens, scored tokens) of the largest forward/backward of a step."""
    row = w.prompt_tokens + cfg.sampling.max_new_tokens
    rows = max(1, cfg.train.prompts_per_step * cfg.sampling.k // cfg.train.minibatches // w.gpus)
    budget = cfg.train.micro_batch_tokens
    tokens = rows * row if budget <= 0 else max(min(budget, rows * row), row)
    return tokens, tokens * cfg.sampling.max_new_tokens // row


def reference_row(cfg: RunConfig, n: float, per_layer: float, gpus: int, needs_ref: bool):
    """(item, bytes per GPU) of the frozen reference: whole, or a 1/gpus shard plus one gathered
    layer (and the next, prefetched) when fsdp shards it (not when the run samples from it)."""
    width = 2 if cfg.train.precision == "bf16-mixed" else 4
    if not needs_ref:
        return ("reference model", 0.0)
    if gpus > 1 and cfg.sampling.source not in REFERENCE_SOURCES:
        return ("reference model (sharded)", width * (n / gpus + 2 * per_layer))
    return ("reference model (whole)", width * n)


def memory_rows(cfg: RunConfig, s: Shape, w: Workload, needs_ref: bool) -> list[tuple[str, float]]:
    """(item, bytes per GPU)."""
    if cfg.model.lora.r:
        return lora_memory_rows(cfg, s, w)
    n = s.params
    fsdp = w.gpus > 1 and cfg.train.sharding == "fsdp"
    shard = w.gpus if fsdp else 1
    mixed = cfg.train.precision == "bf16-mixed"
    adam = cfg.train.optimizer == "adamw"
    tokens, scored = micro_batch(cfg, w)
    ckpt, chunk = cfg.model.gradient_checkpointing, cfg.train.logprob_chunk
    per_layer = n / s.layers
    rows = [
        ("master weights (fp32)", 4 * n / shard),
        ("compute copy (bf16)", (2 * 2 * per_layer if shard > 1 else 2 * n) if mixed else 0),
        ("gradients (fp32)", 4 * n / shard),
        ("optimiser states (AdamW, fp32)", 8 * n / shard if adam else 0),
        reference_row(cfg, n, per_layer, shard if fsdp else 1, needs_ref),
        (
            f"activations ({tokens} tokens{', checkpointed' if ckpt else ''})",
            activation_bytes(s, tokens, scored, ckpt, chunk),
        ),
        (
            f"logits ({f'chunks of {chunk}' if chunk else 'all scored tokens'}, fp32)",
            3 * 4 * s.vocab * (chunk or scored),
        ),
    ]
    return rows + extra_rows(cfg, w, n, 4 * n, 12 * n / shard if adam else 4 * n / shard)


def extra_rows(cfg: RunConfig, w: Workload, n: float, policy_bytes: float, undo: float):
    """The copy to undo a step, the HF sampler's full copy under fsdp, the vLLM engine."""
    rows = []
    fsdp = w.gpus > 1 and cfg.train.sharding == "fsdp"
    if cfg.train.undo_nonfinite:  # StepUndo's copy while a step runs
        rows.append(("copy to undo a non-finite step", undo))
    if fsdp and cfg.sampling.engine == "hf":
        kind = "fp32" if not cfg.model.lora.r else "base and adapters"
        rows.append((f"HF sampler's full policy copy ({kind})", policy_bytes))
    if cfg.sampling.engine == "vllm":
        rows.append(
            ("vLLM engine share", cfg.sampling.vllm_gpu_memory_utilization * w.gpu_memory_gb * GB)
        )
    return rows


def lora_memory_rows(cfg: RunConfig, s: Shape, w: Workload) -> list[tuple[str, float]]:
    """(item, bytes per GPU) with LoRA adapters: the frozen base in the compute dtype (bf16
    under bf16-mixed), fp32 adapters with their gradients and AdamW state, no reference copy
    (the policy with adapters off). Activations are counted as for full fine-tuning: an upper
    bound (frozen weights save no inputs for their own gradients; each adapter saves r values
    per token)."""
    n, lora = s.params, cfg.model.lora
    a = s.adapter_params(lora.r, lora.target_modules)
    fsdp = w.gpus > 1 and cfg.train.sharding == "fsdp"
    shard = w.gpus if fsdp else 1
    width = 2 if cfg.train.precision == "bf16-mixed" else 4
    adam = cfg.train.optimizer == "adamw"
    tokens, scored = micro_batch(cfg, w)
    ckpt, chunk = cfg.model.gradient_checkpointing, cfg.train.logprob_chunk
    per_layer = n / s.layers
    rows = [
        (f"frozen base weights ({'bf16' if width == 2 else 'fp32'})", width * n / shard),
        ("gathered layers (fsdp)", width * 2 * per_layer if shard > 1 else 0),
        (f"LoRA adapters, r={lora.r} ({a / 1e6:.1f}M parameters, fp32)", 4 * a / shard),
        ("adapter gradients (fp32)", 4 * a / shard),
        ("optimiser states (AdamW, fp32, adapters)", 8 * a / shard if adam else 0),
        ("reference model (the policy with adapters off)", 0.0),
        (
            f"activations ({tokens} tokens{', checkpointed' if ckpt else ''})",
            activation_bytes(s, tokens, scored, ckpt, chunk),
        ),
        (
            f"logits ({f'chunks of {chunk}' if chunk else 'all scored tokens'}, fp32)",
            3 * 4 * s.vocab * (chunk or scored),
        ),
    ]
    undo = (12 if adam else 4) * a / shard
    return rows + extra_rows(cfg, w, n, width * n + 4 * a, undo)


FIXES = [  # the single changes tried, in order, when a plan does not fit
    ("model.gradient_checkpointing", True),
    ("train.micro_batch_tokens", 16384),
    ("train.logprob_chunk", 1024),
    ("train.precision", "bf16-mixed"),
]


def step_flops(cfg: RunConfig, s: Shape, w: Workload, needs_ref: bool) -> dict[str, float]:
    """FLOPs of one training step (all GPUs): 2N per token forward, 4N backward (2N with LoRA:
    frozen weights take no weight gradient; the adapters' own FLOPs are left out)."""
    n = s.params - s.vocab * s.hidden  # the embedding lookup costs no matmul
    rows = cfg.train.prompts_per_step * cfg.sampling.k
    gen, row = rows * cfg.sampling.max_new_tokens, w.prompt_tokens + cfg.sampling.max_new_tokens
    prefill = cfg.train.prompts_per_step * w.prompt_tokens
    passes = cfg.train.epochs
    train_fwd = 2 * n * rows * row * passes
    extra = (train_fwd if cfg.model.gradient_checkpointing else 0) + (
        train_fwd if cfg.train.micro_batch_tokens else 0  # the no-grad pre-pass
    )
    return {
        "sampling": 2 * n * (gen + prefill),
        "reference": 2 * n * rows * row if needs_ref else 0.0,
        "training": (2 if cfg.model.lora.r else 3) * train_fwd + extra,
    }


@dataclass(frozen=True)
class Plan:
    memory: list[tuple[str, float]]  # (item, bytes per GPU)
    total: float
    fits: bool
    verdict: str  # one line
    flops: dict[str, float]  # per step, all GPUs
    gpu_hours: float  # of the whole run at the stated utilisation


def make_plan(cfg: RunConfig, w: Workload, needs_ref: bool = True) -> Plan:
    import dataclasses

    if w.gpus > 1 and cfg.train.sharding == "none":
        raise BenchError(
            f"--gpus {w.gpus} needs train.sharding=fsdp (or ddp): with none a run uses one GPU"
        )

    s = shape_of(cfg.model)
    memory = memory_rows(cfg, s, w, needs_ref)
    total = sum(b for _, b in memory)
    budget = w.gpu_memory_gb * GB
    fits = total <= budget
    verdict = f"fits: {total / GB:.1f} of {w.gpu_memory_gb:g} GB per GPU"
    if not fits:
        verdict = f"does not fit: {total / GB:.1f} GB per GPU > {w.gpu_memory_gb:g} GB; "
        for key, value in FIXES:
            section, field = key.split(".")
            if getattr(getattr(cfg, section), field) == value:
                continue
            changed = dataclasses.replace(
                cfg, **{section: dataclasses.replace(getattr(cfg, section), **{field: value})}
            )
            need = sum(b for _, b in memory_rows(changed, s, w, needs_ref))
            if need <= budget:
                verdict += f"{key}={str(value).lower()} would make it fit ({need / GB:.1f} GB)"
                break
        else:
            verdict += (
                f"shard over more GPUs (train.sharding=fsdp --gpus {w.gpus * 2}) "
                "or use smaller micro-batches"
            )
    flops = step_flops(cfg, s, w, needs_ref)
    seconds = sum(flops.values()) * cfg.train.steps / (w.gpus * w.utilization * w.gpu_tflops * 1e12)
    return Plan(memory, total, fits, verdict, flops, w.gpus * seconds / 3600)
