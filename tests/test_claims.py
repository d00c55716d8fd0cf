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
    assert "194 distinct runs" in out.stderr and "min with 2 workers" in out.stderr


def frame(values: dict, key: str) -> pd.DataFrame:
    return pd.DataFrame(
        [
            {"algorithm": a, key: x, "seed": s, "value": v}
            for (a, x), vs in values.items()
            for s, v in enumerate(vs)
        ]
    )


def test_verdict_rules_on_hand_made_finals():
    tv = frame(
        {
            ("gvpo", "policy"): [1e-4] * 5,
            ("gvpo", "uniform"): [1e-5] * 5,
            ("grpo", "policy"): [0.5] * 5,
        },
        "source",
    )
    assert judge.unique_optimum(tv).verdict == judge.HOLDS
    assert judge.unique_optimum(tv.assign(value=0.2)).verdict == judge.NOT_REPRODUCED
    rng = np.random.default_rng(0)
    level = rng.normal(0.5, 0.05, 8)
    same = frame({("gvpo", b): level + rng.normal(0, 0.002, 8) for b in (0.05, 0.1, 0.2)}, "beta")
    assert judge.beta_insensitivity(same).verdict == judge.HOLDS  # tight intervals within 0.03
    noisy = frame({("gvpo", b): level + rng.normal(0, 0.02, 8) for b in (0.05, 0.1, 0.2)}, "beta")
    assert judge.beta_insensitivity(noisy[noisy.seed < 2]).verdict == judge.NOT_REPRODUCED
    spread = frame(
        {("gvpo", b): level + d for b, d in ((0.05, 0.0), (0.1, 0.06), (0.2, 0.12))}, "beta"
    )
    assert judge.beta_insensitivity(spread).verdict == judge.CONTRADICTED
    seeds = frame({("gvpo", "x"): level * 0.1 + 0.45, ("grpo", "x"): level * 3 - 1}, "x")
    assert judge.seed_variance(seeds).verdict == judge.HOLDS
    assert (
        judge.seed_variance(seeds.replace({"gvpo": "grpo_", "grpo": "gvpo"})).verdict
        == judge.CONTRADICTED
    )


@pytest.mark.slow
def test_a_smoke_sized_run_ends_with_a_verdict_for_every_claim(tmp_path):
    out = bench("claims", "--scale", "smoke", "--seeds", "2", results=tmp_path, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    report = (tmp_path / "reports" / "claims" / "report.md").read_text()
    rows = [line for line in report.splitlines() if line.startswith("| ") and "**" in line]
    assert len(rows) == 5 and all(any(f"**{v}**" in r for v in VERDICTS) for r in rows)
    assert (tmp_path / "reports" / "claims" / "report.html").exists()
    assert len(list((tmp_path / "reports" / "claims").glob("claim*.png"))) == 5
