"""Started by tests/test_distributed.py, in one process or by torchrun in several: trains each
given run through the loop and records, per step, the sampled token ids and every logged
metric, the parameters after the first step and at the end (gathered whole under fsdp) and the share of the policy's and
the reference's parameters a rank holds; rank 0 saves them to
OUT/<name>.pt. Usage: distributed_worker.py OUT NAME=override,override ... [fail@STEP]
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch

import bench.loop as loop
from bench.config import load_config
from bench.distributed import full, local


def record(name: str, overrides: list[str], out: Path, fail_at: int) -> None:
    got = {"tokens": [], "metrics": [], "params": {}, "params_step1": {}}
    rewards_of, log, finish, train_step = loop.rewards_of, loop.log, loop.finish, loop.train_step

    def recording_rewards(run, rows, gen):
        got["tokens"].append(gen.completion_ids.clone())
        return rewards_of(run, rows, gen)

    def recording_log(run, metrics, step):
        got["metrics"].append((step, dict(metrics)))
        log(run, metrics, step)

    def params(run) -> dict:
        named = list(run.learner.policy.named_parameters())
        if run.learner.value_head is not None:
            named += [(f"value_head.{n}", p) for n, p in run.learner.value_head.named_parameters()]
        return {n: full(p).detach().clone() for n, p in named}  # collective: all ranks

    def final_params(run, status):
        got["params"] = params(run)
        for module in ("policy", "reference"):  # the share of it this rank holds
            ps = list(getattr(run.learner, module).parameters())
            got[f"{module}_share"] = sum(local(p).numel() for p in ps) / sum(p.numel() for p in ps)
        finish(run, status)

    def failing_step(run, step):
        if step == fail_at and run.world.rank == 1:
            raise RuntimeError(f"injected fault on rank 1 at step {step}")
        done = train_step(run, step)
        if step == 1:
            got["params_step1"] = params(run)
        return done

    loop.rewards_of, loop.log, loop.finish, loop.train_step = (
        recording_rewards,
        recording_log,
        final_params,
        failing_step,
    )
    try:
        loop.train(load_config("smoke", overrides), tracking_uri=os.environ["BENCH_TEST_URI"])
    finally:
        loop.rewards_of, loop.log, loop.finish, loop.train_step = (
            rewards_of,
            log,
            finish,
            train_step,
        )
    if os.environ.get("RANK", "0") == "0":
        torch.save(got, out / f"{name}.pt")


def main() -> None:
    out = Path(sys.argv[1])
    fail_at = 0
    for spec in sys.argv[2:]:
        if spec.startswith("fail@"):
            fail_at = int(spec.removeprefix("fail@"))
            continue
        name, _, overrides = spec.partition("=")
        record(name, [o for o in overrides.split(",") if o], out, fail_at)


if __name__ == "__main__":
    main()
