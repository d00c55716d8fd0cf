"""Bradley-Terry reward models: train on preference pairs, then use as a reward function.

    loss = -log sigmoid(r(x, y_chosen) - r(x, y_rejected))      (Bradley & Terry 1952; Ouyang et al.)

The model is ``AutoModelForSequenceClassification`` with one label: here a tiny Qwen2 backbone
built offline (byte tokenizer), on a GPU any HF checkpoint (``name_or_path``). A trained model is
a reward function like any other: ``RewardModel(path)(prompts, completions) -> list[float]``,
batched, without gradients, on the model's device.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers import (
    AutoModelForSequenceClassification,
    AutoTokenizer,
    Qwen2Config,
    Qwen2ForSequenceClassification,
)

from bench.core.progress import bar
from bench.core.tokenizer import build_tokenizer


@dataclass(frozen=True)
class RMConfig:
    name_or_path: str = (
        "tiny"  # "tiny" = a small Qwen2 backbone built offline; else HF id or folder
    )
    hidden_size: int = 64  # tiny backbone width
    num_layers: int = 2  # tiny backbone layers
    steps: int = 300  # optimiser steps
    batch: int = 32  # pairs per step
    lr: float = 1e-3  # AdamW learning rate
    max_length: int = 256  # tokens of prompt + response kept (the end is kept)
    seed: int = 0


def bt_loss(r_chosen: torch.Tensor, r_rejected: torch.Tensor) -> torch.Tensor:
    """Mean Bradley-Terry negative log-likelihood of the chosen response winning, [P] -> []."""
    return -F.logsigmoid(r_chosen - r_rejected).mean()


def build(cfg: RMConfig):
    if cfg.name_or_path != "tiny":
        tok = AutoTokenizer.from_pretrained(cfg.name_or_path)
        tok.pad_token = tok.pad_token or tok.eos_token
        model = AutoModelForSequenceClassification.from_pretrained(cfg.name_or_path, num_labels=1)
        model.config.pad_token_id = tok.pad_token_id
        return model, tok
    torch.manual_seed(cfg.seed)
    tok = build_tokenizer()
    config = Qwen2Config(
        vocab_size=len(tok),
        hidden_size=cfg.hidden_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=4,
        num_key_value_heads=4,
        intermediate_size=4 * cfg.hidden_size,
        max_position_embeddings=4096,
        num_labels=1,
        pad_token_id=tok.pad_token_id,
    )
    return Qwen2ForSequenceClassification(config), tok


def score(model, tok, prompts: list[str], completions: list[str], max_length: int) -> torch.Tensor:
    """Scalar reward per (prompt, completion), [N] (with grad if enabled)."""
    tok.padding_side = "right"  # the classifier reads the last non-pad token
    tok.truncation_side = "left"
    enc = tok(
        [p + c for p, c in zip(prompts, completions, strict=True)],
        padding=True,
        truncation=True,
        max_length=max_length,
        return_tensors="pt",
        add_special_tokens=False,
    )
    device = next(model.parameters()).device
    return model(**{k: v.to(device) for k, v in enc.items()}).logits.squeeze(-1).float()


def pairwise_accuracy(model, tok, pairs: list[dict], max_length: int, batch: int = 64) -> float:
    """Share of pairs where r(chosen) > r(rejected)."""
    model.eval()
    wins = 0
    with torch.no_grad():
        for s in range(0, len(pairs), batch):
            b = pairs[s : s + batch]
            rc = score(model, tok, [p["prompt"] for p in b], [p["chosen"] for p in b], max_length)
            rr = score(model, tok, [p["prompt"] for p in b], [p["rejected"] for p in b], max_length)
            wins += (rc > rr).sum().item()
    return wins / max(len(pairs), 1)


def train_reward_model(train: list[dict], held_out: list[dict], cfg: RMConfig):
    """(model, tokenizer, metrics): BT training with AdamW; held-out pairwise accuracy."""
    model, tok = build(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr)
    rng = random.Random(cfg.seed)
    losses = []
    with bar() as progress:
        job = progress.add_task("reward model", total=cfg.steps, info="")
        for _ in range(cfg.steps):
            model.train()
            b = rng.sample(train, min(cfg.batch, len(train)))
            prompts = [p["prompt"] for p in b]
            loss = bt_loss(
                score(model, tok, prompts, [p["chosen"] for p in b], cfg.max_length),
                score(model, tok, prompts, [p["rejected"] for p in b], cfg.max_length),
            )
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            losses.append(loss.item())
            progress.update(job, advance=1, info=f"loss {loss.item():.3f}")
    metrics = {
        "rm/final_loss": sum(losses[-20:]) / len(losses[-20:]),
        "rm/train_accuracy": pairwise_accuracy(model, tok, train[:512], cfg.max_length),
        "rm/heldout_accuracy": pairwise_accuracy(model, tok, held_out, cfg.max_length),
    }
    return model.eval(), tok, metrics


class RewardModel:
    """A trained reward model as a reward function ``(prompts, completions, **_) -> list[float]``."""

    def __init__(self, path: str, max_length: int = 256, batch: int = 64):
        self.model = AutoModelForSequenceClassification.from_pretrained(path).eval()
        self.tok = AutoTokenizer.from_pretrained(path)
        self.max_length, self.batch = max_length, batch

    def __call__(self, prompts: list[str], completions: list[str], **_) -> list[float]:
        out: list[float] = []
        with torch.no_grad():
            for s in range(0, len(prompts), self.batch):
                out += score(
                    self.model,
                    self.tok,
                    prompts[s : s + self.batch],
                    completions[s : s + self.batch],
                    self.max_length,
                ).tolist()
        return out
