"""MATH (Hendrycks et al. 2021), 7 subjects: train on a bundled subset (300 rows a subject),
evaluate on MATH-500. Gold answer = the last \\boxed{} of the solution (the 'answer' field)."""

from tasks import register
from tasks._math import MathTask

SUBJECTS = [
    "algebra",
    "counting_and_probability",
    "geometry",
    "intermediate_algebra",
    "number_theory",
    "prealgebra",
    "precalculus",
]


@register
class MATH(MathTask):
    name = "math"
    version = "2"  # 2: template auto (chat for models with a chat template)
    train_data = [f"math_train/{s}.jsonl" for s in SUBJECTS]
    eval_data = ["math500/test.jsonl"]
    required = ["problem", "answer"]
