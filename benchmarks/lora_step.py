"""Full fine-tuning against LoRA on a real model, side by side in one run: the parts of an RL
step and what each holds in memory.

    python benchmarks/lora_step.py [--preset smollm2_arithmetic] [--algorithm grpo] [--r 16]
                                   [--steps 4]

Two learners on the same base model (full: every weight and a frozen copy as the reference;
LoRA: rank-r adapters on every linear layer, the reference = the same model with adapters off)
take turns on the same prompts; each part's median over ``--steps`` steps after one warm-up step
each (bench/lora.py; the step parts as benchmarks/step_breakdown.py splits them); then a plain
forward + backward + AdamW step on 16 random sequences of 96 tokens. Memory is
counted from the tensors themselves: trained parameters, their gradients, AdamW's state and
the reference's weights.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch

from algorithms import ALGORITHMS
from bench import lora
from bench.config import load_config
from bench.models import load_policy
from bench.precision import frozen_reference
from bench.rollout import HFSampler
from bench.update import Learner
from benchmarks.step_breakdown import one_step
from tasks import TASKS

MB = 1024**2


def held(learner: Learner) -> dict[str, float]:
    """MB of trained parameters, their gradients (as large) and optimiser state, and of the
    reference's own weights (none with LoRA)."""
    trained = sum(p.numel() * p.element_size() for p in learner.parameters())
    state = sum(
        t.numel() * t.element_size()
        for p in learner.parameters()
        for t in learner.opt.state.get(p, {}).values()
        if torch.is_tensor(t)
    )
    ref = learner.reference
    ref_bytes = (
        0
        if isinstance(ref, lora.AdaptersOff)
        else sum(p.numel() * p.element_size() for p in ref.parameters())
    )
    return {
        "trained params": sum(p.numel() for p in learner.parameters()) / 1e6,
        "trained + grads MB": 2 * trained / MB,
        "AdamW state MB": state / MB,
        "reference MB": ref_bytes / MB,
    }


def plain_step_seconds(learner: Learner, rows: int, length: int, repeats: int) -> float:
    """Median seconds of one forward, backward and AdamW step of the policy on ``rows`` random
    sequences of ``length`` tokens (mean log-prob as the loss): the step without RL around it."""
    policy = learner.policy
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, policy.config.vocab_size, (rows, length), generator=g)
    times = []
    for _ in range(repeats + 1):
        t = time.perf_counter()
        logits = policy(input_ids=ids).logits.float()
        loss = -logits.log_softmax(-1)[:, :-1].gather(-1, ids[:, 1:, None]).mean()
        loss.backward()
        learner.opt.step()
        learner.opt.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - t)
    return statistics.median(times[1:])


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--preset", default="smollm2_arithmetic")
    p.add_argument("--algorithm", default="grpo")
    p.add_argument("--r", type=int, default=16)
    p.add_argument("--lora-lr", type=float, default=1e-4)
    p.add_argument("--steps", type=int, default=4)
    args = p.parse_args()
    algo = [f"algorithm={args.algorithm}"]
    configs = {
        "full": load_config(args.preset, algo),
        f"lora r={args.r}": load_config(
            args.preset, [*algo, f"model.lora.r={args.r}", f"train.lr={args.lora_lr}"]
        ),
    }
    task = TASKS.get(configs["full"].task)(configs["full"].task_config())
    base, tok, info = load_policy(configs["full"].model, task)
    task.bind_tokenizer(tok)
    learners = {}
    for name, cfg in configs.items():
        policy = copy.deepcopy(base)
        if cfg.model.lora.r:
            policy = lora.attach(policy, cfg.model.lora, info["cache"], bf16=False, seed=0)
        reference = frozen_reference(policy, cfg)
        learners[name] = Learner.build(policy, reference, ALGORITHMS.get(args.algorithm), cfg)
    sampler, pool = HFSampler(), task.train_rows()
    n = configs["full"].train.prompts_per_step
    times: dict[str, list[dict]] = {name: [] for name in learners}
    for s in range(args.steps + 1):  # turns: the machine's drift hits both alike
        rows = pool[s * n : (s + 1) * n]
        for name, learner in learners.items():
            torch.manual_seed(s)
            times[name].append(one_step(learner, sampler, tok, task, rows, configs[name]))
    print(
        f"preset={args.preset} algorithm={args.algorithm} threads={torch.get_num_threads()} "
        f"rows={n * configs['full'].sampling.k} steps={args.steps} (median after one warm-up)"
    )
    medians = {
        name: {k: statistics.median(t[k] for t in ts[1:]) for k in ts[0] if k != "tokens"}
        for name, ts in times.items()
    }
    names = list(learners)
    print("| part | " + " | ".join(names) + " | full / lora |\n|---|---|---|---|")
    for part in medians[names[0]]:
        a, b = (medians[x][part] for x in names)
        print(f"| {part} s | {a:.2f} | {b:.2f} | {a / b:.2f}x |")
    a, b = (sum(medians[x].values()) for x in names)
    print(f"| step s | {a:.2f} | {b:.2f} | {a / b:.2f}x |")
    plain = {x: plain_step_seconds(learners[x], 16, 96, args.steps) for x in names}
    a, b = (plain[x] for x in names)
    print(f"| forward + backward + AdamW, 16 x 96 tokens s | {a:.2f} | {b:.2f} | {a / b:.2f}x |")
    memory = {name: held(learner) for name, learner in learners.items()}
    for key in memory[names[0]]:
        a, b = (memory[x][key] for x in names)
        print(f"| {key} | {a:.1f} | {b:.1f} | {a / b if b else float('inf'):.1f}x |")


if __name__ == "__main__":
    main()
