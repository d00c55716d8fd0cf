"""Where generated output goes: results/ under the working directory (git-ignored).

Set BENCH_RESULTS to put it elsewhere.
"""

from __future__ import annotations

import os
from pathlib import Path


def results_dir() -> Path:
    return Path(os.environ.get("BENCH_RESULTS", "results")).resolve()


def cache_dir() -> Path:
    return results_dir() / "cache"
