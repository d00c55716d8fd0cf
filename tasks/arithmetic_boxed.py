"""Arithmetic in the math tasks' format: answers written as \\boxed{N} and checked by math-verify
under the same hard time limit as gsm8k/math. The CPU-scale check that the math pipeline
(boxed extraction, verifier process, unscorable counting) learns end to end; a tiny model cannot
learn GSM8K or MATH themselves."""

from __future__ import annotations

from dataclasses import dataclass

from tasks import register
from tasks._math import last_boxed, verifier
from tasks.arithmetic import Arithmetic
from tasks.arithmetic import Config as ArithmeticConfig


@dataclass(frozen=True)
class Config(ArithmeticConfig):
    verify_timeout: float = 5.0  # hard limit per answer check, seconds


@register
class ArithmeticBoxed(Arithmetic):
    name = "arithmetic_boxed"
    version = "2"
    Config = Config
    instruction = "Put the final answer within \\boxed{}."

    def extract(self, completion: str, row: dict) -> str | None:
        return last_boxed(completion) if "\\boxed{" in completion else None

    def is_correct(self, completion: str, row: dict) -> bool | None:
        return verifier(self.cfg.verify_timeout).check(completion, row["answer"])

    def answers(self, row: dict) -> tuple[str, str]:
        return tuple(f"\\boxed{{{a}}}" for a in super().answers(row))

    def sft_examples(self) -> list[tuple[str, str]]:
        return [(p, f"\\boxed{{{a}}}") for p, a in super().sft_examples()]

    def preference_rows(self) -> list[dict]:
        return [
            {**r, "chosen": f"\\boxed{{{r['chosen']}}}", "rejected": f"\\boxed{{{r['rejected']}}}"}
            for r in super().preference_rows()
        ]
