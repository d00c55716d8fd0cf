"""What the loop trains and how: a rollout batch becomes ``epochs x minibatches`` optimiser
steps, the same for every algorithm. An algorithm only supplies ``loss(batch, out, cfg)``;
the learner reads its declared needs (``Algorithm.needs``, ``Algorithm.select``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch.nn.utils import clip_grad_norm_

from algorithms import Algorithm
from bench.accumulate import accumulated_backward, micro_batches, row_tokens
from bench.config import RunConfig
from bench.core.batch import PolicyOutput, RolloutBatch, seq_sum
from bench.core.errors import RunFailed
from bench.core.generation import Generation
from bench.distributed import World, every, full, local, most, my_rows, spread, total
from bench.lora import AdaptersOff, dropout_on
from bench.memory import enable_checkpointing
from bench.precision import compute_precision
from bench.rollout import model_device, token_logps
from bench.sharding import PolicyForward, SamplingCopy, shard


@dataclass
class Counters:
    """Run totals, logged as ``perf/<field>`` at the end of a run."""

    tokens_generated: float = 0.0
    tokens_trained: float = 0.0
    skipped_steps: float = 0.0  # optimiser steps not applied (non-finite loss or gradient)
    empty_minibatches: float = 0.0  # minibatches with no row the loss uses (e.g. DPO, no pair)
    unscorable: float = 0.0  # completions the reward function could not score
    skipped_in_a_row: int = 0  # consecutive skipped steps (not logged)

    def as_metrics(self) -> dict[str, float]:
        totals = dataclasses.asdict(self)
        totals.pop("skipped_in_a_row")
        return {f"perf/{k}": v for k, v in totals.items()}

    def record_step(self, applied: bool, max_in_a_row: int) -> None:
        self.skipped_in_a_row = 0 if applied else self.skipped_in_a_row + 1
        self.skipped_steps += 0 if applied else 1
        if self.skipped_in_a_row >= max_in_a_row:
            raise RunFailed(
                f"{self.skipped_in_a_row} optimiser steps in a row gave a non-finite loss or "
                "gradient (each skipped); the run stops: lower train.lr or "
                "train.max_grad_norm"
            )


def minibatch_indices(group_ids: torch.Tensor, n: int, gen: torch.Generator) -> list[torch.Tensor]:
    """Row indices of n minibatches, each made of whole groups, groups shuffled."""
    groups = torch.unique(group_ids)
    perm = groups[torch.randperm(len(groups), generator=gen)]
    return [torch.nonzero(torch.isin(group_ids, chunk)).squeeze(1) for chunk in perm.chunk(n)]


def forward(model, batch: RolloutBatch, temperature: float, chunk: int = 0) -> PolicyOutput:
    """The training forward of a ``PolicyForward`` (possibly sharded): per-token log-probs
    (with grad), entropy, values."""
    T = batch.mask.shape[1]
    logp, entropy, values = model(
        batch.input_ids, batch.attention_mask, T, temperature, entropy=True, chunk=chunk
    )
    return PolicyOutput(logp=logp, entropy=entropy, values=values)


def with_behaviour(batch: RolloutBatch, out: PolicyOutput) -> RolloutBatch:
    """Fill what the batch lacks from the first forward of an unchanged policy: behaviour
    log-probs (``old_logp``) and the behaviour critic's values."""
    if batch.old_logp is None:
        batch = dataclasses.replace(batch, old_logp=out.logp.detach())
    if batch.values is None and out.values is not None:
        batch = dataclasses.replace(batch, values=out.values.detach())
    return batch


