"""A tabular bandit with an exact optimum: checks each algorithm's fixed point.

Prompts x0..x{X-1}, each with responses y0..y{Y-1}, fixed rewards R(x, y) in [0, 1] and a fixed
reference distribution pi_ref(y|x). The policy is a softmax table (``TablePolicy``, float64)
that speaks the causal-LM interface the loop uses (one-token completions), so it runs through
the same sampler, log-prob and loss code as a language model. The KL-constrained optimum is
exact: pi*(y|x) = pi_ref(y|x) exp(R(x,y)/beta) / Z(x).
"""

from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace

import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from tasks import Task, TaskConfig, register

NEG = -1e4  # logit of tokens that are not responses (exp underflows to 0; no NaN in entropies)


@dataclass(frozen=True)
class Config(TaskConfig):
    n_prompts: int = 3  # X
    n_responses: int = 5  # Y
    beta: float = 0.1  # KL strength that defines pi* (give the algorithms the same beta)
    ref_scale: float = 1.0  # std of the reference logits (spread of pi_ref)
    data_seed: int = 0  # fixes rewards and the reference


class TablePolicy(torch.nn.Module):
    """pi(y|x) = softmax(logits[x]) behind the causal-LM interface (forward, generate, config)."""

    def __init__(
        self, logits: torch.Tensor, token_row: torch.Tensor, response_ids: torch.Tensor, vocab: int
    ):
        super().__init__()
        self.logits = torch.nn.Parameter(logits.clone())  # [X, Y] float64
        self.register_buffer("token_row", token_row)  # [V] prompt token -> x (0 for other tokens)
        self.register_buffer("response_ids", response_ids)  # [Y] token id of each response
        self.vocab = vocab
        self.config = SimpleNamespace(hidden_size=logits.shape[0])  # one-hot "hidden state" of x

    def forward(
        self,
        input_ids,
        attention_mask=None,
        position_ids=None,
        logits_to_keep=0,
        output_hidden_states=False,
        **_,
    ):
        ids = input_ids[:, -logits_to_keep:] if logits_to_keep else input_ids
        x = self.token_row[ids]  # [B, L]
        full = torch.full((*ids.shape, self.vocab), NEG, dtype=self.logits.dtype)
        full = full.index_copy(-1, self.response_ids, self.logits[x])
        hidden = (
            torch.nn.functional.one_hot(x, self.logits.shape[0]).float()
            if output_hidden_states
            else None
        )
        return SimpleNamespace(logits=full, hidden_states=(hidden,) if hidden is not None else None)

    @torch.no_grad()
    def generate(
        self,
        input_ids,
        attention_mask=None,
        do_sample=True,
        temperature=None,
        top_p=None,
        max_new_tokens=1,
        **_,
    ):
        logits = self.forward(input_ids[:, -1:]).logits[:, -1]
        if not do_sample:
            token = logits.argmax(-1)
        else:
            if top_p not in (None, 1.0):
                raise ValueError("the bandit's table policy samples with top_p=1 only")
            token = torch.multinomial((logits / (temperature or 1.0)).softmax(-1), 1).squeeze(1)
        return torch.cat([input_ids, token[:, None]], dim=1)

    def probs(self) -> torch.Tensor:
        return self.logits.detach().softmax(-1)  # [X, Y]


@register
class Bandit(Task):
    name = "bandit"
    version = "1"
    Config = Config

    def __init__(self, cfg: Config):
        super().__init__(cfg)
        g = torch.Generator().manual_seed(cfg.data_seed)
        X, Y = cfg.n_prompts, cfg.n_responses
        self.R = torch.rand(X, Y, generator=g, dtype=torch.float64)  # [X, Y]
        self.ref_logits = torch.randn(X, Y, generator=g, dtype=torch.float64) * cfg.ref_scale
        self.ref_probs = self.ref_logits.softmax(-1)
        self.optimum = (self.ref_probs.log() + self.R / cfg.beta).softmax(-1)  # pi*, [X, Y]
        self._rows = [{"prompt": f"x{i}", "x": i} for i in range(X)]

    def train_rows(self) -> list[dict]:
        return self._rows

    def validation_rows(self) -> list[dict]:
        """None: the eval reads the whole policy table (every prompt), there is nothing to hold out."""
        return []

    def eval_rows(self) -> list[dict]:
        return self._rows

    def responses(self) -> list[str]:
        """The finite response set (for sampling.source=uniform)."""
        return [f"y{j}" for j in range(self.cfg.n_responses)]

    def _response(self, completion: str) -> int | None:
        text = completion.strip()
        if (
            not text.startswith("y")
            or not text[1:].isdigit()
            or int(text[1:]) >= self.cfg.n_responses
        ):
            return None
        return int(text[1:])

    def reward(self, prompts, completions, x, **_) -> list[float | None]:
        out = []
        for c, xi in zip(completions, x, strict=True):
            y = self._response(c)
            out.append(None if y is None else self.R[xi, y].item())
        return out

    def is_correct(self, completion: str, row: dict) -> bool | None:
        """The best response under R."""
        y = self._response(completion)
        return None if y is None else y == int(self.R[row["x"]].argmax())

    def answers(self, row: dict) -> tuple[str, str]:
        r = self.R[row["x"]]
        return f"y{int(r.argmax())}", f"y{int(r.argmin())}"

    def tokenizer(self) -> PreTrainedTokenizerFast:
        vocab = {"<pad>": 0, "<eos>": 1}
        for name in [r["prompt"] for r in self._rows] + self.responses():
            vocab[name] = len(vocab)
        tok = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
        tok.pre_tokenizer = pre_tokenizers.Whitespace()
        fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>")
        fast.padding_side = "left"
        return fast

    def build_policy(self):
        """(TablePolicy at pi_ref, tokenizer): the model for ``model.name_or_path=task``."""
        tok = self.tokenizer()
        X, Y = self.cfg.n_prompts, self.cfg.n_responses
        token_row = torch.zeros(len(tok), dtype=torch.long)
        token_row[2 : 2 + X] = torch.arange(X)
        response_ids = torch.arange(2 + X, 2 + X + Y)
        return TablePolicy(self.ref_logits, token_row, response_ids, len(tok)), tok

    def policy_metrics(self, model) -> dict[str, float]:
        p = model.probs()
        tv = 0.5 * (p - self.optimum).abs().sum(-1).mean()
        kl_opt = (p * (p.log() - self.optimum.log())).sum(-1).mean()
        kl_ref = (p * (p.log() - self.ref_probs.log())).sum(-1).mean()
        out = {
            "tv_to_optimum": tv.item(),
            "kl_to_optimum": kl_opt.item(),
            "expected_reward": (p * self.R).sum(-1).mean().item(),
            "kl_to_ref": kl_ref.item(),
        }
        for j in range(
            self.cfg.n_responses
        ):  # the first prompt's table: policy, reference, optimum
            out[f"x0/policy/y{j}"] = p[0, j].item()
            out[f"x0/reference/y{j}"] = self.ref_probs[0, j].item()
            out[f"x0/optimum/y{j}"] = self.optimum[0, j].item()
        return out
