"""Rollout layer: sample k completions per prompt, and recompute per-token log-probs.

``HFSampler`` implements ``bench.core.Sampler`` with a transformers model and its KV cache (the
vLLM backend is bench/vllm_sampler.py). Log-probs used for training (old / reference) are
always recomputed with the training-side model by ``token_logps``, never taken from the sampler.
"""

from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor
from transformers import PreTrainedModel
from transformers.generation.logits_process import TopPLogitsWarper

from bench.core.errors import NonFinite
from bench.core.generation import finish_generation, prompt_tensors
from bench.logprobs import chunked_logps
from bench.packing import can_pack, packed_outputs


class HFSampler:
    """Batched sampling from a transformers causal LM with its KV cache: temperature, top_p,
    stop at EOS.

    Each prompt is prefilled once and its KV cache repeated to its k rows (a group shares its
    prompt), and the first token of every row is drawn from that prefill's logits, so the prompt's
    cost is paid once per group. The decode loop is ``model(...)`` with the model's own cache,
    token by token, drawing as HF generate's ``torch.multinomial`` does (same seed, same tokens:
    tested). It samples exactly the distribution the loss's log-probs describe: HF generate would
    also apply a checkpoint's generation_config extras (repetition_penalty, top_k, min_p, ...).
    Models without an HF KV cache (e.g. the bandit's table policy) go through ``model.generate``."""

    def __init__(self, batch_size: int = 512, keyed: bool = True):
        self.batch_size = batch_size  # prompts*k rows per decode loop
        self.keyed = keyed  # keyed draws (``keyed_choice``); False: the global generator

    def weights_changed(self) -> None:  # the loop reads the live model: nothing to sync
        pass

    @torch.no_grad()
    def generate(
        self,
        model,
        tokenizer,
        prompts,
        k,
        max_new_tokens,
        *,
        temperature=1.0,
        top_p=1.0,
        greedy=False,
        keys=None,
    ):
        """``keys`` [len(prompts)]: each prompt's draw key (default: ``prompt_keys``)."""
        prompt_ids, prompt_mask = prompt_tensors(tokenizer, prompts, 1)
        device = model_device(model)
        if keys is None and self.keyed:
            keys = prompt_keys(len(prompts))
        per_call = max(1, self.batch_size // k)
        chunks = []
        for s in range(0, prompt_ids.shape[0], per_call):
            ids = prompt_ids[s : s + per_call].to(device)
            mask = prompt_mask[s : s + per_call].to(device)
            row_keys = None if keys is None else sample_keys(keys[s : s + per_call], k)
            draw = _Draw(temperature, top_p, greedy, row_keys)
            if _has_kv_cache(model):
                new = _decode(model, ids, mask, k, draw, tokenizer, max_new_tokens=max_new_tokens)
            else:  # model.generate draws from the global generator: keys do not apply
                new = _library_generate(
                    model, ids, mask, k, draw, tokenizer, max_new_tokens=max_new_tokens
                )
            chunks.append(
                torch.nn.functional.pad(
                    new.cpu(), (0, max_new_tokens - new.shape[1]), value=tokenizer.pad_token_id
                )  # rollouts live on the CPU; batches move
            )
        ids, mask = prompt_ids.repeat_interleave(k, dim=0), prompt_mask.repeat_interleave(k, dim=0)
        return finish_generation(tokenizer, ids, mask, torch.cat(chunks), max_new_tokens)


@dataclass(frozen=True)
class _Draw:
    """Next-token choice from logits [B, V]: argmax, or a draw from softmax(logits / temperature)
    restricted to the top_p nucleus (transformers' own warper), as in HF generate.

    ``live`` names the rows of an ``n_rows`` batch that the logits belong to (rows that ended
    have left the batch). With ``row_keys`` [n_rows] row i's token t is ``keyed_choice`` of its
    probabilities with the uniform ``keyed_uniform(row_keys[i], t)``; without, the uniforms come
    from the global generator, drawn for all n_rows rows as generate draws for finished rows too,
    so the live rows get generate's tokens for a seed."""

    temperature: float
    top_p: float
    greedy: bool
    row_keys: Tensor | None = None

    def __call__(self, logits: Tensor, live: Tensor | None = None, n_rows: int = 0, t: int = 0):
        if self.greedy:
            return logits.argmax(-1)
        if self.temperature != 1.0:
            logits = logits / self.temperature
        if self.top_p < 1.0:
            logits = TopPLogitsWarper(self.top_p)(None, logits)
        if self.row_keys is None:
            return multinomial_one(logits.softmax(-1), live, n_rows)
        keys = self.row_keys if live is None else self.row_keys[live.cpu()]
        return keyed_choice(logits.softmax(-1), keyed_uniform(keys, t))


# Keyed draws: the uniform behind a sampled token is a hash (splitmix64) of (row key, token
# position), so a completion depends on its key only, not on the batch it is decoded in, how that
# batch is cut (``batch_size``), or the process that decodes it. A prompt's key comes from one
# draw of the global generator per ``generate`` call and the prompt's index in the call; a row's
# from its prompt's key and its index j < k in the group. One uniform per row and token, turned
# into a token by the inverse CDF: an exponential race would need one per vocabulary entry
# (49k-152k hashes per token, 12% of a SmolLM2 decode step).
_M1, _M2, _GOLDEN = 0xBF58476D1CE4E5B9, 0x94D049BB133111EB, 0x9E3779B97F4A7C15


def _int64(x: int) -> int:
    return x - (1 << 64) if x >= 1 << 63 else x


def _shr(x: Tensor, s: int) -> Tensor:
    """Logical right shift of int64 bits."""
    return (x >> s) & ((1 << (64 - s)) - 1)


def splitmix64(x: Tensor) -> Tensor:
    """The splitmix64 finaliser on int64 tensors (wrapping arithmetic = uint64 bits)."""
    x = x ^ _shr(x, 30)
    x = x * _int64(_M1)
    x = x ^ _shr(x, 27)
    x = x * _int64(_M2)
    return x ^ _shr(x, 31)


def keyed_uniform(keys: Tensor, t: int) -> Tensor:
    """Uniforms in (0, 1), float64 [len(keys)]: a hash of (key, t)."""
    x = splitmix64(splitmix64(keys.long() * _int64(_GOLDEN) + t))
    return (_shr(x, 11).double() + 0.5) / float(1 << 53)


def keyed_choice(probs: Tensor, u: Tensor) -> Tensor:
    """The token of each row [B, V] whose cumulative probability interval holds u * total
    (inverse CDF, float64): token i with probability probs[i] / total, never a zero one."""
    _check_probs(probs)
    cdf = probs.double().cumsum(-1)
    total = cdf[:, -1:]
    v = torch.minimum(
        u.to(cdf.device)[:, None] * total, torch.nextafter(total, total.new_zeros(()))
    )
    return torch.searchsorted(cdf, v, right=True).squeeze(1)


def prompt_keys(n: int, first: int = 0) -> Tensor:
    """Draw keys of n prompts: one draw of the global generator (the same on every rank), mixed
    with each prompt's index ``first + i`` in the call."""
    base = int(torch.randint(0, 1 << 62, ()))
    return splitmix64(torch.full((n,), base) + torch.arange(first, first + n) * _int64(_GOLDEN))


def sample_keys(keys: Tensor, k: int) -> Tensor:
    """Keys of the k rows of each prompt (prompt-major, as the decode batch)."""
    j = torch.arange(k).repeat(len(keys))
    return splitmix64(keys.repeat_interleave(k) ^ splitmix64(j + 1))


def multinomial_one(probs: Tensor, live: Tensor | None = None, n_rows: int = 0) -> Tensor:
    """``torch.multinomial(probs, 1).squeeze(1)`` by the same exponential race, argmax p / q with
    q ~ Exp(1) = -log1p(-u), u uniform in float64: on the CPU the same generator draws and the
    same tokens (tested), 2.6x faster (torch's CPU ``exponential_`` costs 0.33 ms for 64 x 258).
    With ``live``, probs are rows ``live`` of an n_rows batch: the draw of those rows."""
    _check_probs(probs)
    shape = probs.shape if live is None else (n_rows, probs.shape[1])
    u = torch.rand(shape, dtype=torch.float64, device=probs.device)
    u = u if live is None else u[live]
    return (probs / (-torch.log1p(-u)).to(probs.dtype)).argmax(-1)


def _check_probs(probs: Tensor) -> None:
    if not bool(((probs >= 0) & (probs < torch.inf)).all()):  # also False for NaN
        raise NonFinite(
            "the policy's next-token probabilities contain inf, nan or values < 0 "
            "(non-finite weights or logits: a lower train.lr or train.max_grad_norm?)"
        )


def _decode(model, ids: Tensor, mask: Tensor, k: int, draw, tokenizer, *, max_new_tokens: int):
    """New tokens [U*k, <= max_new_tokens] for U left-padded prompts, k rows each (EOS, then pad).
    A row leaves the decode batch (and its KV cache) when it ends; stops when every row has."""
    pad, eos = tokenizer.pad_token_id, tokenizer.eos_token_id
    position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
    out = model(
        input_ids=ids,
        attention_mask=mask,
        position_ids=position_ids,
        use_cache=True,
        logits_to_keep=1,
    )
    cache, logits = _cache_of(out), out.logits[:, -1].float()
    if k > 1:
        cache.batch_repeat_interleave(k)
        logits = logits.repeat_interleave(k, dim=0)
    mask = mask.repeat_interleave(k, dim=0)
    position_ids = position_ids[:, -1:].repeat_interleave(k, dim=0)
    n = mask.shape[0]
    tokens = torch.full((n, max_new_tokens), pad, dtype=torch.long, device=mask.device)
    live = torch.arange(n, device=mask.device)  # rows still being decoded
    for t in range(max_new_tokens):
        token = draw(logits, live, n, t)
        tokens[live, t] = token
        going = token != eos
        if t + 1 == max_new_tokens or not bool(going.any()):
            break
        if not bool(going.all()):  # ended rows leave the batch
            keep = going.nonzero().squeeze(1)
            live, token, mask, position_ids = (
                live[keep],
                token[keep],
                mask[keep],
                position_ids[keep],
            )
            cache.batch_select_indices(keep)
        mask = torch.cat([mask, mask.new_ones(mask.shape[0], 1)], dim=1)
        position_ids = position_ids + 1
        out = model(
            input_ids=token[:, None],
            attention_mask=mask,
            position_ids=position_ids,
            **_with_cache(model, cache),
            use_cache=True,
        )
        cache, logits = _cache_of(out), out.logits[:, -1].float()
    return tokens[:, : t + 1]


def _library_generate(model, ids, mask, k: int, draw: _Draw, tokenizer, *, max_new_tokens: int):
    """``model.generate`` on the k-times repeated prompts (models without an HF KV cache)."""
    out = model.generate(
        input_ids=ids.repeat_interleave(k, dim=0),
        attention_mask=mask.repeat_interleave(k, dim=0),
        do_sample=not draw.greedy,
        temperature=None if draw.greedy else draw.temperature,
        top_p=None if draw.greedy else draw.top_p,
        top_k=None if draw.greedy else 0,  # HF's default top_k=50 would change the policy
        max_new_tokens=max_new_tokens,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    return out[:, ids.shape[1] :]


def _has_kv_cache(model) -> bool:
    """An HF model that returns a KV cache (gradient checkpointing turns the cache off)."""
    if not isinstance(model, PreTrainedModel):
        return False
    name = (  # the old name warns in transformers 5.24; 5.19 (the vLLM CPU pin) has only it
        "is_activation_checkpointing"
        if hasattr(type(model), "is_activation_checkpointing")
        else "is_gradient_checkpointing"
    )
    return not getattr(model, name, False)


@functools.cache
def _cache_kwarg(model_class) -> str:
    """``cache`` in transformers >= 5.20, ``past_key_values`` before (vLLM's CPU wheel pins 5.19)."""
    params = inspect.signature(model_class.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def _with_cache(model, cache) -> dict:
    """The KV-cache keyword argument for ``model``, or nothing when there is no cache."""
    return {} if cache is None else {_cache_kwarg(type(model)): cache}


def _cache_of(out):
    cache = getattr(out, "cache", None)
    return cache if cache is not None else out.past_key_values


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
    *,
    entropy: bool = False,
    hidden: bool = False,
    share_prompts: bool = True,
    chunk: int = 0,
) -> TokenLogps:
    """Per-token log-probs [B, T] of the last T tokens given all before (optionally entropy and
    hidden states). Position ids follow the attention mask, as in generate, so left padding does
    not shift them. Rows that share a prompt (a group) run the prompt once: see ``_outputs``.

    The completion part of ``attention_mask`` is the completion mask: columns after the longest
    completion are padding in every row, and are not run (their outputs are zeros).

    ``chunk`` > 0: the LM head runs on that many scored tokens at a time, checkpointed
    (bench/logprobs.py); log-probs and entropy are then zeros at masked positions."""
    T = completion_len
    device = model_device(model)
    input_ids, attention_mask = input_ids.to(device), attention_mask.to(device)
    cut = T - _longest(attention_mask[:, -T:])  # all-padding columns at the end
    if cut:
        input_ids, attention_mask, T = input_ids[:, :-cut], attention_mask[:, :-cut], T - cut
    if chunk and isinstance(model, PreTrainedModel):
        _, states = _outputs(model, input_ids, attention_mask, T, True, share_prompts, head=False)
        valid = attention_mask[:, -T:].bool()
        logp, ent = chunked_logps(model, states, input_ids[:, -T:], valid, temperature, chunk)
        res = TokenLogps(logp, ent if entropy else None, states if hidden else None)
    else:
        logits, states = _outputs(model, input_ids, attention_mask, T, hidden, share_prompts)
        if logits.dtype in (torch.float16, torch.bfloat16):
            logits = logits.float()  # fp32 or fp64 (a table policy) stay as they are
        logp_all = (logits / temperature).log_softmax(-1)
        logp = logp_all.gather(-1, input_ids[:, -T:].unsqueeze(-1)).squeeze(-1)
        ent = None
        if entropy:
            with torch.no_grad():
                ent = -(logp_all.exp() * logp_all).sum(-1)
        res = TokenLogps(logp, ent, states)
    if not cut:
        return res
    states = res.hidden  # back to [B, completion_len]: masked positions hold zeros
    states = None if states is None else _pad_cols(states.transpose(1, 2), cut).transpose(1, 2)
    return TokenLogps(_pad_cols(res.logp, cut), _pad_cols(res.entropy, cut), states)


def _longest(completion_mask: Tensor) -> int:
    """1 + the last column any row uses (at least 1)."""
    used = completion_mask.any(dim=0).nonzero()
    return int(used.max()) + 1 if len(used) else 1


def _pad_cols(x: Tensor | None, n: int) -> Tensor | None:
    return None if x is None else torch.nn.functional.pad(x, (0, n))


def _outputs(model, input_ids, attention_mask, T: int, hidden: bool, share: bool, head=True):
    """Logits [B, T, V] at the positions that predict the T completion tokens (and the last hidden
    states there when ``hidden``).

    A group's k rows carry the same prompt, and under a causal mask a prompt's keys and values do
    not depend on what follows, so each distinct prompt runs once: packed with its rows'
    completions and no padding (``bench.packing``) when the model takes a 4D mask, else its KV
    cache is indexed out to its rows before the completions run. Same numbers as one forward over
    [prompt; completion] (tested to 1e-5, gradients included), with the prompt's share of the
    FLOPs divided by k."""
    P = input_ids.shape[1] - T
    if (
        share
        and P > 0
        and can_pack(model, input_ids.shape[1])
        and attention_mask[:, :P].any(1).all()
    ):
        return packed_outputs(model, input_ids, attention_mask, T, hidden, head)
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    # The last completion token predicts nothing we score, and no scored position attends to it,
    # so it is never fed: every forward stops one token short.
    if not head:  # final hidden states of the plain forward (the LM head is the caller's)
        out = model.base_model(
            input_ids=input_ids[:, :-1],
            attention_mask=attention_mask[:, :-1],
            position_ids=position_ids[:, :-1],
            use_cache=False,
        )
        return None, out.last_hidden_state[:, -T:]
    unique = inverse = None
    if share and P > 1 and _has_kv_cache(model):
        prompts = torch.cat([input_ids[:, :P], attention_mask[:, :P]], dim=1)
        unique, inverse = torch.unique(prompts, dim=0, return_inverse=True)
    if unique is None or unique.shape[0] > 0.75 * len(input_ids):  # little or nothing shared
        out = model(
            input_ids=input_ids[:, :-1],
            attention_mask=attention_mask[:, :-1],
            position_ids=position_ids[:, :-1],
            logits_to_keep=T,
            output_hidden_states=hidden,
            use_cache=False,  # nothing is decoded after a scoring forward
        )
        return out.logits, (out.hidden_states[-1][:, -T:] if hidden else None)
    first = torch.empty(unique.shape[0], dtype=torch.long, device=inverse.device)
    first[inverse] = torch.arange(len(inverse), device=inverse.device)  # a row of each prompt
    head = model(
        input_ids=input_ids[first, :P],
        attention_mask=attention_mask[first, :P],
        position_ids=position_ids[first, :P],
        use_cache=True,
        logits_to_keep=1,
        output_hidden_states=hidden,
    )
    logits = [head.logits[inverse]]
    states = [head.hidden_states[-1][inverse, -1:]] if hidden else []
    if T > 1:
        cache = _cache_of(head)
        cache.batch_select_indices(inverse)  # [U, ...] -> [B, ...]: differentiable indexing
        tail = model(
            input_ids=input_ids[:, P:-1],
            attention_mask=attention_mask[:, :-1],
            position_ids=position_ids[:, P:-1],
            **_with_cache(model, cache),
            use_cache=True,
            output_hidden_states=hidden,
        )
        logits.append(tail.logits)
        states += [tail.hidden_states[-1]] if hidden else []
    logits = torch.cat(logits, dim=1)
    states = torch.cat(states, dim=1) if hidden else None
    return logits, states
