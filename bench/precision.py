"""Precision: fp32 master weights and optimiser states, always; bf16 compute by autocast under
``train.precision=bf16-mixed``. Losses, log-softmax and reductions stay fp32 (token_logps casts
the logits). AdamW on bf16 weights is refused at config time: at lr 1e-6 most updates are
smaller than half a bf16 ulp of the weight and round away (3 steps on a tiny Qwen2 changed 2.0%
of the weights in bf16 and 93.6% in fp32), so such a run would silently not train.
"""

from __future__ import annotations

import contextlib
import copy

import torch

from bench.lora import AdaptersOff, is_lora
from bench.rollout import model_device


def compute_precision(cfg, model):
    """The context the policy and reference run their forwards in."""
    if cfg.train.precision != "bf16-mixed":
        return contextlib.nullcontext()
    return torch.autocast(model_device(model).type, dtype=torch.bfloat16)


def frozen_reference(policy, cfg):
    """A frozen copy of the policy: bf16 under bf16-mixed (it only runs forwards in bf16); with
    LoRA adapters the policy itself with them switched off (no copy, bench/lora.py)."""
    if is_lora(policy):
        return AdaptersOff(policy)
    reference = copy.deepcopy(policy).eval().requires_grad_(False)
    if cfg.train.precision == "bf16-mixed":
        reference = reference.to(torch.bfloat16)
    return reference


def master_weights(model):
    """The model with fp32 parameters (a checkpoint loaded in bf16 is upcast once)."""
    if any(p.dtype in (torch.bfloat16, torch.float16) for p in model.parameters()):
        model = model.float()
    return model
