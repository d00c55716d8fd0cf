"""Packed log-prob forward: each prompt once, followed by its rows' completions, no padding in
between; same log-probs, hidden states and gradients as one padded forward per row."""

import pytest
import torch

import bench.packing
import bench.rollout
from bench.core.generation import completion_mask
from bench.models import build_tokenizer
from bench.packing import _bins, can_pack
from bench.rollout import token_logps
from tests.helpers import ARCHS, arch_model

pytestmark = pytest.mark.numerics  # rounding-sensitive: also run on a second kernel set


def _batch(tok, prompts: list[str], completions: list[str], T: int):
    """Left-padded prompts (row b has prompt b // k) + right-padded completions ending in EOS."""
    enc = tok(prompts, padding=True, return_tensors="pt", add_special_tokens=False)
    k = len(completions) // len(prompts)
    rows = [tok(c, add_special_tokens=False)["input_ids"] + [tok.eos_token_id] for c in completions]
    ids = torch.tensor([r + [tok.pad_token_id] * (T - len(r)) for r in rows])
    mask, _ = completion_mask(ids, tok.eos_token_id)
    input_ids = torch.cat([enc["input_ids"].repeat_interleave(k, 0), ids], 1)
    return input_ids, torch.cat([enc["attention_mask"].repeat_interleave(k, 0), mask], 1)


def _calls(model, input_ids, attn, T: int) -> list[dict]:
    """The keyword arguments of every call of ``model`` while token_logps runs on the batch."""
    calls = []
    hook = model.register_forward_hook(lambda m, a, kw, out: calls.append(kw), with_kwargs=True)
    try:
        token_logps(model, input_ids, attn, T)
    finally:
        hook.remove()
    return calls


def test_each_prompt_runs_once_followed_by_its_rows_completions():
    """Hand-derived layout: prompt "1+2=" (4 tokens) with completions "ab", "c"; prompt "9"
    (1 token, left-padded in the batch) with "def" and "" (EOS only). A completion's last token
    is never fed, so the packed rows are [1 + 2 = a b c] and [9 d e f]."""
    tok = build_tokenizer()
    model = arch_model("llama", tok)
    input_ids, attn = _batch(tok, ["1+2=", "9"], ["ab", "c", "def", ""], T=5)
    calls = _calls(model, input_ids, attn, 5)
    (call,) = calls
    rows = {tok.decode(r[r != 0]): r for r in call["input_ids"]}
    assert set(rows) == {"1+2=abc", "9def"}  # 0 is padding in the packed rows
    ids, pos = call["input_ids"], call["position_ids"]
    long = [i for i, r in enumerate(ids) if tok.decode(r[r != 0]) == "1+2=abc"][0]
    assert pos[long].tolist() == [0, 1, 2, 3, 4, 5, 4]  # "c" restarts after its prompt
    assert pos[1 - long, :4].tolist() == [0, 1, 2, 3]
    seen = call["attention_mask"][long, 0]  # [query, key]
    assert seen[6].tolist() == [True] * 4 + [False, False, True]  # "c" sees its prompt and itself
    assert seen[5].tolist() == [True] * 6 + [False]  # "b" sees the prompt, "a" and itself
    assert seen[2].tolist() == [True] * 3 + [False] * 4  # prompt tokens: plain causal
    short = call["attention_mask"][1 - long, 0]
    assert short[5].tolist() == [False] * 5 + [True, False]  # padding sees itself only


def test_short_groups_share_a_row(monkeypatch):
    """With rows at least 11 tokens wide, the two groups above (7 and 4 tokens) share one row;
    the second group sees only itself."""
    monkeypatch.setattr(bench.packing, "min_row_width", lambda model: 11)
    tok = build_tokenizer()
    model = arch_model("llama", tok)
    input_ids, attn = _batch(tok, ["1+2=", "9"], ["ab", "c", "def", ""], T=5)
    calls = _calls(model, input_ids, attn, 5)
    (call,) = calls
    assert tok.decode(call["input_ids"][0]) == "1+2=abc9def"  # longest group first
    assert call["position_ids"][0].tolist() == [0, 1, 2, 3, 4, 5, 4, 0, 1, 2, 3]
    seen = call["attention_mask"][0, 0]
    assert seen[9].tolist() == [False] * 7 + [True] * 3 + [False]  # "e": "9", "d", itself


def _logps_and_grads(model, input_ids, attn, T, mask, share: bool):
    model.zero_grad()
    r = token_logps(model, input_ids, attn, T, entropy=True, hidden=True, share_prompts=share)
    ((r.logp * mask).sum() + (r.hidden * mask[..., None]).sum()).backward()
    return r, [p.grad.clone() for p in model.parameters() if p.grad is not None]


