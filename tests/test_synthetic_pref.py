"""Synthetic alignment: the gold rule by hand, and a short compare that draws the over-optimisation plot."""

from tasks.synthetic_pref import gold


def test_gold_reward_hand_checked():
    assert gold("1772", max_len=8, penalty=1.5) == 2
    assert gold(" 77777777 ", max_len=8, penalty=1.5) == 8
    assert gold("7777777777", max_len=8, penalty=1.5) == 10 - 3.0  # two characters too long
    assert gold("", max_len=8, penalty=1.5) == 0


def test_short_compare_logs_gold_and_proxy_and_plots_overoptimisation(tmp_path):
    from typer.testing import CliRunner

    from bench.app.cli import app
    from reports.report import build_report

    uri = f"sqlite:///{tmp_path / 'sp.db'}"
    args = [
        "compare",
        "smoke",
        "task=synthetic_pref",
        "tasks.synthetic_pref.rm_steps=20",
        "sampling.max_new_tokens=10",
        "tracking.experiment=sp",
        "--algorithms",
        "gvpo,grpo",
        "--seeds",
        "1",
        "--workers",
        "1",
        "--tracking-uri",
        uri,
    ]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    out = build_report("sp", uri, tmp_path / "rep")
    metrics = set(out["summary"].metric)
    assert {"gold_reward", "proxy_reward"} <= metrics
    assert (tmp_path / "rep" / "overoptimisation.png").stat().st_size > 10_000


def test_preference_pairs_are_short_and_mostly_gold_ordered():
    from tasks import TASKS

    task = TASKS.get("synthetic_pref")(TASKS.get("synthetic_pref").Config())
    pairs = task.pairs()
    assert len(pairs) == 3000 and all(
        len(p["chosen"]) <= 8 and len(p["rejected"]) <= 8 for p in pairs
    )
    agree = sum(task.gold(p["chosen"]) > task.gold(p["rejected"]) for p in pairs) / len(pairs)
    assert 0.75 < agree < 0.85  # 20% of labels flipped
    rows = task.preference_rows()
    assert len(rows) == len({r["prompt"] for r in rows}) == 200


def test_proxy_reward_model_is_well_above_chance_on_clean_gold_pairs():
    import random

    from bench.core.reward_model import pairwise_accuracy
    from tasks import TASKS

    task = TASKS.get("synthetic_pref")(TASKS.get("synthetic_pref").Config(rm_steps=150))
    proxy = task.proxy()  # trained on labels with 20% flipped
    rng = random.Random(99)
    clean = []
    while len(clean) < 300:
        a, b = task._random_string(rng), task._random_string(rng)
        if task.gold(a) != task.gold(b):
            hi, lo = (a, b) if task.gold(a) > task.gold(b) else (b, a)
            clean.append({"prompt": "007:", "chosen": hi, "rejected": lo})
    assert pairwise_accuracy(proxy.model, proxy.tok, clean, 64) > 0.8
