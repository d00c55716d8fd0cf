"""``model.lora``: LoRA adapters (PEFT) on the policy, for any algorithm.

PEFT's ``inject_adapter_in_model`` puts the adapters into the HF model itself, so the policy stays
a ``PreTrainedModel`` that every path of the loop already runs (sampling with its KV cache,
chunked log-probs, checkpointing, DDP and FSDP2): only the adapters (and a value head) require
gradients, so the optimiser, the gradient clip and the checkpoints hold only them. The frozen
reference is the same model with its adapters switched off (``AdaptersOff``): no second copy.

Under ``train.precision=bf16-mixed`` the frozen base weights are held in bf16 (they only run
forwards under autocast) and the adapters, their gradients and AdamW's state in fp32.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import nn

from bench.config import LoraSettings
from bench.core.errors import BenchError
from bench.distributed import full

ALL_LINEAR = "all-linear"
ADAPTER_CONFIG = "adapter_config.json"
PREFIX = "base_model.model."  # the key prefix of a PeftModel's saved adapter


def enabled(settings: LoraSettings) -> bool:
    return settings.r > 0


def linear_names(model: nn.Module) -> list[str]:
    """The last part of every linear layer's name (q_proj, ...): what target_modules names."""
    return sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if type(m) is nn.Linear})


def peft_config(settings: LoraSettings, base: str = ""):
    from peft import LoraConfig

    targets = settings.target_modules
    return LoraConfig(
        r=settings.r,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        target_modules=ALL_LINEAR if targets == [ALL_LINEAR] else list(targets),
        base_model_name_or_path=base or None,
    )


def attach(
    model: nn.Module, settings: LoraSettings, base: str, bf16: bool, seed: int = 0
) -> nn.Module:
    """``model`` with adapters in its linear layers (B = 0: the policy starts as the base model;
    A drawn from ``seed``, whatever the process did before), only they trainable; the base in
    bf16 under bf16-mixed. ``base``: where the base model is read from again (saved into the
    adapter's config)."""
    from peft import inject_adapter_in_model

    names = linear_names(model)
    wrong = [t for t in settings.target_modules if t != ALL_LINEAR and t not in names]
    if wrong or (ALL_LINEAR in settings.target_modules and len(settings.target_modules) > 1):
        raise BenchError(
            f"model.lora.target_modules: {wrong[0] if wrong else ALL_LINEAR + ' with others'!r} "
            f"is not one of this model's linear layers: {', '.join(names)} (or {ALL_LINEAR})"
        )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = inject_adapter_in_model(peft_config(settings, base), model)
    model.bench_lora = settings  # what the saved adapter's config is written from
    model.bench_lora_base = base
    for name, p in model.named_parameters():
        p.requires_grad_(_is_adapter(name))
        if bf16 and not p.requires_grad:
            p.data = p.data.to(torch.bfloat16)
    return model


def _is_adapter(name: str) -> bool:
    return ".lora_A." in name or ".lora_B." in name


def is_lora(model: nn.Module) -> bool:
    return hasattr(model, "bench_lora")


def _tuner_layers(model: nn.Module) -> list:
    from peft.tuners.tuners_utils import BaseTunerLayer

    return [m for m in model.modules() if isinstance(m, BaseTunerLayer)]


@contextlib.contextmanager
def adapters_off(model: nn.Module):
    """Inside: ``model`` (or any module holding it: DDP, FSDP2, a copy) computes the base model.
    The layers' flag alone is set: PEFT's ``enable_adapters(False)`` also clears the adapters'
    ``requires_grad``, which FSDP2 reads when it first runs (it then never reduces them)."""
    layers = _tuner_layers(model)
    for layer in layers:
        layer._disable_adapters = True
    try:
        yield model
    finally:
        for layer in layers:
            layer._disable_adapters = False


def adapters_on(model: nn.Module) -> bool:
    return not any(layer.disable_adapters for layer in _tuner_layers(model))


@contextlib.contextmanager
def dropout_on(model: nn.Module):
    """LoRA dropout acts in the forwards that take gradients (the model is otherwise in eval
    mode: sampling and the log-prob forwards run without it)."""
    drops = [m for n, m in model.named_modules() if ".lora_dropout." in n + "."]
    drops = [m for m in drops if isinstance(m, nn.Dropout)]
    for m in drops:
        m.train()
    try:
        yield
    finally:
        for m in drops:
            m.eval()


