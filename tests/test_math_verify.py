"""Answer checking: a table of hand-picked cases, the hard time limit, and the data loaders."""

import time

import pytest

from bench.core.errors import BenchError
from tasks import TASKS
from tasks._math import Verifier, last_boxed, load_jsonl

CASES = [
    # (completion, gold, expected)
    ("The answer is \\boxed{72}.", "72", True),
    ("So we get \\boxed{71}.", "72", False),
    ("Natalia sold 48+24 = 72 clips.\n#### 72", "72", True),
    ("#### 70", "72", False),
    ("#### 1,000", "1000", True),
    ("\\boxed{\\frac{1}{2}}", "0.5", True),
    ("\\boxed{0.5}", "\\frac{1}{2}", True),
    ("\\boxed{\\frac{2}{4}}", "\\frac12", True),
    ("\\boxed{\\dfrac{3}{4}}", "\\frac{3}{4}", True),
    ("\\boxed{0.75}", "\\frac{2}{3}", False),
    ("\\boxed{\\sqrt{2}/2}", "\\frac{\\sqrt{2}}{2}", True),
    ("\\boxed{2\\sqrt{2}}", "\\sqrt{8}", True),
    ("\\boxed{\\sqrt{3}}", "\\sqrt{2}", False),
    ("\\boxed{\\left( 3, \\frac{\\pi}{2} \\right)}", "\\left( 3, \\frac{\\pi}{2} \\right)", True),
    ("\\boxed{(3, \\pi/2)}", "\\left( 3, \\frac{\\pi}{2} \\right)", True),
    ("\\boxed{(3, \\pi)}", "\\left( 3, \\frac{\\pi}{2} \\right)", False),
    ("\\boxed{x^2+2x+1}", "(x+1)^2", True),
    ("\\boxed{x^2+1}", "(x+1)^2", False),
    ("\\boxed{10\\%}", "10\\%", True),
    ("\\boxed{204}", "204", True),
    ("The final answer is $204$.", "204", True),
    ("\\boxed{27}", "27", True),
    ("\\boxed{27.0}", "27", True),
    ("\\boxed{-5}", "-5", True),
    ("\\boxed{5}", "-5", False),
    ("\\boxed{\\pi}", "\\pi", True),
    ("\\boxed{3.14159}", "\\pi", False),
    ("\\boxed{1.6}", "1.6", True),
    ("\\boxed{1.6 \\mathrm{~cm}}", "1.6", True),
    ("\\boxed{12 \\text{ dollars}}", "12", True),
    ("\\boxed{\\{1,2,3\\}}", "\\{1,2,3\\}", True),
    ("\\boxed{\\{3,2,1\\}}", "\\{1,2,3\\}", True),
    ("\\boxed{[1,2)}", "[1,2)", True),
    ("\\boxed{(1,2)}", "[1,2)", False),
    ("\\boxed{2^{10}}", "1024", True),
    ("\\boxed{1e3}", "1000", False),  # LaTeX reads 1e3 as 1·e·3
    ("I am not sure.", "72", False),
    ("", "72", False),
    ("\\boxed{}", "72", False),
    ("\\boxed{3} and then \\boxed{4}", "4", True),
    ("\\boxed{\\infty}", "\\infty", True),
    ("\\boxed{\\frac{1}{0}}", "1", False),
    ("\\boxed{x=3}", "3", True),
]


@pytest.fixture(scope="module")
def checker():
    v = Verifier(timeout=10.0)
    yield v
    v.close()


def test_table_has_enough_cases():
    assert len(CASES) >= 40


@pytest.mark.parametrize(("completion", "gold", "expected"), CASES)
def test_verifier_table(checker, completion, gold, expected):
    assert checker.check(completion, gold) is expected


