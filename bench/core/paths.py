"""Where generated output goes: results/ under the working directory (git-ignored).

Set BENCH_RESULTS to put it elsewhere; BENCH_CACHE moves the cache of warm-started models and
reward models (default results/cache), e.g. to share it between results folders.
"""

from __future__ import annotations

import os
from pathlib import Path


def results_dir() -> Path:
    return Path(os.environ.get("BENCH_RESULTS", "results")).resolve()


def cache_dir() -> Path:
    cache = os.environ.get("BENCH_CACHE")
    return Path(cache).resolve() if cache else results_dir() / "cache"
