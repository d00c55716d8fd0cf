"""Task registry. One file per task in this package; files starting with '_' are helpers.

A task declares its data (train/eval rows: dicts with a "prompt" and any other columns), a
reward function in TRL's form ``(prompts, completions, **columns) -> list[float | None]``,
what counts as a correct answer for evaluation, and supervised examples for the warm start.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any, ClassVar

from bench.core.registry import Registry

VALIDATION_MAX = 200  # rows of the default validation slice at most


@dataclass(frozen=True)
class TaskConfig:
    """Base for each task's Config dataclass."""


class Task:
    name: ClassVar[str]  # registry key == file name
    version: ClassVar[str]  # bump when data, template or scoring change (logged as a tag)
    Config: ClassVar[type] = TaskConfig
    template: str = ""  # the prompt format in use (set once the tokenizer is bound); "" = only one

    def __init__(self, cfg: Any):
        self.cfg = cfg

    def train_rows(self) -> list[dict]:
        raise NotImplementedError

    def eval_rows(self) -> list[dict]:
        raise NotImplementedError

    def validation_rows(self) -> list[dict]:
        """Held-out rows for tuning (``eval.split=validation``), never rows of the eval split:
        by default the last tenth of the train rows (at most 200: for the generated tasks a
        seeded random subset, as their rows come in the generator's order), which a tuning run
        then does not train on. [] = none (the task cannot be tuned on)."""
        rows = self.train_rows()
        return rows[len(rows) - min(VALIDATION_MAX, len(rows) // 10) :]

    def is_correct(self, completion: str, row: dict) -> bool | None:
        """Whether a completion answers the row correctly; None = could not be scored."""
        raise NotImplementedError

    def extract(self, completion: str, row: dict) -> str | None:
        """The answer a completion gives, as the task reads it (saved with the eval samples);
        None = none found, or the task does not extract one."""
        return None

    def reward(self, prompts: list[str], completions: list[str], **columns) -> list[float | None]:
        """Default reward: 1.0 if correct, 0.0 if wrong, None if unscorable."""
        rows = [{k: v[i] for k, v in columns.items()} for i in range(len(prompts))]
        out = []
        for c, row in zip(completions, rows, strict=True):
            ok = self.is_correct(c, row)
            out.append(None if ok is None else float(ok))
        return out

    def answers(self, row: dict) -> tuple[str, str]:
        """(a completion the task scores as right, one it scores as wrong) for ``row``: the
        task contract test (tests/test_task_contract.py) checks the reward agrees."""
        raise NotImplementedError

    def bind_tokenizer(self, tokenizer) -> None:
        """Called once the model is loaded (e.g. to render prompts with its chat template)."""

    def prepare(self) -> None:
        """Expensive one-time setup (e.g. training a proxy reward model), run once in the parent
        process before parallel runs start."""

    def reward_metrics(self, prompts: list[str], completions: list[str]) -> dict[str, float]:
        """Extra eval metrics over sampled completions (e.g. gold and proxy reward)."""
        return {}

    def policy_metrics(self, model) -> dict[str, float]:
        """Extra eval metrics computed from the model itself (e.g. distance to an exact optimum)."""
        return {}

    def responses(self) -> list[str] | None:
        """The finite set of possible completions, if there is one (sampling.source=uniform)."""
        return None

    def preference_rows(self) -> list[dict]:
        """Offline preference pairs: rows with "prompt", "chosen", "rejected" (sampling.source=dataset)."""
        from bench.core.errors import BenchError

        raise BenchError(f"task '{self.name}' has no preference pairs for sampling.source=dataset")

    def sft_examples(self) -> list[tuple[str, str]]:
        """(prompt, target completion) pairs for the supervised warm start."""
        raise NotImplementedError


TASKS: Registry[type[Task]] = Registry("task", "tasks")


def register(cls: type[Task]) -> type[Task]:
    """Class decorator; the task's name must be the name of its file."""
    module = sys.modules[cls.__module__].__name__
    if module.startswith("tasks.") and module.split(".")[-1] != cls.name:
        raise ValueError(f"task '{cls.name}' must be registered from tasks/{cls.name}.py")
    TASKS.register(cls.name, cls)
    return cls
