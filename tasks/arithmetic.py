"""Synthetic arithmetic: "23+45=" -> "68". The CPU default task.

Problems are generated from a fixed task seed, so every run (any algorithm, any seed) sees the
same train and eval sets; the two are disjoint. Reward: exact match of the integer answer.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

from bench.core.errors import BenchError
from tasks import Task, TaskConfig, register

_INT = re.compile(r"^\s*(-?\d+)\s*$")


@dataclass(frozen=True)
class Config(TaskConfig):
    digits: int = 1  # operands have 1..digits digits
    operands: int = 3  # numbers per problem
    ops: str = "+-"  # operators to draw from
    n_train: int = 3600  # distinct training problems (the default space has 4000)
    n_eval: int = 400  # distinct eval problems, disjoint from train
    data_seed: int = 1234  # fixes the problem sets (not the run seed)


@register
class Arithmetic(Task):
    name = "arithmetic"
    version = "1"
    Config = Config

    def __init__(self, cfg: Config):
        super().__init__(cfg)
        if cfg.digits < 1 or cfg.operands < 2 or not cfg.ops or set(cfg.ops) - set("+-*"):
            raise BenchError(
                f"tasks.arithmetic: needs digits >= 1, operands >= 2 and ops from '+-*' (got {cfg.digits}, {cfg.operands}, '{cfg.ops}')"
            )
        rng = random.Random(cfg.data_seed)
        space = (10**cfg.digits) ** cfg.operands * len(cfg.ops) ** (cfg.operands - 1)
        want = min(cfg.n_train + cfg.n_eval, space)
        seen: dict[str, None] = {}
        while len(seen) < want:
            nums = [str(rng.randrange(10**cfg.digits)) for _ in range(cfg.operands)]
            expr = nums[0] + "".join(rng.choice(cfg.ops) + n for n in nums[1:])
            seen.setdefault(expr, None)
        exprs = list(seen)
        n_eval = min(cfg.n_eval, len(exprs) // 2)
        self._eval = [self._row(e) for e in exprs[:n_eval]]
        self._train = [self._row(e) for e in exprs[n_eval:]]

    @staticmethod
    def _row(expr: str) -> dict:
        return {
            "prompt": f"{expr}=",
            "answer": str(eval(expr, {"__builtins__": {}})),
        }  # digits/ops only

    def train_rows(self) -> list[dict]:
        return self._train

    def eval_rows(self) -> list[dict]:
        return self._eval

    def is_correct(self, completion: str, row: dict) -> bool | None:
        m = _INT.match(completion)
        return m is not None and m.group(1) == row["answer"]

    def answers(self, row: dict) -> tuple[str, str]:
        return row["answer"], str(int(row["answer"]) + 1)

    def preference_rows(self) -> list[dict]:
        """Chosen = the right answer, rejected = a near miss (off by 1-3), fixed by data_seed."""
        rng = random.Random(self.cfg.data_seed + 1)
        return [
            {
                **r,
                "chosen": r["answer"],
                "rejected": str(int(r["answer"]) + rng.choice([-3, -2, -1, 1, 2, 3])),
            }
            for r in self._train
        ]

    def sft_examples(self) -> list[tuple[str, str]]:
        return [(r["prompt"], r["answer"]) for r in self._train]
