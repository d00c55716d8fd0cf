"""Minerva math (OCW subset, Lewkowycz et al. 2022), eval-only: 272 problems; the gold answer is
the last \\boxed{} of the solution."""

from tasks import register
from tasks._math import MathTask, last_boxed


@register
class MinervaMath(MathTask):
    name = "minerva_math"
    version = "2"  # 2: template auto (chat for models with a chat template)
    eval_data = ["minerva_math/test.jsonl"]
    required = ["problem", "solution"]

    @staticmethod
    def gold(row: dict) -> str:
        return last_boxed(row["solution"])
