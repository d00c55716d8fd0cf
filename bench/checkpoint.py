"""Mid-run checkpoints (``train.checkpoint_every``) and exact resume (``bench run --resume``).

A checkpoint after step N holds everything the run needs to go on as if never stopped: the
policy and value head, AdamW's state (torch.distributed.checkpoint: each rank writes its own
shard under fsdp), and in ``run.pt`` the schedule, every random generator (python, numpy,
torch, the minibatch split's, the prompt stream's, the source's), the prompt stream's position,
the replay buffer, the counters, the last value of every metric, the kept samples, the elapsed
time and the MLflow run id. The run's metrics are sent to MLflow before each checkpoint; on
resume, the steps after the checkpoint are computed again and whatever of them had already
reached MLflow is not sent twice (``Tracker.resume``).

Written atomically: into ``.step-N.tmp``, renamed to ``step-N`` once complete, then the
``latest`` pointer is replaced (written last), then checkpoints beyond
``train.keep_checkpoints`` are removed. A kill at any point leaves ``latest`` naming a complete
checkpoint (or none).
"""

from __future__ import annotations

import os
import random
import shutil
import warnings
from pathlib import Path

import numpy as np
import torch

from bench import distributed
from bench.core.paths import results_dir

LATEST = "latest"


def folder_of(run_id: str) -> Path:
    return results_dir() / "checkpoints" / run_id


def latest(run_id: str) -> Path | None:
    """The newest complete checkpoint of a run, or None."""
    pointer = folder_of(run_id) / LATEST
    if not pointer.exists():
        return None
    path = folder_of(run_id) / pointer.read_text().strip()
    return path if (path / "run.pt").exists() else None


def step_of(path: Path) -> int:
    return int(path.name.removeprefix("step-"))


def _weights_state(learner):
    from torch.distributed.checkpoint.state_dict import get_state_dict

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        model, optim = get_state_dict(learner.model, learner.opt)
    return {"model": model, "optim": optim}


def run_state(run, step: int) -> dict:
    """Everything of the run besides weights and optimiser state."""
    learner = run.learner
    return {
        "step": step,
        "run_id": run.tracker.run_id,
        "config": run.config_hash,
        "sched": learner.sched.state_dict(),
        "mb_gen": learner.mb_gen.get_state(),
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "stream": run.stream.state_dict(),
        "source": run.source.state_dict(),
        "counters": run.counters,
        "final": run.final,
        "samples": run.samples,
        "elapsed": run.elapsed(),
    }


def save(run, step: int) -> Path:
    """Checkpoint the run after ``step`` (every rank calls it)."""
    import torch.distributed.checkpoint as dcp

    run.tracker.flush()  # steps <= step are in MLflow before the checkpoint says so
    folder = folder_of(run.tracker.run_id)
    name = f"step-{step:06d}"
    tmp = folder / f".{name}.tmp"
    if run.world.main:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    distributed.barrier(run.world)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        dcp.save(_weights_state(run.learner), checkpoint_id=tmp / "weights")
    if run.world.main:
        torch.save(run_state(run, step), tmp / "run.pt")
        final = folder / name
        shutil.rmtree(final, ignore_errors=True)
        os.rename(tmp, final)
        _point_latest(folder, name)
        _prune(folder, run.cfg.train.keep_checkpoints)
    distributed.barrier(run.world)
    return folder / name


def clear(run) -> None:
    """A finished run needs no mid-run checkpoint: removed (the final weights, if saved, stay)."""
    if not run.world.main:
        return
    folder = folder_of(run.tracker.run_id)
    (folder / LATEST).unlink(missing_ok=True)
    for old in folder.glob("step-*"):
        shutil.rmtree(old, ignore_errors=True)


def _point_latest(folder: Path, name: str) -> None:
    tmp = folder / f".{LATEST}.tmp"
    tmp.write_text(name + "\n")
    os.replace(tmp, folder / LATEST)


def _prune(folder: Path, keep: int) -> None:
    done = sorted(p for p in folder.glob("step-*") if p.is_dir())
    for old in done[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


def restore(run, path: Path) -> int:
    """Load checkpoint ``path`` into a freshly set-up run; returns its step."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import set_state_dict

    state = _weights_state(run.learner)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        dcp.load(state, checkpoint_id=path / "weights")
        set_state_dict(
            run.learner.model,
            run.learner.opt,
            model_state_dict=state["model"],
            optim_state_dict=state["optim"],
        )
    saved = torch.load(path / "run.pt", weights_only=False)
    learner = run.learner
    learner.sched.load_state_dict(saved["sched"])
    learner.mb_gen.set_state(saved["mb_gen"])
    if learner.copy is not None:
        learner.copy.refresh(learner.policy)
    random.setstate(saved["python"])
    np.random.set_state(saved["numpy"])
    torch.set_rng_state(saved["torch"])
    run.stream.load_state_dict(saved["stream"])
    run.source.load_state_dict(saved["source"])
    run.counters, run.final, run.samples = saved["counters"], saved["final"], saved["samples"]
    run.resume_elapsed(saved["elapsed"])
    return saved["step"]
