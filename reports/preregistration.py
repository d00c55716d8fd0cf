"""Each claim's test fixed before any run: the statistic, its direction, alpha, the smallest
effect of interest, the spread assumed (measured in the 2026-11-30 pilot, docs/results.md), and
the seed count, the fewest seeds at which a simulation of that very test reaches 80% power.
``bench claims`` runs that many seeds; docs/results.md's table is ``markdown_table()``.

Every rule is simulated the same way in the tests (tests/test_claim_calibration.py): under the
null its rate of a false "holds" stays at alpha, under the stated effect it reaches the power.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from reports.claim_tests import page_trend, paired_t_one_sided, spread_less, tost_p

ALPHA, POWER, TRIALS = 0.05, 0.8, 4000
BETAS = (0.02, 0.05, 0.1, 0.2, 0.5)  # the beta claim's grid; pairs against the middle one
K_VALUES = (2, 4, 8)


@dataclass(frozen=True)
class Plan:
    claim: str  # the experiment's name in bench/app/claims.py
    test: str
    effect: str  # the smallest effect of interest, in words
    assumed: str  # the spread the power rests on
    min_seeds: int  # below this the design is not worth running
    simulate: object  # (n, rng, effect: bool) -> p-values of TRIALS simulated experiments

    @functools.cached_property
    def seeds(self) -> int:
        """The fewest seeds (>= min_seeds) whose simulated power is >= 80%."""
        return next(n for n in range(self.min_seeds, 200) if self.power(n) >= POWER)

    def power(self, n: int, effect: bool = True, trials: int = TRIALS) -> float:
        """The share of simulated experiments of n seeds the test calls significant."""
        rng = np.random.default_rng(1000 + n)
        return float((np.asarray(self.simulate(n, rng, effect, trials)) < ALPHA).mean())


def offpolicy_p(n, rng, effect, trials=TRIALS, sd=0.01, size=0.02):
    """Per seed, the interaction (gvpo at replay r - gvpo at 0) - (grpo at r - grpo at 0),
    normal with sd ``sd``; one-sided paired t of interaction > 0."""
    d = rng.normal(size if effect else 0.0, sd, (trials, n))
    return paired_t_one_sided(d)


def variance_p(n, rng, effect, trials=TRIALS, sd=0.02, ratio=0.5):
    """gvpo's final accuracies with sd ``ratio * sd`` (``sd`` under the null) against two other
    algorithms' with sd ``sd``, n seeds each; both one-sided Brown-Forsythe tests must reject:
    the p of the pair is the larger one (an intersection-union test)."""
    g = rng.normal(0, sd * (ratio if effect else 1.0), (trials, n))
    others = [rng.normal(0, sd, (trials, n)) for _ in range(2)]
    return np.maximum(*(spread_less(g, o) for o in others))


def k_p(n, rng, effect, trials=TRIALS, sd=0.012, rise=0.01):
    """Equal samples per step: per seed, accuracy at k = 2, 4, 8 rising by ``rise`` per doubling
    of k, a seed effect shared by the three, and noise ``sd``; Page's trend test."""
    seed = rng.normal(0, 0.02, (trials, n, 1))
    trend = (rise if effect else 0.0) * np.arange(len(K_VALUES))
    return page_trend(seed + trend + rng.normal(0, sd, (trials, n, len(K_VALUES))))


def beta_p(n, rng, effect, trials=TRIALS, sd=0.015, margin=0.03, shift=0.0):
    """GVPO at the 5 betas, paired by seed (a seed effect shared, noise ``sd`` per run); each
    beta against the middle one by TOST within +-``margin``; the claim's p is the largest
    (every pair must be equivalent). ``effect``: the betas equal (the claim true), else one
    beta off by the margin (the claim false)."""
    seed = rng.normal(0, 0.02, (trials, n, 1))
    means = np.zeros(len(BETAS))
    if not effect:
        means[0] = margin + shift
    x = seed + means + rng.normal(0, sd, (trials, n, len(BETAS)))
    middle = len(BETAS) // 2
    ps = [tost_p(x[:, :, b] - x[:, :, middle], margin) for b in range(len(BETAS)) if b != middle]
    return np.max(ps, axis=0)


PLANS = {
    "offpolicy": Plan(
        "offpolicy",
        "one-sided paired t of the per-seed interaction (gvpo at replay 0.5 - at 0) - (grpo at 0.5 - at 0) > 0",
        "an interaction of 0.02 accuracy",
        "sd 0.01 of the interaction",
        5,
        offpolicy_p,
    ),
    "beta": Plan(
        "beta",
        "TOST of each beta against beta 0.1 within +-0.03 (90% t-intervals); all must pass",
        "equal accuracy at every beta",
        "sd 0.015 per run around a shared seed effect",
        5,
        beta_p,
    ),
    "k": Plan(
        "k",
        "Page's trend test, one-sided up, over k = 2, 4, 8 at equal samples per step",
        "a rise of 0.01 accuracy per doubling of k",
        "sd 0.012 per run around a shared seed effect",
        5,
        k_p,
    ),
    "seeds": Plan(
        "seeds",
        "one-sided Brown-Forsythe of gvpo's spread < grpo's and < dr_grpo's; both must reject",
        "gvpo's sd half of the others'",
        "sd 0.02 of the others' final accuracy",
        8,
        variance_p,
    ),
}


def markdown_table() -> str:
    """The pre-registered tests, as docs/results.md carries them."""
    lines = [
        "| claim | test (alpha 0.05, Holm across the four) | smallest effect of interest | assumed | seeds | power |",
        "|---|---|---|---|---|---|",
    ]
    for p in PLANS.values():
        lines.append(
            f"| {p.claim} | {p.test} | {p.effect} | {p.assumed} | {p.seeds} | {p.power(p.seeds):.2f} |"
        )
    return "\n".join(lines)
