"""Models: the embedded tiny default (built offline) and any HF checkpoint, through one loader.

The tiny default is a Qwen2ForCausalLM built from a config, with a byte-level tokenizer trained
offline (no merges: one token per byte, so digits stay separate), warm-started by a short
supervised phase on the task's own train data so that RL starts with headroom and signal. It is
cached under results/cache/models/<hash of everything that determines it>.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import random
import shutil
from pathlib import Path

import torch
import transformers
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    Qwen2Config,
    Qwen2ForCausalLM,
)

from bench.config import ModelConfig
from bench.core.errors import BenchError
from bench.core.paths import cache_dir
from bench.core.progress import bar
from bench.core.tokenizer import build_tokenizer
from bench.lora import adapter_base, load_adapter
from bench.pretrained import resolve

transformers.utils.logging.disable_progress_bar()  # our own bars; HF's shard bars are noise


def build_tiny_model(cfg: ModelConfig, tokenizer) -> Qwen2ForCausalLM:
    torch.manual_seed(cfg.init_seed)
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=cfg.hidden_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_heads,
        intermediate_size=cfg.intermediate_size,
        max_position_embeddings=4096,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.eos_token_id,
    )
    return Qwen2ForCausalLM(config)


def _cache_key(cfg: ModelConfig, task, source: dict) -> str:
    blob = {
        "source": source,
        # what RL then trains (the adapters) does not change the warm-started base
        "model": {k: v for k, v in dataclasses.asdict(cfg).items() if k != "lora"},
        "task": [task.name, task.version, dataclasses.asdict(task.cfg)],
        "code": hashlib.sha256(Path(__file__).read_bytes()).hexdigest(),
        "versions": [torch.__version__, transformers.__version__],
    }
    return hashlib.sha256(json.dumps(blob, sort_keys=True).encode()).hexdigest()[:16]


def device_of(cfg: ModelConfig) -> torch.device:
    if cfg.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(cfg.device)


def _load_pretrained(name: str, dtype: str = "float32"):
    """(model, tokenizer) of an HF id or folder, or of a LoRA adapter folder (its base with the
    adapter merged in); prompts are left-padded, pad = eos if unset."""
    base = adapter_base(name)
    try:
        tok = AutoTokenizer.from_pretrained(name)
        model = AutoModelForCausalLM.from_pretrained(base or name, dtype=getattr(torch, dtype))
        model = load_adapter(model, name) if base else model
    except (OSError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise BenchError(f"cannot load model.name_or_path='{name}': {first}") from None
    tok.padding_side = "left"
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return model, tok


def sft_batch(tokenizer, examples: list[tuple[str, str]]):
    """Right-padded (input_ids, attention_mask, labels) with loss on the completion + EOS only."""
    ids, labels = [], []
    for prompt, target in examples:
        p = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        t = tokenizer(target, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        ids.append(p + t)
        labels.append([-100] * len(p) + t)
    width = max(map(len, ids))
    pad = tokenizer.pad_token_id
    input_ids = torch.tensor([x + [pad] * (width - len(x)) for x in ids])
    attention = torch.tensor([[1] * len(x) + [0] * (width - len(x)) for x in ids])
    label_t = torch.tensor([y + [-100] * (width - len(y)) for y in labels])
    return input_ids, attention, label_t


def warm_start(model, tokenizer, task, cfg: ModelConfig) -> list[float]:
    """Supervised fine-tuning on the task's (prompt, answer) pairs; returns the loss curve."""
    examples = task.sft_examples()
    rng = random.Random(cfg.init_seed)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.warmstart_lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 20))
    model.train()
    losses = []
    with bar() as progress:
        job = progress.add_task("warm start", total=cfg.warmstart_steps, info="")
        for _ in range(cfg.warmstart_steps):
            input_ids, attention, labels = sft_batch(
                tokenizer, rng.sample(examples, cfg.warmstart_batch)
            )
            loss = model(input_ids=input_ids, attention_mask=attention, labels=labels).loss
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            losses.append(loss.item())
            progress.update(job, advance=1, info=f"loss {loss.item():.3f}")
    model.eval()
    return losses


def load_policy(cfg: ModelConfig, task):
    """(model, tokenizer, info): the warm-started policy, from the cache when it is there; info
    has the folder it came from ("cache") and where a pretrained model came from ("tags").

    ``name_or_path=task`` asks the task for its own policy (e.g. the bandit's softmax table)."""
    if cfg.name_or_path == "task":
        if not hasattr(task, "build_policy"):
            raise BenchError(
                f"model.name_or_path=task: task '{task.name}' has no policy of its own"
            )
        model, tok = task.build_policy()
        return model, tok, {"cache": "", "tags": {}}
    tiny = cfg.name_or_path == "tiny" and not cfg.gguf_file
    name, tags = ("tiny", {}) if tiny else resolve(cfg.name_or_path, cfg.gguf_file)
    if cfg.warmstart_steps <= 0:
        model, tok = _base_model(cfg, name)
        return model.to(device_of(cfg)).eval(), tok, {"cache": "" if tiny else name, "tags": tags}
    path = cache_dir() / "models" / _cache_key(cfg, task, tags)
    info = {"cache": str(path), "tags": tags}
    if (path / "done.json").exists():
        tok = AutoTokenizer.from_pretrained(path)
        tok.padding_side = "left"
        model = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, cfg.dtype))
        return model.to(device_of(cfg)).eval(), tok, info
    model, tok = _base_model(cfg, name)
    model = model.to(device_of(cfg))
    task.bind_tokenizer(tok)  # the warm start's prompts in the format training will use
    losses = warm_start(model, tok, task, cfg)
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")  # concurrent builders do not collide
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    (tmp / "done.json").write_text(json.dumps({"final_loss": losses[-1], "task": task.name}))
    if (path / "done.json").exists():  # another process finished first: keep its copy
        shutil.rmtree(tmp, ignore_errors=True)
    else:
        shutil.rmtree(path, ignore_errors=True)
        tmp.rename(path)
    return model.eval(), tok, info


def _base_model(cfg: ModelConfig, name: str):
    """The model before any warm start: the tiny default built here, or a pretrained one."""
    if name == "tiny":
        tok = build_tokenizer()
        return build_tiny_model(cfg, tok), tok
    return _load_pretrained(name, cfg.dtype)


def n_params(model) -> int:
    return sum(p.numel() for p in model.parameters())
