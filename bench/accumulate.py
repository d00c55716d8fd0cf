"""The memory-bounded step: a minibatch's gradient accumulated over micro-batches, exactly.

A minibatch (whole groups) is cut into micro-batches of at most ``train.micro_batch_tokens``
tokens (first-fit decreasing; a longer sequence is a micro-batch of its own). Group statistics
and loss normalisers must stay minibatch-global for any cut, even one through a group, and
the algorithms must stay pure functions of a whole minibatch. So, with no per-algorithm code:

1. a no-grad forward, micro-batch by micro-batch, gives every row's token log-probs ``logp``
   (and entropy, values): [B, T];
2. the algorithm's own loss on the whole minibatch, with ``logp`` and ``values`` as leaves,
   gives the loss, its metrics, and by autograd the coefficients ``c = dL/dlogp`` (and
   ``dL/dvalues``);
3. each micro-batch back-propagates ``sum(c * logp_micro) + sum(c_v * values_micro)``.

A loss depends on the parameters only through ``logp`` and ``values`` (entropy is detached), so
by the chain rule step 3 accumulates exactly the one-pass gradient, for any loss and any split
(tested in float64 for every registered algorithm). The price is one extra no-grad forward per
minibatch; a minibatch that fits in one micro-batch takes the direct path.
"""

from __future__ import annotations

import torch
from torch import Tensor

from bench.core.batch import PolicyOutput, RolloutBatch
from bench.packing import first_fit_decreasing


def micro_batches(tokens: list[int], budget: int) -> list[Tensor]:
    """Row indices of the micro-batches: at most ``budget`` tokens each (0 = all rows at once)."""
    if budget <= 0 or sum(tokens) <= budget:
        return [torch.arange(len(tokens))]
    bin_of, _ = first_fit_decreasing(tokens, budget)
    bins = torch.tensor(bin_of)
    return [torch.nonzero(bins == b).squeeze(1) for b in range(max(bin_of) + 1)]


def row_tokens(batch: RolloutBatch) -> list[int]:
    """Tokens each row puts through a forward: its prompt and its completion."""
    return batch.attention_mask.sum(-1).tolist()


def _gather(outs: list[PolicyOutput], parts: list, field: str, B: int) -> Tensor | None:
    """Rows of ``field`` from each micro-batch's output, put back in minibatch order (rows of no
    part are zeros; a ``None`` part is a stand-in whose output is dropped)."""
    first = getattr(outs[0], field) if outs else None
    if first is None:
        return None
    full = first.new_zeros((B, *first.shape[1:]))
    for out, idx in zip(outs, parts, strict=True):
        if idx is not None:
            full[idx.to(full.device)] = getattr(out, field)
    return full


def _no_combine(t: Tensor) -> Tensor:
    return t


STAND_IN = torch.zeros(1, dtype=torch.long)  # the row a ``None`` part runs (its result unused)


def accumulated_backward(mb: RolloutBatch, parts: list, forward, loss_fn, combine=_no_combine):
    """Back-propagate the gradient of ``loss_fn(mb, forward(mb))`` micro-batch by micro-batch.

    ``forward(batch) -> PolicyOutput`` runs the policy (with grad when grad is enabled);
    ``loss_fn(batch, out) -> (loss, metrics, batch)`` is the algorithm's loss on the whole
    minibatch (returning the batch it used, e.g. with behaviour log-probs filled in).
    Sharded, ``parts`` are this rank's rows only (``None``: a stand-in forward that keeps the
    ranks' forwards in step) and ``combine`` sums the ranks' outputs, so that every rank takes
    the loss on the whole minibatch and back-propagates its own rows' share.
    Returns (loss, metrics, the whole minibatch's output, detached)."""
    with torch.no_grad():
        outs = [forward(mb.select(STAND_IN if idx is None else idx)) for idx in parts]
    fields = {f: _gather(outs, parts, f, mb.size) for f in ("logp", "entropy", "values")}
    logp, entropy, values = (None if t is None else combine(t) for t in fields.values())
    logp.requires_grad_(True)
    if values is not None:
        values.requires_grad_(True)
    out = PolicyOutput(logp=logp, entropy=entropy, values=values)
    loss, metrics, _ = loss_fn(mb, out)
    detached = PolicyOutput(logp.detach(), out.entropy, None if values is None else values.detach())
    if not torch.isfinite(loss):  # the step is skipped: no backward (the same on every rank)
        return loss.detach(), metrics, detached
    leaves = [t for t in (logp, values) if t is not None]
    coeffs = torch.autograd.grad(loss, leaves, allow_unused=True)
    c_logp, c_values = (list(coeffs) + [None])[:2]
    for idx in parts:
        micro = forward(mb.select(STAND_IN if idx is None else idx))
        at = (STAND_IN if idx is None else idx).to(logp.device)
        surrogate = _weighted(c_logp, at, micro.logp) + _weighted(c_values, at, micro.values)
        if idx is None:  # a stand-in: a zero gradient, but its backward joins the collectives
            surrogate = surrogate * 0.0
        if surrogate.requires_grad:
            surrogate.backward()
    return loss.detach(), metrics, detached


def _weighted(coeff: Tensor | None, idx: Tensor, x: Tensor | None) -> Tensor:
    """sum(coeff[idx] * x): zero when the loss does not depend on x."""
    if coeff is None or x is None:
        return torch.zeros(())
    return (coeff[idx].to(x.dtype) * x).sum()
