"""Log-probs and entropy from the final hidden states in checkpointed chunks: the same values and
gradients as the model's own head on every architecture the packed path covers, on the packed
and the plain forward, with fewer bytes saved for backward."""

import pytest
import torch

from bench.core.generation import completion_mask
from bench.memory import SavedBytes
from bench.models import build_tokenizer
from bench.rollout import token_logps
from tests.helpers import ARCHS, arch_model

pytestmark = pytest.mark.numerics  # rounding-sensitive: also run on a second kernel set


def batch(tok, T=6):
    prompts, completions = ["1+2=", "33-1=", "9"], ["12", "7", "", "456", "1", "0000"]
    rows = [tok(p, add_special_tokens=False)["input_ids"] for p in prompts for _ in range(2)]
    comps = [
        tok(c, add_special_tokens=False)["input_ids"] + [tok.eos_token_id] for c in completions
    ]
    P = max(map(len, rows))
    pad = tok.pad_token_id
    ids = [[pad] * (P - len(r)) + r + (c + [pad] * T)[:T] for r, c in zip(rows, comps, strict=True)]
    ids = torch.tensor(ids)
    prompt_mask = torch.tensor([[0] * (P - len(r)) + [1] * len(r) for r in rows])
    mask, _ = completion_mask(ids[:, P:], tok.eos_token_id)
    return ids, torch.cat([prompt_mask, mask], 1), T


def run(model, ids, attn, T, chunk, share):
    model.zero_grad()
    saved = SavedBytes(exclude=list(model.parameters()))
    with saved():
        r = token_logps(model, ids, attn, T, entropy=True, share_prompts=share, chunk=chunk)
    on = attn[:, -T:].bool()
    weights = torch.linspace(-1, 1, on.sum().item())
    (r.logp[on] * weights).sum().backward()
    grads = [p.grad.clone() for p in model.parameters() if p.grad is not None]
    return r, on, grads, saved.bytes


@pytest.mark.parametrize("share", [True, False], ids=["packed", "plain"])
@pytest.mark.parametrize("arch", list(ARCHS))
def test_chunked_head_equals_the_models_own(arch, share):
    tok = build_tokenizer()
    impl = "eager" if arch == "gemma2" else None
    model = arch_model(arch, tok, impl)
    ids, attn, T = batch(tok)
    full, on, g_full, _ = run(model, ids, attn, T, 0, share)
    for chunk in (1, 5, 64):
        part, _, g_part, _ = run(model, ids, attn, T, chunk, share)
        torch.testing.assert_close(part.logp[on], full.logp[on], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(part.entropy[on], full.entropy[on], rtol=1e-5, atol=1e-5)
        assert (part.logp[~on] == 0).all()
        for a, b in zip(g_part, g_full, strict=True):
            assert (a - b).abs().max() <= 1e-4 * b.abs().max() + 1e-8


def test_chunks_keep_no_vocabulary_sized_tensor_for_backward():
    """A large vocabulary: the unchunked path saves [tokens x vocab] for backward, the chunked
    one only hidden states (and per-chunk targets)."""
    tok = build_tokenizer()
    model = arch_model("llama", tok)
    model.resize_token_embeddings(32_000)
    ids, attn, T = batch(tok)
    _, _, _, full = run(model, ids, attn, T, 0, True)
    _, _, _, chunked = run(model, ids, attn, T, 4, True)
    tokens = attn[:, -T:].sum().item()
    assert full > tokens * 32_000 * 4  # at least one fp32 [tokens x vocab] tensor
    assert chunked < full / 10, (full, chunked)
