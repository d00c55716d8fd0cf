"""Sharded training on CPU (gloo, 2 processes started by torchrun) against one process, same
seed and global batch: the same sampled token ids, the same final parameters and the same
logged metrics at every step, for every registered algorithm under ddp and fsdp, and with
micro-batches on top of fsdp. A rank that fails stops the run, which ends FAILED naming it.
"""

from __future__ import annotations

import itertools
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from algorithms import ALGORITHMS
from bench.app.launch import torchrun
from bench.tracking import client
from tests.helpers import CLOCK, bench, histories
from tests.pause import stopped

WORKER = str(Path(__file__).with_name("distributed_worker.py"))
COMMON = "model.num_layers=2,sampling.k=4"
# the paper's five, and REINFORCE++ (advantages whitened over the whole batch: statistics across
# every rank's rows); the other GRPO-family losses share GRPO's data flow (a pure function of
# the minibatch: their exact micro-batching is tested per algorithm in tests/test_microbatch.py)
ALGOS = [a for a in ("gvpo", "grpo", "dr_grpo", "dpo", "ppo", "reinforce_pp") if a in ALGORITHMS]
MICRO = ("gvpo", "grpo")  # group statistics (gvpo) and a token mean (grpo)


def _specs(sharding: str) -> list[str]:
    extra = f"train.sharding={sharding}," if sharding != "none" else ""
    specs = [f"{a}=algorithm={a},{extra}{COMMON}" for a in ALGOS]
    if sharding != "fsdp":  # the batch's data flow: the same under ddp and fsdp
        mb = "train.epochs=2,train.minibatches=2"
        specs.append(f"minibatches=algorithm=grpo,{mb},{extra}{COMMON}")
        replay = "sampling.replay_ratio=0.5,train.prompt_pool=8"  # prompts recur: replayed rows
        specs.append(f"replay=algorithm=gvpo,{replay},{extra}{COMMON}")
        # every rank keeps the same groups: it decides from the whole generation's rewards
        dynamic = "sampling.dynamic.min_informative_groups=6,sampling.dynamic.max_draws=3"
        specs.append(f"dynamic=algorithm=dapo,{dynamic},{extra}{COMMON}")
    # AdamW turns the rounding noise of a gradient that is zero in exact arithmetic (k_proj's
    # bias: softmax ignores a shift; rarely seen embedding rows) into steps of ~0.1 lr, and
    # one-row micro-batches round differently from one pass: there SGD shows the gradient
    sgd = "train.optimizer=sgd,train.lr=0.05"
    if sharding == "none":
        specs += [f"{a}_sgd=algorithm={a},{sgd},{COMMON}" for a in MICRO]
    if sharding == "fsdp":
        # a bf16 frozen base and fp32 adapters: each adapter its own FSDP2 unit (one dtype each)
        specs.append(
            f"lora_bf16=algorithm=ppo,model.lora.r=4,train.precision=bf16-mixed,{extra}{COMMON}"
        )
        micro = f"train.micro_batch_tokens=16,{sgd}"
        specs += [f"{a}_micro=algorithm={a},{micro},{extra}{COMMON}" for a in MICRO]
    # LoRA: only adapters train and shard; the reference is the policy with them off
    specs.append(f"lora=algorithm=grpo,model.lora.r=4,{extra}{COMMON}")
    if sharding != "ddp":  # half of each group sampled from the reference: kept whole
        specs.append(f"mixture=algorithm=grpo,sampling.source=mixture,{extra}{COMMON}")
    # last (it stays on): at step 2 the last rank writes NaN into its share of a gradient
    specs += ["nan@2", f"skip=algorithm=grpo,{extra}{COMMON}"]
    return specs


def _env(tmp: Path) -> dict:
    return os.environ | {
        "BENCH_RESULTS": str(tmp / "results"),
        "BENCH_TEST_URI": f"sqlite:///{tmp}/mlflow.db",
        "BENCH_PROGRESS": "0",
        "PYTHONPATH": str(Path(__file__).parents[1]),
    }