def make_batch(
    gen: Generation,
    rewards: torch.Tensor,
    *,
    model,
    reference,
    algo: Algorithm,
    cfg: RunConfig,
    world: World = World(),
) -> RolloutBatch:
    """Rollouts -> RolloutBatch with what the algorithm declared it needs. ``model`` is the
    ``PolicyForward`` (policy and value head); each rank scores its share of the groups."""
    T, temp, k = cfg.sampling.max_new_tokens, cfg.sampling.temperature, cfg.sampling.k
    chunk = cfg.train.logprob_chunk
    ids, attn = gen.input_ids, gen.attention_mask
    group_ids = torch.arange(rewards.shape[0] // k).repeat_interleave(k)
    mine = my_rows(group_ids, world)
    old = gen.behaviour_logp  # off-policy rows: the log-probs they were drawn with
    values = ref = None
    with torch.no_grad(), compute_precision(cfg, reference):
        # With one update per rollout batch the policy has not moved when the loss is taken, so
        # the first forward's log-probs (and values) are the behaviour ones (``with_behaviour``).
        # Off-policy rows come with their behaviour log-probs; values are the current critic's.
        if cfg.train.epochs * cfg.train.minibatches > 1:

            def policy_rows(rows):
                logp, _, v = model(ids[rows], attn[rows], T, temp, entropy=False, chunk=chunk)
                return logp, v

            logp, values = spread(policy_rows, len(ids), mine, world)
            old = logp if old is None else old
        if algo.needs.ref_logp:

            def reference_rows(rows):
                if isinstance(reference, AdaptersOff):  # LoRA: the policy with adapters off
                    return (reference.logps(ids[rows], attn[rows], T, temp, chunk),)
                return (token_logps(reference, ids[rows], attn[rows], T, temp, chunk=chunk).logp,)

            (ref,) = spread(reference_rows, len(ids), mine, world)
    return RolloutBatch(
        mask=gen.completion_mask.float(),
        old_logp=old,
        rewards=rewards,
        group_ids=group_ids,
        ref_logp=ref,
        values=values,
        input_ids=ids,
        attention_mask=attn,
    ).to(model_device(reference))


def build_optimiser(params: list, cfg: RunConfig):
    """(optimiser, lr schedule) over ``params``: warm-up, then constant or linear decay."""
    t = cfg.train
    if t.optimizer == "sgd":
        opt = torch.optim.SGD(params, lr=t.lr, weight_decay=t.weight_decay)
    else:
        fused = all(p.device.type in ("cpu", "cuda") for p in params)  # one kernel for all params
        opt = torch.optim.AdamW(params, lr=t.lr, weight_decay=t.weight_decay, fused=fused)
    warm = max(t.warmup_steps, 0)
    total = max(t.steps * t.epochs * t.minibatches, 1)

    def factor(step: int) -> float:  # step = optimiser steps taken so far
        if warm and step < warm:
            return (step + 1) / warm
        if t.schedule == "linear":
            return max(0.0, 1 - (step - warm) / max(total - warm, 1))
        return 1.0

    return opt, torch.optim.lr_scheduler.LambdaLR(opt, factor)


@dataclass
class Learner:
    """The trained parts of a run and how they are stepped. ``model`` is the policy with its
    value head (``PolicyForward``), wrapped for ``train.sharding`` (bench/sharding.py)."""

    policy: torch.nn.Module
    reference: torch.nn.Module
    value_head: torch.nn.Module | None
    model: torch.nn.Module
    opt: torch.optim.Optimizer
    sched: torch.optim.lr_scheduler.LRScheduler
    algo: Algorithm
    algo_cfg: Any
    cfg: RunConfig
    mb_gen: torch.Generator  # draws the minibatch split of each rollout batch
    world: World = World()
    copy: SamplingCopy | None = None  # the HF sampler's full policy under fsdp
    undo: StepUndo = field(default_factory=lambda: StepUndo())

    @classmethod
    def build(cls, policy, reference, algo: Algorithm, cfg: RunConfig, world: World = World()):
        """The learner of ``policy``: value head, sharding, optimiser (checkpointing applied
        after the sampling copy is taken: the copy decodes with its KV cache)."""
        value_head = None
        if algo.needs.values:  # a linear value head on the policy's last hidden state
            dtype = next(p for p in policy.parameters() if p.requires_grad).dtype  # master
            value_head = torch.nn.Linear(policy.config.hidden_size, 1)
            value_head = value_head.to(model_device(policy), dtype=dtype)
            torch.nn.init.zeros_(value_head.weight)
            torch.nn.init.zeros_(value_head.bias)
        fsdp = world.sharded and cfg.train.sharding == "fsdp"
        # the HF sampler decodes with a full copy; vLLM engines take the gathered parameters
        sampling_copy = SamplingCopy(policy) if fsdp and cfg.sampling.engine == "hf" else None
        if cfg.model.gradient_checkpointing:
            enable_checkpointing(policy)
        bf16 = cfg.train.precision == "bf16-mixed"
        model = shard(PolicyForward(policy, value_head), cfg.train.sharding, bf16, world)
        opt, sched = build_optimiser([p for p in model.parameters() if p.requires_grad], cfg)
        mb_gen = torch.Generator().manual_seed(cfg.seed)
        if isinstance(reference, AdaptersOff):
            reference.bind(model, sampling_copy.model if sampling_copy else policy)
        return cls(
            policy,
            reference,
            value_head,
            model,
            opt,
            sched,
            algo,
            cfg.algo_config(),
            cfg,
            mb_gen,
            world,
            sampling_copy,
        )

    @property
    def sampling_policy(self) -> torch.nn.Module:
        """What the sampler and the evals decode with: the policy, or its full copy under fsdp."""
        return self.policy if self.copy is None else self.copy.model

    def parameters(self) -> list[torch.Tensor]:
        return [p for group in self.opt.param_groups for p in group["params"]]

    def make_batch(self, gen: Generation, rewards: torch.Tensor) -> RolloutBatch:
        return make_batch(
            gen,
            rewards,
            model=self.model,
            reference=self.reference,
            algo=self.algo,
            cfg=self.cfg,
            world=self.world,
        )

    def update(self, batch: RolloutBatch, counters: Counters) -> dict[str, float]:
        """epochs x minibatches optimiser steps on one rollout batch; mean step metrics."""
        collected: dict[str, list[float]] = {}
        for _ in range(self.cfg.train.epochs):
            for idx in minibatch_indices(batch.group_ids, self.cfg.train.minibatches, self.mb_gen):
                mb = batch.select(idx)
                if self.algo.select is not None:  # e.g. DPO uses only the best and worst rows
                    mb = mb.select(self.algo.select(mb, self.algo_cfg))
                if mb.size == 0:
                    counters.empty_minibatches += 1
                    continue
                for key, v in self.step(mb, counters).items():
                    collected.setdefault(key, []).append(v)
        return {key: float(np.mean(v)) for key, v in collected.items()}

    def forward(self, mb: RolloutBatch) -> PolicyOutput:
        drop = dropout_on(self.model) if self.cfg.model.lora.dropout else contextlib.nullcontext()
        with compute_precision(self.cfg, self.reference), drop:
            temperature, chunk = self.cfg.sampling.temperature, self.cfg.train.logprob_chunk
            return forward(self.model, mb, temperature, chunk)

    def loss(self, mb: RolloutBatch, out: PolicyOutput):
        """(loss, metrics, the batch the loss saw): the algorithm's loss in fp32."""
        mb = with_behaviour(mb, out)
        loss, metrics = self.algo.loss(mb, out, self.algo_cfg)
        return loss, metrics, mb

    def backward(self, mb: RolloutBatch, parts: list[torch.Tensor] | None = None):
        """Gradient of the minibatch loss into ``.grad``, in micro-batches of at most
        ``train.micro_batch_tokens`` tokens (or the given row ``parts``); exactly the one-pass
        gradient (bench/accumulate.py). Sharded, each rank takes its share of the groups and
        the ranks' gradients are summed. Returns (loss, metrics, output, batch used)."""
        budget = self.cfg.train.micro_batch_tokens
        if self.world.sharded:
            mine = my_rows(mb.group_ids, self.world)
            parts = [mine[p] for p in micro_batches(row_tokens(mb.select(mine)), budget)]
            parts = parts if len(mine) else []
            parts += [None] * (most(len(parts), self.world) - len(parts))  # same count everywhere
            combine = functools.partial(total, world=self.world)
            loss, metrics, out = accumulated_backward(mb, parts, self.forward, self.loss, combine)
            return loss, metrics, out, with_behaviour(mb, out)
        parts = parts or micro_batches(row_tokens(mb), budget)
        if len(parts) == 1:
            out = self.forward(mb)
            loss, metrics, mb = self.loss(mb, out)
            if torch.isfinite(loss):  # a non-finite loss skips the step: no backward
                loss.backward()
            return loss.detach(), metrics, out, mb
        loss, metrics, out = accumulated_backward(mb, parts, self.forward, self.loss)
        return loss, metrics, out, with_behaviour(mb, out)

    def step(self, mb: RolloutBatch, counters: Counters) -> dict[str, float]:
        """One optimiser step on a minibatch of whole groups. The gradient norm that clipping
        computes anyway (over all ranks' shards) is the guard: a step whose loss or gradient is
        non-finite is skipped before the optimiser or the schedule moves (no copy of anything),
        counted, and ``train.max_skipped_steps`` in a row stop the run (RunFailed). A finite
        step that still leaves non-finite weights stops the run, or with
        ``train.undo_nonfinite`` is undone and counted like a skip."""
        self.opt.zero_grad(set_to_none=True)
        loss, metrics, out, mb = self.backward(mb)
        gn = full(clip_grad_norm_(self.parameters(), self.cfg.train.max_grad_norm)).item()
        # every rank takes the same decision, also if only one rank saw a non-finite value
        applied = every(math.isfinite(gn) and math.isfinite(loss.item()), self.world)
        if applied:
            undo = self.undo if self.cfg.train.undo_nonfinite else None
            if undo is not None:
                undo.save(self.parameters(), self.opt, self.sched)
            self.opt.step()
            self.sched.step()
            applied = weights_finite(self.parameters(), self.world)
            if not applied and undo is None:
                lr = self.cfg.train.lr
                raise RunFailed(
                    f"an optimiser step with a finite gradient made the weights non-finite at "
                    f"train.lr={lr:g}: lower it, and resume from the last checkpoint "
                    "(or set train.undo_nonfinite=true to undo such steps)"
                )
            if not applied:
                undo.restore()
        self.opt.zero_grad(set_to_none=True)
        if self.copy is not None:
            self.copy.refresh(self.policy)
        counters.record_step(applied, self.cfg.train.max_skipped_steps)
        counters.tokens_trained += mb.mask.sum().item()
        return metrics | step_metrics(mb, out, loss.item(), gn)


def weights_finite(params: list[torch.Tensor], world: World = World()) -> bool:
    """One reduction over all parameters (a sum is non-finite iff an element is), over all
    ranks' shards."""
    norms = torch._foreach_norm([local(p).detach() for p in params], 1)
    return every(bool(torch.isfinite(torch.stack(norms).sum())), world)


class StepUndo:
    """What an optimiser step changes (parameters, optimiser state tensors, the schedule), saved
    before each step into buffers kept across steps (one foreach copy), so that a step whose
    weights come out non-finite can be taken back. Costs a copy of the weights and optimiser
    state (counted by ``bench plan``)."""

    def __init__(self):
        self.buffers: list[torch.Tensor] | None = None

    def _tensors(self, params, opt) -> list[torch.Tensor]:
        state = [t for p in params for t in opt.state.get(p, {}).values() if torch.is_tensor(t)]
        return [local(t).detach() for t in [*params, *state]]

    def save(self, params, opt, sched) -> None:
        self.params, self.opt, self.sched = params, opt, sched
        self.fresh = [p for p in params if p not in opt.state]  # no state yet: the first step
        tensors = self._tensors(params, opt)
        shapes = [t.shape for t in tensors]
        if self.buffers is None or [b.shape for b in self.buffers] != shapes:
            self.buffers = [t.clone() for t in tensors]
        else:
            torch._foreach_copy_(self.buffers, tensors)
        self.sched_state = sched.state_dict()

    def restore(self) -> None:
        for p in self.fresh:
            self.opt.state.pop(p, None)
        tensors = self._tensors(self.params, self.opt)
        with torch.no_grad():
            torch._foreach_copy_(tensors, self.buffers[: len(tensors)])
        self.sched.load_state_dict(self.sched_state)


def step_metrics(mb: RolloutBatch, out: PolicyOutput, loss: float, grad_norm: float) -> dict:
    """What every algorithm logs per optimiser step, besides its own metrics."""
    m = {
        "train/loss": loss,
        "train/grad_norm": grad_norm,
        "train/entropy": (out.entropy * mb.mask).sum().item() / max(mb.mask.sum().item(), 1),
    }
    if mb.ref_logp is not None:  # sequence KL(behaviour || reference), k1 estimate
        m["train/kl_ref"] = seq_sum(mb.old_logp - mb.ref_logp, mb.mask).mean().item()
    return m
