"""Token log-probs and entropy from the final hidden states, the LM head applied to
``train.logprob_chunk`` scored tokens at a time, each chunk checkpointed: no [tokens x vocab]
tensor is ever whole, and the backward keeps only the hidden states (as TRL's chunked entropy
and verl's chunked log-probs do). Same numbers as the model's own head: tested on the
architectures of tests/test_packing.py.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from bench.core.errors import BenchError

# Logit transforms some architectures apply after the head that this module does not: refused.
UNSUPPORTED = ("logit_scale", "logits_scaling", "output_multiplier_scale")


def check_chunkable(model) -> None:
    config = model.config
    extra = [a for a in UNSUPPORTED if getattr(config, a, None) not in (None, 1, 1.0)]
    if extra or model.get_output_embeddings() is None:
        raise BenchError(
            f"train.logprob_chunk: {type(model).__name__} transforms its logits ({', '.join(extra)}); "
            "use train.logprob_chunk=0"
        )


def _head(model, states: Tensor, targets: Tensor, temperature: float):
    """(log-prob of each target [n], entropy [n], detached) for hidden states [n, H]."""
    logits = model.get_output_embeddings()(states)
    if logits.dtype in (torch.float16, torch.bfloat16):
        logits = logits.float()
    cap = getattr(model.config, "final_logit_softcapping", None)
    if cap:
        logits = torch.tanh(logits / cap) * cap
    logp_all = (logits / temperature).log_softmax(-1)
    with torch.no_grad():
        ent = -(logp_all.exp() * logp_all).sum(-1)
    return logp_all.gather(-1, targets[:, None]).squeeze(-1), ent


def chunked_logps(
    model, states: Tensor, targets: Tensor, valid: Tensor, temperature: float, chunk: int
) -> tuple[Tensor, Tensor]:
    """(logp [B, T], entropy [B, T]) at the ``valid`` positions (zeros elsewhere) from the final
    hidden states [B, T, H] that predict ``targets`` [B, T]."""
    check_chunkable(model)
    B, T, H = states.shape
    at = valid.reshape(-1).nonzero().squeeze(1)
    h, y = states.reshape(-1, H)[at], targets.reshape(-1)[at]
    pieces = []
    for s in range(0, len(at), chunk):
        args = (model, h[s : s + chunk], y[s : s + chunk], temperature)
        if torch.is_grad_enabled() and h.requires_grad:
            pieces.append(checkpoint(_head, *args, use_reentrant=False))
        else:
            pieces.append(_head(*args))
    logp = torch.cat([p for p, _ in pieces]) if pieces else h.new_zeros(0)
    ent = torch.cat([e for _, e in pieces]) if pieces else h.new_zeros(0)
    dtype = torch.promote_types(logp.dtype, torch.float32)
    out = torch.zeros(B * T, dtype=dtype, device=states.device).index_put((at,), logp.to(dtype))
    ent_out = torch.zeros(B * T, dtype=dtype, device=states.device).index_put((at,), ent.to(dtype))
    return out.view(B, T), ent_out.view(B, T)
