"""The README's "add an algorithm" and "add a task" examples, run as the files they claim to be."""

import importlib.util
import re
import sys
from pathlib import Path

import pytest
import torch

from algorithms import ALGORITHMS
from bench.config import load_config
from bench.core.batch import PolicyOutput, RolloutBatch
from bench.loop import train
from tasks import TASKS

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()


def example(heading: str) -> str:
    """The first python block after a README heading."""
    section = README.split(f"## {heading}", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


@pytest.fixture
def plugin(tmp_path):
    """Import README code as ``package.name`` (as if it were package/name.py); unregister after."""
    added = []

    def load(code: str, package: str, name: str):
        path = tmp_path / f"{name}.py"
        path.write_text(code)
        spec = importlib.util.spec_from_file_location(f"{package}.{name}", path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)
        added.append((package, name))
        return module

    yield load
    for package, name in added:
        sys.modules.pop(f"{package}.{name}", None)
        (ALGORITHMS if package == "algorithms" else TASKS)._items.pop(name, None)


def test_the_algorithm_example_is_the_real_file_and_computes_rloo_by_hand():
    root = Path(__file__).resolve().parent.parent
    assert example("Add an algorithm: one file") == (root / "algorithms" / "rloo.py").read_text()
    algo = ALGORITHMS.get("rloo")
    logp = torch.tensor([[-1.0, -1.0], [-2.0, 0.0], [-0.5, -0.5], [-3.0, -1.0]], requires_grad=True)
    batch = RolloutBatch(
        mask=torch.ones(4, 2),
        old_logp=logp.detach(),
        ref_logp=logp.detach() - torch.tensor([[0.5], [0.0], [0.0], [0.25]]),
        rewards=torch.tensor([1.0, 0.0, 0.0, 2.0]),
        group_ids=torch.tensor([0, 0, 1, 1]),
    )
    loss, _ = algo.loss(batch, PolicyOutput(logp=logp), algo.config(beta=0.2))
    # KL in the reward: 0.2 * sum_t (old - ref) = (0.2, 0, 0, 0.1) -> rewards (0.8, 0, 0, 1.9);
    # k=2: leave-one-out advantage = R_i - R_other = (0.8, -0.8, -1.9, 1.9); on-policy the
    # sequence ratio is 1 (gradient: -A_i * grad of the sequence log-prob), so the loss is -mean A
    assert loss.item() == pytest.approx(0.0)
    (g,) = torch.autograd.grad(loss, logp)
    expected = -torch.tensor([0.8, -0.8, -1.9, 1.9])[:, None].expand(4, 2) / 4
    assert torch.allclose(g, expected)


def test_the_task_example_trains_two_steps_through_the_loop(plugin, tracking_uri):
    plugin(example("Add a task: one file"), "tasks", "parity")
    task = TASKS.get("parity")(TASKS.get("parity").Config())
    row = task.eval_rows()[0]
    right, wrong = task.answers(row)
    assert task.reward([row["prompt"]] * 2, [right, wrong], answer=[row["answer"]] * 2) == [
        1.0,
        0.0,
    ]
    overrides = ["task=parity", "train.steps=2", "tasks.parity.bits=3", "model.warmstart_steps=5"]
    final = train(load_config("smoke", overrides), tracking_uri=tracking_uri)
    assert 0 <= final["eval/parity/accuracy"] <= 1 and final["perf/skipped_steps"] == 0


def test_the_readme_is_a_front_door_and_links_resolve():
    assert len(README.splitlines()) <= 200
    root = Path(__file__).resolve().parent.parent
    links = re.findall(r"\]\((docs/[^)#]+)\)", README)
    assert links and all((root / link).exists() for link in links)
