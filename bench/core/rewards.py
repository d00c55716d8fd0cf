"""Reward layer. A reward function is TRL-style: ``(prompts, completions, **columns) ->
list[float | None]`` where columns are the task rows' other fields, one list each. None means
"could not be scored": it is counted (train/reward/unscorable_frac) and given ``none_value``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

RewardFn = Callable[..., list[float | None]]


def score(
    fn: RewardFn,
    prompts: list[str],
    completions: list[str],
    rows: list[dict],
    none_value: float = 0.0,
) -> tuple[torch.Tensor, int]:
    """(rewards [N] float32, number of unscorable completions)."""
    columns = {k: [r[k] for r in rows] for k in rows[0] if k != "prompt"} if rows else {}
    raw = fn(prompts, completions, **columns)
    if len(raw) != len(completions):
        raise ValueError(
            f"reward function returned {len(raw)} values for {len(completions)} completions"
        )
    n_none = sum(r is None for r in raw)
    return torch.tensor(
        [none_value if r is None else float(r) for r in raw], dtype=torch.float32
    ), n_none


def overlong_penalty(lengths: torch.Tensor, budget: int, cache: int, scale: float = 1.0):
    """DAPO's soft overlong punishment (Yu et al. 2025, Sec. 3.4), added to the task reward: 0 up
    to ``budget - cache`` tokens, then falling linearly to ``-scale`` at the budget (a completion
    cut at the budget gets ``-scale``). ``lengths`` [N]: completion tokens, EOS included."""
    over = (lengths.to(torch.float32) - (budget - cache)).clamp(min=0)
    return -scale * (over / cache).clamp(max=1.0)
