"""Rollouts as data: ``Generation`` (k completions per prompt), the ``Sampler`` and ``Source``
protocols the loop talks to, and the tokenisation helpers every sampler and source shares.

Shapes: N = prompts * k rows (each prompt repeated k times, one group), P = prompt length
(left-padded), T = max_new_tokens (completions right-padded).
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor


@dataclass(frozen=True)
class Generation:
    prompt_ids: Tensor  # [N, P] left-padded prompts
    prompt_mask: Tensor  # [N, P]
    completion_ids: Tensor  # [N, T] right-padded to T = max_new_tokens
    completion_mask: Tensor  # [N, T] 1 up to and including the first EOS
    texts: list[str]  # decoded completions, special tokens removed
    truncated: Tensor  # [N] bool: no EOS within the budget
    rewards: Tensor | None = None  # [N] set by offline sources (pairs: 1 chosen, 0 rejected)
    behaviour_logp: Tensor | None = None  # [N, T] log-probs of the distribution that drew each
    # row, when it is not simply the current policy (reference, uniform, mixture, replay)

    def rows(self, idx: Tensor) -> Generation:
        """The rows ``idx`` of every per-row field."""
        return Generation(**{f: _take(getattr(self, f), idx) for f in ROW_FIELDS})

    def with_behaviour(self, logp: Tensor) -> Generation:
        """The same rows, drawn with behaviour log-probs ``logp`` [N, T]."""
        return dataclasses.replace(self, behaviour_logp=logp)

    @staticmethod
    def cat(parts: list[Generation]) -> Generation:
        """Rows of several generations (same prompt tokenization and completion length) stacked."""
        return Generation(**{f: _join([getattr(p, f) for p in parts]) for f in ROW_FIELDS})

    @property
    def input_ids(self) -> Tensor:  # [N, P+T]
        return torch.cat([self.prompt_ids, self.completion_ids], dim=1)

    @property
    def attention_mask(self) -> Tensor:  # [N, P+T]
        return torch.cat([self.prompt_mask, self.completion_mask], dim=1)


ROW_FIELDS = [f.name for f in dataclasses.fields(Generation)]


def _take(value, idx: Tensor):
    if value is None:
        return None
    return [value[i] for i in idx.tolist()] if isinstance(value, list) else value[idx]


def _join(values: list):
    if values[0] is None:
        return None
    return (
        [v for part in values for v in part] if isinstance(values[0], list) else torch.cat(values)
    )


class Sampler(Protocol):
    """Draws completions from a model: ``HFSampler`` (bench/rollout.py), ``VLLMSampler``."""

    def generate(
        self,
        model,
        tokenizer,
        prompts: list[str],
        k: int,
        max_new_tokens: int,
        *,
        temperature: float = 1.0,
        top_p: float = 1.0,
        greedy: bool = False,
    ) -> Generation: ...

    def weights_changed(self) -> None:
        """The policy took an optimiser step (a sampler holding its own copy re-syncs)."""


class Source(Protocol):
    """Where a training step's groups come from (bench/sources.py): rows i*k..i*k+k-1 of the
    returned generation belong to prompts[i]."""

    replay_frac: float  # share of the last drawn batch taken from the replay buffer (logged)

    def draw(self, policy, tokenizer, prompts: list[str]) -> Generation: ...

    def state_dict(self) -> dict:
        """What a mid-run checkpoint keeps (generator state, replay buffer)."""

    def load_state_dict(self, state: dict) -> None: ...


def completion_mask(ids: Tensor, eos_id: int) -> tuple[Tensor, Tensor]:
    """Mask [N, T] of tokens up to and including the first EOS, and truncated [N] (no EOS)."""
    is_eos = ids == eos_id
    seen_before = (is_eos.cumsum(dim=1) - is_eos.long()) > 0  # an EOS strictly earlier
    return (~seen_before).long(), ~is_eos.any(dim=1)


def prompt_tensors(tokenizer, prompts: list[str], k: int) -> tuple[Tensor, Tensor]:
    """Left-padded prompt ids and mask [N, P], each prompt repeated k times (one group)."""
    rows = [prompt_ids(tokenizer, p) for p in prompts for _ in range(k)]
    width = max(map(len, rows), default=0)
    pad = tokenizer.pad_token_id
    ids = torch.tensor([[pad] * (width - len(r)) + list(r) for r in rows], dtype=torch.long)
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows], dtype=torch.long)
    return ids, mask


@functools.lru_cache(maxsize=1 << 16)
def prompt_ids(tokenizer, prompt: str) -> tuple[int, ...]:
    """A prompt's token ids, tokenized once: a run draws the same prompts again and again."""
    return tuple(tokenizer(prompt, add_special_tokens=False)["input_ids"])


def finish_generation(
    tokenizer, prompt_ids: Tensor, prompt_mask: Tensor, new_ids: Tensor, max_new_tokens: int
) -> Generation:
    """Pad sampled ids [N, <=T] to max_new_tokens, mask after the first EOS, decode."""
    pad, eos = tokenizer.pad_token_id, tokenizer.eos_token_id
    ids = torch.nn.functional.pad(new_ids, (0, max_new_tokens - new_ids.shape[1]), value=pad)
    mask, truncated = completion_mask(ids, eos)
    ids = ids.masked_fill(mask == 0, pad)
    texts = tokenizer.batch_decode(ids, skip_special_tokens=True)
    return Generation(prompt_ids, prompt_mask, ids, mask, texts, truncated)


def tokenize_completions(
    tokenizer, texts: list[str], max_new_tokens: int
) -> tuple[Tensor, Tensor, Tensor]:
    """Given completion texts -> (ids [N, T] + EOS, right-padded, mask [N, T], truncated [N])."""
    pad, eos = tokenizer.pad_token_id, tokenizer.eos_token_id
    rows = [tokenizer(t, add_special_tokens=False)["input_ids"] + [eos] for t in texts]
    truncated = torch.tensor([len(r) > max_new_tokens for r in rows])
    rows = [r[:max_new_tokens] + [pad] * (max_new_tokens - len(r[:max_new_tokens])) for r in rows]
    ids = torch.tensor(rows, dtype=torch.long)
    mask, _ = completion_mask(ids, eos)
    mask = mask * (ids != pad).long()
    return ids, mask, truncated
