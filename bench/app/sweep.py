"""``bench sweep``: the cross product of a grid, resumable.

    bench sweep arithmetic --grid algorithm=gvpo,grpo algorithms.gvpo.beta=0.05,0.1,0.2 seed=0..2

Each point is the preset plus one ``key=value`` per grid key. Runs are tagged ``sweep.id`` (a hash
of the preset, the fixed overrides and the grid, so the same command finds its own runs again)
and ``sweep.point``. Re-running a sweep skips points that already have a FINISHED run and runs
the rest (failed, killed or never started).
"""

from __future__ import annotations

import hashlib
import itertools
import json

from bench.config import RunConfig, load_config
from bench.core.errors import BenchError


def parse_values(text: str) -> list[str]:
    """'a,b,c' -> [a, b, c]; '0..4' -> [0, 1, 2, 3, 4] (inclusive integer range)."""
    if ".." in text and "," not in text:
        lo, hi = text.split("..", 1)
        try:
            return [str(v) for v in range(int(lo), int(hi) + 1)]
        except ValueError:
            raise BenchError(f"grid range '{text}' must be two integers, like 0..4") from None
    return [v for v in text.split(",") if v != ""]


def parse_grid(items: list[str]) -> list[tuple[str, list[str]]]:
    grid = []
    for item in items:
        if "=" not in item:
            raise BenchError(f"--grid '{item}' must look like key=v1,v2 or key=0..4")
        key, values = item.split("=", 1)
        if not parse_values(values):
            raise BenchError(f"--grid '{item}' has no values")
        grid.append((key.strip(), parse_values(values)))
    return grid


def points(grid: list[tuple[str, list[str]]]) -> list[list[str]]:
    """Every combination, as override lists, in a stable order."""
    keys = [k for k, _ in grid]
    return [
        [f"{k}={v}" for k, v in zip(keys, combo, strict=True)]
        for combo in itertools.product(*[v for _, v in grid])
    ]


def sweep_id(preset: str | None, overrides: list[str], grid: list[tuple[str, list[str]]]) -> str:
    blob = json.dumps({"preset": preset, "overrides": overrides, "grid": grid}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def plan(
    preset: str | None, overrides: list[str], grid_items: list[str], threads: int
) -> tuple[str, list[tuple[str, RunConfig]]]:
    """(sweep id, [(point text, config)]); every point is validated before anything runs."""
    grid = parse_grid(grid_items)
    sid = sweep_id(preset, overrides, grid)
    out = []
    for point in points(grid):
        cfg = load_config(
            preset, [*overrides, *point, *([f"train.threads={threads}"] if threads else [])]
        )
        out.append((" ".join(point), cfg))
    return sid, out


def finished_points(sid: str, experiments: set[str], tracking_uri: str) -> set[str]:
    """Points of sweep ``sid`` that already have a FINISHED run."""
    from bench.tracking import client

    c = client(tracking_uri)
    ids = [
        e.experiment_id for name in experiments if (e := c.get_experiment_by_name(name)) is not None
    ]
    if not ids:
        return set()
    runs = c.search_runs(
        ids,
        filter_string=f"tags.`sweep.id` = '{sid}' and attributes.status = 'FINISHED'",
        max_results=10_000,
    )
    return {r.data.tags.get("sweep.point", "") for r in runs}
