"""Dynamic sampling (``sampling.dynamic``): only groups with a reward spread reach the loss, the
extra draws are counted as compute, ``max_draws`` bounds the work, and a seed gives the same
batches. Sharded and resumed runs: tests/test_distributed.py and tests/test_resume.py."""

import dataclasses

import torch

from bench.config import DynamicSampling, load_config
from bench.core.generation import Generation
from bench.dynamic import Drawn, fill, informative
from bench.loop import train
from bench.tracking import client
from bench.update import Learner
from tests.helpers import histories

K = 2


def fake(rewards: list[float], first_prompt: int) -> Drawn:
    """A draw of len(rewards) / K groups: prompt p's rows carry p as their token."""
    n = len(rewards)
    prompts = [first_prompt + i // K for i in range(n)]
    ids = torch.tensor(prompts)[:, None]
    gen = Generation(
        prompt_ids=ids,
        prompt_mask=torch.ones_like(ids),
        completion_ids=ids.clone(),
        completion_mask=torch.ones_like(ids),
        texts=[str(p) for p in prompts],
        truncated=torch.zeros(n, dtype=torch.bool),
    )
    rows = [{"prompt": str(p)} for p in prompts]
    return Drawn(rows, gen, torch.tensor(rewards), 0, n, groups_drawn=n // K)


def draws(*batches):
    """A draw function handing out ``batches`` in order (prompts numbered on)."""
    it = iter(batches)
    counter = {"next": 0}

    def draw():
        rewards = next(it)
        d = fake(rewards, counter["next"])
        counter["next"] += len(rewards) // K
        return d

    return draw


def test_informative_groups_are_those_with_a_spread():
    assert informative(torch.tensor([1.0, 1, 0, 1, 0, 0, 0.5, 0.5]), 2).tolist() == [1]
    assert informative(torch.tensor([1.0, 0, 0, 1]), 2).tolist() == [0, 1]


def test_off_is_one_draw_as_it_came():
    d = fill(draws([1, 1, 0, 0]), K, DynamicSampling(), 0, print)
    assert d.rewards.tolist() == [1, 1, 0, 0] and d.draws == 1


def test_draws_until_enough_informative_groups_and_keeps_the_first_ones():
    warned = []
    d = fill(
        draws([1, 1, 0, 1], [0, 0, 1, 0], [1, 0, 0, 1]),  # 1, 1, then 2 informative groups
        K,
        DynamicSampling(min_informative_groups=3, max_draws=5),
        0,
        warned.append,
    )
    assert d.draws == 3 and not warned
    assert [r["prompt"] for r in d.rows] == ["1", "1", "3", "3", "4", "4"]
    assert d.rewards.tolist() == [0, 1, 1, 0, 1, 0]  # the third draw's first group only
    assert d.tokens == 12 and d.groups_drawn == 6  # every drawn row counted as compute
    g = d.rewards.view(-1, K)
    assert (g.max(1).values > g.min(1).values).all()


def test_max_draws_bounds_the_work_and_warns_once():
    warned = []
    d = fill(
        draws([1, 1, 0, 1], [0, 0, 0, 0], [1, 0, 1, 0]),
        K,
        DynamicSampling(min_informative_groups=4, max_draws=2),
        0,
        warned.append,
    )
    assert d.draws == 2 and d.groups_drawn == 4 and len(d.rewards) == K
    assert len(warned) == 1 and "1 of 4 informative groups after 2 draws" in warned[0]


def test_no_informative_group_at_all_trains_on_the_last_draw():
    warned = []
    d = fill(draws([1, 1], [0, 0]), K, DynamicSampling(2, 2), 0, warned.append)
    assert [r["prompt"] for r in d.rows] == ["1", "1"] and "its last draw" in warned[0]


MAKE_BATCH = Learner.make_batch


def capture_batches(monkeypatch) -> list:
    """The (completion ids, rewards) of every batch the learner builds from now on."""
    seen = []
    make = MAKE_BATCH

    def spy(self, gen, rewards):
        seen.append((gen.completion_ids.clone(), rewards.clone()))
        return make(self, gen, rewards)

    monkeypatch.setattr(Learner, "make_batch", spy)
    return seen


DYNAMIC = [
    "algorithm=dapo",
    "train.steps=3",
    "sampling.dynamic.min_informative_groups=6",
    "sampling.dynamic.max_draws=3",
    "tracking.experiment=dynamic",
]


def test_only_informative_groups_reach_the_loss_and_a_seed_repeats(monkeypatch, tracking_uri):
    import bench.loop

    cfg = load_config("smoke", DYNAMIC)
    k = cfg.sampling.k
    seen = capture_batches(monkeypatch)
    train(cfg, tracking_uri=tracking_uri)
    tokens = []
    draw_scored = bench.loop.draw_scored

    def counted(run):
        d = draw_scored(run)
        tokens.append(d.tokens)
        return d

    monkeypatch.setattr(bench.loop, "draw_scored", counted)
    again = capture_batches(monkeypatch)
    train(load_config("smoke", [*DYNAMIC, "run_name=again"]), tracking_uri=tracking_uri)
    assert len(seen) == len(again) == 3
    for (ids, rewards), (ids2, rewards2) in zip(seen, again, strict=True):
        g = rewards.view(-1, k)
        assert (g.max(1).values > g.min(1).values).all()  # every group has a spread
        assert torch.equal(ids, ids2) and torch.equal(rewards, rewards2)
    c = client(tracking_uri)
    exp = c.get_experiment_by_name("dynamic").experiment_id
    run = c.search_runs([exp], "attributes.run_name = 'again'")[0]
    h = histories(c, run)
    draws = [v for _, v in h["rollout/draws"]]
    kept = [v for _, v in h["rollout/groups_kept"]]
    assert max(draws) > 1  # the warm-started smoke model solves some groups: more draws needed
    for n, g, (_, (_, r)) in zip(draws, kept, enumerate(seen), strict=True):
        assert g == len(r) // k and (g == 6 or n == 3)  # enough, or max_draws reached
    drawn = sum(v for _, v in h["rollout/groups_drawn"]) * k
    assert drawn > sum(len(r) for _, r in seen)  # dropped groups were generated all the same
    assert len(tokens) == sum(draws)  # every draw, kept or not, counted as compute
    assert run.data.metrics["perf/tokens_generated"] == sum(tokens)


def test_overlong_punishment_by_hand():
    """Budget 10, cache 4: nothing up to 6 tokens, then -1/4 per token to -1 at the budget."""
    from bench.core.rewards import overlong_penalty

    lengths = torch.tensor([1, 6, 7, 8, 9, 10])
    assert overlong_penalty(lengths, 10, 4).tolist() == [0, 0, -0.25, -0.5, -0.75, -1]
    assert overlong_penalty(lengths, 10, 4, scale=0.5).tolist()[-1] == -0.5


def test_the_loop_adds_the_overlong_punishment_to_the_task_reward():
    from types import SimpleNamespace

    from bench.loop import rewards_of

    cfg = load_config("smoke", ["sampling.max_new_tokens=6", "reward.overlong_cache=2"])
    task = SimpleNamespace(reward=lambda prompts, completions, **_: [1.0] * len(completions))
    drawn = fake([0.0] * 4, 0)
    mask = (torch.arange(6)[None] < torch.tensor([[3], [5], [6], [6]])).long()
    gen = dataclasses.replace(drawn.gen, completion_mask=mask)
    rewards, _ = rewards_of(SimpleNamespace(cfg=cfg, task=task), drawn.rows, gen)
    assert rewards.tolist() == [1.0, 0.5, 0.0, 0.0]  # 3 tokens: none; 5: -1/2; 6 (budget): -1
