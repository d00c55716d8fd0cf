"""Rollout layer: sample k completions per prompt, and recompute per-token log-probs.

``Sampler`` is the interface a vLLM backend can implement; ``HFSampler`` uses HF generate with
the KV cache. Log-probs used for training (old / reference) are always recomputed with the
training-side model by ``token_logps``, never taken from the sampler.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple, Protocol

import torch
from torch import Tensor


@dataclass
class Generation:
    prompt_ids: Tensor  # [N, P] left-padded prompts (N = prompts * k, each prompt repeated k times)
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
        return Generation(**{f: _take(getattr(self, f), idx) for f in _ROW_FIELDS})

    @staticmethod
    def cat(parts: list[Generation]) -> Generation:
        """Rows of several generations (same prompt tokenization and completion length) stacked."""
        return Generation(**{f: _join([getattr(p, f) for p in parts]) for f in _ROW_FIELDS})

    @property
    def input_ids(self) -> Tensor:  # [N, P+T]
        return torch.cat([self.prompt_ids, self.completion_ids], dim=1)

    @property
    def attention_mask(self) -> Tensor:  # [N, P+T]
        return torch.cat([self.prompt_mask, self.completion_mask], dim=1)


_ROW_FIELDS = [f for f in Generation.__dataclass_fields__]


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
    def generate(
        self,
        model,
        tokenizer,
        prompts: list[str],
        k: int,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_p: float = 1.0,
        greedy: bool = False,
    ) -> Generation: ...


def completion_mask(ids: Tensor, eos_id: int) -> tuple[Tensor, Tensor]:
    """Mask [N, T] of tokens up to and including the first EOS, and truncated [N] (no EOS)."""
    is_eos = ids == eos_id
    seen_before = (is_eos.cumsum(dim=1) - is_eos.long()) > 0  # an EOS strictly earlier
    return (~seen_before).long(), ~is_eos.any(dim=1)


def _prompts(tokenizer, prompts: list[str], k: int) -> tuple[Tensor, Tensor]:
    """Left-padded prompt ids and mask [N, P], each prompt repeated k times (one group)."""
    enc = tokenizer(prompts, padding=True, return_tensors="pt", add_special_tokens=False)
    return enc["input_ids"].repeat_interleave(k, dim=0), enc["attention_mask"].repeat_interleave(
        k, dim=0
    )


def _finish(tokenizer, prompt_ids, prompt_mask, new_ids: Tensor, max_new_tokens: int) -> Generation:
    """Pad sampled ids to max_new_tokens, mask after the first EOS, decode."""
    pad, eos = tokenizer.pad_token_id, tokenizer.eos_token_id
    ids = torch.nn.functional.pad(new_ids, (0, max_new_tokens - new_ids.shape[1]), value=pad)
    mask, truncated = completion_mask(ids, eos)
    ids = ids.masked_fill(mask == 0, pad)
    texts = tokenizer.batch_decode(ids, skip_special_tokens=True)
    return Generation(prompt_ids, prompt_mask, ids, mask, texts, truncated)


class HFSampler:
    """Batched sampling with ``model.generate`` (KV cache, temperature, top_p, stop at EOS)."""

    def __init__(self, batch_size: int = 512):
        self.batch_size = batch_size  # prompts*k rows per generate call

    @torch.no_grad()
    def generate(
        self, model, tokenizer, prompts, k, max_new_tokens, temperature=1.0, top_p=1.0, greedy=False
    ):
        prompt_ids, prompt_mask = _prompts(tokenizer, prompts, k)
        device = model_device(model)
        chunks = []
        for s in range(0, prompt_ids.shape[0], self.batch_size):
            out = model.generate(
                input_ids=prompt_ids[s : s + self.batch_size].to(device),
                attention_mask=prompt_mask[s : s + self.batch_size].to(device),
                do_sample=not greedy,
                temperature=temperature if not greedy else None,
                top_p=top_p if not greedy else None,
                top_k=0 if not greedy else None,  # HF's default top_k=50 would change the policy
                max_new_tokens=max_new_tokens,
                pad_token_id=tokenizer.pad_token_id,
                eos_token_id=tokenizer.eos_token_id,
            )
            new = out[:, prompt_ids.shape[1] :].cpu()  # rollouts live on the CPU; batches move
            chunks.append(
                torch.nn.functional.pad(
                    new, (0, max_new_tokens - new.shape[1]), value=tokenizer.pad_token_id
                )
            )
        return _finish(tokenizer, prompt_ids, prompt_mask, torch.cat(chunks), max_new_tokens)


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


class PreferencePairs:
    """Offline source: each prompt's completions are its data set pair, chosen then rejected,
    with rewards 1 and 0 (a group of k=2). Used for offline DPO; nothing is sampled."""

    def __init__(self, rows: list[dict], max_new_tokens: int):
        self.pairs = {r["prompt"]: (r["chosen"], r["rejected"]) for r in rows}
        self.max_new_tokens = max_new_tokens

    def draw(self, policy, tokenizer, prompts: list[str]) -> Generation:
        texts = [t for p in prompts for t in self.pairs[p]]
        prompt_ids, prompt_mask = _prompts(tokenizer, prompts, 2)
        ids, mask, truncated = tokenize_completions(tokenizer, texts, self.max_new_tokens)
        rewards = torch.tensor([1.0, 0.0] * len(prompts))
        return Generation(prompt_ids, prompt_mask, ids, mask, texts, truncated, rewards=rewards)


def model_device(model) -> torch.device:
    return next(model.parameters()).device


class TokenLogps(NamedTuple):
    logp: Tensor  # [B, T] log-prob of each completion token
    entropy: Tensor | None  # [B, T] entropy of the next-token distribution (detached)
    hidden: Tensor | None  # [B, T, H] last hidden state at the position that predicts token t


def token_logps(
    model,
    input_ids: Tensor,
    attention_mask: Tensor,
    completion_len: int,
    temperature: float = 1.0,
    entropy: bool = False,
    hidden: bool = False,
) -> TokenLogps:
    """Per-token log-probs [B, T] of the last T tokens given all before (optionally entropy and
    hidden states). Position ids follow the attention mask, as in generate, so left padding does
    not shift them."""
    T = completion_len
    device = model_device(model)
    input_ids, attention_mask = input_ids.to(device), attention_mask.to(device)
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    out = model(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids,
        logits_to_keep=T + 1,
        output_hidden_states=hidden,
    )
    logits = out.logits[:, :-1]  # [B, T, V]: position t predicts completion token t
    if logits.dtype in (torch.float16, torch.bfloat16):
        logits = logits.float()  # fp32 or fp64 (a table policy) stay as they are
    logp_all = (logits / temperature).log_softmax(-1)
    logp = logp_all.gather(-1, input_ids[:, -T:].unsqueeze(-1)).squeeze(-1)
    ent = None
    if entropy:
        with torch.no_grad():
            ent = -(logp_all.exp() * logp_all).sum(-1)
    states = out.hidden_states[-1][:, -T - 1 : -1] if hidden else None
    return TokenLogps(logp, ent, states)
