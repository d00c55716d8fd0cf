"""Mid-run checkpoints and exact resume, on real processes killed with SIGKILL: the resumed run
logs, at every step, exactly (bitwise) the metrics of the same run never interrupted, ends
with exactly its weights, and MLflow's history has each step once."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

from bench.tracking import client
from tests.helpers import bench, histories
from tests.pause import stopped

BASE = [
    "smoke",
    "train.steps=8",
    "train.checkpoint_every=2",
    "train.save_checkpoint=true",
    "model.num_layers=2",
    "eval.every=4",
    "eval.max_prompts=8",
    "tracking.experiment=resume",
]
CASES = {
    "ppo": ["algorithm=ppo"],  # a value head
    "gvpo_replay": ["algorithm=gvpo", "sampling.replay_ratio=0.5", "train.prompt_pool=8"],
    "grpo": ["algorithm=grpo"],  # a reference
    # extra draws move the prompt stream and the generator within a step
    "dapo_dynamic": ["algorithm=dapo", "sampling.dynamic.min_informative_groups=3"],
    # only the adapters and their AdamW state are checkpointed; the base is read again
    "grpo_lora": ["algorithm=grpo", "model.lora.r=4"],
}


def _runs(results: Path) -> dict:
    c = client(f"sqlite:///{results}/mlflow.db")
    exp = c.get_experiment_by_name("resume").experiment_id
    return {r.info.run_name: r for r in c.search_runs([exp])}


def _history(results: Path, run) -> dict[str, list[tuple[int, float]]]:
    return histories(client(f"sqlite:///{results}/mlflow.db"), run)


def _weights(results: Path, run) -> dict:
    folder = results / "checkpoints" / run.info.run_id
    lora = folder / "adapter_model.safetensors"
    return load_file(lora if lora.exists() else folder / "model.safetensors")


def paused_bench(event: str, *args, results: Path) -> subprocess.Popen:
    """``bench ARGS`` that stops itself at ``event`` (tests/pause.py)."""
    env = os.environ | {"BENCH_PROGRESS": "0", "BENCH_RESULTS": str(results)}
    env["PYTHONPATH"] = str(Path(__file__).parents[1])
    cmd = [sys.executable, "-m", "tests.pause", event, *args]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def _assert_same_run(results: Path, whole: str, resumed: str) -> None:
    runs = _runs(results)
    a, b = runs[whole], runs[resumed]
    assert b.info.status == "FINISHED"
    ha, hb = _history(results, a), _history(results, b)
    assert ha.keys() == hb.keys()
    for key in ha:  # every step once, every value bitwise
        assert hb[key] == ha[key], key
        assert len({s for s, _ in hb[key]}) == len(hb[key]), f"{key}: a step logged twice"
    wa, wb = _weights(results, a), _weights(results, b)
    assert wa.keys() == wb.keys()
    assert all(wa[k].equal(wb[k]) for k in wa)


@pytest.mark.slow
@pytest.mark.parametrize("case", list(CASES))
def test_a_run_killed_at_a_random_step_and_resumed_is_the_uninterrupted_run(tmp_path, case):
    args = [*BASE, *CASES[case]]
    whole = bench("run", *args, "run_name=whole", results=tmp_path)
    assert whole.returncode == 0, whole.stderr[-2000:]
    # a random moment: one of 4 points of step 3, 4 or 5 (of 8), after the checkpoint of step 2
    # or 4; the run stops itself there (SIGSTOP) and is killed with SIGKILL: timed by what the
    # run did, not by a clock, so a busy machine cannot move the kill past the run's end
    rng = random.Random(case)
    event = f"{rng.choice(['drawn', 'updated', 'logged', 'checkpointed'])}@{rng.choice([3, 4, 5])}"
    proc = paused_bench(event, "run", *args, "run_name=cut", results=tmp_path)
    stopped(proc.pid)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    latest = next((tmp_path / "checkpoints").glob("*/latest")).read_text().strip()
    resumed = bench("run", *args, "run_name=cut", "--resume", results=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"from {tmp_path}" in resumed.stdout + resumed.stderr
    _assert_same_run(tmp_path, "whole", "cut")
    run = _runs(tmp_path)["cut"]
    assert run.data.tags["bench.resumed_from_step"] == str(int(latest.removeprefix("step-")))
    assert "bench.end" not in run.data.tags  # the reaper's "process gone" no longer holds
    assert not list((tmp_path / "checkpoints").glob("*/step-*"))  # finished: cleared


KILL_DURING_WRITE = """
import os, signal, sys
import bench.checkpoint as c
save = c.torch.save
def dying(obj, path, *a, **k):
    if isinstance(obj, dict) and obj.get("step") == 4:  # the weights of step 4 are written, its run state is not
        os.kill(os.getpid(), signal.SIGKILL)
    return save(obj, path, *a, **k)
