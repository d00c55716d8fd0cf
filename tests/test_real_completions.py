"""Answer extraction and verification on real completions of SmolLM2-135M-Instruct
(tests/data/smollm2_completions.jsonl, provenance in docs/testing.md), against hand-checked labels:
160 arithmetic answers in chat form (greedy and temperature 1, the answers it really writes:
``74 + 69 = 143``, ``The answer is 15.``, chatter, cut-off sums) and 24 GSM8K solutions."""

import json
from pathlib import Path

import pytest

from tasks._math import _verify, final_number
from tasks.arithmetic import Arithmetic, Config, stated_answer

ROWS = [
    json.loads(line)
    for line in (Path(__file__).parent / "data" / "smollm2_completions.jsonl").open()
]
ARITHMETIC = [r for r in ROWS if r["task"] == "arithmetic"]
GSM8K = [r for r in ROWS if r["task"] == "gsm8k"]
CHAT = Arithmetic(Config())
CHAT.template = "chat"  # as bound to a tokenizer with a chat template


def test_fixture_is_the_real_sample():
    assert len(ARITHMETIC) == 160 and len(GSM8K) == 24
    assert sum(r["stated"] == r["gold"] for r in ARITHMETIC) == 21  # the model's real accuracy


@pytest.mark.parametrize("row", ARITHMETIC, ids=lambda r: r["completion"][:30])
def test_chat_arithmetic_reads_the_hand_label(row):
    assert CHAT.extract(row["completion"], row) == row["stated"]
    assert CHAT.is_correct(row["completion"], {"answer": row["gold"]}) == (
        row["stated"] == row["gold"]
    )


@pytest.mark.parametrize("row", GSM8K, ids=lambda r: r["question"][:30])
def test_math_verifier_agrees_with_the_hand_label(row):
    assert _verify(row["completion"], row["gold"]) is row["correct"]


def test_math_verifier_does_not_score_a_restated_question():
    """math-verify alone reads '22 + 80 is incorrect; ...' as the expression 22 + 80 = 102 and
    scores it right; a real model writes such restatements (found on this fixture)."""
    restated = [
        r for r in ARITHMETIC if r["completion"].startswith(("22 + 80 is", "To calculate 33 + 99"))
    ]
    assert len(restated) == 2
    for r in restated:
        assert _verify(r["completion"], r["gold"]) is False


@pytest.mark.parametrize(
    ("text", "answer"),
    [
        ("47 + 38 = 85", "85"),
        ("The answer is 85.", "85"),
        ("85", "85"),
        ("**85**", "85"),
        ("85\n\nThis is a classic example", "85"),
        ("47 + 38 equals 85, which is odd", "85"),
        ("The sum is equal to 1,234.", "1234"),
        ("0 + 2 - 6 = -4", "-4"),
        ("47 + 38 = 47 + 38 = 85", "85"),  # a restated sum is not the result
        ("47 + 38 =", None),  # cut off by the budget
        ("To add 47 and 38, we", None),
        ("Step:\n\n1. 4 * 7 = 28", "28"),  # a list number after a colon is not an answer
    ],
)
def test_stated_answer(text, answer):
    assert stated_answer(text) == answer


@pytest.mark.parametrize(
    ("text", "number"),
    [
        ("So, the answer is 1600.", "1600"),
        ("The answer is: 2\nthen 5", "2"),
        ("1200 * 6 = ", None),
        ("worth $1,250 in all", "1250"),
        ("no number", None),
    ],
)
def test_final_number(text, number):
    assert final_number(text) == number
