"""MATH-500 (Lightman et al. 2023), eval-only: 500 MATH test problems with answers."""

from tasks import register
from tasks._math import MathTask


@register
class MATH500(MathTask):
    name = "math500"
    version = "2"  # 2: template auto (chat for models with a chat template)
    eval_data = ["math500/test.jsonl"]
    required = ["problem", "answer"]
