"""How long ``bench report`` takes on an existing experiment, and where the time goes.

    python benchmarks/report_time.py [EXPERIMENT] [--repeats 2]

Imports are timed once; then the whole report is built ``--repeats`` times in this process (what
``bench compare`` does after its last run: MLflow and the store are already loaded), each phase
(MLflow reads, the comparison's statistics, the base-vs-final section) timed inside it.
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("BENCH_PROGRESS", "0")


def timed(module, name: str, spent: dict):
    """Wrap ``module.name`` so its wall time adds to ``spent[name]``."""
    fn = getattr(module, name)

    def wrapper(*args, **kwargs):
        t = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            spent[name] = spent.get(name, 0.0) + time.perf_counter() - t

    setattr(module, name, wrapper)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("experiment", nargs="?", default="arithmetic")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    t = time.perf_counter()
    from reports import base_vs_final, report

    print(f"imports: {time.perf_counter() - t:.1f} s")
    spent: dict[str, float] = {}
    for module, name in [
        (report, "collect"),
        (report, "comparison_section"),
        (base_vs_final, "base_vs_final"),
        (report, "write_html"),
    ]:
        timed(module, name, spent)
    for i in range(args.repeats):
        spent.clear()
        t = time.perf_counter()
        report.build_report(args.experiment)
        total = time.perf_counter() - t
        parts = ", ".join(f"{k} {v:.2f} s" for k, v in spent.items())
        print(f"report {i + 1}: {total:.1f} s ({parts}; plots and tables the rest)")


if __name__ == "__main__":
    main()
