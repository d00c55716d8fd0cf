"""Contract tests generated from the task registry: every registered task yields rows, scores
its right answer above its wrong one, and runs two training steps (or, if it is eval-only, an
evaluation) through the one loop on a tiny model."""

import pytest

from algorithms import ALGORITHMS
from bench.config import load_config
from bench.core.errors import BenchError
from bench.evaluate import evaluate_model
from bench.loop import train
from tasks import TASKS

TINY = [
    "model.hidden_size=32",
    "model.num_layers=1",
    "model.num_heads=2",
    "model.intermediate_size=64",
    "model.warmstart_steps=0",
]


def make(name: str):
    cls = TASKS.get(name)
    return cls(cls.Config())


def train_rows_or_none(task) -> list[dict] | None:
    try:
        return task.train_rows()
    except BenchError as e:  # the one allowed refusal: an eval-only task
        assert "eval-only" in str(e)
        return None


def rewards(task, row: dict) -> list[float | None]:
    right, wrong = task.answers(row)
    columns = {k: [v, v] for k, v in row.items() if k != "prompt"}
    return task.reward([row["prompt"]] * 2, [right, wrong], **columns)


@pytest.mark.parametrize("name", TASKS.names())
def test_task_yields_rows_with_prompts(name):
    task = make(name)
    evals = task.eval_rows()
    assert evals and all(isinstance(r["prompt"], str) and r["prompt"] for r in evals)
    train_rows = train_rows_or_none(task)
    assert train_rows is None or (train_rows and all(r["prompt"] for r in train_rows))
    assert isinstance(task.version, str) and task.version


@pytest.mark.parametrize("name", TASKS.names())
def test_task_scores_its_right_answer_above_its_wrong_one(name):
    task = make(name)
    row = task.eval_rows()[0]
    right, wrong = task.answers(row)
    assert task.is_correct(right, row) is not False and task.is_correct(wrong, row) is not True
    scored = rewards(task, row)
    if scored == [None, None]:  # no scorer of its own: it must offer pairs to learn one from
        assert task.preference_rows()
    else:
        assert scored[0] > scored[1]


@pytest.mark.parametrize("name", TASKS.names())
def test_task_runs_two_steps_through_the_loop(name, tracking_uri):
    task = make(name)
    row = task.eval_rows()[0]
    overrides = [f"task={name}", "train.steps=2", "train.prompts_per_step=2", "eval.every=1"]
    overrides += ["eval.max_prompts=2", "eval.k=2", "sampling.max_new_tokens=8"]
    overrides += ["model.name_or_path=task"] if hasattr(task, "build_policy") else TINY
    if train_rows_or_none(task) is None:
        out = evaluate_model(
            "tiny", [name], k=2, max_new_tokens=8, limit=2, tracking_uri=tracking_uri
        )
        assert 0 <= out["metrics"][f"eval/{name}/accuracy"] <= 1
        return
    if rewards(task, row) == [None, None]:  # learns from its preference pairs (offline DPO)
        overrides += ["algorithm=dpo", "sampling.source=dataset", "sampling.k=2"]
    final = train(load_config("smoke", overrides), tracking_uri=tracking_uri)
    assert final["perf/skipped_steps"] == 0
    assert f"eval/{name}/accuracy" in final and "train/loss" in final


@pytest.mark.parametrize("algorithm", ALGORITHMS.names())
def test_every_algorithm_trains_the_bandit_table_policy(algorithm, tracking_uri):
    """A float64 policy that is not a transformer (its value head must follow its dtype)."""
    overrides = [f"algorithm={algorithm}", "train.steps=2", "eval.every=1"]
    final = train(load_config("bandit", overrides), tracking_uri=tracking_uri)
    assert final["perf/skipped_steps"] == 0 and "eval/bandit/tv_to_optimum" in final
