"""The arithmetic task: deterministic, disjoint splits, exact-match reward."""

from tasks import TASKS
from tasks.arithmetic import Config


def make(**kw):
    return TASKS.get("arithmetic")(Config(**kw))


def test_splits_are_deterministic_and_disjoint():
    a, b = make(), make()
    assert a.train_rows() == b.train_rows() and a.eval_rows() == b.eval_rows()
    train = {r["prompt"] for r in a.train_rows()}
    evals = {r["prompt"] for r in a.eval_rows()}
    assert not train & evals
    assert len(evals) == 400 and len(train) == 3600  # the whole 4000-problem space
    assert make(data_seed=1).eval_rows() != a.eval_rows()


def test_answers_are_right():
    for r in make(digits=2, operands=2, n_train=50, n_eval=10).train_rows():
        x, rest = r["prompt"][:-1], r["answer"]
        assert r["prompt"].endswith("=") and int(rest) == eval(x)


def test_reward_exact_match():
    t = make()
    rewards = t.reward(["1+2+3="] * 5, ["6", " 6 ", "06", "6x", "-6"], answer=["6"] * 5)
    assert rewards == [1.0, 1.0, 0.0, 0.0, 0.0]


def test_difficulty_knobs():
    t = make(digits=3, operands=4, ops="*", n_train=20, n_eval=5)
    p = t.eval_rows()[0]["prompt"]
    assert p.count("*") == 3 and len(t.train_rows()) == 20
