"""AIME 2024 I+II, eval-only: 30 problems with integer answers (report avg@32, as the GVPO paper)."""

from tasks import register
from tasks._math import MathTask


@register
class AIME24(MathTask):
    name = "aime24"
    version = "2"  # 2: template auto (chat for models with a chat template)
    eval_data = ["aime24/test.jsonl"]
    required = ["problem", "answer"]
