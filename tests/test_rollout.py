"""Rollout layer: tokenizer round trip, EOS masks, and recomputed log-probs == the sampler's."""

import copy

import pytest
import torch
from transformers import AutoTokenizer

from bench.config import ModelConfig
from bench.core.errors import NonFinite
from bench.core.generation import completion_mask
from bench.core.rewards import score
from bench.models import build_tiny_model, build_tokenizer
from bench.rollout import HFSampler, multinomial_one, token_logps
from tests.helpers import ARCHS, arch_model

pytestmark = pytest.mark.numerics  # rounding-sensitive: also run on a second kernel set

SMALL = ModelConfig(hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64)


@pytest.fixture(scope="module")
def tiny():
    tok = build_tokenizer()
    return build_tiny_model(SMALL, tok).eval(), tok


def test_tokenizer_round_trips_after_save(tmp_path):
    tok = build_tokenizer()
    tok.save_pretrained(tmp_path)
    again = AutoTokenizer.from_pretrained(tmp_path)
    for text in ["12+34=46", "  a b\tc ", "-7", "héllo wörld"]:
        ids = again(text, add_special_tokens=False)["input_ids"]
        assert again.decode(ids) == text
        assert ids == tok(text, add_special_tokens=False)["input_ids"]
    assert (
        len(tok("0123456789+-=", add_special_tokens=False)["input_ids"]) == 13
    )  # one token per char


def test_completion_mask_stops_after_first_eos():
    ids = torch.tensor([[5, 1, 7, 1], [5, 6, 7, 8], [1, 2, 3, 4]])
    mask, truncated = completion_mask(ids, eos_id=1)
    assert mask.tolist() == [[1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0]]
    assert truncated.tolist() == [False, True, False]


def test_sampler_groups_and_recomputed_logps_match_generate(tiny):
    model, tok = tiny
    prompts = ["1+2=", "33-14+2="]  # different lengths: left padding must not shift positions
    torch.manual_seed(0)
    gen = HFSampler(keyed=False).generate(model, tok, prompts, k=3, max_new_tokens=5)
    assert gen.completion_ids.shape == (6, 5) and len(gen.texts) == 6
    assert torch.equal(gen.prompt_ids[0], gen.prompt_ids[2]) and not torch.equal(
        gen.prompt_ids[0], gen.prompt_ids[3]
    )
    # the same sampling with scores from generate itself
    enc = tok(prompts, padding=True, return_tensors="pt", add_special_tokens=False)
    torch.manual_seed(0)
    out = model.generate(
        **enc,
        do_sample=True,
        top_k=0,
        max_new_tokens=5,
        output_scores=True,
        return_dict_in_generate=True,
        pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id,
    )
    new = out.sequences[:, enc["input_ids"].shape[1] :]
    scores = torch.stack(out.scores, 1).log_softmax(-1).gather(-1, new.unsqueeze(-1)).squeeze(-1)
    attn = torch.cat([enc["attention_mask"], torch.ones_like(new)], 1)
    mine, ent, _ = token_logps(model, out.sequences, attn, new.shape[1], entropy=True)
    assert torch.allclose(mine, scores, atol=1e-5)
    assert ent.shape == mine.shape and (ent >= 0).all()


def test_multinomial_one_draws_what_torch_multinomial_draws():
    """Same tokens and the same generator state after, for distributions with zeros (a top-p
    nucleus), a near-one-hot row and float64; NaN is refused as torch refuses it."""
    g = torch.Generator().manual_seed(0)
    probs = torch.rand(64, 258, generator=g).pow(4)
    probs[:, 100:] = 0
    probs[0] = 0
    probs[0, 7] = 1
    for dtype in (torch.float32, torch.float64):
        p = (probs / probs.sum(-1, keepdim=True)).to(dtype)
        for seed in range(50):
            torch.manual_seed(seed)
            want, after = torch.multinomial(p, 1).squeeze(1), torch.rand(2)
            torch.manual_seed(seed)
            assert torch.equal(multinomial_one(p), want) and torch.equal(torch.rand(2), after)
    with pytest.raises(ValueError, match="nan"):
        multinomial_one(torch.tensor([[0.5, float("nan")]]))


