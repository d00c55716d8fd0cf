"""Sampling speed: this harness's HF sampler (bench/rollout.py) against transformers'
``model.generate`` on the same model, prompts, k, token budget and temperature.

    python benchmarks/sampling.py [--model smollm2-135m-instruct] [--prompts 8] [--k 4]
                                  [--max-new-tokens 64] [--repeats 3]

The prompts are the smollm2_arithmetic preset's chat prompts (2-digit sums). ``model.generate``
gets each prompt k times (``num_return_sequences=k``, its own way of sampling a group) and runs
every row until all rows have ended; the harness's sampler prefills each prompt once for its k
rows and drops a row from the decode batch when it ends. Tokens are counted the same way on both
sides: each row's tokens up to and including its first EOS. Rounds alternate the two sides; the
ratio is the median over rounds.
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("BENCH_PROGRESS", "0")

import torch  # noqa: E402

from bench.config import load_config  # noqa: E402
from bench.core.generation import completion_mask, prompt_tensors  # noqa: E402
from bench.models import load_policy  # noqa: E402
from bench.rollout import HFSampler  # noqa: E402
from tasks import TASKS  # noqa: E402


@torch.no_grad()
def library(model, tok, prompts, args) -> tuple[float, int]:
    """(seconds, tokens) of ``model.generate`` sampling k completions per prompt."""
    ids, mask = prompt_tensors(tok, prompts, 1)
    start = time.perf_counter()
    out = model.generate(
        input_ids=ids,
        attention_mask=mask,
        do_sample=True,
        temperature=args.temperature,
        top_k=0,
        top_p=1.0,
        num_return_sequences=args.k,
        max_new_tokens=args.max_new_tokens,
        pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id,
    )
    seconds = time.perf_counter() - start
    new = out[:, ids.shape[1] :]
    return seconds, int(completion_mask(new, tok.eos_token_id)[0].sum())


def ours(model, tok, prompts, args) -> tuple[float, int]:
    """(seconds, tokens) of the harness's sampler on the same work."""
    start = time.perf_counter()
    g = HFSampler().generate(
        model, tok, prompts, args.k, args.max_new_tokens, temperature=args.temperature
    )
    return time.perf_counter() - start, int(g.completion_mask.sum())


def sampling_parser(doc: str) -> argparse.ArgumentParser:
    """The options of a sampling benchmark: model, prompts, k, budget, temperature, rounds."""
    p = argparse.ArgumentParser(
        description=doc, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--prompts", type=int, default=8)
    p.add_argument("--k", type=int, default=4)
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--temperature", type=float, default=0.7)
    p.add_argument("--repeats", type=int, default=3)
    return p


def chat_model(name: str):
    """(model, tokenizer, task) of the smollm2_arithmetic preset with model ``name``."""
    cfg = load_config("smollm2_arithmetic", [f"model.name_or_path={name}"])
    task = TASKS.get(cfg.task)(cfg.task_config())
    model, tok, _ = load_policy(cfg.model, task)
    task.bind_tokenizer(tok)
    return model, tok, task


def main() -> None:
    args = sampling_parser(__doc__).parse_args()
    model, tok, task = chat_model(args.model)
    model.generation_config.top_k = None  # sample the plain softmax on both sides
    print(
        f"model={args.model} threads={torch.get_num_threads()} prompts={args.prompts} k={args.k} "
        f"max_new_tokens={args.max_new_tokens} temperature={args.temperature}"
    )
    rates: dict[str, list[float]] = {"generate": [], "ours": []}
    sides = {"generate": library, "ours": ours}
    for r in range(args.repeats):
        prompts = [row["prompt"] for row in task.train_rows()[r * args.prompts :][: args.prompts]]
        for name in list(sides)[r % 2 :] + list(sides)[: r % 2]:
            gc.collect()
            torch.manual_seed(r)
            seconds, tokens = sides[name](model, tok, prompts, args)
            rates[name].append(tokens / seconds)
            print(f"round {r} {name:8s} {tokens:5d} tokens in {seconds:6.2f} s")
    ratios = [o / g for o, g in zip(rates["ours"], rates["generate"], strict=True)]
    for name, v in rates.items():
        print(f"{name:8s} {statistics.median(v):7.1f} tokens/s (median of {len(v)})")
    print(
        f"ours/generate tokens/s: {statistics.median(ratios):.2f}x (goal >= 1.5; median of "
        f"{len(ratios)} rounds, range {min(ratios):.2f}-{max(ratios):.2f})"
    )


if __name__ == "__main__":
    main()
