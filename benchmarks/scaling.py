"""Steps/s of the default arithmetic workload: 1 process x 2 threads against 2 processes x 1
thread under train.sharding=ddp and fsdp (torchrun, gloo), and the share of a step that rank
0's main thread spends in collectives. No goal on a 2-core machine: the numbers go to
docs/distributed.md.

    python benchmarks/scaling.py [--steps 14]

A step's time is its ``perf/step_s`` (sampling, scoring, batch, update) on unprofiled steps;
communication is measured on other steps (every second one, after two warm-up steps) with
torch's profiler: the self time of the collective events (``c10d::*`` and FSDP2's all-gather
and reduce-scatter waits) over the profiled step's time.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.app.launch import torchrun

COLLECTIVES = ("c10d::", "FSDP::all_gather (", "FSDP::post_backward_reduce", "gloo:", "nccl:")


def comm_seconds(prof) -> float:
    return (
        sum(
            e.self_cpu_time_total
            for e in prof.key_averages()
            if any(e.key.startswith(c) for c in COLLECTIVES)
        )
        / 1e6
    )


def worker(steps: int, sharding: str, out: Path) -> None:
    """One training run of the arithmetic preset, timed (run in each process)."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    import bench.loop as loop
    from bench.config import load_config

    plain, shares = [], []
    original = loop.train_step

    def timed(run, step):
        if step > 2 and step % 2 == 0:  # profiled: the communication share only
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                t0 = time.perf_counter()
                metrics = original(run, step)
                took = time.perf_counter() - t0
            shares.append(comm_seconds(prof) / took)
            return metrics
        t0 = time.perf_counter()
        metrics = original(run, step)
        if step > 2:
            plain.append(time.perf_counter() - t0)
        return metrics

    loop.train_step = timed
    overrides = [
        f"train.steps={steps}",
        f"train.sharding={sharding}",
        "eval.max_prompts=16",
        "eval.k=0",
        f"train.threads={torch.get_num_threads()}",
    ]
    loop.train(load_config("arithmetic", overrides), tracking_uri=f"sqlite:///{out}/mlflow.db")
    if os.environ.get("RANK", "0") == "0":
        result = {"step_s": statistics.median(plain), "comm_share": statistics.median(shares)}
        (out / f"{sharding}.json").write_text(json.dumps(result))


def launch(layout: str, sharding: str, steps: int, out: Path) -> dict:
    env = os.environ | {"BENCH_PROGRESS": "0", "BENCH_RESULTS": str(out / "results")}
    me = [__file__, "--worker", sharding, "--steps", str(steps), "--out", str(out)]
    if layout == "1x2":
        cmd = [sys.executable, *me]
        env |= {"OMP_NUM_THREADS": "2"}
    else:
        cmd = torchrun(2, *me)
        env |= {"OMP_NUM_THREADS": "1"}
    subprocess.run(cmd, env=env, check=True, capture_output=True)
    return json.loads((out / f"{sharding}.json").read_text())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=14)
    parser.add_argument("--worker")
    parser.add_argument("--out")
    args = parser.parse_args()
    if args.worker:
        worker(args.steps, args.worker, Path(args.out))
        return
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for layout, sharding in (("1x2", "none"), ("2x1", "ddp"), ("2x1", "fsdp")):
            r = launch(layout, sharding, args.steps, Path(tmp))
            rows.append((layout, sharding, r))
            print(f"{layout} {sharding}: {r['step_s'] * 1000:.0f} ms/step", flush=True)
    base = rows[0][2]["step_s"]
    print("| processes x threads | sharding | ms/step | steps/s | vs 1 x 2 | communication share |")
    print("|---|---|---|---|---|---|")
    for layout, sharding, r in rows:
        share = f"{r['comm_share']:.0%}" if sharding != "none" else "-"
        print(
            f"| {layout.replace('x', ' x ')} | {sharding} | {r['step_s'] * 1000:.0f} | "
            f"{1 / r['step_s']:.2f} | {base / r['step_s']:.2f}x | {share} |"
        )


if __name__ == "__main__":
    main()