c.torch.save = dying
sys.argv = ["bench", *sys.argv[1:]]
from bench.app.cli import main
main()
"""


@pytest.mark.slow
def test_a_kill_during_a_checkpoint_write_resumes_from_the_previous_one(tmp_path):
    args = [*BASE, "algorithm=grpo"]
    assert bench("run", *args, "run_name=whole", results=tmp_path).returncode == 0
    env = os.environ | {"BENCH_PROGRESS": "0", "BENCH_RESULTS": str(tmp_path)}
    cut = subprocess.run(
        [sys.executable, "-c", KILL_DURING_WRITE, "run", *args, "run_name=cut"],
        env=env,
        capture_output=True,
        text=True,
    )
    assert cut.returncode == -signal.SIGKILL
    folder = next((tmp_path / "checkpoints").glob("*/latest")).parent
    assert (folder / "latest").read_text().strip() == "step-000002"
    assert (folder / ".step-000004.tmp" / "weights").is_dir()  # the half-written one
    resumed = bench("run", *args, "run_name=cut", "--resume", results=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert _runs(tmp_path)["cut"].data.tags["bench.resumed_from_step"] == "2"
    _assert_same_run(tmp_path, "whole", "cut")


@pytest.mark.slow
def test_resume_refuses_a_changed_config_with_a_one_line_diff(tmp_path):
    args = [*BASE, "algorithm=grpo"]
    proc = paused_bench("checkpointed@2", "run", *args, results=tmp_path)
    stopped(proc.pid)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    changed = bench("run", *args, "train.lr=0.001", "--resume", results=tmp_path)
    lines = (changed.stdout + changed.stderr).strip().splitlines()
    assert changed.returncode == 2 and "Traceback" not in changed.stderr
    assert lines[-1].startswith("error: the config changed since run ")
    assert "train.lr: 0.0003 -> 0.001" in lines[-1]
    run_id = next(iter(_runs(tmp_path).values())).info.run_id
    # the run's own id works too, and how it is executed may change (threads, checkpoints)
    again = bench("run", *args, "train.checkpoint_every=3", "--resume", run_id, results=tmp_path)
    assert again.returncode == 0, again.stderr[-2000:]
    assert _runs(tmp_path)[next(iter(_runs(tmp_path)))].info.status == "FINISHED"


def test_resume_without_a_checkpoint_is_one_line(tmp_path):
    done = bench("run", "smoke", "--resume", results=tmp_path)
    assert done.returncode == 2
    last = (done.stdout + done.stderr).strip().splitlines()[-1]
    assert last.startswith(
        "error: --resume: no checkpoint of an unfinished run 'arithmetic__gvpo__0'"
    )


@pytest.mark.slow
def test_compare_resumes_an_interrupted_run_from_its_checkpoint(tmp_path):
    """``bench compare`` killed mid-run, then run again: the interrupted run continues from its
    checkpoint in its own MLflow run (not from step 0), and the comparison finishes."""
    args = [
        "compare",
        "smoke",
        "--algorithms",
        "grpo",
        "--seeds",
        "1",
        "--workers",
        "1",
        "train.steps=8",
        "train.checkpoint_every=2",
        "eval.max_prompts=8",
    ]
    proc = paused_bench("logged@3", *args, results=tmp_path)  # one worker: in this process
    stopped(proc.pid)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    again = bench(*args, results=tmp_path)
    assert again.returncode == 0, again.stderr[-2000:]
    c = client(f"sqlite:///{tmp_path}/mlflow.db")
    runs = c.search_runs([c.get_experiment_by_name("smoke").experiment_id])
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    assert int(runs[0].data.tags["bench.resumed_from_step"]) >= 2
    steps = [m.step for m in c.get_metric_history(runs[0].info.run_id, "train/loss")]
    assert sorted(steps) == list(range(1, 9))  # no gap, no duplicate


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _random_bytes(path: Path) -> None:  # the same size: only the checksum can tell
    data = bytearray(path.read_bytes())
    data[100:120] = random.Random(0).randbytes(20)
    path.write_bytes(bytes(data))


DAMAGE = {
    "truncated run.pt": lambda step: _truncate(step / "run.pt"),
    "random bytes in the weights": lambda step: _random_bytes(
        max((step / "weights").glob("*.distcp"), key=lambda p: p.stat().st_size)
    ),
    "a missing file": lambda step: (step / "weights" / ".metadata").unlink(),
}


def _cut_at_checkpoint_4(results: Path, args: list[str]) -> Path:
    """A run killed (SIGKILL) right after its checkpoint of step 4: its checkpoint folder."""
    proc = paused_bench("checkpointed@4", "run", *args, results=results)
    stopped(proc.pid)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    runs = [r for r in _runs(results).values() if r.info.run_name == args[-1].split("=")[1]]
    return results / "checkpoints" / runs[0].info.run_id


@pytest.mark.slow
@pytest.mark.parametrize("how", list(DAMAGE))
def test_a_damaged_newest_checkpoint_falls_back_to_the_older_one(tmp_path, how):
    args = [*BASE, "algorithm=grpo"]
    assert bench("run", *args, "run_name=whole", results=tmp_path).returncode == 0
    folder = _cut_at_checkpoint_4(tmp_path, [*args, "run_name=cut"])
    assert sorted(p.name for p in folder.glob("step-*")) == ["step-000002", "step-000004"]
    DAMAGE[how](folder / "step-000004")
    resumed = bench("run", *args, "run_name=cut", "--resume", results=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    (warning,) = [line for line in resumed.stderr.splitlines() if line.startswith("warning:")]
    assert warning.startswith("warning: checkpoint step-000004: ")
    assert warning.endswith("falling back to step-000002")
    run = _runs(tmp_path)["cut"]
    assert run.data.tags["bench.resumed_from_step"] == "2"
    assert run.data.tags["bench.resume_fallback"].endswith("resumed from step-000002")
    _assert_same_run(tmp_path, "whole", "cut")


@pytest.mark.slow
def test_every_checkpoint_damaged_is_one_line_naming_the_folder(tmp_path):
    args = [*BASE, "algorithm=grpo", "run_name=cut"]
    folder = _cut_at_checkpoint_4(tmp_path, args)
    for step in folder.glob("step-*"):
        _truncate(step / "run.pt")
    (folder / "latest").write_bytes(b"\xff\x00garbage")  # the pointer too
    resumed = bench("run", *args, "--resume", results=tmp_path)
    assert resumed.returncode == 2 and "Traceback" not in resumed.stderr
    (line,) = resumed.stderr.strip().splitlines()
    assert line.startswith(f"error: --resume: every checkpoint of run {folder.name} is damaged")
    assert "step-000004: run.pt has" in line and "step-000002: run.pt has" in line
    assert line.endswith(f"they are in {folder}")
