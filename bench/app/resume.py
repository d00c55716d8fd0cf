"""Which checkpoint ``bench run --resume [RUN_ID]`` continues from, and the same choice made
silently by ``bench compare`` and ``bench sweep`` for runs that were interrupted."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from bench import checkpoint
from bench.config import RunConfig, config_hash, flatten
from bench.core.errors import BenchError
from bench.tracking import client, resolve_uri

# settings that say how a run is executed, not what it computes: they may change on resume
EXECUTION = {
    "train.threads",
    "train.sharding",
    "train.collective_timeout_s",
    "train.checkpoint_every",
    "train.keep_checkpoints",
}


def _unfinished(cfg: RunConfig, uri: str) -> list:
    """Runs of this name in the config's experiment that did not finish, newest first."""
    c = client(uri)
    exp = c.get_experiment_by_name(cfg.tracking.experiment)
    if exp is None:
        return []
    name = cfg.name.replace("'", "\\'")
    found = c.search_runs(
        [exp.experiment_id],
        f"attributes.run_name = '{name}' and attributes.status != 'FINISHED' "
        "and attributes.status != 'RUNNING'",  # a RUNNING run's process is alive (reaped if not)
        order_by=["attributes.start_time DESC"],
    )
    return [r for r in found if checkpoint.latest(r.info.run_id) is not None]


def intact(run_id: str) -> Path:
    """The newest checkpoint of ``run_id`` whose files match their checksums; one line on
    stderr for each newer one that does not, and one-line error when none does."""
    path, damaged = checkpoint.newest_intact(run_id)
    if path is None:
        raise BenchError(
            f"--resume: every checkpoint of run {run_id} is damaged ({'; '.join(damaged)}); "
            f"they are in {checkpoint.folder_of(run_id)}"
        )
    if damaged and os.environ.get("RANK", "0") == "0":
        print(
            f"warning: checkpoint {'; '.join(damaged)}: falling back to {path.name}",
            file=sys.stderr,
        )
    return path


def changes(cfg: RunConfig, run) -> list[str]:
    """``key: old -> new`` for every computed setting that differs from the run's params."""
    now = {k: str(v) for k, v in flatten(cfg).items()}
    then = run.data.params
    keys = sorted((set(now) | set(then)) - EXECUTION - {"world_size"})
    return [
        f"{k}: {then.get(k, '-')} -> {now.get(k, '-')}" for k in keys if now.get(k) != then.get(k)
    ]


def _same_config(cfg: RunConfig, run) -> None:
    if run.data.tags.get("bench.config") == config_hash(cfg):
        return
    diff = changes(cfg, run) or ["(settings outside the logged params)"]
    raise BenchError(
        f"the config changed since run {run.info.run_id} was checkpointed: {'; '.join(diff)} "
        "(resume with its config, or start a new run without --resume)"
    )


def checkpoint_to_resume(cfg: RunConfig, tracking_uri: str | None, run_id: str | None) -> Path:
    """The latest checkpoint of ``run_id``, or of the newest unfinished run of the config's
    name; one-line errors when there is none or the config changed."""
    uri = resolve_uri(tracking_uri or cfg.tracking.uri)
    if run_id:
        try:
            run = client(uri).get_run(run_id)
        except Exception:
            raise BenchError(f"--resume {run_id}: no such run in {uri}") from None
        if run.info.status == "FINISHED":
            raise BenchError(f"--resume {run_id}: the run finished; nothing to resume")
        if checkpoint.latest(run_id) is None:
            raise BenchError(
                f"--resume {run_id}: the run has no checkpoint (it ran with train.checkpoint_every=0)"
            )
        _same_config(cfg, run)
        return intact(run_id)
    runs = _unfinished(cfg, uri)
    if not runs:
        raise BenchError(
            f"--resume: no checkpoint of an unfinished run '{cfg.name}' in experiment "
            f"'{cfg.tracking.experiment}' (runs checkpoint with train.checkpoint_every=N)"
        )
    _same_config(cfg, runs[0])
    return intact(runs[0].info.run_id)


def interrupted(cfg: RunConfig, tracking_uri: str | None) -> Path | None:
    """For compare and sweep: the checkpoint of an interrupted run of this very config."""
    uri = resolve_uri(tracking_uri or cfg.tracking.uri)
    for run in _unfinished(cfg, uri):
        if run.data.tags.get("bench.config") == config_hash(cfg):
            try:
                return intact(run.info.run_id)
            except BenchError as e:  # nothing to continue from: the run starts again
                print(f"warning: {e}; {cfg.name} starts again", file=sys.stderr)
    return None