class AdaptersOff:
    """The frozen reference of a LoRA run: the policy with its adapters switched off. Its
    log-probs go through the training forward (``PolicyForward``, sharded as the policy is) and
    it samples with the policy the sampler uses (the full copy under fsdp)."""

    def __init__(self, policy: nn.Module):
        self.forward_module: nn.Module | None = None  # set by the learner (``bind``)
        self.sampling_model = policy

    def bind(self, forward_module: nn.Module, sampling_model: nn.Module) -> None:
        self.forward_module, self.sampling_model = forward_module, sampling_model

    def parameters(self):
        """The policy's, as the training forward holds them (sharded under fsdp)."""
        return (self.forward_module or self.sampling_model).parameters()

    def logps(self, ids, attn, T: int, temperature: float, chunk: int) -> torch.Tensor:
        with adapters_off(self.forward_module) as model:
            return model(ids, attn, T, temperature, entropy=False, chunk=chunk)[0]


@contextlib.contextmanager
def sampling_model(model) -> Iterator[nn.Module]:
    """The module a sampler decodes with for ``model`` (a reference with adapters off: the
    policy, adapters switched off while it samples)."""
    if isinstance(model, AdaptersOff):
        with adapters_off(model.sampling_model) as m:
            yield m
    else:
        yield model


def export_weights(model: nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, whole tensor) of the model as the base architecture names them, adapters merged
    (W + B A alpha / r, in fp32; base weights alone while the adapters are off), one parameter
    at a time, gathered from its shards: what an inference engine (vLLM) or a merged checkpoint
    loads. A model without adapters: its parameters as they are."""
    if not is_lora(model):
        for name, p in model.named_parameters():
            yield name, full(p).detach()
        return
    layers = dict(model.named_modules())
    merge = adapters_on(model)
    for name, p in model.named_parameters():
        if _is_adapter(name):
            continue
        owner, _, leaf = name.rpartition(".")
        if owner.endswith(".base_layer") and leaf == "weight":
            layer = layers[owner.removesuffix(".base_layer")]
            weight = full(p).detach().float()
            if merge:
                a, b = (
                    full(m["default"].weight).detach().float() for m in (layer.lora_A, layer.lora_B)
                )
                weight = weight + (b @ a) * layer.scaling["default"]
            yield owner.removesuffix(".base_layer") + ".weight", weight
        else:
            yield name.replace(".base_layer.", "."), full(p).detach()


def save_adapter(model: nn.Module, folder: Path) -> None:
    """The adapter in PEFT's format (adapter_config.json, adapter_model.safetensors):
    ``PeftModel.from_pretrained(base, folder)`` and ``bench eval folder`` read it."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    peft_config(model.bench_lora, model.bench_lora_base).save_pretrained(folder)
    state = {
        PREFIX + name.replace(".default.", "."): full(p).detach().contiguous()
        for name, p in model.named_parameters()
        if _is_adapter(name)
    }
    save_file(state, folder / "adapter_model.safetensors", metadata={"format": "pt"})


def save_merged(model: nn.Module, folder: Path) -> None:
    """Base and adapter merged into one ordinary checkpoint of the base architecture."""
    from transformers import AutoModelForCausalLM

    merged = AutoModelForCausalLM.from_config(model.config, dtype=torch.float32)
    missing, unexpected = merged.load_state_dict(dict(export_weights(model)), strict=False)
    tied = {"lm_head.weight"} if model.config.tie_word_embeddings else set()
    assert not unexpected and set(missing) <= tied, (missing, unexpected)
    merged.tie_weights()
    merged.save_pretrained(folder)


def adapter_base(folder: str) -> str | None:
    """The base model an adapter folder names, or None when ``folder`` is not an adapter."""
    path = Path(folder) / ADAPTER_CONFIG
    if not path.is_file():
        return None
    base = json.loads(path.read_text()).get("base_model_name_or_path")
    if not base:
        raise BenchError(f"{path}: names no base model (base_model_name_or_path)")
    return base


def load_adapter(model: nn.Module, folder: str) -> nn.Module:
    """``model`` (the base) with the adapter in ``folder`` merged in (for evaluation)."""
    from peft import PeftModel

    return PeftModel.from_pretrained(model, folder).merge_and_unload()
