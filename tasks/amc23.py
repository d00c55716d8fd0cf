"""AMC 2023, eval-only: 40 problems (numeric answers stored as floats, e.g. 27.0 -> '27')."""

from tasks import register
from tasks._math import MathTask


@register
class AMC23(MathTask):
    name = "amc23"
    version = "2"  # 2: template auto (chat for models with a chat template)
    eval_data = ["amc23/test.jsonl"]
    required = ["problem", "answer"]

    @staticmethod
    def gold(row: dict) -> str:
        value = row["answer"]
        return str(int(value)) if isinstance(value, float) and value.is_integer() else str(value)
