"""Algorithm registry. An algorithm is a loss over a batch of rollouts, nothing more.

Each file ``algorithms/<name>.py`` defines a frozen ``Config`` (paper defaults, one-line doc per
field), pure loss functions of ``(RolloutBatch, PolicyOutput, Config)``, and registers one
``Algorithm`` under ``<name>``. The training loop reads ``needs`` instead of branching on names.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor

from bench.core.batch import PolicyOutput, RolloutBatch
from bench.core.registry import Registry

LossFn = Callable[[RolloutBatch, PolicyOutput, Any], tuple[Tensor, dict[str, float]]]


@dataclass(frozen=True)
class Needs:
    """What the loop must put in the batch for this algorithm (minibatches always hold whole
    groups, so every algorithm sees the same minibatches)."""

    ref_logp: bool = False  # per-token log-probs of the frozen reference policy
    values: bool = False  # a value head on the policy (PPO)


@dataclass(frozen=True)
class Algorithm:
    name: str  # registry key == file name == preset key == MLflow param value
    config: type  # frozen dataclass of hyperparameters, defaults from the paper
    loss: LossFn
    needs: Needs = field(default_factory=Needs)
    group_relative: bool = True  # loss unchanged by adding a constant to a group's rewards
    select: Callable[[RolloutBatch, Any], Tensor] | None = (
        None  # rows the loss uses (forward only those)
    )
    source: str = ""  # where the defaults come from (paper / reference code)


ALGORITHMS: Registry[Algorithm] = Registry("algorithm", "algorithms")


def register(algo: Algorithm) -> Algorithm:
    """Register ``algo``; its name must be the name of the file that registers it."""
    caller = sys._getframe(1).f_globals.get("__name__", "")
    if caller.startswith("algorithms.") and caller.split(".")[-1] != algo.name:
        raise ValueError(
            f"algorithm '{algo.name}' must be registered from algorithms/{algo.name}.py"
        )
    return ALGORITHMS.register(algo.name, algo)
