"""Shared pieces of the math tasks: JSONL loading with file:line errors, prompt templates, and
answer checking with math-verify under a hard time limit.

A task file (``tasks/gsm8k.py``, ``tasks/math500.py``, ...) subclasses ``MathTask`` and says
which bundled files it reads and how a row's gold answer is written.
"""

from __future__ import annotations

import atexit
import json
import multiprocessing as mp
import re
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Literal

from bench.core.errors import BenchError
from tasks import Task, TaskConfig
from tasks._chat import as_chat, resolve_template

DATA = Path(__file__).parent / "data" / "math"

TEMPLATES = {
    # Qwen2.5-Math's chain-of-thought prompt for base models
    "base": "{problem}\nPlease reason step by step, and put your final answer within \\boxed{{}}.\n",
    # the same instruction in Qwen's chat format, written out (no tokenizer needed)
    "qwen_math": (
        "<|im_start|>system\nPlease reason step by step, and put your final answer within \\boxed{{}}.<|im_end|>\n"
        "<|im_start|>user\n{problem}<|im_end|>\n<|im_start|>assistant\n"
    ),
    # the model's own chat template (tokenizer.apply_chat_template), applied when the model is known
    "chat": "{problem}\nPlease reason step by step, and put your final answer within \\boxed{{}}.",
}


@dataclass(frozen=True)
class MathConfig(TaskConfig):
    # prompt format (see TEMPLATES); auto = chat when the model's tokenizer has a chat template
    template: Literal["auto", "base", "qwen_math", "chat"] = "auto"
    train_file: str = (
        ""  # JSONL path, or hf:NAME[:CONFIG]:SPLIT, or a save_to_disk folder; "" = bundled
    )
    eval_file: str = ""  # the same for the eval split
    skip_malformed: bool = False  # skip and count bad rows instead of stopping with file:line
    max_eval: int = 0  # use the first N eval rows (0 = all)
    verify_timeout: float = 5.0  # hard limit per answer check, seconds (then scored 0, counted)


def load_jsonl(path: Path, required: list[str], skip_malformed: bool) -> tuple[list[dict], int]:
    """Rows of a JSONL file; a bad row stops with 'file:line: why' unless skip_malformed."""
    if not path.exists():
        raise BenchError(f"data file {path} does not exist")
    rows, skipped = [], 0
    with path.open() as f:
        for i, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                missing = [
                    k for k in required if not isinstance(row, dict) or row.get(k) in (None, "")
                ]
                problem = f"missing field '{missing[0]}'" if missing else ""
            except json.JSONDecodeError as e:
                row, problem = None, f"not valid JSON ({e.msg})"
            if problem:
                if not skip_malformed:
                    raise BenchError(
                        f"{path}:{i}: {problem} (set skip_malformed=true to skip such rows)"
                    )
                skipped += 1
                continue
            rows.append(row)
    return rows, skipped


def last_boxed(text: str) -> str:
    """Content of the last \\boxed{...} (braces balanced), or the text itself if there is none."""
    start = text.rfind("\\boxed{")
    if start < 0:
        return text
    depth, i = 0, start + len("\\boxed")
    for j in range(i, len(text)):
        depth += {"{": 1, "}": -1}.get(text[j], 0)
        if depth == 0:
            return text[i + 1 : j]
    return text[i + 1 :]


# a number in a result position: not followed by an operator or "=" (a cut-off "1200 * 6 =")
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?(?![\d,]|\.\d|\s*[-+*/=^\u00d7])")
_ANSWER_IS = re.compile(r"answer is:?\s*\$?(-?\d[\d,]*(?:\.\d+)?)", re.IGNORECASE)


def final_number(text: str) -> str | None:
    """An unboxed completion's answer, as Qwen2.5-Math's evaluation reads it: the last "the
    answer is N", else the last number written. (math-verify's own reading of the whole text
    evaluates the last expression: "22 + 80" would score as 102, a restated question as right.) A
    number followed by an operator or "=" is not a result ("1200 * 6 =" cut off by the budget)."""
    numbers = _ANSWER_IS.findall(text) or _NUMBER.findall(text)
    return numbers[-1].replace(",", "") if numbers else None


def load_hf(spec: str, required: list[str], skip_malformed: bool) -> tuple[list[dict], int]:
    """Rows of a Hugging Face data set: ``hf:NAME[:CONFIG]:SPLIT`` (hub or local cache) or a
    folder written by ``Dataset.save_to_disk``. Bad rows as in ``load_jsonl`` (row index)."""
    import datasets

    try:
        if spec.startswith("hf:"):
            parts = spec[3:].split(":")
            if len(parts) not in (2, 3):
                raise BenchError(f"'{spec}' must look like hf:NAME:SPLIT or hf:NAME:CONFIG:SPLIT")
            name, *config, split = parts
            data = datasets.load_dataset(name, *config, split=split)
        else:
            data = datasets.load_from_disk(spec)
    except BenchError:
        raise
    except Exception as e:  # offline, unknown name, bad folder
        raise BenchError(f"cannot load data set '{spec}': {str(e).splitlines()[0]}") from None
    rows, skipped = [], 0
    for i, row in enumerate(data):
        missing = [k for k in required if row.get(k) in (None, "")]
        if missing:
            if not skip_malformed:
                raise BenchError(
                    f"{spec} row {i}: missing field '{missing[0]}' (set skip_malformed=true to skip such rows)"
                )
            skipped += 1
            continue
        rows.append(dict(row))
    return rows, skipped


