"""Bradley-Terry reward models: the loss by hand, learning a hidden rule, use as a reward, HH-RLHF data."""

import math
import random

import pytest
import torch

from bench.core.reward_model import RewardModel, RMConfig, bt_loss, train_reward_model
from tasks import TASKS
from tasks.hh_rlhf import parse_pairs, split_dialogue


def test_bt_loss_hand_derived():
    # r_c - r_r = [2, 0, -1] -> mean of log(1 + e^-2), log 2, log(1 + e^1)
    loss = bt_loss(torch.tensor([3.0, 1.0, 0.0]), torch.tensor([1.0, 1.0, 1.0]))
    expected = (math.log1p(math.exp(-2)) + math.log(2) + math.log1p(math.e)) / 3
    assert loss.item() == pytest.approx(expected, abs=1e-6)


def synthetic_pairs(n: int, seed: int) -> list[dict]:
    """Random digit strings; the hidden gold reward counts the 7s (the RM must discover it)."""
    rng = random.Random(seed)
    pairs = []
    while len(pairs) < n:
        a, b = ("".join(rng.choice("0123456789") for _ in range(12)) for _ in range(2))
        if a.count("7") != b.count("7"):
            hi, lo = (a, b) if a.count("7") > b.count("7") else (b, a)
            pairs.append({"prompt": "say:", "chosen": hi, "rejected": lo})
    return pairs


@pytest.mark.slow
def test_reward_model_learns_a_hidden_rule_and_scores_as_a_reward(tmp_path):
    cfg = RMConfig(hidden_size=32, num_layers=1, steps=150, batch=32, lr=3e-3)
    model, tok, m = train_reward_model(synthetic_pairs(600, 0), synthetic_pairs(200, 1), cfg)
    assert m["rm/heldout_accuracy"] > 0.8  # chance is 0.5
    model.save_pretrained(tmp_path / "rm")
    tok.save_pretrained(tmp_path / "rm")
    rm = RewardModel(str(tmp_path / "rm"))
    r = rm(["say:"] * 2, ["777777777777", "000000000000"])
    assert len(r) == 2 and r[0] > r[1]


def test_hh_rlhf_pairs_counts_and_filter():
    task = TASKS.get("hh_rlhf")(TASKS.get("hh_rlhf").Config(subsets="helpful-base"))
    assert task.dropped["identical"] == 2  # documented in SOURCES.md for helpful-base
    assert len(task.train_rows()) + len(task.eval_rows()) + sum(task.dropped.values()) == 2354
    assert 0.05 < len(task.eval_rows()) / 2343 < 0.15
    again = TASKS.get("hh_rlhf")(TASKS.get("hh_rlhf").Config(subsets="helpful-base"))
    assert again.eval_rows() == task.eval_rows()  # deterministic split
    row = task.train_rows()[0]
    assert row["prompt"].endswith("\n\nAssistant:") and row["chosen"] != row["rejected"]
    rows, dropped = parse_pairs(
        [
            {
                "chosen": "\n\nHuman: hi\n\nAssistant: a",
                "rejected": "\n\nHuman: hi\n\nAssistant: a",
            },
            {
                "chosen": "\n\nHuman: hi\n\nAssistant: a",
                "rejected": "\n\nHuman: yo\n\nAssistant: b",
            },
            {
                "chosen": "\n\nHuman: hi\n\nAssistant: good",
                "rejected": "\n\nHuman: hi\n\nAssistant: bad",
            },
        ]
    )
    assert dropped == {"identical": 1, "unparsable": 1} and rows == [
        {"prompt": "\n\nHuman: hi\n\nAssistant:", "chosen": "good", "rejected": "bad"}
    ]
    assert split_dialogue("no turns") is None


def test_pandalm_pairs_follow_the_human_majority(tmp_path):
    import json

    from bench.pandalm import pandalm_pairs

    assert len(pandalm_pairs()) == 894  # 999 rows minus 105 ties (0 = tie wins the vote)
    rows = [
        {
            "instruction": "Say hi",
            "input": "",
            "response1": "hi",
            "response2": "bye",
            "annotator1": 1,
            "annotator2": 1,
            "annotator3": 2,
        },
        {
            "instruction": "Add",
            "input": "1+1",
            "response1": "3",
            "response2": "2",
            "annotator1": 2,
            "annotator2": 0,
            "annotator3": 2,
        },
        {
            "instruction": "Tie",
            "input": "",
            "response1": "a",
            "response2": "b",
            "annotator1": 0,
            "annotator2": 0,
            "annotator3": 1,
        },
        {
            "instruction": "Split",
            "input": "",
            "response1": "a",
            "response2": "b",
            "annotator1": 0,
            "annotator2": 1,
            "annotator3": 2,
        },
    ]
    (tmp_path / "p.json").write_text(json.dumps(rows))
    pairs = pandalm_pairs(tmp_path / "p.json")
    assert [(p["chosen"], p["rejected"]) for p in pairs] == [("hi", "bye"), ("2", "3")]
    assert pairs[1]["prompt"] == "Add\n\n1+1\n\n"


@pytest.mark.slow
def test_train_rm_cli_with_the_pandalm_check(tracking_uri):
    from typer.testing import CliRunner

    from bench.app.cli import app

    result = CliRunner().invoke(
        app,
        [
            "train-rm",
            "--task",
            "arithmetic",
            "--steps",
            "3",
            "--batch",
            "8",
            "--pandalm",
            "--max-length",
            "64",
            "--tracking-uri",
            tracking_uri,
        ],
    )
    assert result.exit_code == 0, result.output
    assert "rm/pandalm_accuracy" in result.output
    assert "rm/heldout_accuracy" in result.output and "reward model:" in result.output
