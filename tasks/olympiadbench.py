"""OlympiadBench (He et al. 2024), eval-only: 675 English competition problems with final answers
(a list; the first is the gold answer)."""

from tasks import register
from tasks._math import MathTask


@register
class OlympiadBench(MathTask):
    name = "olympiadbench"
    version = "2"  # 2: template auto (chat for models with a chat template)
    eval_data = ["olympiadbench/test.jsonl"]
    problem_key = "question"
    required = ["question", "final_answer"]

    @staticmethod
    def gold(row: dict) -> str:
        answers = row["final_answer"]
        return str(answers[0] if isinstance(answers, list) else answers)

    @staticmethod
    def solution(row: dict) -> str | None:
        return None