def _verify(completion: str, gold: str) -> bool | None:
    """Runs in the verifier process: math-verify parse + verify (its own timeouts apply too)."""
    from math_verify import parse, verify

    if "\\boxed{" in completion:  # the last boxed answer counts (Qwen2.5-Math evaluation)
        completion = "\\boxed{" + last_boxed(completion) + "}"
    elif "####" in completion:  # GSM8K style final answer
        completion = "$" + completion.rsplit("####", 1)[1].strip().replace(",", "") + "$"
    elif final_number(completion) is not None:  # "The answer is 18." / the last number written
        completion = f"${final_number(completion)}$"
    gold_text = gold if ("$" in gold or "\\boxed" in gold) else f"${gold}$"
    try:
        g, p = parse(gold_text), parse(completion)
        return bool(g) and bool(p) and bool(verify(g, p))
    except Exception:  # a crash inside math-verify on odd input: unscorable, counted
        return None


class Verifier:
    """Answer checks in one worker process, each under a hard time limit: a check that does not
    return in time (a huge power tower, deeply nested LaTeX) kills the worker and scores None."""

    def __init__(self, timeout: float = 5.0):
        self.timeout = timeout
        self.pool = None
        self.timeouts = 0  # checks that hit the limit (counted, not silently zero)

    def check(self, completion: str, gold: str) -> bool | None:
        if self.pool is None:
            self.pool = mp.get_context("spawn").Pool(1)
        job = self.pool.apply_async(_verify, (completion, gold))
        try:
            return job.get(timeout=self.timeout)
        except mp.TimeoutError:
            self.pool.terminate()
            self.pool = None
            self.timeouts += 1
            return None

    def close(self) -> None:
        if self.pool is not None:
            self.pool.terminate()
            self.pool = None


_VERIFIERS: dict[float, Verifier] = {}


def verifier(timeout: float) -> Verifier:
    """One shared verifier process per time limit, stopped when Python exits."""
    if timeout not in _VERIFIERS:
        _VERIFIERS[timeout] = Verifier(timeout)
        atexit.register(_VERIFIERS[timeout].close)
    return _VERIFIERS[timeout]


class MathTask(Task):
    """A math data set: rows with a problem and a gold answer; rewards by math-verify."""

    Config = MathConfig
    train_data: ClassVar[list[str]] = []  # bundled files under tasks/data/math (empty: eval-only)
    eval_data: ClassVar[list[str]] = []
    problem_key: ClassVar[str] = "problem"
    required: ClassVar[list[str]] = ["problem"]

    def __init__(self, cfg: MathConfig):
        super().__init__(cfg)
        self.skipped = 0
        self._train = (
            self._load(cfg.train_file, self.train_data)
            if (cfg.train_file or self.train_data)
            else []
        )
        self._eval = self._load(cfg.eval_file, self.eval_data)
        if cfg.max_eval:
            self._eval = self._eval[: cfg.max_eval]
        self.tokenizer = None
        # until a tokenizer is bound (bind_tokenizer), chat and auto read as base: the data's checks
        self.template = "base" if cfg.template in ("auto", "chat") else cfg.template

    @staticmethod
    def gold(row: dict) -> str:
        """The gold answer of a raw row, as text math-verify can parse."""
        return str(row["answer"])

    @staticmethod
    def solution(row: dict) -> str | None:
        """A worked solution for supervised warm starts, if the data set has one."""
        return row.get("solution")

    def _load(self, path: str, bundled: list[str]) -> list[dict]:
        files = [Path(path)] if path else [DATA / f for f in bundled]
        rows = []
        for f in files:
            if path.startswith("hf:") or (f / "dataset_info.json").exists():
                raw, skipped = load_hf(path, self.required, self.cfg.skip_malformed)
            else:
                raw, skipped = load_jsonl(f, self.required, self.cfg.skip_malformed)
            self.skipped += skipped
            rows += [
                {
                    "problem": r[self.problem_key],
                    "answer": self.gold(r),
                    "solution": self.solution(r),
                }
                for r in raw
            ]
        return rows

    def prompt(self, problem: str) -> str:
        text = TEMPLATES[self.template].format(problem=problem)
        if self.template == "chat":
            return as_chat(self.tokenizer, text)
        return text

    def bind_tokenizer(self, tokenizer) -> None:
        self.tokenizer = tokenizer
        self.template = resolve_template(self.cfg.template, tokenizer)

    def extract(self, completion: str, row: dict) -> str | None:
        return last_boxed(completion) if "\\boxed{" in completion else None

    def _rows(self, rows: list[dict]) -> list[dict]:
        return [{"prompt": self.prompt(r["problem"]), "answer": r["answer"]} for r in rows]

    def train_rows(self) -> list[dict]:
        if not self._train and self.cfg.train_file:
            raise BenchError(f"train file {self.cfg.train_file} of task '{self.name}' has no rows")
        if not self._train:
            raise BenchError(
                f"task '{self.name}' is eval-only: train on gsm8k or math, evaluate on {self.name}"
            )
        return self._rows(self._train)

    def eval_rows(self) -> list[dict]:
        if not self._eval:
            where = self.cfg.eval_file or "the bundled data"
            raise BenchError(f"eval file {where} of task '{self.name}' has no rows")
        return self._rows(self._eval)

    def is_correct(self, completion: str, row: dict) -> bool | None:
        return verifier(self.cfg.verify_timeout).check(completion, row["answer"])

    def answers(self, row: dict) -> tuple[str, str]:
        return (
            f"The answer is $\\boxed{{{row['answer']}}}$.",
            "The answer is $\\boxed{-987654321}$.",
        )

    def sft_examples(self) -> list[tuple[str, str]]:
        return [(self.prompt(r["problem"]), r["solution"]) for r in self._train if r["solution"]]