def test_greedy_is_deterministic(tiny):
    model, tok = tiny
    a = HFSampler(keyed=False).generate(model, tok, ["1+1="], 1, 4, greedy=True)
    b = HFSampler(keyed=False).generate(model, tok, ["1+1="], 1, 4, greedy=True)
    assert a.texts == b.texts


def test_unscorable_rewards_are_counted_not_silent():
    def fn(prompts, completions, answer):
        return [
            None if c == "?" else float(c == a) for c, a in zip(completions, answer, strict=False)
        ]

    rewards, n_none = score(fn, ["p"] * 3, ["1", "?", "2"], [{"prompt": "p", "answer": "1"}] * 3)
    assert rewards.tolist() == [1.0, 0.0, 0.0] and n_none == 1
    with pytest.raises(ValueError, match="returned 1 values for 2"):
        score(lambda p, c, **kw: [1.0], ["p", "p"], ["a", "b"], [{"prompt": "p"}] * 2)


def test_preference_pairs_source():
    from bench.sources import PreferencePairs

    tok = build_tokenizer()
    src = PreferencePairs(
        [
            {"prompt": "1+2=", "chosen": "3", "rejected": "4"},
            {"prompt": "9+9=", "chosen": "18", "rejected": "17"},
        ],
        max_new_tokens=4,
    )
    gen = src.draw(None, tok, ["9+9=", "1+2="])
    assert gen.texts == ["18", "17", "3", "4"] and gen.rewards.tolist() == [1.0, 0.0, 1.0, 0.0]
    assert gen.completion_mask.tolist() == [[1, 1, 1, 0], [1, 1, 1, 0], [1, 1, 0, 0], [1, 1, 0, 0]]
    assert gen.completion_ids[2, 1].item() == tok.eos_token_id


def test_arithmetic_preference_pairs_are_right_vs_near_miss():
    from tasks import TASKS

    task = TASKS.get("arithmetic")(TASKS.get("arithmetic").Config())
    for r in task.preference_rows()[:50]:
        assert r["chosen"] == r["answer"] and 1 <= abs(int(r["rejected"]) - int(r["answer"])) <= 3


def test_shared_prompt_forward_equals_one_pass_with_gradients(tiny):
    """Groups run their prompt once (KV cache indexed out to the k rows): log-probs, hidden
    states and gradients equal one forward over [prompt; completion] for every row."""
    model, tok = tiny
    prompts = ["1+2=", "what is 12*13? ", "7", "1+2="]  # lengths differ; one prompt twice
    torch.manual_seed(1)
    gen = HFSampler(keyed=False).generate(model, tok, prompts, k=3, max_new_tokens=6)
    ids = gen.completion_ids.clone()
    ids[::2, 2] = tok.eos_token_id  # half the rows stop early: padded completions
    mask, _ = completion_mask(ids, tok.eos_token_id)
    ids = ids.masked_fill(mask == 0, tok.pad_token_id)
    input_ids = torch.cat([gen.prompt_ids, ids], 1)
    attn = torch.cat([gen.prompt_mask, mask], 1)

    def run(share):
        model.zero_grad()
        r = token_logps(model, input_ids, attn, 6, entropy=True, hidden=True, share_prompts=share)
        ((r.logp * mask).sum() + (r.hidden * mask[..., None]).sum()).backward()
        return r, [p.grad.clone() for p in model.parameters()]

    (a, grads_a), (b, grads_b) = run(True), run(False)
    on = mask.bool()
    assert torch.allclose(a.logp[on], b.logp[on], atol=1e-5)
    assert torch.allclose(a.entropy[on], b.entropy[on], atol=1e-5)
    assert torch.allclose(a.hidden[on], b.hidden[on], atol=1e-5)
    for ga, gb in zip(grads_a, grads_b, strict=True):  # equal up to float summation order
        assert (ga - gb).abs().max() <= 1e-5 * gb.abs().max()
    model.zero_grad()


