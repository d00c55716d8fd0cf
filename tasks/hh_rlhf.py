"""Anthropic HH-RLHF preference pairs (Bai et al. 2022): offline DPO and reward-model data.

Each row's dialogue is split at its last "Assistant:" turn: the prompt keeps every earlier turn,
chosen/rejected are the two final replies. Pairs whose chosen equals rejected (or whose prompts
differ) are dropped and counted. Train/eval split by a hash of the prompt: deterministic and
stable when subsets are added. Bundled: the helpful-base and harmless-base test splits.
"""

from __future__ import annotations

import gzip
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from bench.core.errors import BenchError
from tasks import Task, TaskConfig, register

DATA = Path(__file__).parent / "data" / "hh_rlhf"
TURN = "\n\nAssistant:"


@dataclass(frozen=True)
class Config(TaskConfig):
    subsets: str = "helpful-base,harmless-base"  # bundled subsets, comma-separated
    eval_share: float = 0.1  # share of prompts held out (by hash of the prompt)
    max_rows: int = 0  # use the first N pairs of each subset (0 = all)


def split_dialogue(text: str) -> tuple[str, str] | None:
    """(prompt up to and including the last 'Assistant:', final reply) or None."""
    cut = text.rfind(TURN)
    if cut < 0:
        return None
    return text[: cut + len(TURN)], text[cut + len(TURN) :].strip()


def parse_pairs(raw: list[dict]) -> tuple[list[dict], dict[str, int]]:
    rows, dropped = [], {"identical": 0, "unparsable": 0}
    for r in raw:
        if r["chosen"] == r["rejected"]:
            dropped["identical"] += 1
            continue
        c, j = split_dialogue(r["chosen"]), split_dialogue(r["rejected"])
        if c is None or j is None or c[0] != j[0] or c[1] == j[1]:
            dropped["unparsable"] += 1
            continue
        rows.append({"prompt": c[0], "chosen": c[1], "rejected": j[1]})
    return rows, dropped


@register
class HHRLHF(Task):
    name = "hh_rlhf"
    version = "1"
    Config = Config

    def __init__(self, cfg: Config):
        super().__init__(cfg)
        rows, self.dropped = [], {"identical": 0, "unparsable": 0}
        for subset in [s.strip() for s in cfg.subsets.split(",") if s.strip()]:
            path = DATA / f"{subset}.test.jsonl.gz"
            if not path.exists():
                choices = sorted(p.name.split(".")[0] for p in DATA.glob("*.jsonl.gz"))
                raise BenchError(
                    f"tasks.hh_rlhf.subsets: no subset '{subset}' (bundled: {', '.join(choices)})"
                )
            with gzip.open(path, "rt") as f:
                raw = [json.loads(line) for line in f]
            parsed, dropped = parse_pairs(raw[: cfg.max_rows or None])
            rows += parsed
            for k, v in dropped.items():
                self.dropped[k] += v
        held = [
            hashlib.sha256(r["prompt"].encode()).digest()[0] / 256 < cfg.eval_share for r in rows
        ]
        self._train = [r for r, h in zip(rows, held, strict=True) if not h]
        self._eval = [r for r, h in zip(rows, held, strict=True) if h]

    def train_rows(self) -> list[dict]:
        return self._train

    def eval_rows(self) -> list[dict]:
        return self._eval

    def preference_rows(self) -> list[dict]:
        return self._train

    def is_correct(self, completion: str, row: dict) -> bool | None:
        return None  # no gold checker: score completions with a trained reward model

    def answers(self, row: dict) -> tuple[str, str]:
        return row["chosen"], row["rejected"]  # no scorer: a reward model learns from these pairs

    def sft_examples(self) -> list[tuple[str, str]]:
        return [(r["prompt"], r["chosen"]) for r in self._train]