@pytest.fixture(scope="module")
def recorded(tmp_path_factory) -> dict[str, Path]:
    """Every spec run once in one process and by 2 processes under ddp and fsdp."""
    tmp = tmp_path_factory.mktemp("sharded")
    outs = {}
    for sharding in ("none", "ddp", "fsdp"):
        out = tmp / sharding
        out.mkdir()
        cmd = [sys.executable, WORKER] if sharding == "none" else torchrun(2, WORKER)
        done = subprocess.run(
            [*cmd, str(out), *_specs(sharding)], env=_env(tmp), capture_output=True, text=True
        )
        assert done.returncode == 0, done.stderr[-3000:]
        outs[sharding] = out
    return outs


def _close_params(one: dict, two: dict, atol: float) -> None:
    assert one.keys() == two.keys()
    for name, p in one.items():
        assert torch.allclose(p, two[name], atol=atol, rtol=0), name


# a share of rows whose float margin is > 0: a step function of a quantity that is 0 in exact
# arithmetic when the policy equals the reference (DPO's first step), so its value there is
# decided by rounding (0 on one kernel set, 0.5 on another: measured with ATEN_CPU_CAPABILITY=avx2);
# the continuous rewards/margins beside it is compared
THRESHOLDED = frozenset({"rewards/accuracies"})


def _close_metrics(a: dict, b: dict, step: int) -> None:
    assert sorted(a) == sorted(b), step
    for key, value in a.items():
        if key not in CLOCK | THRESHOLDED:
            both_nan = math.isnan(value) and math.isnan(b[key])  # a skipped step's grad norm
            assert both_nan or math.isclose(value, b[key], rel_tol=1e-5, abs_tol=1e-5), (step, key)


def _same(one: dict, two: dict) -> None:
    """What the code guarantees, and no more. Before the first update both sample from bitwise
    the same weights with keyed draws: the same token ids. The update then sums the same
    gradients in another order (a rank's rows, then the all-reduce), so the weights after it
    agree to float rounding (AdamW turns the rounding noise of a gradient that is zero in exact
    arithmetic into steps of up to ~0.1 lr), and a later draw whose uniform lies within that
    rounding of a class boundary may flip a token on some CPU's kernels (seen on an AMD EPYC at
    step 2). So: tokens at step 1 exactly, metrics and weights after it within tolerance, and
    each later step compared as long as the two runs sampled the same tokens up to it."""
    assert len(one["tokens"]) == len(two["tokens"]) == 3
    assert torch.equal(one["tokens"][0], two["tokens"][0]), "sampled token ids differ at step 1"
    _close_params(one["params_step1"], two["params_step1"], atol=5e-5)
    steps = [s for s, _ in one["metrics"]]
    assert steps == [s for s, _ in two["metrics"]]
    same_samples = 1 + sum(
        1
        for _ in itertools.takewhile(
            lambda ab: torch.equal(*ab), zip(one["tokens"][1:], two["tokens"][1:], strict=True)
        )
    )
    for (step, a), (_, b) in zip(one["metrics"], two["metrics"], strict=True):
        if step <= same_samples:
            _close_metrics(a, b, step)
    if same_samples == len(one["tokens"]):
        _close_params(one["params"], two["params"], atol=5e-5)


@pytest.mark.numerics
@pytest.mark.slow
@pytest.mark.parametrize(
    ("sharding", "name"),
    [(s, a) for s in ("ddp", "fsdp") for a in ALGOS]
    + [("ddp", "minibatches"), ("ddp", "replay"), ("ddp", "dynamic"), ("fsdp", "mixture")]
    + [("ddp", "lora"), ("fsdp", "lora")]
    + [("ddp", "skip"), ("fsdp", "skip")],
)
def test_two_processes_sample_train_and_log_what_one_does(recorded, sharding, name):
    one = torch.load(recorded["none"] / f"{name}.pt")
    two = torch.load(recorded[sharding] / f"{name}.pt")
    _same(one, two)
    # the frozen reference is sharded like the policy under fsdp (whole on every rank under ddp,
    # and when the run samples from it)
    if sharding == "fsdp" and name != "mixture":
        assert two["reference_share"] == two["policy_share"] < 0.75
    else:
        assert two["reference_share"] == 1
    if name == "skip":  # the NaN of one rank's gradient made every rank skip step 2, once
        for run in (one, two):
            (skipped,) = [
                m["perf/skipped_steps"] for _, m in run["metrics"] if "perf/skipped_steps" in m
            ]
            assert skipped == 1
        (norm,) = [
            m["train/grad_norm"] for s, m in two["metrics"] if s == 2 and "train/grad_norm" in m
        ]
        assert math.isnan(norm)
    if name == "replay":  # replayed rows (with their behaviour log-probs) were trained on
        assert any(m.get("rollout/replay_frac", 0) > 0 for _, m in one["metrics"])
    if name == "lora":  # the adapters trained (B starts at 0), the base did not move
        base = {n.replace(".base_layer.", "."): p for n, p in two["params"].items()}
        assert all(torch.equal(p, base[n]) for n, p in _initial(recorded).items())
        assert all(p.abs().sum() > 0 for n, p in two["params"].items() if ".lora_B." in n)
        return
    moved = any(not torch.equal(p, two["params"][n]) for n, p in _initial(recorded).items())
    assert moved  # the weights did train


