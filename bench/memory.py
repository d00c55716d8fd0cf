"""What bounds a training step's memory besides micro-batches: activation checkpointing of the
decoder layers, and the bytes autograd saves for backward (the CPU stand-in for GPU activation
memory that ``bench plan`` is calibrated against)."""

from __future__ import annotations

import contextlib
import functools

import torch
from torch.utils.checkpoint import checkpoint


def enable_checkpointing(model) -> int:
    """Recompute every decoder layer in the backward instead of keeping its activations.

    Unlike ``model.gradient_checkpointing_enable()`` this needs no train mode (dropout stays
    off) and leaves the model's KV cache alone: a layer is checkpointed only when gradients are
    being taken and no cache is passed, so sampling and no-grad forwards run as before (the
    sampler keeps its KV cache). Returns the number of layers wrapped."""
    from transformers.modeling_layers import GradientCheckpointingLayer

    layers = [m for m in model.modules() if isinstance(m, GradientCheckpointingLayer)]
    for layer in layers:
        layer.forward = _checkpointed(layer.forward)
    return len(layers)


def _checkpointed(forward):
    @functools.wraps(forward)
    def run(*args, **kwargs):
        cached = any(kwargs.get(k) is not None for k in ("cache", "past_key_values", "layer_past"))
        if torch.is_grad_enabled() and not cached:
            return checkpoint(forward, *args, use_reentrant=False, **kwargs)
        return forward(*args, **kwargs)

    return run


class SavedBytes:
    """Bytes of the distinct tensor storages autograd saves for backward inside the context
    (``torch.autograd.graph.saved_tensors_hooks``), counted once each; parameters excluded."""

    def __init__(self, exclude=()):
        self.bytes = 0
        self._seen: set[int] = set()
        self._exclude = {p.untyped_storage().data_ptr() for p in exclude}

    def _pack(self, t: torch.Tensor):
        storage = t.untyped_storage()
        key = storage.data_ptr()
        if key not in self._seen and key not in self._exclude:
            self._seen.add(key)
            self.bytes += storage.nbytes()
        return t

    @contextlib.contextmanager
    def __call__(self):
        with torch.autograd.graph.saved_tensors_hooks(self._pack, lambda t: t):
            yield self


def peak_allocated(fn) -> int:
    """The peak of the bytes torch allocated on the CPU while ``fn()`` ran, above what was
    allocated before it: the running sum of the profiler's per-op allocations and frees, in
    time order (each counted once, as its op's own, not its callers')."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    now = peak = 0
    for event in sorted(prof.events(), key=lambda e: e.time_range.start):
        now += event.self_cpu_memory_usage
        peak = max(peak, now)
    return peak
