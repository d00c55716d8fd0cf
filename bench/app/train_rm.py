"""``bench train-rm``: a Bradley-Terry reward model on a task's preference pairs, logged to
MLflow (experiment 'reward_models') and saved under results/reward_models/."""

from __future__ import annotations

import time

from bench.core.paths import results_dir
from bench.core.reward_model import RMConfig, pairwise_accuracy, train_reward_model
from bench.tracking import Tracker, resolve_uri
from tasks import TASKS


def split_pairs(task) -> tuple[list[dict], list[dict]]:
    """(train, held-out) pairs: the task's held-out pairs if it has them, else the last tenth."""
    held = [r for r in task.eval_rows() if "chosen" in r]
    train = task.preference_rows()
    if not held:
        cut = len(train) * 9 // 10
        train, held = train[:cut], train[cut:]
    return train, held


def train_and_log(
    task_name: str, cfg: RMConfig, *, pandalm: bool, tracking_uri: str | None
) -> tuple[dict[str, float], str]:
    """(held-out metrics, folder of the saved model)."""
    cls = TASKS.get(task_name)
    train, held = split_pairs(cls(cls.Config()))
    rm, tok, metrics = train_reward_model(train, held, cfg)
    if pandalm:  # human-labelled pairs from another distribution: an extra held-out check
        from bench.pandalm import pandalm_pairs

        metrics["rm/pandalm_accuracy"] = pairwise_accuracy(rm, tok, pandalm_pairs(), cfg.max_length)
    out = results_dir() / "reward_models" / f"{task_name}__{int(time.time())}"
    rm.save_pretrained(out)
    tok.save_pretrained(out)
    params = {
        "task": task_name,
        "model": cfg.name_or_path,
        "steps": cfg.steps,
        "batch": cfg.batch,
        "lr": cfg.lr,
        "max_length": cfg.max_length,
        "n_train": len(train),
        "n_heldout": len(held),
    }
    uri = resolve_uri(tracking_uri)
    tracker = Tracker(uri, "reward_models", f"rm__{task_name}", params, {"path": str(out)})
    tracker.log_metrics(metrics, cfg.steps)
    tracker.end()
    return metrics, str(out)
