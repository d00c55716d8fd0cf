"""vLLM against the harness's HF sampler on a real model, side by side in one run: sampling
throughput, then the time of a whole RL step with each engine. Runs where vLLM is installed
(here its own environment: ``make install-vllm``, then ``.venv-vllm/bin/python -m
benchmarks.vllm_sampling``).

    python -m benchmarks.vllm_sampling [--model smollm2-135m-instruct] [--prompts 8] [--k 4]
                                       [--max-new-tokens 64] [--repeats 3] [--steps 3]

Throughput: the smollm2_arithmetic preset's chat prompts, k completions each, the same budget and
temperature on both sides; tokens counted alike (each row's tokens up to its first EOS); rounds
alternate the two engines; the ratio is the median over rounds. The vLLM engine starts once
(its start-up is reported on its own line) and runs eagerly on the CPU backend in this process.

Step time: the preset's RL step (benchmarks/step_breakdown.py's parts) with each engine on its
own learner; with vLLM the weights are pushed into the engine after each update, inside its
sampling time, as the loop does.
"""

from __future__ import annotations

import copy
import gc
import os
import statistics
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("BENCH_PROGRESS", "0")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "0-1")
os.environ.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")

import torch  # noqa: E402

from algorithms import ALGORITHMS  # noqa: E402
from bench.config import load_config  # noqa: E402
from bench.precision import frozen_reference  # noqa: E402
from bench.rollout import HFSampler  # noqa: E402
from bench.update import Learner  # noqa: E402
from bench.vllm_sampler import VLLMSampler  # noqa: E402
from benchmarks.sampling import chat_model, sampling_parser  # noqa: E402
from benchmarks.step_breakdown import one_step  # noqa: E402


def throughput(samplers: dict, model, tok, task, args) -> dict[str, list[float]]:
    rates: dict[str, list[float]] = {name: [] for name in samplers}
    for r in range(args.repeats):
        prompts = [row["prompt"] for row in task.train_rows()[r * args.prompts :][: args.prompts]]
        for name in list(samplers)[r % 2 :] + list(samplers)[: r % 2]:
            gc.collect()
            torch.manual_seed(r)
            start = time.perf_counter()
            gen = samplers[name].generate(
                model, tok, prompts, args.k, args.max_new_tokens, temperature=args.temperature
            )
            seconds = time.perf_counter() - start
            tokens = int(gen.completion_mask.sum())
            rates[name].append(tokens / seconds)
            print(f"round {r} {name:4s} {tokens:5d} tokens in {seconds:6.2f} s")
    return rates


def step_times(base, tok, task, vllm: VLLMSampler, args) -> dict[str, float]:
    """Median seconds of the preset's RL step (after one warm-up step) with each engine (the
    vLLM engine already started: it follows the new learner's policy by a weight push)."""
    cfg = load_config("smollm2_arithmetic", [f"model.name_or_path={args.model}"])
    out = {}
    for name, sampler in (("hf", HFSampler()), ("vllm", vllm)):
        policy = copy.deepcopy(base)
        learner = Learner.build(
            policy, frozen_reference(policy, cfg), ALGORITHMS.get(cfg.algorithm), cfg
        )
        n, pool, steps = cfg.train.prompts_per_step, task.train_rows(), []
        for s in range(args.steps + 1):
            steps.append(one_step(learner, sampler, tok, task, pool[s * n : (s + 1) * n], cfg))
            if hasattr(sampler, "weights_changed"):
                sampler.weights_changed()  # the loop reports each update: the next call pushes
        parts = {k: statistics.median(t[k] for t in steps[1:]) for k in steps[0] if k != "tokens"}
        print(f"{name}: " + ", ".join(f"{k} {v:.2f} s" for k, v in parts.items()))
        out[name] = sum(parts.values())
    return out


def main() -> None:
    p = sampling_parser(__doc__)
    p.add_argument("--steps", type=int, default=3)
    args = p.parse_args()
    model, tok, task = chat_model(args.model)
    print(
        f"model={args.model} threads={torch.get_num_threads()} prompts={args.prompts} k={args.k} "
        f"max_new_tokens={args.max_new_tokens} temperature={args.temperature}"
    )
    vllm = VLLMSampler(enforce_eager=True)
    start = time.perf_counter()
    vllm.generate(model, tok, ["1"], 1, 1)  # the engine starts here
    print(f"vLLM engine start: {time.perf_counter() - start:.1f} s")
    rates = throughput({"hf": HFSampler(), "vllm": vllm}, model, tok, task, args)
    ratios = [v / h for v, h in zip(rates["vllm"], rates["hf"], strict=True)]
    for name, v in rates.items():
        print(f"{name:4s} {statistics.median(v):7.1f} tokens/s (median of {len(v)})")
    print(
        f"vllm/hf tokens/s: {statistics.median(ratios):.2f}x (median of {len(ratios)} rounds, "
        f"range {min(ratios):.2f}-{max(ratios):.2f})"
    )
    steps = step_times(model, tok, task, vllm, args)
    print(f"RL step: hf {steps['hf']:.2f} s, vllm {steps['vllm']:.2f} s")


if __name__ == "__main__":
    main()
