"""Own eval and lm-evaluation-harness give the same greedy answers' scores on a tiny model."""

import pytest

from bench.config import EvalConfig, SamplingConfig, load_config
from bench.evaluate import evaluate_model
from bench.loop import train
from bench.rollout import HFSampler
from tasks import TASKS

pytest.importorskip("lm_eval", reason="lm-eval is not installed (pip install -e '.[dev]')")
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    uri = f"sqlite:///{tmp_path_factory.mktemp('lm') / 'm.db'}"
    final = train(load_config("smoke", ["train.save_checkpoint=true"]), tracking_uri=uri)
    from bench.loop import checkpoint_dir

    return str(checkpoint_dir(final["run_id"])), uri


@pytest.mark.parametrize(
    ("task_name", "settings"), [("arithmetic", {}), ("gsm8k", {"max_eval": 8})]
)
def test_row_by_row_agreement(checkpoint, tmp_path, task_name, settings):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from bench.app.lmeval import evaluate_with_lmeval

    path, _ = checkpoint
    cls = TASKS.get(task_name)
    task = cls(cls.Config(**settings))
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    tok = AutoTokenizer.from_pretrained(path)
    tok.padding_side = "left"
    n, budget = 20 if task_name == "arithmetic" else 8, 6
    rows = task.eval_rows()[:n]
    greedy = HFSampler().generate(model, tok, [r["prompt"] for r in rows], 1, budget, greedy=True)
    own = [float(bool(task.is_correct(c, r))) for c, r in zip(greedy.texts, rows, strict=True)]
    metrics, per_row = evaluate_with_lmeval(path, [task], tmp_path / "lm", n, budget)
    assert per_row[task_name] == own
    assert metrics[f"lmeval/{task_name}/accuracy"] == pytest.approx(sum(own) / n)
    mine = evaluate(model, tok, task, n, budget)
    assert mine == pytest.approx(sum(own) / n)
    if task_name == "arithmetic":
        assert 0 < sum(own) < n  # a model that gets some right and some wrong: a real comparison


def evaluate(model, tok, task, n, budget):
    from bench.evaluate import evaluate as own_eval

    return own_eval(
        model,
        tok,
        task,
        HFSampler(),
        EvalConfig(max_prompts=n, k=0),
        SamplingConfig(max_new_tokens=budget),
        seed=0,
    )[f"eval/{task.name}/accuracy"]


def test_bench_eval_with_lm_eval_flag(checkpoint):
    path, uri = checkpoint
    out = evaluate_model(
        path, ["arithmetic"], k=0, max_new_tokens=6, limit=20, tracking_uri=uri, lm_eval=True
    )
    assert out["metrics"]["lmeval/arithmetic/accuracy"] == pytest.approx(
        out["metrics"]["eval/arithmetic/accuracy"]
    )
