"""GSM8K (Cobbe et al. 2021): grade-school word problems; gold answer after '####'.
Bundled: the full test split (1,319) and the first 2,000 train rows (tasks/data/math/SOURCES.md)."""

from tasks import register
from tasks._math import MathTask


@register
class GSM8K(MathTask):
    name = "gsm8k"
    version = "2"  # 2: template auto (chat for models with a chat template)
    train_data = ["gsm8k/train.jsonl"]
    eval_data = ["gsm8k/test.jsonl"]
    problem_key = "question"
    required = ["question", "answer"]

    @staticmethod
    def gold(row: dict) -> str:
        return row["answer"].rsplit("####", 1)[-1].strip().replace(",", "")

    @staticmethod
    def solution(row: dict) -> str:
        return row["answer"]
