"""`bench claims`: the plan of the five experiments, verdict rules on hand-made finals, and a
smoke-sized run that ends with a verdict for every claim."""

import numpy as np
import pandas as pd
import pytest

from reports import claims as judge
from tests.helpers import bench

VERDICTS = {judge.HOLDS, judge.NOT_REPRODUCED, judge.CONTRADICTED}


def test_dry_run_lists_the_five_experiments_and_the_time(tmp_path):
    out = bench("claims", "--dry-run", results=tmp_path)
    assert out.returncode == 0, out.stderr
    for name in ("optimum:", "offpolicy:", "beta:", "k:", "seeds:"):
        assert name in out.stderr
    # each claim at its pre-registered seed count (reports/preregistration.py)
    from reports.preregistration import PLANS

    assert f"offpolicy: {2 * 3 * PLANS['offpolicy'].seeds} runs" in out.stderr
    assert f"seeds: {3 * PLANS['seeds'].seeds} runs" in out.stderr
    assert "min with 2 workers" in out.stderr


def frame(values: dict, key: str) -> pd.DataFrame:
    return pd.DataFrame(
        [
            {"algorithm": a, key: x, "seed": s, "value": v}
            for (a, x), vs in values.items()
            for s, v in enumerate(vs)
        ]
    )


def decided(verdict):
    """The verdict of one claim alone (Holm over one test is the test itself)."""
    return judge.decide([verdict])[0].verdict


def replay_frame(interaction: np.ndarray, seed_level: np.ndarray) -> pd.DataFrame:
    """gvpo and grpo at replay 0 and 0.5 whose per-seed interaction is ``interaction``."""
    rows = []
    for s, (x, lvl) in enumerate(zip(interaction, seed_level, strict=True)):
        values = {("gvpo", 0): lvl, ("gvpo", 0.5): lvl + x, ("grpo", 0): lvl, ("grpo", 0.5): lvl}
        rows += [
            {"algorithm": a, "replay_ratio": r, "seed": s, "value": v}
            for (a, r), v in values.items()
        ]
    return pd.DataFrame(rows)


TV = frame({("gvpo", "policy"): [1e-4] * 5, ("gvpo", "uniform"): [1e-5] * 5}, "source")


def test_the_fixed_point_rule_is_a_threshold():
    tv = pd.concat([TV, frame({("grpo", "policy"): [0.5] * 5}, "source")])
    assert judge.unique_optimum(tv).verdict == judge.HOLDS
    assert judge.unique_optimum(tv.assign(value=0.2)).verdict == judge.NOT_REPRODUCED


def test_the_off_policy_rule_reaches_every_verdict_at_its_default_five_seeds():
    """Before: a sign-flip p < 0.05 was needed, and 5 seeds cannot give one (0.0625 at best)."""
    rng = np.random.default_rng(0)
    level = rng.normal(0.5, 0.05, 5)
    gain = replay_frame(0.02 + rng.normal(0, 0.005, 5), level)
    assert decided(judge.off_policy(TV, gain)) == judge.HOLDS
    assert (
        decided(judge.off_policy(TV, replay_frame(-0.02 + rng.normal(0, 0.005, 5), level)))
        == judge.CONTRADICTED
    )
    assert (
        decided(judge.off_policy(TV, replay_frame(rng.normal(0, 0.02, 5), level)))
        == judge.NOT_REPRODUCED
    )
    # the claim is about the change under replay: a gap between the algorithms at replay 0 that
    # replay leaves as it is gives no interaction
    shifted = gain.copy()
    shifted.loc[shifted.algorithm == "grpo", "value"] += 0.1
    assert judge.off_policy(TV, shifted).p_for == judge.off_policy(TV, gain).p_for
    assert decided(judge.off_policy(TV.assign(value=0.2), gain)) == judge.NOT_REPRODUCED


