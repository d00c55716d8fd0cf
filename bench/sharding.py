"""``train.sharding``: how the trained modules (policy and value head) are spread over the
processes of a sharded run, on PyTorch's own engines.

- none: one process (the default).
- ddp: ``DistributedDataParallel``: every rank holds the whole model and optimiser; gradients
  are all-reduced (summed: each rank's loss terms are already scaled for the whole minibatch).
- fsdp: FSDP2 ``fully_shard`` per decoder layer, then the root (policy and value head): fp32
  master shards and optimiser states, parameters gathered for each layer's forward and backward
  (bf16 under ``train.precision=bf16-mixed`` through FSDP2's ``MixedPrecisionPolicy``),
  gradients reduce-scattered (summed) in fp32. The HF sampler then decodes with a full copy of
  the policy that follows the shards (``SamplingCopy``), as a colocated engine would.

The frozen reference model is sharded the same way under fsdp (its bf16 or fp32 weights split
over the ranks, gathered a layer at a time for its forwards), except when the run samples from it
(``sampling.source=reference|mixture``): ranks decode different lengths, so it stays whole on
every rank there. Under ddp it is replicated. ``bench plan`` counts what each choice holds.
"""

from __future__ import annotations

import copy

import torch
import torch.distributed as dist
from torch import nn

from bench.config import REFERENCE_SOURCES
from bench.core.errors import BenchError
from bench.distributed import World, full
from bench.rollout import token_logps

SHARDINGS = ("none", "ddp", "fsdp")


class PolicyForward(nn.Module):
    """The policy and its value head as one module, so that every training forward is one call
    that DDP and FSDP2 hook: per-token log-probs [B, T], entropy and values."""

    def __init__(self, policy: nn.Module, value_head: nn.Module | None):
        super().__init__()
        self.policy, self.value_head = policy, value_head

    def forward(
        self,
        input_ids,
        attention_mask,
        completion_len: int,
        temperature: float,
        *,
        entropy: bool = True,
        chunk: int = 0,
    ):
        res = token_logps(
            self.policy,
            input_ids,
            attention_mask,
            completion_len,
            temperature,
            entropy=entropy,
            hidden=self.value_head is not None,
            chunk=chunk,
        )
        values = head_values(self.value_head, res.hidden)
        # fresh tensors, not views: FSDP2 hooks the backward on what its module returns
        return res.logp.clone(), res.entropy, None if values is None else values.clone()


def head_values(value_head, hidden: torch.Tensor | None) -> torch.Tensor | None:
    """Values [B, T] in fp32 from the last hidden states (in the head's dtype: a float64 table
    policy's one-hot states are float32)."""
    if value_head is None:
        return None
    return value_head(hidden.to(value_head.weight.dtype)).squeeze(-1).float()


def shard(model: PolicyForward, sharding: str, bf16: bool, world: World) -> nn.Module:
    """``model`` wrapped for ``sharding`` on this process group (one process: as it is)."""
    if not world.sharded:
        return model
    if sharding == "none":
        raise BenchError(
            f"{world.size} processes need train.sharding=ddp or train.sharding=fsdp (it is none)"
        )
    if sharding == "ddp":
        wrapped = nn.parallel.DistributedDataParallel(model, forward_sync_buffers=False)
        wrapped.register_comm_hook(None, _sum_hook)
        return wrapped
    from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy

    policy = MixedPrecisionPolicy(
        param_dtype=torch.bfloat16 if bf16 else None, reduce_dtype=torch.float32
    )
    _fully_shard(model, policy)
    for m in model.modules():
        if isinstance(m, FSDPModule):
            m.set_gradient_divide_factor(1.0)  # a sum: the loss terms are minibatch-global
            m.set_force_sum_reduction_for_comms(True)  # plain SUM (gloo has no PREMUL_SUM)
    return model


def shard_reference(reference: nn.Module, sharding: str, source: str, world: World) -> nn.Module:
    """The frozen reference, FSDP2-sharded per decoder layer under fsdp unless the run samples
    from it; its parameters keep their dtype (bf16 under bf16-mixed, see ``frozen_reference``)."""
    if not isinstance(reference, nn.Module):  # LoRA: the policy, adapters off (sharded with it)
        return reference
    if world.sharded and sharding == "fsdp" and source not in REFERENCE_SOURCES:
        # no backward follows its forwards: the root too is resharded after each (by default
        # FSDP2 keeps the root's parameters, the embeddings, gathered for the backward)
        _fully_shard(reference, None, reshard_root=True)
    return reference


def _fully_shard(model: nn.Module, mp_policy, reshard_root: bool | None = None) -> None:
    """FSDP2 ``fully_shard`` on each decoder layer, then on the root. With frozen parameters
    (LoRA) each leaf module that trains (an adapter's A or B, the value head) is its own unit
    first, as PEFT's FSDP wrap policy does: a unit then holds one dtype (a bf16 frozen base
    and fp32 adapters cannot share one reduce-scatter) and only trained units reduce."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
    from transformers.modeling_layers import GradientCheckpointingLayer

    mp_policy = mp_policy or MixedPrecisionPolicy()
    if any(not p.requires_grad for p in model.parameters()):
        for leaf in [m for m in model.modules() if not list(m.children())]:
            params = list(leaf.parameters(recurse=False))
            if params and all(p.requires_grad for p in params):
                fully_shard(leaf, mp_policy=mp_policy)
    for layer in [m for m in model.modules() if isinstance(m, GradientCheckpointingLayer)]:
        fully_shard(layer, mp_policy=mp_policy)
    fully_shard(model, mp_policy=mp_policy, reshard_after_forward=reshard_root)


def _sum_hook(state, bucket):
    """DDP communication hook: gradients summed over the ranks (DDP's default averages)."""
    fut = dist.all_reduce(bucket.buffer(), async_op=True).get_future()
    return fut.then(lambda f: f.value()[0])


class SamplingCopy:
    """A full copy of a sharded policy for the HF sampler, refreshed after every optimiser step
    parameter by parameter (``full_tensor``: never the whole model gathered at once)."""

    def __init__(self, policy: nn.Module):
        self.model = copy.deepcopy(policy).requires_grad_(False)

    @torch.no_grad()
    def refresh(self, sharded: nn.Module) -> None:
        for name, p in sharded.named_parameters():
            if p.requires_grad:  # frozen ones (a LoRA base) never change
                self.model.get_parameter(name).copy_(full(p))
