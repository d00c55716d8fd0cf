"""Bad input as a new user types it, run as real `bench` subprocesses: exit 2 for a mistake (1 for
a run that failed), stderr one line that names the culprit, no traceback, and no run left in the
store for a mistake found before training starts."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


def nan_model(folder: Path) -> Path:
    """The tiny model with NaN in its final norm's weights, saved as a Hugging Face folder."""
    import torch

    from bench.config import load_config
    from bench.core.tokenizer import build_tokenizer
    from bench.models import build_tiny_model

    tok = build_tokenizer()
    model = build_tiny_model(load_config("smoke").model, tok)
    with torch.no_grad():
        model.model.norm.weight.fill_(float("nan"))
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def prepare(tmp: Path, line: str) -> dict[str, str]:
    """Files the cases point at, by name."""
    if "{nan_model}" in line:
        return {"nan_model": str(nan_model(tmp / "nan_model"))}
    (tmp / "empty.jsonl").write_text("")
    (tmp / "malformed.jsonl").write_text(
        '{"question": "1+1?", "answer": "#### 2"}\n{"question": \n'
    )
    (tmp / "bad.yaml").write_text("train:\n  steps: [1,\n")
    (tmp / "mine.yaml").write_text("inherit: smoke\ntrain:\n  steps: x\n")
    (tmp / "corrupt.db").write_bytes(b"this is not a database" * 100)
    (tmp / "a_file").write_text("not a folder")
    names = ("empty.jsonl", "malformed.jsonl", "bad.yaml", "mine.yaml")
    return {k.replace(".", "_"): str(tmp / k) for k in names} | {
        "corrupt": f"sqlite:///{tmp / 'corrupt.db'}",
        "a_file": str(tmp / "a_file"),
    }


# (command line with {placeholders}, exit code, what the one line must name)
CASES = [
    ("run smoke train.prompts_per_step=0", 2, "train.prompts_per_step"),
    ("run smoke train.lr=nan", 2, "train.lr"),
    ("run smoke train.steps=-1", 2, "train.steps"),
    ("run smoke sampling.top_p=1.5", 2, "sampling.top_p"),
    ("run smoke sampling.temperature=0", 2, "sampling.temperature"),
    ("run smoke sampling.k=1", 2, "sampling.k"),
    ("run smoke sampling.replay_ratio=1", 2, "sampling.replay_ratio"),
    ("run smoke sampling.mixture=2", 2, "sampling.mixture"),
    ("run smoke sampling.dynamic.max_draws=0", 2, "sampling.dynamic.max_draws"),
    ("run smoke reward.overlong_cache=100", 2, "reward.overlong_cache=100 exceeds"),
    ("run smoke model.lora.r=4 model.lora.target_modules=q_proj,qkv", 2, "gate_proj, k_proj"),
    ("run smoke model.lora.dropout=1", 2, "model.lora.dropout"),
    ("compare smoke --algorithms gvpo,grpoo", 2, "did you mean 'grpo'"),
    ("compare smoke --tune --space nokey=1..2", 2, "unknown config key 'nokey'"),
    ("compare smoke --tune --space train.lr=1e-2..1e-4:log", 2, "empty range"),
    ("compare smoke --tune --trials 0 --space train.lr=1e-4..1e-2", 2, "--trials"),
    ("compare bandit --tune", 2, "needs a search space"),
    ("run smoke eval.every=0", 2, "eval.every"),
    ("run smoke eval.k=-1", 2, "eval.k"),
    ("run smoke train.lrr=3", 2, "did you mean 'lr'"),
    ("run smoke algorithm=gvp", 2, "did you mean 'gvpo'"),
    ("run smoke task=arithmatic", 2, "did you mean 'arithmetic'"),
    ("run smoke train.optimizer=adam", 2, "did you mean 'adamw'"),
    ("run smoke model.dtype=bfloat16", 2, "train.precision=bf16-mixed"),
    ("run smoke sampling.source=dataset", 2, "sampling.k=2"),
    ("run nosuchpreset", 2, "unknown preset 'nosuchpreset'"),
    ("run {tmp}/missing.yaml", 2, "missing.yaml does not exist"),
    ("run {bad_yaml}", 2, "bad.yaml:3"),
    ("run {mine_yaml}", 2, "mine.yaml:3: 'train.steps'"),
    ("run smoke train.prompts_per_step=1000", 2, "exceeds the 80 train prompts"),
    (
        "run smoke task=gsm8k tasks.gsm8k.eval_file={empty_jsonl}",
        2,
        "empty.jsonl of task 'gsm8k' has no rows",
    ),
    ("run smoke task=gsm8k tasks.gsm8k.train_file={empty_jsonl}", 2, "train file"),
    ("run smoke task=gsm8k tasks.gsm8k.train_file={malformed_jsonl}", 2, "malformed.jsonl:2"),
    (
        "run smoke task=gsm8k tasks.gsm8k.train_file={tmp}/nope.jsonl",
        2,
        "nope.jsonl does not exist",
    ),
    ("run smoke model.name_or_path={tmp}/no_model model.warmstart_steps=0", 2, "cannot load model"),
    ("run smoke --tracking-uri {corrupt}", 2, "corrupt.db cannot be used"),
    ("run smoke BENCH_RESULTS={a_file}/results", 2, "a_file/results"),
    ("report smoke BENCH_RESULTS={a_file}/results", 2, "a_file/results"),
    ("report nosuchexperiment", 2, "no experiment 'nosuchexperiment'"),
    ("compare smoke --seeds 0", 2, "--seeds"),
    ("compare smoke --vary nokey", 2, "--vary 'nokey'"),
    ("eval tiny --tasks arithmetic --k 0", 2, "--k"),
    ("eval tiny --tasks arithmetic --limit -5", 2, "--limit"),
    ("eval tiny --tasks nosuchtask", 2, "unknown task 'nosuchtask'"),
    ("train-rm --steps 0", 2, "--steps"),
    ("sweep smoke", 2, "--grid"),
    ("sweep smoke --grid nokey", 2, "nokey"),
    ("plan paper_math_7b", 2, "does not fit"),
    ("nosuchcommand", 2, "No such command"),
    # a checkpoint whose final norm holds NaN: every logit is NaN on any CPU's kernels (an
    # overflow from a huge learning rate would depend on them)
    ("run smoke model.name_or_path={nan_model} model.warmstart_steps=0", 1, "probabilities"),
]