def test_a_beta_pair_with_no_spread_is_judged_by_its_difference_never_skipped():
    """Before: beta 0.5 at exactly +0.0625 on every seed gave a NaN t-interval that ``max``
    skipped, and the claim "held"."""
    level = np.random.default_rng(1).normal(0.5, 0.05, 8)
    betas = {("gvpo", b): level + 0.001 * i for i, b in enumerate((0.02, 0.05, 0.1, 0.2))}
    off = frame(betas | {("gvpo", 0.5): level + 0.0625}, "beta")
    assert decided(judge.beta_insensitivity(off)) == judge.CONTRADICTED
    near = frame(betas | {("gvpo", 0.5): level + 0.01}, "beta")  # no spread, inside the margin
    assert decided(judge.beta_insensitivity(near)) == judge.HOLDS
    rng = np.random.default_rng(2)
    noisy = frame({("gvpo", b): level + rng.normal(0, 0.03, 8) for b in (0.05, 0.1, 0.2)}, "beta")
    assert decided(judge.beta_insensitivity(noisy[noisy.seed < 3])) == judge.NOT_REPRODUCED


def k_frame(prompts_trend: float, samples_trend: float) -> pd.DataFrame:
    """8 seeds; each adds to the trend a small wobble in one of the 6 orders (each order as often
    but two): no trend of its own."""
    import itertools

    orders = list(itertools.permutations((-0.002, 0.0, 0.002)))
    rows = []
    for budget, trend in (("prompts", prompts_trend), ("samples", samples_trend)):
        for s in range(8):
            for i, k in enumerate((2, 4, 8)):
                value = 0.6 + trend * i + orders[s % 6][i]
                rows.append(
                    {"algorithm": "gvpo", "k": k, "budget": budget, "seed": s, "value": value}
                )
    return pd.DataFrame(rows)


def test_k_scaling_is_tested_at_equal_samples_only():
    """Before: a rise at equal prompts (k = 8 also draws 4x the samples) made the claim hold."""
    assert decided(judge.k_scaling(k_frame(0.02, 0.0))) == judge.NOT_REPRODUCED
    assert decided(judge.k_scaling(k_frame(0.0, 0.02))) == judge.HOLDS
    assert decided(judge.k_scaling(k_frame(0.0, -0.02))) == judge.CONTRADICTED


def test_seed_variance_needs_gvpo_below_each_other_algorithm():
    rng = np.random.default_rng(4)
    n = 24
    tight = {("gvpo", "x"): rng.normal(0.5, 0.005, n), ("grpo", "x"): rng.normal(0.5, 0.04, n)}
    assert (
        decided(
            judge.seed_variance(frame(tight | {("dr_grpo", "x"): rng.normal(0.5, 0.04, n)}, "x"))
        )
        == judge.HOLDS
    )
    # gvpo as tight as dr_grpo: "smallest" is not "smaller than each"
    like = tight | {("dr_grpo", "x"): rng.normal(0.5, 0.005, n)}
    assert decided(judge.seed_variance(frame(like, "x"))) != judge.HOLDS
    wide = {("gvpo", "x"): rng.normal(0.5, 0.05, n), ("grpo", "x"): rng.normal(0.5, 0.005, n)}
    assert decided(judge.seed_variance(frame(wide, "x"))) == judge.CONTRADICTED


def test_the_claims_are_corrected_together_by_holm():
    """Four tests at p 0.03, 0.04, 0.2, 0.5: each below 0.05 alone, none after Holm (the first
    needs p < 0.0125)."""
    made = [
        judge.Verdict(f"c{i}", judge.NOT_REPRODUCED, "", "", p_for=p, p_against=1.0)
        for i, p in enumerate((0.03, 0.04, 0.2, 0.5))
    ]
    assert [v.verdict for v in judge.decide(made)] == [judge.NOT_REPRODUCED] * 4
    assert "p for the claim 0.03 (Holm 0.12)" in made[0].statistic
    strong = [judge.Verdict("c", "", "", "", p_for=0.001, p_against=1.0), *made[1:]]
    assert judge.decide(strong)[0].verdict == judge.HOLDS


@pytest.mark.slow
def test_a_smoke_sized_run_ends_with_a_verdict_for_every_claim(tmp_path):
    out = bench("claims", "--scale", "smoke", "--seeds", "2", results=tmp_path, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    report = (tmp_path / "reports" / "claims" / "report.md").read_text()
    rows = [line for line in report.splitlines() if line.startswith("| ") and "**" in line]
    assert len(rows) == 5 and all(any(f"**{v}**" in r for v in VERDICTS) for r in rows)
    assert (tmp_path / "reports" / "claims" / "report.html").exists()
    assert len(list((tmp_path / "reports" / "claims").glob("claim*.png"))) == 5
