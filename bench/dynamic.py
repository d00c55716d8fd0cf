"""Dynamic sampling (DAPO, Yu et al. 2025, Sec. 3.2), for any algorithm: ``sampling.dynamic``.

A group whose k rewards are all equal gives the group-relative algorithms no signal. With
``min_informative_groups`` = N > 0 a step keeps only the groups with a reward spread, drawing
the next prompts of the same stream until it holds N of them (the first N, in draw order) or
has drawn ``max_draws`` times; then a one-line warning and the step goes on with what it has
(the last draw whole if no group had a spread: a step never trains on nothing). Every rank
decides from the same rewards, so sharded runs keep the same groups; the stream's position
after the extra draws is in its state, so resume continues from it. The extra generation is
compute: ``tokens`` counts every drawn token, and the loop logs the draws and groups.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import torch
from torch import Tensor

from bench.config import DynamicSampling
from bench.core.generation import Generation
from bench.distributed import join


@dataclass
class Drawn:
    """One step's rollouts, scored: rows (each prompt's row k times), generation, rewards."""

    rows: list[dict]
    gen: Generation
    rewards: Tensor
    unscorable: int  # rows whose reward was None, over every draw
    tokens: int  # completion tokens generated, over every draw
    draws: int = 1  # rollout draws this step took
    groups_drawn: int = 0  # groups generated, over every draw

    def groups(self, idx: Tensor, k: int) -> Drawn:
        """The groups ``idx`` (in that order), rows and all."""
        rows = (idx[:, None] * k + torch.arange(k)).reshape(-1)
        return replace(
            self,
            rows=[self.rows[i] for i in rows.tolist()],
            gen=self.gen.rows(rows),
            rewards=self.rewards[rows],
        )


def informative(rewards: Tensor, k: int) -> Tensor:
    """Indices of the groups (rows g*k..g*k+k-1) whose rewards are not all equal."""
    g = rewards.view(-1, k)
    return torch.nonzero(g.max(1).values != g.min(1).values).squeeze(1)


def fill(
    draw: Callable[[], Drawn],
    k: int,
    cfg: DynamicSampling,
    pad_id: int,
    warn: Callable[[str], None],
) -> Drawn:
    """One draw, or with ``cfg.min_informative_groups`` the informative groups of as many draws
    as it takes (at most ``cfg.max_draws``)."""
    drawn = draw()
    want = cfg.min_informative_groups
    if not want:
        return drawn
    kept, found, draws = [], 0, 1
    unscorable, tokens, groups_drawn = drawn.unscorable, drawn.tokens, drawn.groups_drawn
    while True:
        groups = informative(drawn.rewards, k)[: want - found]
        if len(groups):
            kept.append(drawn.groups(groups, k))
            found += len(groups)
        if found >= want or draws >= cfg.max_draws:
            break
        drawn = draw()
        draws += 1
        unscorable, tokens = unscorable + drawn.unscorable, tokens + drawn.tokens
        groups_drawn += drawn.groups_drawn
    if found < want:
        warn(
            f"dynamic sampling: {found} of {want} informative groups after {draws} draws "
            f"(sampling.dynamic.max_draws={cfg.max_draws}); the step goes on with "
            + ("them" if found else "its last draw")
        )
    parts = kept or [drawn]
    return Drawn(
        rows=[r for p in parts for r in p.rows],
        gen=join([p.gen for p in parts], pad_id),
        rewards=torch.cat([p.rewards for p in parts]),
        unscorable=unscorable,
        tokens=tokens,
        draws=draws,
        groups_drawn=groups_drawn,
    )
