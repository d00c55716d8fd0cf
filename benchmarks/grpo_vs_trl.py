"""Throughput: this harness's GRPO step vs TRL's GRPOTrainer, and GVPO vs GRPO step time.

Same tiny Qwen2 model, same prompts, k, max_new_tokens and number of optimiser steps, fp32 on
CPU, same settings (GRPO loss, beta 0.04, eps 0.2, no gradient checkpointing: TRL 1.16 turns it
on by default), run one after the other in this process. A step is: sample k completions per
prompt, score them, compute reference log-probs, one optimiser update.

    python benchmarks/grpo_vs_trl.py [--steps 30] [--repeats 5] [--prompts 32] [--k 4] [--max-new-tokens 6]
    python benchmarks/grpo_vs_trl.py --task gsm8k --warmstart-steps 0 --prompts 16 --max-new-tokens 16
    python benchmarks/grpo_vs_trl.py --model smollm2-135m-instruct --steps 4 --repeats 3

The default workload is the one ``make compare`` runs: the arithmetic preset's model (its warm
start, cached under results/cache), prompts per step, k and token budget: 32 six-token prompts
x 4 completions, answers of 2-4 tokens, rewards with a spread. The learning rate is 1e-5 on both
sides (speed does not depend on it, and a small one keeps both sides' completions near the
warm-started model's over the run). ``--task gsm8k`` uses GSM8K questions (~230-token prompts
with the byte-level tokenizer), where running each prompt once per group matters more;
``--warmstart-steps 0`` skips the warm start there (a random model writes until the budget).
``--model smollm2-135m-instruct`` runs the real model on the smollm2_arithmetic preset's
workload (chat prompts of 2-digit sums, 8 prompts x 4 completions, 16 tokens), both sides at
temperature 1.
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("BENCH_PROGRESS", "0")

import torch  # noqa: E402

from algorithms import ALGORITHMS  # noqa: E402
from bench.config import load_config  # noqa: E402
from bench.core.rewards import score  # noqa: E402
from bench.models import load_policy  # noqa: E402
from bench.rollout import HFSampler  # noqa: E402
from bench.update import Counters, Learner  # noqa: E402
from tasks import TASKS  # noqa: E402


def ours(name: str, model_dir: str, prompts: list[dict], args) -> float:
    """Seconds for args.steps steps of this harness's loop pieces (no eval, no tracking)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cfg = load_config(
        args.preset,
        [
            *args.overrides,
            f"algorithm={name}",
            f"sampling.k={args.k}",
            f"sampling.max_new_tokens={args.max_new_tokens}",
            "sampling.temperature=1.0",  # TRL's default, on both sides
            "train.lr=1e-5",
        ],
    )
    tok = AutoTokenizer.from_pretrained(model_dir)
    tok.padding_side = "left"
    policy = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    reference = AutoModelForCausalLM.from_pretrained(model_dir).eval().requires_grad_(False)
    algo = ALGORITHMS.get(name)
    task = TASKS.get(args.task)(cfg.task_config())
    task.bind_tokenizer(tok)
    learner = Learner.build(policy, reference, algo, cfg)
    counters, sampler = Counters(), HFSampler()
    torch.manual_seed(0)
    start = time.perf_counter()
    for step in range(args.steps):
        rows = prompts[(step * args.prompts) % len(prompts) :][: args.prompts]
        rep = [r for r in rows for _ in range(args.k)]
        g = sampler.generate(policy, tok, [r["prompt"] for r in rows], args.k, args.max_new_tokens)
        rewards, _ = score(task.reward, [r["prompt"] for r in rep], g.texts, rep)
        learner.update(learner.make_batch(g, rewards), counters)
    return time.perf_counter() - start


