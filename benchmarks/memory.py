"""Memory of one training step against completion length: one pass with full logits ("before")
against micro-batches of a fixed token budget, activation checkpointing and chunked log-probs
("after"), on a Qwen2-shaped model with Qwen's 152k vocabulary. Each cell runs in a fresh
process (peak RSS is per process). Also: the default arithmetic step in fp32 vs bf16-mixed, and
its achieved FLOP/s as a share of this machine's measured fp32 and bf16 matmul peaks.

    python benchmarks/memory.py [--lengths 256,512,1024,2048,4096] [--rows 16]

Not a test: the numbers go to docs/memory.md with the date, machine and command.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402

VOCAB, HIDDEN, LAYERS, PROMPT = 152064, 64, 2, 64


def one_step(length: int, rows: int, after: bool, budget: int) -> dict:
    """Bytes saved for backward (the largest forward of the step) and peak RSS of one step."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from algorithms import ALGORITHMS
    from bench.config import load_config
    from bench.core.batch import RolloutBatch
    from bench.memory import SavedBytes, enable_checkpointing
    from bench.update import Learner

    torch.manual_seed(0)
    config = Qwen2Config(
        vocab_size=VOCAB,
        hidden_size=HIDDEN,
        intermediate_size=4 * HIDDEN,
        num_hidden_layers=LAYERS,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=PROMPT + length + 8,
    )
    policy = Qwen2ForCausalLM(config).eval()
    overrides = ["algorithm=grpo", f"sampling.max_new_tokens={length}", "sampling.k=4"]
    if after:
        overrides += [f"train.micro_batch_tokens={budget}", "train.logprob_chunk=1024"]
        enable_checkpointing(policy)
    cfg = load_config("smoke", overrides)
    learner = Learner.build(policy, policy, ALGORITHMS.get("grpo"), cfg)
    ids = torch.randint(2, VOCAB, (rows, PROMPT + length))
    ids[:, :PROMPT] = ids[::4, :PROMPT].repeat_interleave(4, 0)  # groups of 4 share a prompt
    batch = RolloutBatch(
        mask=torch.ones(rows, length),
        old_logp=None,
        rewards=torch.arange(rows, dtype=torch.float32) % 3,
        group_ids=torch.arange(rows // 4).repeat_interleave(4),
        ref_logp=torch.zeros(rows, length) - 5.0,
        input_ids=ids,
        attention_mask=torch.ones_like(ids),
    )
    peak = 0
    forward = learner.forward

    def measured(mb):  # the saved bytes of each forward that keeps a graph
        nonlocal peak
        saved = SavedBytes(exclude=learner.parameters())
        with saved():
            out = forward(mb)
        peak = max(peak, saved.bytes)
        return out

    learner.forward = measured
    start = time.perf_counter()
    learner.backward(batch)
    return {
        "saved_mb": peak / 2**20,
        "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "seconds": time.perf_counter() - start,
    }


def cell(length: int, rows: int, after: bool, budget: int) -> dict:
    code = f"import benchmarks.memory as m, json; print(json.dumps(m.one_step({length}, {rows}, {after}, {budget})))"
    root = Path(__file__).resolve().parent.parent
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=root, env=os.environ
    )
    if out.returncode:
        return {"error": out.stderr.strip().splitlines()[-1][:80]}
    return json.loads(out.stdout.strip().splitlines()[-1])


