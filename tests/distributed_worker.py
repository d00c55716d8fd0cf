"""Started by tests/test_distributed.py, in one process or by torchrun in several: trains each
given run through the loop and records, per step, the sampled token ids and every logged
metric, the parameters after the first step and at the end (gathered whole under fsdp) and the share of the policy's and
the reference's parameters a rank holds; rank 0 saves them to
OUT/<name>.pt. Usage: distributed_worker.py OUT [fail@STEP] [nan@STEP] NAME=override,override ...
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch

import bench.loop as loop
from bench.config import load_config
from bench.distributed import full, local


class NanGradient:
    """NaN written into one parameter's gradient on the last rank (the only one in one process):
    by a hook during the backward, before ddp's all-reduce spreads it; under fsdp (whose hooks
    see the unsharded parameter) into the last rank's shard after the reduce-scatter, where the
    global norm that clipping all-reduces sees it."""

    def __init__(self, learner):
        import bench.update as update

        self.update, self.clip, self.hook = update, update.clip_grad_norm_, None
        if learner.cfg.train.sharding != "fsdp":
            nan = float("nan")
            self.hook = learner.parameters()[2].register_hook(lambda g: torch.full_like(g, nan))
            return

        def clipping(params, max_norm, *a, **kw):
            params = list(params)
            grad = next(
                local(p.grad) for p in params if p.grad is not None and local(p.grad).numel()
            )
            grad.view(-1)[0] = float("nan")
            return self.clip(params, max_norm, *a, **kw)

        update.clip_grad_norm_ = clipping

    def remove(self) -> None:
        if self.hook is not None:
            self.hook.remove()
        self.update.clip_grad_norm_ = self.clip


def record(name: str, overrides: list[str], out: Path, fail_at: int, nan_at: int = 0) -> None:
    got = {"tokens": [], "metrics": [], "params": {}, "params_step1": {}}
    rewards_of, log, finish, train_step = loop.rewards_of, loop.log, loop.finish, loop.train_step

    at = {"step": 0}

    def recording_rewards(run, rows, gen):
        """The step's sampled token ids (every draw of it, with dynamic sampling)."""
        ids = gen.completion_ids.clone()
        if len(got["tokens"]) < at["step"]:
            got["tokens"].append(ids)
        else:
            got["tokens"][-1] = torch.cat([got["tokens"][-1], ids])
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
        at["step"] = step
        if step == fail_at and run.world.rank == 1:
            raise RuntimeError(f"injected fault on rank 1 at step {step}")
        nan = None
        if step == nan_at and run.world.rank == run.world.size - 1:
            nan = NanGradient(run.learner)
        try:
            done = train_step(run, step)
        finally:
            if nan is not None:
                nan.remove()
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
    fail_at = nan_at = 0
    for spec in sys.argv[2:]:
        if spec.startswith(("fail@", "nan@")):
            kind, _, step = spec.partition("@")
            fail_at, nan_at = (int(step), nan_at) if kind == "fail" else (fail_at, int(step))
            continue
        name, _, overrides = spec.partition("=")
        record(name, [o for o in overrides.split(",") if o], out, fail_at, nan_at)


if __name__ == "__main__":
    main()