@pytest.mark.slow
def test_lora_with_a_bf16_base_trains_on_two_fsdp_processes(recorded):
    """What bf16 guarantees: not the one-process numbers (bf16 gathers round otherwise), but a
    run that trains the fp32 adapters and value head and leaves the bf16 base as it was."""
    two = torch.load(recorded["fsdp"] / "lora_bf16.pt")
    steps = [m for _, m in two["metrics"] if "train/loss" in m]
    assert len(steps) == 3 and all(math.isfinite(m["train/loss"]) for m in steps)
    base = {n.replace(".base_layer.", "."): p for n, p in two["params"].items()}
    for name, p in _initial(recorded).items():
        assert base[name].dtype == torch.bfloat16 and torch.equal(base[name], p.bfloat16()), name
    adapters = {n: p for n, p in two["params"].items() if ".lora_" in n or "value_head" in n}
    assert adapters and all(p.dtype == torch.float32 for p in adapters.values())
    assert all(p.abs().sum() > 0 for n, p in adapters.items() if ".lora_B." in n)


def _initial(recorded) -> dict:
    """Parameters every run starts from (the warm-started model), for the trained-at-all check."""
    from bench.config import load_config
    from bench.models import load_policy
    from tasks import TASKS

    os.environ.setdefault("BENCH_RESULTS", str(recorded["none"].parent / "results"))
    cfg = load_config("smoke", COMMON.split(","))
    policy, _, _ = load_policy(cfg.model, TASKS.get(cfg.task)(cfg.task_config()))
    return dict(policy.named_parameters())


@pytest.mark.numerics
@pytest.mark.slow
@pytest.mark.parametrize("name", MICRO)
def test_micro_batches_with_fsdp_on_two_processes_equal_one_process(recorded, name):
    one = torch.load(recorded["none"] / f"{name}_sgd.pt")
    _same(one, torch.load(recorded["fsdp"] / f"{name}_micro.pt"))


@pytest.mark.slow
def test_a_rank_that_raises_stops_the_run_failed_with_its_reason(tmp_path):
    """Rank 1 raises at step 2: torchrun returns non-zero well within 60 s, and the MLflow run
    (opened by rank 0) ends FAILED with the failing rank and its error in tags."""
    out = tmp_path / "out"
    out.mkdir()
    start = time.time()
    done = subprocess.run(
        [*torchrun(2, WORKER), str(out), "fail@2", f"gvpo=train.sharding=ddp,{COMMON}"],
        env=_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=120,
    )
    took = time.time() - start
    # a rank stuck in a collective would wait out train.collective_timeout_s (600 s)
    assert done.returncode != 0 and took < 300, (took, done.stderr[-2000:])
    runs = client(f"sqlite:///{tmp_path}/mlflow.db").search_runs(
        [client(f"sqlite:///{tmp_path}/mlflow.db").get_experiment_by_name("smoke").experiment_id]
    )
    assert len(runs) == 1
    run = runs[0]
    assert run.info.status == "FAILED"
    assert run.data.tags["bench.failed_rank"] == "1"
    assert "injected fault on rank 1 at step 2" in run.data.tags["bench.end"]
    assert run.data.params["world_size"] == "2"


def test_nproc_without_a_sharding_is_one_line(tmp_path):
    done = bench("run", "smoke", "--nproc", "2", results=tmp_path)
    assert done.returncode == 2
    assert (done.stdout + done.stderr).strip().splitlines()[-1] == (
        "error: --nproc 2 needs train.sharding=ddp or train.sharding=fsdp (it is none)"
    )
    assert "Traceback" not in done.stderr


