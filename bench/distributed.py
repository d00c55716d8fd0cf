"""Processes of a sharded run (torchrun): who this process is, how a step's work is split
between the processes, and how their results are put back together.

The split is by whole groups, contiguous: of a call's n prompts (or a minibatch's n groups),
rank r takes [n*r/W, n*(r+1)/W). Everything a rank computes for its rows (completions,
log-probs, values) is gathered so that every rank holds the whole step's batch, and every
statistic and normaliser of a loss is taken over the whole minibatch (docs/distributed.md).
"""

from __future__ import annotations

import atexit
import contextlib
import os
import uuid
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
from torch import Tensor

from bench.core.errors import BenchError
from bench.core.generation import Generation
from bench.core.paths import results_dir


@dataclass(frozen=True)
class World:
    """This process's rank among ``size`` processes (one process: rank 0 of 1)."""

    rank: int = 0
    size: int = 1
    launch: Path | None = None  # folder where the ranks leave their run id and errors

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def sharded(self) -> bool:
        return self.size > 1

    def share(self, n: int) -> range:
        """This rank's contiguous share of n items (groups or prompts)."""
        return range(n * self.rank // self.size, n * (self.rank + 1) // self.size)


def launched() -> bool:
    """Started by torchrun (or ``bench run --nproc``) with more than one process."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init(timeout_s: float) -> World:
    """Join the process group torchrun set up (gloo on CPU, nccl on CUDA); one process: no-op."""
    if not launched():
        return World()
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
        dist.init_process_group(backend, timeout=timedelta(seconds=timeout_s))
    rank, size = dist.get_rank(), dist.get_world_size()
    if rank:
        os.environ["BENCH_PROGRESS"] = "0"  # one progress bar: rank 0's
    folder = [
        os.environ.get("BENCH_LAUNCH_DIR") or str(results_dir() / "launches" / uuid.uuid4().hex)
    ]
    dist.broadcast_object_list(folder, src=0)
    launch = Path(folder[0])
    launch.mkdir(parents=True, exist_ok=True)
    os.environ["BENCH_LAUNCH_DIR"] = str(launch)  # where this rank's error goes (boundary)
    atexit.register(shut_down)
    return World(rank, size, launch)


@contextlib.contextmanager
def main_first(world: World):
    """Rank 0 runs the block first (e.g. builds a cache), the other ranks after it."""
    if world.sharded and not world.main:
        dist.barrier()
    yield
    if world.sharded and world.main:
        dist.barrier()


def shut_down() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def local(t: torch.Tensor) -> torch.Tensor:
    """This rank's part of a parameter or state tensor (the tensor itself when not sharded)."""
    return t.to_local() if hasattr(t, "to_local") else t


def full(t: torch.Tensor) -> torch.Tensor:
    """The whole tensor (gathered from the shards when sharded)."""
    return t.full_tensor() if hasattr(t, "full_tensor") else t


def barrier(world: World) -> None:
    if world.sharded:
        dist.barrier()


def gather(obj, world: World) -> list:
    """Every rank's ``obj``, in rank order, on every rank."""
    if not world.sharded:
        return [obj]
    out = [None] * world.size
    dist.all_gather_object(out, obj)
    return out


def total(t: Tensor, world: World, op=None) -> Tensor:
    """``t`` summed (or reduced by ``op``) over the ranks, in place."""
    if world.sharded:
        dist.all_reduce(t, op=op or dist.ReduceOp.SUM)
    return t


def every(flag: bool, world: World) -> bool:
    """True on every rank iff ``flag`` is True on every rank (one scalar MIN all-reduce)."""
    if not world.sharded:
        return flag
    return bool(total(torch.tensor([float(flag)]), world, dist.ReduceOp.MIN))


def most(n: int, world: World) -> int:
    """The largest ``n`` of any rank."""
    return int(total(torch.tensor([n]), world, dist.ReduceOp.MAX)) if world.sharded else n


def my_rows(group_ids: Tensor, world: World) -> Tensor:
    """Indices of the rows of this rank's share of the groups in ``group_ids``."""
    groups = torch.unique(group_ids)
    share = world.share(len(groups))
    mine = groups[share.start : share.stop]
    return torch.nonzero(torch.isin(group_ids, mine)).squeeze(1)


def spread(fn, n_rows: int, mine: Tensor, world: World) -> list[Tensor | None]:
    """``fn(rows) -> tensors [len(rows), ...]`` on this rank's rows, put together for all rows
    on every rank (a sum of zero-filled parts: exact). A rank without rows still calls ``fn``
    (on row 0, result dropped): sharded modules gather their parameters in every forward."""
    outs = fn(mine if len(mine) else torch.zeros(1, dtype=torch.long))
    full = []
    for out in outs:
        if out is None:
            full.append(None)
            continue
        whole = out.new_zeros((n_rows, *out.shape[1:]))
        if len(mine):
            whole[mine.to(whole.device)] = out
        full.append(total(whole, world))
    return full


class ShardedSampler:
    """A sampler whose calls are split over the ranks by prompt: each rank decodes its share
    with keyed draws (bench/rollout.py), so a prompt's completions depend on its key only, and
    every rank gets the whole call's generation back."""

    def __init__(self, inner, world: World):
        self.inner, self.world = inner, world
        self.batch_size = getattr(inner, "batch_size", 512)

    def weights_changed(self) -> None:
        self.inner.weights_changed()

    def generate(self, model, tokenizer, prompts, k, max_new_tokens, **options) -> Generation:
        from bench.rollout import _has_kv_cache, prompt_keys

        if not _has_kv_cache(model) and not options.get("greedy"):
            raise BenchError(
                f"sharded sampling needs a transformers model with a KV cache; "
                f"{type(model).__name__} has none: run it in one process"
            )
        keys = prompt_keys(len(prompts))  # one draw of the global generator, on every rank
        if hasattr(self.inner, "sync"):  # an engine with its own weights: pushed on every rank
            self.inner.sync(model, tokenizer)
        share = self.world.share(len(prompts))
        mine = None
        if len(share):
            part = prompts[share.start : share.stop]
            mine = self.inner.generate(
                model,
                tokenizer,
                part,
                k,
                max_new_tokens,
                keys=keys[share.start : share.stop],
                **options,
            )
        parts = [g for g in gather(mine, self.world) if g is not None]
        return join(parts, tokenizer.pad_token_id)


def join(parts: list[Generation], pad_id: int) -> Generation:
    """Generations stacked, prompts left-padded to the widest (as one call would pad them)."""
    width = max(g.prompt_ids.shape[1] for g in parts)
    padded = []
    for g in parts:
        extra = width - g.prompt_ids.shape[1]
        if extra:
            ids = torch.nn.functional.pad(g.prompt_ids, (extra, 0), value=pad_id)
            mask = torch.nn.functional.pad(g.prompt_mask, (extra, 0), value=0)
            g = Generation(ids, mask, *[getattr(g, f) for f in _REST])
        padded.append(g)
    return Generation.cat(padded)


_REST = (
    "completion_ids",
    "completion_mask",
    "texts",
    "truncated",
    "rewards",
    "behaviour_logp",
)


def record_failure(error: BaseException) -> None:
    """Leave this rank's error where rank 0 and the launcher read it (once: the first error)."""
    folder = os.environ.get("BENCH_LAUNCH_DIR")
    if not folder or not launched():
        return
    path = Path(folder) / f"rank{os.environ.get('RANK', '0')}.error"
    if path.exists():
        return
    line = (str(error).strip().splitlines() or [type(error).__name__])[0][:500]
    path.write_text(f"{type(error).__name__}: {line}\n")


def first_failure(world: World) -> tuple[int, str] | None:
    """(rank, error) of the rank that reported its failure first, if any did."""
    if world.launch is None:
        return None
    files = sorted(world.launch.glob("rank*.error"), key=lambda f: f.stat().st_mtime_ns)
    if not files:
        return None
    rank = int(files[0].name.removeprefix("rank").removesuffix(".error"))
    return rank, files[0].read_text().strip()