def test_columns_after_the_longest_completion_are_not_run(tiny):
    """When every row ends early, the trailing all-padding columns are not fed to the model;
    log-probs, entropy and hidden states equal a plain forward over all columns, zeros after."""
    model, tok = tiny
    eos = tok.eos_token_id
    gen = HFSampler(keyed=False).generate(model, tok, ["1+2=", "45+6="], k=2, max_new_tokens=6)
    ids = gen.completion_ids.clone()
    ids[:, 3], ids[0, 1] = eos, eos  # the longest completion is 4 tokens of 6
    mask, _ = completion_mask(ids, eos)
    ids = ids.masked_fill(mask == 0, tok.pad_token_id)
    input_ids = torch.cat([gen.prompt_ids, ids], 1)
    attn = torch.cat([gen.prompt_mask, mask], 1)
    fed = []
    hook = model.register_forward_hook(
        lambda m, args, kw, out: fed.append(kw["input_ids"].shape[1]), with_kwargs=True
    )
    try:
        got = token_logps(model, input_ids, attn, 6, entropy=True, hidden=True, share_prompts=False)
    finally:
        hook.remove()
    position_ids = (attn.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        out = model(
            input_ids, attention_mask=attn, position_ids=position_ids, output_hidden_states=True
        )
    logp_all = out.logits[:, -7:-1].log_softmax(-1)
    want = logp_all.gather(-1, ids.unsqueeze(-1)).squeeze(-1)
    on = mask.bool()
    assert fed == [gen.prompt_ids.shape[1] + 3]  # prompt + 4 completion tokens, the last unfed
    assert torch.allclose(got.logp[on], want[on], atol=1e-5)
    assert torch.allclose(got.hidden[on], out.hidden_states[-1][:, -7:-1][on], atol=1e-5)
    assert torch.allclose(got.entropy[on], -(logp_all.exp() * logp_all).sum(-1)[on], atol=1e-5)
    assert got.logp.shape == got.entropy.shape == (4, 6) and got.hidden.shape[:2] == (4, 6)
    assert (got.logp[:, 4:] == 0).all() and (got.hidden[:, 4:] == 0).all()


def _hf_generate(model, tok, prompts, k, max_new_tokens, **sampling):
    """Reference: HF generate on the k-times repeated prompts, cut and padded like a Generation."""
    enc = tok(prompts, padding=True, return_tensors="pt", add_special_tokens=False)
    out = model.generate(
        input_ids=enc["input_ids"].repeat_interleave(k, 0),
        attention_mask=enc["attention_mask"].repeat_interleave(k, 0),
        max_new_tokens=max_new_tokens,
        pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id,
        **sampling,
    )
    new = out[:, enc["input_ids"].shape[1] :]
    new = torch.nn.functional.pad(new, (0, max_new_tokens - new.shape[1]), value=tok.pad_token_id)
    mask, _ = completion_mask(new, tok.eos_token_id)
    return new.masked_fill(mask == 0, tok.pad_token_id)


@pytest.mark.parametrize(
    "sampling",
    [
        {"greedy": True},
        {"temperature": 1.0, "top_p": 1.0},
        {"temperature": 0.7, "top_p": 0.9},
        {"temperature": 1.3, "top_p": 0.5},
    ],
)
def test_sampler_draws_the_same_tokens_as_hf_generate(tiny, sampling):
    """The sampler prefills each prompt once, repeats its cache to the k rows and draws the first
    token from that prefill; with the same seed it returns exactly HF generate's tokens on the
    k-times repeated prompts (greedy and sampled, with temperature and top_p)."""
    model, tok = tiny
    prompts = ["1+2=", "33-14+2=", "9", "1+2="]  # lengths differ; one prompt twice
    torch.manual_seed(3)
    gen = HFSampler(keyed=False).generate(model, tok, prompts, k=3, max_new_tokens=7, **sampling)
    if sampling.get("greedy"):
        hf_kwargs = {"do_sample": False}
    else:
        hf_kwargs = {"do_sample": True, "top_k": 0, **sampling}
    torch.manual_seed(3)
    want = _hf_generate(model, tok, prompts, 3, 7, **hf_kwargs)
    assert torch.equal(gen.completion_ids, want)
    if not sampling.get("greedy"):  # k samples of a prompt differ: the rows draw independently
        assert len({tuple(r) for r in gen.completion_ids[:3].tolist()}) > 1


@pytest.mark.parametrize("sampling", [{"greedy": True}, {"temperature": 0.8, "top_p": 0.9}])
def test_rows_that_end_leave_the_decode_batch(tiny, sampling):
    """With EOS made likely (+4 on its logit, through a hook HF generate sees too), rows end at
    different steps: they leave the decode batch and its KV cache, and the rest still get
    exactly HF generate's tokens for the seed."""
    model, tok = tiny

    def likely_eos(module, args, kwargs, out):
        out.logits[..., tok.eos_token_id] += 4.0
        rows.append(kwargs["input_ids"].shape[0])

    rows: list[int] = []
    hook = model.register_forward_hook(likely_eos, with_kwargs=True)
    try:
        torch.manual_seed(5)
        gen = HFSampler(keyed=False).generate(
            model, tok, ["1+2=", "33-14+2=", "9"], 4, 8, **sampling
        )
        decode_rows = rows[1:]
        hf = {"do_sample": False} if sampling.get("greedy") else {"do_sample": True, "top_k": 0}
        hf |= {key: v for key, v in sampling.items() if key != "greedy"}
        torch.manual_seed(5)
        want = _hf_generate(model, tok, ["1+2=", "33-14+2=", "9"], 4, 8, **hf)
    finally:
        hook.remove()
    assert torch.equal(gen.completion_ids, want)
    lengths = gen.completion_mask.sum(1)
    if not sampling.get("greedy"):
        assert len(set(lengths.tolist())) > 2  # rows end at different steps
        assert decode_rows == sorted(decode_rows, reverse=True) and decode_rows[-1] < 12
    # a decode step feeds only the rows that have not ended
    assert decode_rows == [int((lengths > t + 1).sum()) for t in range(len(decode_rows))]


def test_sampler_ignores_generation_config_extras(tiny):
    """Samples come from the policy's own distribution (what the loss's log-probs describe): a
    checkpoint's generation_config (here repetition_penalty and top_k) changes HF generate, not
    the sampler."""
    model, tok = tiny
    prompts = ["1+2=", "7*8="]
    torch.manual_seed(0)
    before = HFSampler(keyed=False).generate(model, tok, prompts, 2, 6).completion_ids
    saved = model.generation_config
    model.generation_config = copy.deepcopy(saved)
    model.generation_config.repetition_penalty, model.generation_config.top_k = 50.0, 1
    try:
        torch.manual_seed(0)
        after = HFSampler(keyed=False).generate(model, tok, prompts, 2, 6).completion_ids
        torch.manual_seed(0)
        hf = _hf_generate(model, tok, prompts, 2, 6, do_sample=True)
    finally:
        model.generation_config = saved
    assert torch.equal(before, after)
    assert not torch.equal(hf, before)  # HF generate would have applied them


def test_sampler_stops_when_every_row_has_ended(tiny):
    """Rows that reach EOS are padded after it, and the loop ends once all rows have ended."""
    model, tok = tiny
    bias = torch.full((model.config.vocab_size,), -1e4)
    bias[tok.eos_token_id] = 1e4  # every row draws EOS first
    calls = []
    hooks = [
        model.lm_head.register_forward_hook(lambda m, i, out: out * 0 + bias),
        model.register_forward_hook(lambda *_: calls.append(1)),
    ]
    try:
        gen = HFSampler(keyed=False).generate(model, tok, ["1+2=", "9"], 2, 8)
    finally:
        for h in hooks:
            h.remove()
    assert gen.completion_mask.tolist() == [[1] + [0] * 7] * 4
    assert (gen.completion_ids[:, 0] == tok.eos_token_id).all()
    assert (gen.completion_ids[:, 1:] == tok.pad_token_id).all()
    assert len(calls) == 1  # the prefill only: no decode step after every row ended


def test_gradient_checkpointing_models_take_the_one_pass_forward():
    """Gradient checkpointing turns HF's KV cache off: such models skip the prompt sharing."""
    tok = build_tokenizer()
    model = build_tiny_model(SMALL, tok)
    gen = HFSampler(keyed=False).generate(model, tok, ["1+2=", "3+4="], k=3, max_new_tokens=4)
    want = token_logps(model, gen.input_ids, gen.attention_mask, 4).logp
    model.gradient_checkpointing_enable()
    model.train()
    got = token_logps(model, gen.input_ids, gen.attention_mask, 4).logp
    got.sum().backward()
    assert torch.allclose(got, want, atol=1e-6)
    again = HFSampler(keyed=False).generate(
        model, tok, ["1+2=", "3+4="], k=3, max_new_tokens=4, greedy=True
    )
    assert again.completion_ids.shape == (6, 4)  # and the sampler works on such a model


@pytest.mark.parametrize("arch", list(ARCHS))
def test_sampler_and_shared_forward_on_other_architectures(arch):
    """Built from a transformers config (no download): the sampler returns HF generate's tokens
    (greedy and sampled, same seed) and the prompt-shared log-probs equal one forward."""
    tok = build_tokenizer()
    model = arch_model(arch, tok)
    prompts = ["1+2=", "33-14+2=", "9"]
    for sampling in ({"greedy": True}, {"temperature": 1.0}):
        torch.manual_seed(1)
        gen = HFSampler(keyed=False).generate(model, tok, prompts, 2, 6, **sampling)
        hf = {"do_sample": False} if sampling.get("greedy") else {"do_sample": True, "top_k": 0}
        torch.manual_seed(1)
        assert torch.equal(gen.completion_ids, _hf_generate(model, tok, prompts, 2, 6, **hf))
    shared = token_logps(model, gen.input_ids, gen.attention_mask, 6).logp
    one_pass = token_logps(model, gen.input_ids, gen.attention_mask, 6, share_prompts=False).logp
    on = gen.completion_mask.bool()
    assert torch.allclose(shared[on], one_pass[on], atol=1e-5)


def _splitmix64(x: int) -> int:
    """splitmix64's finaliser in Python integers (the published constants)."""
    m = (1 << 64) - 1
    x &= m
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & m
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & m
    return x ^ (x >> 31)


def test_keyed_uniforms_are_splitmix64_of_key_and_position():
    """The torch int64 version (wrapping products, logical shifts) equals the reference in
    Python integers, bit for bit, including keys with the top bit set."""
    from bench.rollout import keyed_uniform, splitmix64

    xs = [0, 1, -1, 2**62 + 12345, -(2**63), 987654321]
    assert [v & ((1 << 64) - 1) for v in splitmix64(torch.tensor(xs)).tolist()] == [
        _splitmix64(x) for x in xs
    ]
    golden, m = 0x9E3779B97F4A7C15, (1 << 64) - 1
    keys, t = [5, -3, 2**62 + 1], 7
    u = keyed_uniform(torch.tensor(keys), t)
    for i, key in enumerate(keys):
        x = _splitmix64(_splitmix64((key * golden + t) & m))
        assert u[i].item() == ((x >> 11) + 0.5) / 2**53


def test_keyed_choice_is_the_inverse_cdf():
    """Hand-derived: probabilities (0.5, 0, 0.25, 0.25) have cumulative sums (0.5, 0.5, 0.75,
    1); a uniform picks the first token whose sum exceeds it, never the zero-probability one
    (u = 1 included), and unnormalised rows are scaled by their total."""
    from bench.rollout import keyed_choice

    p = torch.tensor([[0.5, 0.0, 0.25, 0.25]] * 6)
    u = torch.tensor([0.0, 0.49, 0.5, 0.74, 0.75, 1.0], dtype=torch.float64)
    assert keyed_choice(p, u).tolist() == [0, 0, 2, 2, 3, 3]
    assert keyed_choice(p * 7, u).tolist() == [0, 0, 2, 2, 3, 3]
    assert keyed_choice(torch.tensor([[0.0, 0.0, 1.0, 0.0]]), u[:1]).tolist() == [2]
    with pytest.raises(NonFinite):
        keyed_choice(torch.tensor([[0.5, float("nan")]]), u[:1])


def test_keyed_draws_follow_the_distribution():
    """A chi-square test of 20,000 keyed draws from a fixed distribution (p = 0.001 level)."""
    from scipy.stats import chisquare

    from bench.rollout import keyed_choice, keyed_uniform

    p = torch.tensor([0.5, 0.2, 0.0, 0.15, 0.1, 0.05, 0.0])
    keys = torch.arange(20_000)
    draws = keyed_choice(p.expand(len(keys), -1).clone(), keyed_uniform(keys, 3))
    counts = torch.bincount(draws, minlength=len(p)).double()
    assert counts[2] == counts[-1] == 0  # a zero-probability token is never drawn
    live = p > 0
    assert chisquare(counts[live], (p[live] * len(keys)).double()).pvalue > 1e-3


def test_keyed_completions_do_not_depend_on_the_batch(tiny):
    """With keys, a prompt's k completions are a function of its key alone: the same when it is
    decoded alone, with other prompts, in another order, or in calls of another size (what
    makes 1 and N processes see the same samples); different keys give different samples."""
    from bench.rollout import prompt_keys

    model, tok = tiny
    prompts = ["1+2=", "33-14+2=", "9", "7*8="]
    torch.manual_seed(0)
    keys = prompt_keys(len(prompts))
    together = HFSampler().generate(model, tok, prompts, 3, 8, keys=keys, temperature=1.2)
    small_calls = HFSampler(batch_size=3).generate(
        model, tok, prompts, 3, 8, keys=keys, temperature=1.2
    )
    assert torch.equal(together.completion_ids, small_calls.completion_ids)
    for i in (0, 2, 3):
        alone = HFSampler().generate(
            model, tok, [prompts[i]], 3, 8, keys=keys[i : i + 1], temperature=1.2
        )
        assert torch.equal(alone.completion_ids, together.completion_ids[3 * i : 3 * i + 3])
    order = [3, 1, 0, 2]
    shuffled = HFSampler().generate(
        model, tok, [prompts[i] for i in order], 3, 8, keys=keys[order], temperature=1.2
    )
    for pos, i in enumerate(order):
        want = together.completion_ids[3 * i : 3 * i + 3]
        assert torch.equal(shuffled.completion_ids[3 * pos : 3 * pos + 3], want)
    other = HFSampler().generate(model, tok, prompts, 3, 8, keys=keys + 1, temperature=1.2)
    assert not torch.equal(other.completion_ids, together.completion_ids)
    assert len({tuple(r) for r in together.completion_ids[:3].tolist()}) > 1  # rows differ


def test_keyed_sampling_draws_one_number_of_the_global_generator_per_call(tiny):
    """Default keys come from one draw of the global generator per call, whatever the batch:
    so seeding still decides the samples, and every rank draws the same keys."""
    from bench.rollout import prompt_keys

    model, tok = tiny
    torch.manual_seed(4)
    HFSampler().generate(model, tok, ["1+2=", "9"], 2, 6)
    after_call = torch.rand(3)
    torch.manual_seed(4)
    prompt_keys(5)
    assert torch.equal(torch.rand(3), after_call)
    torch.manual_seed(4)
    a = HFSampler().generate(model, tok, ["1+2=", "9"], 2, 6).completion_ids
    torch.manual_seed(4)
    assert torch.equal(HFSampler().generate(model, tok, ["1+2=", "9"], 2, 6).completion_ids, a)