def planned_mb(length: int, rows: int, after: bool, budget: int) -> float:
    from bench.plan import Shape, activation_bytes

    shape = Shape(VOCAB, HIDDEN, 4 * HIDDEN, LAYERS, 4, 2, HIDDEN // 4, False)
    row = PROMPT + length
    tokens = max(budget // row, 1) * row if after else rows * row
    return (
        activation_bytes(shape, tokens, tokens * length // row, after, 1024 if after else 0) / 2**20
    )


def matmul_peak(dtype, n: int = 2048, repeats: int = 5) -> float:
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * n**3 * repeats / (time.perf_counter() - start)


def arithmetic_steps(precision: str, steps: int = 20) -> tuple[float, float]:
    """(seconds per step, FLOPs per step) of the default arithmetic workload's update."""
    from algorithms import ALGORITHMS
    from bench.config import load_config
    from bench.core.rewards import score
    from bench.models import load_policy
    from bench.rollout import HFSampler
    from bench.update import Counters, Learner
    from tasks import TASKS

    cfg = load_config("arithmetic", [f"train.precision={precision}", "algorithm=grpo"])
    task = TASKS.get("arithmetic")(cfg.task_config())
    policy, tok, _ = load_policy(cfg.model, task)
    import copy

    learner = Learner.build(policy, copy.deepcopy(policy), ALGORITHMS.get("grpo"), cfg)
    rows = task.train_rows()
    sampler, counters, tokens = HFSampler(), Counters(), 0
    from bench.precision import compute_precision

    start = time.perf_counter()
    for step in range(steps):
        chunk = rows[step * 32 : (step + 1) * 32]
        rep = [r for r in chunk for _ in range(4)]
        with compute_precision(cfg, policy):
            gen = sampler.generate(policy, tok, [r["prompt"] for r in chunk], 4, 6)
        rewards, _ = score(task.reward, [r["prompt"] for r in rep], gen.texts, rep)
        learner.update(learner.make_batch(gen, rewards), counters)
        tokens += gen.attention_mask.sum().item()
    dt = (time.perf_counter() - start) / steps
    n = sum(p.numel() for p in policy.parameters())
    return dt, 2 * n * (tokens / steps) * (1 + 1 + 3)  # sampling, reference, training (fwd+bwd)


def calibration() -> None:
    """The plan's activation bytes against the bytes saved for backward, on the shapes of
    tests/test_plan.py (the same measurement as the test)."""
    import json as _json
    import tempfile

    from bench.config import ModelConfig
    from bench.plan import activation_bytes, shape_of
    from tests.test_plan import CALIBRATION, build, measured

    print(
        "| family | hidden | MLP | layers | heads/kv | vocab | rows x (prompt + completion) | checkpointing | chunk | measured KB | plan KB | plan/measured |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for (
        family,
        h,
        i,
        layers,
        heads,
        kv,
        vocab,
        rows,
        prompt,
        completion,
        ckpt,
        chunk,
    ) in CALIBRATION:
        config, model = build(family, h, i, layers, heads, kv, vocab)
        with tempfile.TemporaryDirectory() as tmp:
            Path(tmp, "config.json").write_text(_json.dumps(config.to_dict()))
            shape = shape_of(ModelConfig(name_or_path=tmp))
        plan = activation_bytes(
            shape, rows * (prompt + completion - 1), rows * completion, ckpt, chunk
        )
        got = measured(model, rows, prompt, completion, ckpt, chunk)
        print(
            f"| {family} | {h} | {i} | {layers} | {heads}/{kv} | {vocab} | {rows} x ({prompt} + {completion}) "
            f"| {'yes' if ckpt else 'no'} | {chunk or '-'} | {got / 1024:,.0f} | {plan / 1024:,.0f} | {plan / got:.3f} |"
        )


def sampling_with_checkpointing(rounds: int = 10) -> tuple[float, float]:
    """(ms per sampling call without, with activation checkpointing enabled) on the arithmetic
    model, alternated in one process: the sampler keeps its KV cache either way."""
    import copy

    from bench.config import load_config
    from bench.memory import enable_checkpointing
    from bench.models import load_policy
    from bench.rollout import HFSampler
    from tasks import TASKS

    cfg = load_config("arithmetic")
    task = TASKS.get("arithmetic")(cfg.task_config())
    plain, tok, _ = load_policy(cfg.model, task)
    wrapped = copy.deepcopy(plain)
    enable_checkpointing(wrapped)
    prompts = [r["prompt"] for r in task.train_rows()[:32]]
    times = {0: [], 1: []}
    for r in range(rounds):
        for which, model in ((0, plain), (1, wrapped))[:: 1 if r % 2 else -1]:
            torch.manual_seed(r)
            start = time.perf_counter()
            HFSampler().generate(model, tok, prompts, 4, 6)
            times[which].append(time.perf_counter() - start)
    return 1e3 * float(np.median(times[0])), 1e3 * float(np.median(times[1]))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--lengths", default="256,512,1024,2048,4096")
    p.add_argument("--rows", type=int, default=16)
    p.add_argument("--budget", type=int, default=4160, help="micro_batch_tokens of 'after'")
    p.add_argument(
        "--max-before-gb",
        type=float,
        default=12.0,
        help="skip 'before' cells the plan puts above this",
    )
    p.add_argument("--calibration", action="store_true", help="print the plan's calibration table")
    args = p.parse_args()
    if args.calibration:
        calibration()
        return
    print(
        f"Qwen2-shaped: vocab {VOCAB}, hidden {HIDDEN}, {LAYERS} layers, {args.rows} rows, prompt {PROMPT}"
    )
    print(
        "| completion | before: saved MB (plan) | before: peak RSS MB | after: saved MB (plan) | after: peak RSS MB |"
    )
    print("|---|---|---|---|---|")
    for length in [int(x) for x in args.lengths.split(",") if x]:
        cells = []
        for after in (False, True):
            plan = planned_mb(length, args.rows, after, args.budget)
            if not after and plan > args.max_before_gb * 1024:
                cells += [f"not run (plan: {plan:,.0f})", "-"]
                continue
            r = cell(length, args.rows, after, args.budget)
            if "error" in r:
                cells += [r["error"], "-"]
            else:
                cells += [f"{r['saved_mb']:,.0f} ({plan:,.0f})", f"{r['rss_mb']:,.0f}"]
        print(f"| {length} | " + " | ".join(cells) + " |", flush=True)
    plain, ckpt = sampling_with_checkpointing()
    print(
        f"sampling 32 prompts x 4 (median of 10): {plain:.1f} ms, with checkpointing enabled {ckpt:.1f} ms"
    )
    fp32, bf16 = matmul_peak(torch.float32), matmul_peak(torch.bfloat16)
    print(f"\nmatmul peak: fp32 {fp32 / 1e9:.0f} GFLOP/s, bf16 {bf16 / 1e9:.0f} GFLOP/s")
    for precision in ("fp32", "bf16-mixed"):
        dt, flops = arithmetic_steps(precision)
        print(
            f"arithmetic step ({precision}): {dt * 1e3:.1f} ms, {flops / dt / 1e9:.1f} GFLOP/s = "
            f"{flops / dt / fp32:.1%} of the fp32 peak, {flops / dt / bf16:.1%} of the bf16 peak"
        )


if __name__ == "__main__":
    main()
