"""Packed log-prob forward: one row per distinct prompt, holding that prompt once and then the
completion tokens of every row that shares it, with no padding in between.

A batch of B = U*k rollouts is [left-padded prompt; right-padded completion] per row. Under a
causal mask a prompt's keys and values do not depend on what follows, and a completion only sees
its own prompt and its own earlier tokens, so the U packed rows with a block mask (each
completion attends to its prompt and to itself, causally) give the same outputs as B padded rows:

    row u:  [ prompt u | completion of row b1 | completion of row b2 | ... ]   then padding

Position ids restart each completion right after its prompt. The prompt runs once per group and
neither left padding nor the padding after short completions is computed: at the default
arithmetic workload this is a third fewer tokens than prompt sharing through the KV cache, in one
model call instead of two (see README, "Throughput").

Used for transformers models whose attention takes a custom 4D mask (sdpa and eager) and whose
positions come from ``position_ids``; other models run the KV-cache path in ``rollout``.
"""

from __future__ import annotations

import functools
import inspect

import torch
from torch import Tensor
from transformers import PreTrainedModel

PACKABLE_ATTENTION = ("sdpa", "eager")


def can_pack(model, seq_len: int) -> bool:
    """A transformers model that takes a 4D attention mask and explicit position ids, with no
    sliding window shorter than the sequences (a packed row is longer than each sequence in it,
    but the mask keeps every sequence within its own length)."""
    if not isinstance(model, PreTrainedModel):
        return False
    config = model.config
    window = getattr(config, "sliding_window", None)
    return (
        config._attn_implementation in PACKABLE_ATTENTION
        and not getattr(config, "alibi", False)  # ALiBi biases come from the 2D mask
        and _takes_position_ids(type(model))
        and (not window or seq_len <= window)
    )


@functools.cache
def _takes_position_ids(model_class) -> bool:
    return "position_ids" in inspect.signature(model_class.forward).parameters


def packed_outputs(
    model, input_ids: Tensor, attention_mask: Tensor, T: int, hidden: bool
) -> tuple[Tensor, Tensor | None]:
    """Logits [B, T, V] at the positions that predict the last T tokens of each row (and the last
    hidden states there when ``hidden``); zeros where the completion mask is 0.

    ``attention_mask[:, -T:]`` is the completion mask: a prefix of ones (every source makes it so).
    The last completion token is never fed: it predicts nothing that is scored."""
    B, width = input_ids.shape
    P, dev = width - T, input_ids.device
    ar_b = torch.arange(B, device=dev)
    prompts = torch.cat([input_ids[:, :P], attention_mask[:, :P].long()], dim=1)
    unique, inverse = torch.unique(prompts, dim=0, return_inverse=True)
    U, prompt_on = unique.shape[0], unique[:, P:].bool()
    prompt_len = prompt_on.sum(1)
    fed = attention_mask[:, P + 1 :].bool()  # completion token j is fed when token j+1 is scored
    # Each row's completion starts after its prompt and the completions of its group's earlier rows.
    n_fed = torch.zeros(U, B, dtype=torch.long, device=dev)
    n_fed[inverse, ar_b] = fed.sum(1)
    earlier = (n_fed.cumsum(1) - n_fed)[inverse, ar_b]
    S = int((prompt_len + n_fed.sum(1)).max())

    ids = input_ids.new_zeros(U, S)
    pos = torch.zeros(U, S, dtype=torch.long, device=dev)
    owner = torch.full((U, S), -2, dtype=torch.long, device=dev)  # row b, -1 prompt, -2 padding
    p_col = prompt_on.cumsum(1) - 1
    p_row = torch.arange(U, device=dev)[:, None].expand(U, P)[prompt_on]
    p_col_on = p_col[prompt_on]
    ids[p_row, p_col_on] = unique[:, :P][prompt_on]
    pos[p_row, p_col_on] = p_col_on
    owner[p_row, p_col_on] = -1
    j = torch.arange(T - 1, device=dev)[None]
    t_row = inverse[:, None].expand_as(fed)[fed]
    t_col = (prompt_len[inverse] + earlier)[:, None] + j  # [B, T-1] packed column of token j
    ids[t_row, t_col[fed]] = input_ids[:, P:-1][fed]
    pos[t_row, t_col[fed]] = (prompt_len[inverse][:, None] + j).expand_as(fed)[fed]
    owner[t_row, t_col[fed]] = ar_b[:, None].expand_as(fed)[fed]

    out = model(
        input_ids=ids,
        attention_mask=_block_mask(owner, model),
        position_ids=pos,
        logits_to_keep=(keep := S - int(prompt_len.min()) + 1),  # from the earliest prompt end
        output_hidden_states=hidden,
    )
    first = S - keep
    # [B, T] index into the U*keep kept positions; U*keep is an appended row of zeros
    where = torch.full((B, T), U * keep, dtype=torch.long, device=dev)
    where[:, 0] = inverse * keep + prompt_len[inverse] - 1 - first
    where[:, 1:][fed] = (inverse[:, None] * keep + t_col - first)[fed]
    logits = _pick(out.logits.reshape(U * keep, -1), where)
    states = (
        _pick(out.hidden_states[-1][:, first:].reshape(U * keep, -1), where) if hidden else None
    )
    return logits, states


def _pick(flat: Tensor, where: Tensor) -> Tensor:
    return torch.cat([flat, flat.new_zeros(1, flat.shape[1])])[where]


def _block_mask(owner: Tensor, model) -> Tensor:
    """[U, 1, S, S]: query i sees key j <= i of the prompt or of its own completion. Padding
    queries see the prompt and themselves (a fully masked row would give NaN, also backward)."""
    S = owner.shape[1]
    ar = torch.arange(S, device=owner.device)
    key, query = owner[:, None, :], owner[:, :, None]
    allowed = (ar[None, :] <= ar[:, None]) & (key != -2) & ((key == -1) | (key == query))
    allowed = (allowed | torch.eye(S, dtype=torch.bool, device=owner.device))[:, None]
    if model.config._attn_implementation == "sdpa":
        return allowed
    return torch.zeros(allowed.shape, dtype=model.dtype, device=owner.device).masked_fill(
        ~allowed, torch.finfo(model.dtype).min
    )  # eager attention adds the mask to the scores
