"""``bench run PRESET --dry-run``: check a (GPU-sized) preset here, on a tiny stand-in model.

Everything the preset names is loaded and used for real: the config is validated, the task's data
files are read, prompts are rendered with the preset's template, completions are sampled and
scored by the task's reward, and the algorithm takes one optimiser step. Only the model is
replaced by a tiny offline one (the checkpoint cannot be fetched here, nor run on a CPU), and the
run is logged to a throw-away MLflow store.
"""

from __future__ import annotations

import dataclasses
import tempfile

from bench.config import ModelConfig, RunConfig


def stand_in(cfg: RunConfig, tracking_dir: str) -> RunConfig:
    tiny = ModelConfig(
        hidden_size=32,
        num_layers=1,
        num_heads=2,
        intermediate_size=64,
        warmstart_steps=0,
        device="cpu",
        gradient_checkpointing=cfg.model.gradient_checkpointing,
    )
    from bench.vllm_sampler import vllm_available

    engine = cfg.sampling.engine if vllm_available() else "hf"
    task_settings = dict(cfg.tasks.get(cfg.task, {}))
    if task_settings.get("template") == "chat":  # the stand-in's tokenizer has no chat template
        task_settings["template"] = "auto"
    return dataclasses.replace(
        cfg,
        model=tiny,
        tasks={**cfg.tasks, cfg.task: task_settings},
        sampling=dataclasses.replace(
            cfg.sampling, max_new_tokens=min(cfg.sampling.max_new_tokens, 16), engine=engine
        ),
        train=dataclasses.replace(
            cfg.train,
            steps=1,
            prompts_per_step=2,
            prompt_pool=0,
            threads=0,
            save_checkpoint=False,
            # the preset's memory settings at the stand-in's scale: one sequence per micro-batch,
            # 8-token log-prob chunks, so the dry run takes the same code paths
            micro_batch_tokens=1 if cfg.train.micro_batch_tokens else 0,
            logprob_chunk=min(cfg.train.logprob_chunk, 8),
        ),
        eval=dataclasses.replace(cfg.eval, every=1, max_prompts=2, k=min(cfg.eval.k, 2)),
        tracking=dataclasses.replace(
            cfg.tracking, uri=f"sqlite:///{tracking_dir}/dry_run.db", log_samples=4
        ),
    )


def dry_run(cfg: RunConfig) -> dict:
    """One step of ``cfg`` on the stand-in; returns what was checked."""
    from bench.loop import train
    from tasks import TASKS

    with tempfile.TemporaryDirectory() as tmp:
        tiny = stand_in(cfg, tmp)
        rows = TASKS.get(tiny.task)(tiny.task_config()).eval_rows()
        final = train(tiny)
    engine = cfg.sampling.engine
    if tiny.sampling.engine != engine:
        engine += " (not installed here: the dry run sampled with HF generate)"
    return {
        "model (not loaded)": cfg.model.name_or_path,
        "rollout engine": engine,
        "eval rows": len(rows),
        "precision": cfg.train.precision,
        "memory paths taken": ", ".join(
            name
            for name, on in (
                ("micro-batches of one sequence", tiny.train.micro_batch_tokens),
                ("log-prob chunks of 8 tokens", tiny.train.logprob_chunk),
                ("activation checkpointing", tiny.model.gradient_checkpointing),
            )
            if on
        )
        or "none",
        "first prompt": rows[0]["prompt"][:120] if rows else "",
        "step": {
            k: v
            for k, v in final.items()
            if k in ("train/loss", "train/reward/mean", "train/grad_norm")
        },
    }
