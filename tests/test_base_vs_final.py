"""The per-run test of final against base answers (reports/base_vs_final.py)."""

import pandas as pd
import pytest

from reports.base_vs_final import mcnemar


def test_mcnemar_exact_hand_derived():
    """5 problems gained, 1 lost: p = 2 P(X <= 1 | n=6, 1/2) = 2 (1 + 6) / 64 = 0.21875."""
    base = pd.Series([False] * 5 + [True] + [True] * 4 + [False] * 3)
    final = pd.Series([True] * 5 + [False] + [True] * 4 + [False] * 3)
    assert mcnemar(base, final) == (5, 1, pytest.approx(0.21875))
    assert mcnemar(base, base)[2] == 1.0  # nothing changed


def test_mcnemar_matches_scipy_binomial_tail():
    """9 gained, 0 lost: p = 2 / 2^9."""
    base = pd.Series([False] * 9 + [True])
    assert mcnemar(base, pd.Series([True] * 10)) == (9, 0, pytest.approx(2 / 512))