def _assert_same(model, input_ids, attn, T):
    mask = attn[:, -T:]
    on = mask.bool()
    (a, grads_a), (b, grads_b) = (
        _logps_and_grads(model, input_ids, attn, T, mask, share) for share in (True, False)
    )
    assert torch.allclose(a.logp[on], b.logp[on], atol=1e-5)
    assert torch.allclose(a.entropy[on], b.entropy[on], atol=1e-5)
    assert torch.allclose(a.hidden[on], b.hidden[on], atol=1e-5)
    for ga, gb in zip(grads_a, grads_b, strict=True):  # equal up to float summation order
        assert torch.isfinite(ga).all()
        assert (ga - gb).abs().max() <= 1e-4 * gb.abs().max() + 1e-8
    return a


CASES = [
    (arch, impl)
    for arch in ARCHS
    for impl in ("sdpa", "eager")
    if (arch, impl) != ("gemma2", "sdpa")
]


@pytest.mark.parametrize("rows", ["a row per group", "groups share rows"])
@pytest.mark.parametrize(("arch", "impl"), CASES)
def test_packed_forward_equals_one_padded_forward_per_row(arch, impl, rows, monkeypatch):
    """Every architecture and attention kind the packed path takes: log-probs, entropy, hidden
    states and gradients equal one forward over [prompt; completion] per row. Prompts of
    different lengths, one prompt in two groups, completions of 1 to 6 tokens."""
    if rows == "groups share rows":
        monkeypatch.setattr(bench.packing, "min_row_width", lambda model: 30)
    tok = build_tokenizer()
    model = arch_model(arch, tok, attn_implementation=impl)
    assert can_pack(model, 16)
    prompts = ["1+2=", "what is 12*13? ", "7", "1+2="]
    completions = ["12", "3", "abcde", "", "x", "yy", "zzz", "4", "55", "1", "", "42"]
    input_ids, attn = _batch(tok, prompts, completions, T=6)
    calls = _calls(model, input_ids, attn, 6)
    # one call; groups of 15 ("1+2=" twice), 18 and 7 tokens: a row each, or rows of 18+7 and 15
    want = [(3, 18)] if rows == "a row per group" else [(2, 25)]
    assert [tuple(c["input_ids"].shape) for c in calls] == want
    packed = _assert_same(model, input_ids, attn, 6)
    assert ((packed.hidden == 0).all(-1) | attn[:, -6:].bool()).all()  # zeros off the mask


def test_models_that_cannot_pack_share_prompts_through_the_kv_cache(monkeypatch):
    """Without a 4D mask (e.g. flash attention) the prompt runs once and its KV cache is indexed
    out to the rows: two calls, same numbers."""
    monkeypatch.setattr(bench.rollout, "can_pack", lambda model, seq_len: False)
    tok = build_tokenizer()
    model = arch_model("llama", tok)
    input_ids, attn = _batch(tok, ["1+2=", "9"], ["12", "3", "abcde", ""], T=6)
    calls = _calls(model, input_ids, attn, 6)
    assert [c["input_ids"].shape for c in calls] == [(2, 4), (4, 5)]  # prompts, then completions
    _assert_same(model, input_ids, attn, 6)


def test_what_packs():
    tok = build_tokenizer()
    assert can_pack(arch_model("gemma2", tok, attn_implementation="eager"), 4096)
    assert not can_pack(arch_model("gemma2", tok, attn_implementation="eager"), 4097)  # window
    assert not can_pack(torch.nn.Linear(2, 2), 4)  # not a transformers model
    assert not can_pack(arch_model("llama", tok, attn_implementation="flex_attention"), 4)


def test_first_fit_decreasing_rows():
    """Longest first, each into the first row with room; rows are max(longest, min width) wide."""
    row, start, n_rows, width = _bins([5, 9, 3, 4, 2], min_capacity=10, device="cpu")
    # 9 -> row 0; 5 -> row 1; 4 -> row 1 at 5 (9+4 > 10); 3 -> row 2; 2 -> row 2 at 3
    assert row.tolist() == [1, 0, 2, 1, 2] and start.tolist() == [0, 0, 0, 5, 3]
    assert (n_rows, width) == (3, 9)
    row, start, n_rows, width = _bins([5, 9, 3], min_capacity=0, device="cpu")
    # rows are 9 wide: 9 -> row 0; 5 -> row 1; 3 -> row 1 at 5
    assert row.tolist() == [1, 0, 1] and start.tolist() == [0, 0, 5] and (n_rows, width) == (2, 9)