def _rank_pid(parent: int, rank: int, timeout: float = 60) -> int:
    """The pid of a worker of ``parent``'s launch with RANK=rank (read from /proc)."""
    start = time.time()
    while time.time() - start < timeout:
        for stat in Path("/proc").glob("[0-9]*/environ"):
            try:
                env = stat.read_bytes().split(b"\0")
                ppid = int((stat.parent / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            if ppid == parent and f"RANK={rank}".encode() in env:
                return int(stat.parent.name)
        time.sleep(0.1)
    raise AssertionError(f"no rank {rank} under {parent}")


@pytest.mark.slow
def test_a_sharded_run_whose_rank_is_killed_resumes_exactly_from_its_sharded_checkpoint(tmp_path):
    """fsdp on 2 processes, a checkpoint every 2 steps (torch.distributed.checkpoint: each rank
    writes its shard): rank 1 stops itself right after the checkpoint of step 4 and is killed
    with SIGKILL, the launcher exits non-zero in one line; rank 1's shard of that checkpoint is
    then damaged, and ``--resume --nproc 2`` falls back to the checkpoint of step 2 and finishes
    the run, whose history equals the uninterrupted 2-process run's bitwise, each step once."""
    args = [
        "smoke",
        "train.sharding=fsdp",
        "train.steps=6",
        "train.checkpoint_every=2",
        "eval.max_prompts=8",
        "--nproc",
        "2",
    ]
    assert bench("run", *args, "run_name=whole", results=tmp_path).returncode == 0
    pause = {"BENCH_TEST_PAUSE": "checkpointed@4", "BENCH_TEST_PAUSE_RANK": "1"}
    root = Path(__file__).parents[1]
    pause["PYTHONPATH"] = f"{root / 'tests' / 'sitecustom'}:{root}"
    proc = bench("run", *args, "run_name=cut", results=tmp_path, wait=False, env=os.environ | pause)
    rank1 = _rank_pid(proc.pid, 1)
    stopped(rank1)
    os.kill(rank1, 9)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 1 and "error: rank 1 of 2 failed" in (out + err).splitlines()[-1]
    (folder,) = (tmp_path / "checkpoints").glob("*/step-000004")
    shards = sorted(p.name for p in (folder / "weights").glob("*.distcp"))
    assert shards == ["__0_0.distcp", "__1_0.distcp"]  # one file per rank
    _truncate(folder / "weights" / "__1_0.distcp")
    resumed = bench("run", *args, "run_name=cut", "--resume", results=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "warning: checkpoint step-000004: weights/__1_0.distcp has" in resumed.stderr
    c = client(f"sqlite:///{tmp_path}/mlflow.db")
    runs = {
        r.info.run_name: r for r in c.search_runs([c.get_experiment_by_name("smoke").experiment_id])
    }
    assert runs["cut"].info.status == "FINISHED"
    assert runs["cut"].data.tags["bench.resumed_from_step"] == "2"
    assert histories(c, runs["cut"]) == histories(c, runs["whole"])


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


@pytest.mark.slow
def test_a_sweep_launches_each_run_on_nproc_processes(tmp_path):
    """``bench sweep --nproc 2``: each point is one MLflow run of 2 processes (`bench run
    --nproc` underneath), with its sweep tags (passed to the ranks with ``--tag``) and the
    one-process config's hash (sharding does not change what a run computes)."""
    done = bench(
        "sweep",
        "smoke",
        "--grid",
        "seed=0",
        "train.sharding=ddp",
        "train.steps=2",
        "--nproc",
        "2",
        "--workers",
        "1",
        results=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    c = client(f"sqlite:///{tmp_path}/mlflow.db")
    (run,) = c.search_runs([c.get_experiment_by_name("smoke").experiment_id])
    assert run.info.status == "FINISHED" and run.data.params["world_size"] == "2"
    assert run.data.tags["sweep.point"] == "seed=0" and run.data.tags["sweep.id"]
    from bench.config import config_hash, load_config

    assert run.data.tags["bench.config"] == config_hash(load_config("smoke", ["train.steps=2"]))