def test_adversarial_completion_scores_none_within_the_limit():
    v = Verifier(timeout=3.0)
    v.check("\\boxed{1}", "1")  # start the worker outside the timed part
    tower = "\\boxed{" + "9^{" * 60 + "9" + "}" * 60 + "}"
    start = time.time()
    result = v.check(tower, "1")
    elapsed = time.time() - start
    v.close()
    assert result in (None, False) and elapsed < 3.0 + 2.0
    nested = "\\boxed{" + "\\frac{1}{" * 400 + "1" + "}" * 400 + "}"
    v2 = Verifier(timeout=3.0)
    start = time.time()
    assert (
        v2.check(nested, "2") in (None, False) and time.time() - start < 3.0 + 8.0
    )  # incl. worker start
    v2.close()


def test_last_boxed_handles_nesting():
    assert last_boxed("so \\boxed{\\frac{1}{2}} cm") == "\\frac{1}{2}"
    assert last_boxed("no box") == "no box"


@pytest.mark.parametrize(
    ("name", "n_train", "n_eval"),
    [
        ("gsm8k", 2000, 1319),
        ("math", 2100, 500),
        ("math500", 0, 500),
        ("aime24", 0, 30),
        ("amc23", 0, 40),
        ("minerva_math", 0, 272),
        ("olympiadbench", 0, 675),
    ],
)
def test_bundled_row_counts(name, n_train, n_eval):
    task = TASKS.get(name)(TASKS.get(name).Config())
    assert len(task._train) == n_train and len(task.eval_rows()) == n_eval
    row = task.eval_rows()[0]
    assert "\\boxed{}" in row["prompt"] and row["answer"]
    if not n_train:
        with pytest.raises(BenchError, match="eval-only"):
            task.train_rows()


def test_malformed_rows_name_file_and_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"problem": "1+1", "answer": "2"}\n{"problem": "2+2"}\nnot json\n')
    with pytest.raises(BenchError, match=r"bad\.jsonl:2: missing field 'answer'"):
        load_jsonl(path, ["problem", "answer"], skip_malformed=False)
    rows, skipped = load_jsonl(path, ["problem", "answer"], skip_malformed=True)
    assert len(rows) == 1 and skipped == 2
    task = TASKS.get("math500")(
        TASKS.get("math500").Config(eval_file=str(path), skip_malformed=True)
    )
    assert len(task.eval_rows()) == 1 and task.skipped == 2


def test_templates():
    base = TASKS.get("gsm8k")(TASKS.get("gsm8k").Config())
    qwen = TASKS.get("gsm8k")(TASKS.get("gsm8k").Config(template="qwen_math"))
    assert base.eval_rows()[0]["prompt"].startswith("Janet")
    assert qwen.eval_rows()[0]["prompt"].startswith("<|im_start|>system")


def test_hugging_face_dataset_folder_and_bad_spec(tmp_path):
    from datasets import Dataset

    Dataset.from_list(
        [{"question": "1+1?", "answer": "so #### 2"}, {"question": "2+2?", "answer": "#### 4"}]
    ).save_to_disk(tmp_path / "ds")
    task = TASKS.get("gsm8k")(TASKS.get("gsm8k").Config(eval_file=str(tmp_path / "ds")))
    assert [r["answer"] for r in task.eval_rows()] == ["2", "4"]
    with pytest.raises(BenchError, match="must look like hf:NAME:SPLIT"):
        TASKS.get("gsm8k")(TASKS.get("gsm8k").Config(eval_file="hf:gsm8k"))
    with pytest.raises(BenchError, match="cannot load data set 'hf:no-such/data:test'"):
        TASKS.get("gsm8k")(TASKS.get("gsm8k").Config(eval_file="hf:no-such/data:test"))


def test_arithmetic_boxed_scores_with_math_verify():
    task = TASKS.get("arithmetic_boxed")(TASKS.get("arithmetic_boxed").Config(n_train=10, n_eval=5))
    row = task.eval_rows()[0]
    assert task.reward(
        [row["prompt"]] * 3,
        [f"\\boxed{{{row['answer']}}}", "\\boxed{999}", "no idea"],
        answer=[row["answer"]] * 3,
    ) == [1.0, 0.0, 0.0]
    prompt, target = task.sft_examples()[0]
    assert target.startswith("\\boxed{") and prompt.endswith("=")
