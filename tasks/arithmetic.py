"""Synthetic arithmetic: "23+45=" -> "68". The CPU default task.

Problems are generated from a fixed task seed, so every run (any algorithm, any seed) sees the
same train and eval sets; the two are disjoint. Two prompt formats (``template``):

- ``base``: the raw ``23+45=``; reward = exact match of the integer answer (the tiny model's
  format: it was warm-started to answer with the number alone);
- ``chat``: "What is 23 + 45? Reply with only the number." through the model's chat template;
  reward = the answer the completion states (``stated_answer``: ``23 + 45 = 68``, ``The answer is
  68.``, ``68``, with any chatter after it) equals the gold.

``auto`` (default) = chat when the model's tokenizer has a chat template, base otherwise.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from typing import Literal

from bench.core.errors import BenchError
from tasks import Task, TaskConfig, register
from tasks._chat import as_chat, resolve_template

_INT = re.compile(r"^\s*(-?\d+)\s*$")
_NUMBER = r"[-\u2212]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?!\d|[.,]\d)"  # 68, 1,234, 1.5
_MARKS = r"[*#$]*"  # markdown bold, "#68", "$68$"
# the result a completion states: "= 68", "equals 68", "equal to 68", "is 68", ": 68" (on the
# same line); not "= 23 + 45" (an operator after the number means it is not the result yet)
_STATED = re.compile(
    rf"(?:=|\bequals?(?:[ \t]+to)?|\bis|:)[ \t]*{_MARKS}({_NUMBER})"
    r"(?![ \t]*(?:[-+*/^\u00d7\u00f7]|[xX][ \t]*\d))"
)
_ALONE = re.compile(rf"^\s*{_MARKS}({_NUMBER}){_MARKS}\.?\s*$")


def stated_answer(completion: str) -> str | None:
    """The number a completion gives as its answer, normalised (``1,234`` -> ``1234``): the whole
    first line when it is a number, else the first stated result, else None."""
    first_line = completion.strip().split("\n")[0]
    m = _ALONE.match(first_line) or _STATED.search(completion)
    if m is None:
        return None
    number = m.group(1).replace(",", "").replace("\u2212", "-")
    return number[: -len(".0")] if number.endswith(".0") else number


@dataclass(frozen=True)
class Config(TaskConfig):
    digits: int = 1  # operands have 1..digits digits
    operands: int = 3  # numbers per problem
    ops: str = "+-"  # operators to draw from
    n_train: int = 3600  # distinct training problems (the default space has 4000)
    n_eval: int = 400  # distinct eval problems, disjoint from train
    data_seed: int = 1234  # fixes the problem sets (not the run seed)
    template: Literal["auto", "base", "chat"] = "auto"  # prompt format (see the module doc)


@register
class Arithmetic(Task):
    name = "arithmetic"
    version = "2"
    Config = Config
    instruction = "Reply with only the number."  # the chat form's request for the answer format

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
        self.template = "base"  # until a tokenizer is bound (bind_tokenizer): the data's checks
        self.tokenizer = None

    @staticmethod
    def _row(expr: str) -> dict:
        return {
            "prompt": f"{expr}=",
            "answer": str(eval(expr, {"__builtins__": {}})),  # digits/ops only
        }

    def bind_tokenizer(self, tokenizer) -> None:
        self.tokenizer = tokenizer
        self.template = resolve_template(self.cfg.template, tokenizer)

    def _render(self, rows: list[dict]) -> list[dict]:
        if self.template == "base":
            return rows
        return [{**r, "prompt": as_chat(self.tokenizer, self.question(r))} for r in rows]

    def question(self, row: dict) -> str:
        """The chat form's question: ``23+45=`` -> ``What is 23 + 45? <instruction>``."""
        expr = re.sub(r"([-+*])", r" \1 ", row["prompt"].removesuffix("="))
        return f"What is {expr}? {self.instruction}"

    def train_rows(self) -> list[dict]:
        return self._render(self._train)

    def eval_rows(self) -> list[dict]:
        return self._render(self._eval)

    def extract(self, completion: str, row: dict) -> str | None:
        if self.template == "chat":
            return stated_answer(completion)
        m = _INT.match(completion)
        return m.group(1) if m else None

    def is_correct(self, completion: str, row: dict) -> bool | None:
        return self.extract(completion, row) == row["answer"]

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
            for r in self.train_rows()
        ]

    def sft_examples(self) -> list[tuple[str, str]]:
        return [(r["prompt"], r["answer"]) for r in self.train_rows()]
