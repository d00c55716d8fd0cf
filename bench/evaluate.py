"""Evaluation on a task's eval split: greedy accuracy and sampled avg@k / maj@k / pass@k."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable

import torch

from bench.config import EvalConfig, SamplingConfig
from bench.core.generation import Generation, Sampler
from bench.core.progress import bar, console


def majority(answers: list[str]) -> str:
    """Most common (stripped) answer; ties go to the first seen."""
    return Counter(a.strip() for a in answers).most_common(1)[0][0]


def majority_completion(task, completions: list[str], row: dict) -> str:
    """The completion that gives the most common answer among ``completions`` (ties: the first
    seen). Answers are what the task reads from each (``task.extract``: ``47 + 38 = 85`` and
    ``The answer is 85.`` vote together); a completion it reads nothing from votes as its text."""
    votes = [(task.extract(c, row) or c).strip() for c in completions]
    return completions[votes.index(majority(votes))]


def in_calls(sampler: Sampler, prompts: list[str], k: int, progress, generate) -> Generation:
    """``generate(prompts)`` in calls of as many prompts as the sampler decodes at once (the
    same draws as one call), reporting each call's prompts to ``progress``."""
    per_call = max(1, getattr(sampler, "batch_size", 512) // max(k, 1))
    parts = []
    for s in range(0, len(prompts), per_call):
        parts.append(generate(prompts[s : s + per_call]))
        if progress is not None:
            progress(len(prompts[s : s + per_call]))
    return Generation.cat(parts)


def split_rows(task, split: str) -> list[dict]:
    """The rows of ``split``: the task's eval rows, or its validation rows (tuning)."""
    return task.validation_rows() if split == "validation" else task.eval_rows()


def evaluate(
    model,
    tokenizer,
    task,
    sampler: Sampler,
    ecfg: EvalConfig,
    scfg: SamplingConfig,
    *,
    seed: int,
    progress: Callable[[int], None] | None = None,
    samples: list[dict] | None = None,
) -> dict[str, float]:
    """Metrics named ``eval/<task>/<metric>``. Unscorable answers count as wrong and are counted.
    ``progress(n)`` is told each time n more problems are done (greedy, then sampled); every
    scored completion is appended to ``samples`` (``scored``) when it is given."""
    rows = split_rows(task, ecfg.split)[: ecfg.max_prompts]
    prompts = [r["prompt"] for r in rows]
    budget = scfg.max_new_tokens
    greedy = in_calls(
        sampler,
        prompts,
        1,
        progress,
        lambda p: sampler.generate(model, tokenizer, p, 1, budget, greedy=True),
    )
    ok = [task.is_correct(c, r) for c, r in zip(greedy.texts, rows, strict=True)]
    if samples is not None:
        samples += scored(task, rows, greedy.texts, ok, "greedy", 1)
    metrics = {"accuracy": sum(bool(x) for x in ok) / len(rows)}
    unscorable = sum(x is None for x in ok)
    if ecfg.k > 0:
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            sampled = in_calls(
                sampler,
                prompts,
                ecfg.k,
                progress,
                lambda p: sampler.generate(
                    model,
                    tokenizer,
                    p,
                    ecfg.k,
                    budget,
                    temperature=ecfg.temperature,
                    top_p=scfg.top_p,
                ),
            )
        k = ecfg.k
        per_prompt = [sampled.texts[i * k : (i + 1) * k] for i in range(len(rows))]
        hits = [[task.is_correct(c, r) for c in cs] for cs, r in zip(per_prompt, rows, strict=True)]
        unscorable += sum(h is None for hs in hits for h in hs)
        if samples is not None:
            samples += scored(task, rows, sampled.texts, sum(hits, []), "sampled", k)
        maj = [
            task.is_correct(majority_completion(task, cs, r), r)
            for cs, r in zip(per_prompt, rows, strict=True)
        ]
        metrics |= {
            "avg_at_k": sum(bool(h) for hs in hits for h in hs) / (len(rows) * k),
            "pass_at_k": sum(any(bool(h) for h in hs) for hs in hits) / len(rows),
            "maj_at_k": sum(bool(m) for m in maj) / len(rows),
        }
    if ecfg.k > 0:
        metrics |= task.reward_metrics([p for p in prompts for _ in range(ecfg.k)], sampled.texts)
    else:
        metrics |= task.reward_metrics(prompts, greedy.texts)
    metrics["unscorable"] = float(unscorable)
    metrics |= task.policy_metrics(model)
    return {f"eval/{task.name}/{k}": v for k, v in metrics.items()}


def jsonl(records: list[dict]) -> str:
    """Records as JSON Lines."""
    return "".join(json.dumps(r) + "\n" for r in records)


def scored(task, rows: list[dict], texts: list[str], ok: list, mode: str, k: int) -> list[dict]:
    """One record per scored completion (lm-eval's --log_samples), ``k`` completions per row:
    problem index, prompt, completion, the answer the task read from it, the gold answer and
    whether it was right (None = unscorable)."""
    return [
        {
            "task": task.name,
            "mode": mode,
            "problem": i // k,
            "prompt": rows[i // k]["prompt"],
            "completion": c,
            "extracted": task.extract(c, rows[i // k]),
            "gold": rows[i // k].get("answer"),
            "correct": o,
        }
        for i, (c, o) in enumerate(zip(texts, ok, strict=True))
    ]


def evaluate_model(
    model_name: str,
    task_names: list[str],
    *,
    k: int = 4,
    max_new_tokens: int = 512,
    limit: int = 0,
    temperature: float = 1.0,
    seed: int = 0,
    template: str = "",
    experiment: str = "eval",
    tracking_uri: str | None = None,
    lm_eval: bool = False,
    engine: str = "hf",
) -> dict:
    """``bench eval``: greedy accuracy (pass@1 at temperature 0), avg@k, maj@k and pass@k with
    seeded sampling, for a HF model id or checkpoint folder, logged to MLflow and written as JSON."""
    import dataclasses
    import time

    from bench.config import ModelConfig, build_dataclass
    from bench.core.errors import BenchError, did_you_mean
    from bench.core.paths import results_dir
    from bench.models import load_policy
    from bench.tracking import Tracker, resolve_uri
    from bench.vllm_sampler import make_sampler
    from tasks import TASKS

    if engine not in ("hf", "vllm"):
        raise BenchError(
            f"--engine: unknown engine '{engine}'" + did_you_mean(engine, ["hf", "vllm"])
        )
    tasks = [TASKS.get(name) for name in task_names]  # unknown names fail here, before loading
    model_name = checkpoint_of(model_name, tracking_uri)
    model = tokenizer = sampler = None
    source: dict[str, str] = {}
    built = []
    results: dict[str, float] = {}
    samples: list[dict] = []
    for cls in tasks:
        fields = {f.name for f in dataclasses.fields(cls.Config)}
        settings = {"template": template} if template and "template" in fields else {}
        if limit and "max_eval" in fields:
            settings["max_eval"] = limit
        task = cls(build_dataclass(cls.Config, settings, ("tasks", cls.name)))
        built.append(task)
        if model is None:
            model, tokenizer, info = load_policy(
                ModelConfig(name_or_path=model_name, warmstart_steps=0), task
            )
            source = info["tags"]
        task.bind_tokenizer(tokenizer)
        ecfg = EvalConfig(max_prompts=limit or 10**9, k=k, temperature=temperature)
        scfg = SamplingConfig(max_new_tokens=max_new_tokens, engine=engine)
        sampler = sampler or make_sampler(scfg, seed)  # one engine for every task
        n = min(len(split_rows(task, ecfg.split)), ecfg.max_prompts) * (2 if k > 0 else 1)
        with bar() as progress:
            job = progress.add_task(f"eval {task.name}", total=n, info="problems (greedy, sampled)")
            results |= evaluate(
                model,
                tokenizer,
                task,
                sampler,
                ecfg,
                scfg,
                seed=seed,
                progress=lambda done, job=job: progress.update(job, advance=done),
                samples=samples,
            )
        if task.template:
            console.print(f"task {task.name}: {task.template} prompts")
    if model is None:
        raise BenchError("bench eval needs at least one task (--tasks gsm8k,math500)")
    if lm_eval:  # the same tasks through lm-evaluation-harness: greedy, same token budget
        from bench.app.lmeval import evaluate_with_lmeval

        lm_metrics, _ = evaluate_with_lmeval(
            model_name, built, results_dir() / "lmeval_tasks", limit, max_new_tokens
        )
        results |= lm_metrics
    params = {
        "model": model_name,
        "tasks": ",".join(task_names),
        "k": k,
        "max_new_tokens": max_new_tokens,
        "limit": limit,
        "temperature": temperature,
        "seed": seed,
        "template": template or "default",
        "engine": engine,
    }
    tracker = Tracker(
        resolve_uri(tracking_uri),
        experiment,
        f"eval__{model_name.replace('/', '_')}",
        params,
        source,
    )
    tracker.log_metrics(results, 0)
    out = results_dir() / "eval" / f"{model_name.replace('/', '_')}__{int(time.time())}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps({"params": params, "metrics": results, "run_id": tracker.run_id}, indent=2)
    )
    tracker.log_text(out.read_text(), "eval.json")
    lines = jsonl(samples)
    out.with_suffix(".samples.jsonl").write_text(lines)
    tracker.log_text(lines, "eval_samples.jsonl")
    tracker.end()
    return {
        "metrics": results,
        "json": out,
        "samples": out.with_suffix(".samples.jsonl"),
        "run_id": tracker.run_id,
    }


def checkpoint_of(model_or_run: str, tracking_uri: str | None) -> str:
    """A training run id with a saved checkpoint -> that folder; anything else unchanged."""
    import re

    from bench.core.errors import BenchError
    from bench.tracking import client, resolve_uri

    if not re.fullmatch(r"[0-9a-f]{32}", model_or_run):
        return model_or_run
    try:
        run = client(resolve_uri(tracking_uri)).get_run(model_or_run)
    except Exception:
        raise BenchError(f"no run {model_or_run} in {resolve_uri(tracking_uri)}") from None
    path = run.data.tags.get("checkpoint")
    if not path:
        raise BenchError(
            f"run {model_or_run} saved no checkpoint (train with train.save_checkpoint=true)"
        )
    return path
