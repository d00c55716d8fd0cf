"""Where each group's k completions come from: ``sampling.source`` and ``sampling.replay_ratio``.

- policy: the current policy (on-policy; behaviour log-probs = the policy's, recomputed).
- reference: the frozen reference policy.
- mixture: per group, round(mixture * k) completions from the reference, the rest from the
  policy (a stratified mixture: each completion's behaviour is the model that drew it).
- uniform: uniformly from the task's finite response set (the bandit); the behaviour log-prob
  -log M of a whole response sits on its first token.
- replay_ratio: the share of each group taken from earlier completions of the same prompt, with
  the behaviour log-probs they were drawn with.
Off-policy rows carry their true behaviour log-probs in ``Generation.behaviour_logp``, which the
loop uses as ``old_logp`` (GRPO and PPO importance ratios, GVPO anchor=old).
- dataset (``PreferencePairs``): a task's offline preference pairs; nothing is sampled.
Both implement ``bench.core.Source``.
"""

from __future__ import annotations

import math
import random

import torch

from bench.config import RunConfig
from bench.core.errors import BenchError
from bench.core.generation import Generation, prompt_tensors, tokenize_completions
from bench.lora import sampling_model
from bench.rollout import token_logps


class Rollouts:
    """Groups drawn from the policy, the reference, a mixture, uniformly, or replayed."""

    def __init__(
        self, cfg: RunConfig, task, sampler, reference, seed: int, *, buffer_size: int = 64
    ):
        self.cfg, self.task, self.sampler, self.reference = cfg, task, sampler, reference
        self.rng = random.Random(seed)
        self.buffer: dict[str, list[Generation]] = {}  # prompt -> earlier single-row generations
        self.buffer_size = buffer_size
        self.replay_frac = 0.0  # share of the last batch that was replayed (logged)
        if cfg.sampling.source == "uniform" and task.responses() is None:
            raise BenchError(
                f"sampling.source=uniform needs a finite response set; task '{task.name}' has none"
            )

    def state_dict(self) -> dict:
        return {"rng": self.rng.getstate(), "buffer": self.buffer, "replay_frac": self.replay_frac}

    def load_state_dict(self, state: dict) -> None:
        self.rng.setstate(state["rng"])
        self.buffer, self.replay_frac = state["buffer"], state["replay_frac"]

    @property
    def on_policy(self) -> bool:
        return self.cfg.sampling.source == "policy" and self.cfg.sampling.replay_ratio == 0

    def draw(self, policy, tokenizer, prompts: list[str]) -> Generation:
        """k rows per prompt, grouped by prompt in order (rows i*k..i*k+k-1 belong to prompts[i])."""
        s = self.cfg.sampling
        k, T = s.k, s.max_new_tokens
        if self.on_policy:
            return self.sampler.generate(
                policy, tokenizer, prompts, k, T, temperature=s.temperature, top_p=s.top_p
            )
        # the same number of replayed rows in every group: as many as the least-seen prompt allows
        n_old = min([round(s.replay_ratio * k)] + [len(self.buffer.get(p, [])) for p in prompts])
        self.replay_frac = n_old / k
        n_new = k - n_old
        n_ref = {"reference": n_new, "mixture": round(s.mixture * n_new)}.get(s.source, 0)
        parts = []  # each [len(prompts) * n, ...], grouped by prompt
        if n_ref:
            parts.append(self._sample(self.reference, tokenizer, prompts, n_ref))
        if s.source == "uniform":
            parts.append(self._uniform(tokenizer, prompts, n_new))
        elif n_new - n_ref:
            parts.append(self._sample(policy, tokenizer, prompts, n_new - n_ref))
        replay = (
            self._replay(tokenizer, prompts, n_old) if n_old else None
        )  # before storing today's
        for part in parts:  # remember fresh rows for later replay
            n = len(part.texts) // len(prompts)
            for i, p in enumerate(prompts):
                rows = [part.rows(torch.tensor([i * n + j])) for j in range(n)]
                self.buffer[p] = (self.buffer.get(p, []) + rows)[-self.buffer_size :]
        if replay is not None:
            parts.append(replay)
        merged = Generation.cat(parts)
        counts = [len(p.texts) // len(prompts) for p in parts]
        order = []  # regroup: prompt i takes its rows from every part
        for i in range(len(prompts)):
            start = 0
            for n in counts:
                order += range(start + i * n, start + (i + 1) * n)
                start += n * len(prompts)
        return merged.rows(torch.tensor(order))

    def _sample(self, policy_or_reference, tokenizer, prompts, n) -> Generation:
        s = self.cfg.sampling
        with sampling_model(policy_or_reference) as model, torch.no_grad():
            gen = self.sampler.generate(
                model,
                tokenizer,
                prompts,
                n,
                s.max_new_tokens,
                temperature=s.temperature,
                top_p=s.top_p,
            )
            logp = token_logps(
                model,
                gen.input_ids,
                gen.attention_mask,
                s.max_new_tokens,
                s.temperature,
                chunk=self.cfg.train.logprob_chunk,
            ).logp
        return gen.with_behaviour(logp.cpu())

    def _uniform(self, tokenizer, prompts, n) -> Generation:
        responses = self.task.responses()
        texts = [self.rng.choice(responses) for _ in range(len(prompts) * n)]
        ids, mask, truncated = tokenize_completions(
            tokenizer, texts, self.cfg.sampling.max_new_tokens
        )
        prompt_ids, prompt_mask = prompt_tensors(tokenizer, prompts, n)
        behaviour = torch.zeros(ids.shape, dtype=torch.float64)
        behaviour[:, 0] = -math.log(len(responses))
        texts = tokenizer.batch_decode(ids, skip_special_tokens=True)
        return Generation(
            prompt_ids, prompt_mask, ids, mask, texts, truncated, behaviour_logp=behaviour
        )

    def _replay(self, tokenizer, prompts, n) -> Generation:
        picked = [row for p in prompts for row in self.rng.sample(self.buffer[p], n)]
        prompt_ids, prompt_mask = prompt_tensors(tokenizer, prompts, n)  # today's prompt padding
        return Generation(
            prompt_ids,
            prompt_mask,
            torch.cat([r.completion_ids for r in picked]),
            torch.cat([r.completion_mask for r in picked]),
            [r.texts[0] for r in picked],
            torch.cat([r.truncated for r in picked]),
            behaviour_logp=torch.cat([r.behaviour_logp for r in picked]),
        )


class PreferencePairs:
    """Offline source: each prompt's completions are its data set pair, chosen then rejected,
    with rewards 1 and 0 (a group of k=2). Used for offline DPO; nothing is sampled."""

    replay_frac = 0.0

    def __init__(self, rows: list[dict], max_new_tokens: int):
        self.pairs = {r["prompt"]: (r["chosen"], r["rejected"]) for r in rows}
        self.max_new_tokens = max_new_tokens

    def state_dict(self) -> dict:
        return {}  # nothing drawn at random, nothing remembered

    def load_state_dict(self, state: dict) -> None:
        pass

    def draw(self, policy, tokenizer, prompts: list[str]) -> Generation:
        texts = [t for p in prompts for t in self.pairs[p]]
        prompt_ids, prompt_mask = prompt_tensors(tokenizer, prompts, 2)
        ids, mask, truncated = tokenize_completions(tokenizer, texts, self.max_new_tokens)
        rewards = torch.tensor([1.0, 0.0] * len(prompts))
        return Generation(prompt_ids, prompt_mask, ids, mask, texts, truncated, rewards=rewards)