def runs_in(uri: str) -> int:
    from mlflow.tracking import MlflowClient

    c = MlflowClient(uri)
    exps = [e.experiment_id for e in c.search_experiments()]
    return len(c.search_runs(exps)) if exps else 0


@pytest.mark.parametrize(("line", "code", "culprit"), CASES, ids=[c[0][:60] for c in CASES])
def test_bad_input_is_one_line_and_the_right_exit_code(line, code, culprit, tmp_path):
    files = prepare(tmp_path, line)
    words = line.format(tmp=tmp_path, **files).split()
    env = {**os.environ, "BENCH_PROGRESS": "0", "BENCH_RESULTS": str(tmp_path / "results")}
    env |= dict(w.split("=", 1) for w in words if w.startswith("BENCH_"))
    words = [w for w in words if not w.startswith("BENCH_")]
    store = f"sqlite:///{tmp_path / 'store.db'}"
    if (
        words[0] in ("run", "compare", "eval", "report", "train-rm")
        and "--tracking-uri" not in words
        and "BENCH_RESULTS" not in line
    ):
        words += ["--tracking-uri", store]
    out = subprocess.run(
        [sys.executable, "-m", "bench.app.cli", *words],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        cwd=tmp_path,
    )
    lines = out.stderr.strip().splitlines()
    assert out.returncode == code, out.stderr[-2000:]
    assert "Traceback" not in out.stderr
    assert len(lines) == 1 and lines[0].startswith("error: "), out.stderr[-2000:]
    assert culprit in lines[0]
    if words[0] == "run" and code == 2 and (tmp_path / "store.db").exists():
        assert runs_in(store) == 0  # found before training: nothing logged, no FAILED run
    if code == 1:
        from mlflow.tracking import MlflowClient

        c = MlflowClient(store)
        (run,) = c.search_runs([e.experiment_id for e in c.search_experiments()])
        assert run.info.status == "FAILED" and culprit in run.data.tags["bench.end"]