def trl_grpo(model_dir: str, prompts: list[dict], args, task) -> float:
    """Seconds for args.steps optimiser steps of TRL's GRPOTrainer.train() (init excluded)."""
    from datasets import Dataset
    from transformers.trainer_callback import PrinterCallback
    from trl import GRPOConfig, GRPOTrainer

    def reward(prompts, completions, answer, **_):
        return task.reward(prompts, completions, answer=answer)

    n = args.steps * args.prompts
    data = [prompts[i % len(prompts)] for i in range(n)]
    ds = Dataset.from_dict(
        {"prompt": [r["prompt"] for r in data], "answer": [r["answer"] for r in data]}
    )
    cfg = GRPOConfig(
        output_dir=tempfile.mkdtemp(),
        report_to="none",
        use_cpu=True,
        gradient_checkpointing=False,  # TRL 1.16 defaults to True; this harness does not checkpoint
        bf16=False,
        loss_type="grpo",
        beta=0.04,
        epsilon=0.2,
        use_bias_correction_kl=False,
        scale_rewards="group",
        num_generations=args.k,
        per_device_train_batch_size=args.prompts * args.k,
        max_completion_length=args.max_new_tokens,
        max_steps=args.steps,
        learning_rate=1e-5,
        save_strategy="no",
        logging_steps=10_000,
        disable_tqdm=True,
        shuffle_dataset=False,
        top_k=0,
        seed=0,
    )
    trainer = GRPOTrainer(model=model_dir, reward_funcs=reward, args=cfg, train_dataset=ds)
    trainer.remove_callback(PrinterCallback)  # its end-of-train metrics dict is noise here
    start = time.perf_counter()
    trainer.train()
    return time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--task", default="arithmetic", help="a registered task with train rows")
    p.add_argument(
        "--model",
        default="tiny",
        help="tiny (the arithmetic preset's warm-started model) or smollm2-135m-instruct (the "
        "smollm2_arithmetic preset's real model)",
    )
    p.add_argument(
        "--warmstart-steps",
        type=int,
        default=None,
        help="supervised warm-start steps of the tiny model (default: the arithmetic preset's, "
        "i.e. the model `make compare` trains, cached; 0 = random init)",
    )
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--prompts", type=int, help="prompts per step (default: the preset's)")
    p.add_argument("--k", type=int, help="completions per prompt (default: the preset's)")
    p.add_argument("--max-new-tokens", type=int, help="token budget (default: the preset's)")
    p.add_argument(
        "--repeats",
        type=int,
        default=5,
        help="rounds: each runs the three back to back (order rotated); ratios are the median "
        "over rounds, steps/s the best run",
    )
    args = p.parse_args()
    args.preset = "arithmetic" if args.model == "tiny" else "smollm2_arithmetic"
    args.overrides = [f"task={args.task}", f"model.name_or_path={args.model}"]
    if args.warmstart_steps is not None:
        args.overrides.append(f"model.warmstart_steps={args.warmstart_steps}")
    cfg = load_config(args.preset, args.overrides)
    args.prompts = args.prompts or cfg.train.prompts_per_step  # the workload `make compare` runs
    args.k = args.k or cfg.sampling.k
    args.max_new_tokens = args.max_new_tokens or cfg.sampling.max_new_tokens
    task = TASKS.get(args.task)(cfg.task_config())
    model, tok, info = load_policy(cfg.model, task)  # the model the preset trains
    task.bind_tokenizer(tok)
    model_dir = info["cache"]  # the warm-started or converted folder
    if not model_dir:
        model_dir = tempfile.mkdtemp()
        model.save_pretrained(model_dir)
        tok.save_pretrained(model_dir)
    del model
    prompts = task.train_rows()
    print(
        f"model={args.model} task={args.task} template={task.template or '-'} warmstart_steps={cfg.model.warmstart_steps} "
        f"threads={torch.get_num_threads()} steps={args.steps} prompts/step={args.prompts} "
        f"k={args.k} max_new_tokens={args.max_new_tokens}"
    )
    times: dict[str, list[float]] = {"grpo": [], "trl_grpo": [], "gvpo": []}
    runs = {
        "grpo": lambda: ours("grpo", model_dir, prompts, args),
        "trl_grpo": lambda: trl_grpo(model_dir, prompts, args, task),
        "gvpo": lambda: ours("gvpo", model_dir, prompts, args),
    }
    order = list(runs)
    for r in range(args.repeats):  # interleaved, so drift in machine load hits every side
        for name in order[r % 3 :] + order[: r % 3]:  # and each follows each in turn
            gc.collect()
            times[name].append(runs[name]())
    best = {k: min(v) for k, v in times.items()}
    for k, v in best.items():
        print(
            f"{k:9s} {args.steps / v:6.2f} steps/s   ({v:.2f} s for {args.steps} steps; runs: "
            + ", ".join(f"{t:.2f}" for t in times[k])
            + ")"
        )
    # Each round runs all three back to back, so a round's ratio compares runs that saw the same
    # machine load; the median over rounds is robust to a slow phase hitting one side's best run.
    speedup = [t / o for t, o in zip(times["trl_grpo"], times["grpo"], strict=True)]
    gvpo = [v / o for v, o in zip(times["gvpo"], times["grpo"], strict=True)]
    print(
        f"ours/TRL GRPO throughput ratio: {statistics.median(speedup):.2f}x  (goal >= 2; median "
        f"of {len(speedup)} rounds, range {min(speedup):.2f}-{max(speedup):.2f}; best-of runs "
        f"{best['trl_grpo'] / best['grpo']:.2f}x)"
    )
    print(
        f"GVPO/GRPO step-time ratio:      {statistics.median(gvpo):.3f}  (goal <= 1.05; median, "
        f"range {min(gvpo):.3f}-{max(gvpo):.3f}; best-of runs {best['gvpo'] / best['grpo']:.3f})"
    )


if __name__ == "__main__":
    main()
