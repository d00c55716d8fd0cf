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
checkpoint (or none). Each checkpoint's ``manifest.json`` holds the size and sha256 of every
file in it (every rank's shard included), written before the rename; a resume verifies them
and falls back to the newest intact checkpoint (``newest_intact``): a disk that corrupts or
truncates a file, or a file lost, costs the steps since the previous checkpoint, not the run.
"""

from __future__ import annotations

import hashlib
import json
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
MANIFEST = "manifest.json"


def folder_of(run_id: str) -> Path:
    return results_dir() / "checkpoints" / run_id


def latest(run_id: str) -> Path | None:
    """The checkpoint the ``latest`` pointer names, else the newest one there is, or None (not
    verified: ``newest_intact`` is what a resume uses)."""
    pointed = _pointed(run_id)
    if pointed is not None:
        return pointed
    return max(folder_of(run_id).glob("step-*"), key=step_of, default=None)


def step_of(path: Path) -> int:
    return int(path.name.removeprefix("step-"))


def _sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def write_manifest(folder: Path) -> None:
    """The size and sha256 of every file below ``folder`` (read back from disk, as written)."""
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST)
    entries = {
        str(p.relative_to(folder)): {"bytes": p.stat().st_size, "sha256": _sha256(p)} for p in files
    }
    (folder / MANIFEST).write_text(json.dumps(entries, indent=1) + "\n")


def damage(folder: Path) -> str | None:
    """What is wrong with a checkpoint, or None when every file its manifest lists is there with
    its size and checksum."""
    try:
        entries = json.loads((folder / MANIFEST).read_text())
        assert isinstance(entries, dict) and "run.pt" in entries
    except FileNotFoundError:
        return f"{MANIFEST} is missing"
    except (OSError, ValueError, AssertionError):
        return f"{MANIFEST} is unreadable"
    for name, want in entries.items():
        path = folder / name
        if not path.is_file():
            return f"{name} is missing"
        if path.stat().st_size != want["bytes"]:
            return f"{name} has {path.stat().st_size} bytes, {want['bytes']} were written"
        if _sha256(path) != want["sha256"]:
            return f"{name} differs from what was written (sha256)"
    return None


def _pointed(run_id: str) -> Path | None:
    """The checkpoint the ``latest`` pointer names, if the pointer reads and names a folder."""
    try:
        name = (folder_of(run_id) / LATEST).read_text().strip()
    except (OSError, UnicodeDecodeError):
        return None
    path = folder_of(run_id) / name
    return path if name.startswith("step-") and path.is_dir() else None


def newest_intact(run_id: str) -> tuple[Path | None, list[str]]:
    """(the newest checkpoint whose files match its manifest, or None; ``step-N: what is
    wrong`` for each newer one found damaged). The pointer's checkpoint comes first, then the
    others newest first (a damaged pointer is passed over)."""
    pointed = _pointed(run_id)
    newest_first = sorted(folder_of(run_id).glob("step-*"), key=step_of, reverse=True)
    damaged = []
    for path in ([pointed] if pointed else []) + [p for p in newest_first if p != pointed]:
        wrong = damage(path)
        if wrong is None:
            return path, damaged
        damaged.append(f"{path.name}: {wrong}")
    return None, damaged


def _options(learner):
    """Frozen parameters (a LoRA run's base) are not saved: the run reads them again."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    frozen = any(not p.requires_grad for p in learner.model.parameters())
    return StateDictOptions(ignore_frozen_params=frozen, strict=not frozen)


def _weights_state(learner):
    from torch.distributed.checkpoint.state_dict import get_state_dict

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        model, optim = get_state_dict(learner.model, learner.opt, options=_options(learner))
    # a frozen parameter under a second name (tied embeddings: lm_head.weight) passes the option
    module = getattr(learner.model, "module", learner.model)  # DDP's wrapped module
    frozen = {n for n, p in module.named_parameters(remove_duplicate=False) if not p.requires_grad}
    return {"model": {k: v for k, v in model.items() if k not in frozen}, "optim": optim}


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
        write_manifest(tmp)  # after dcp.save returned: every rank's shard is written
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
            options=_options(run.learner),
        )
    saved = torch.load(path / "run.pt", weights_only=False)
    pointed = _pointed(saved["run_id"])
    if run.world.main and pointed is not None and pointed != path:
        wrong = damage(pointed) or "not verified"
        run.tracker.set_tags(
            {"bench.resume_fallback": f"{pointed.name}: {wrong}; resumed from {path.name}"}
        )
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
