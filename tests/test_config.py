"""Config: presets, overrides, types, inheritance, and one-line errors that name file and line."""

import pytest

from bench.config import flatten, load_config, preset_names, to_yaml
from bench.core.errors import BenchError


def test_default_preset_and_overrides():
    cfg = load_config(
        "arithmetic", ["train.lr=1e-3", "algorithm=grpo", "algorithms.grpo.eps_high=0.28", "seed=4"]
    )
    assert cfg.train.lr == 1e-3 and cfg.algorithm == "grpo" and cfg.seed == 4
    assert cfg.algo_config().eps_high == 0.28 and cfg.algo_config().beta == 0.04
    assert cfg.name == "arithmetic__grpo__4"
    params = flatten(cfg)
    assert params["algorithm"] == "grpo" and params["algorithm.eps_high"] == 0.28
    assert "algorithm.anchor" not in params  # only the selected algorithm's settings


def test_inherit_merges_sections():
    cfg = load_config("smoke")
    assert cfg.model.hidden_size == 32  # from smoke
    assert cfg.sampling.k == 4 and cfg.algorithms["gvpo"]["beta"] == 0.1  # from arithmetic


def test_resolved_yaml_round_trips(tmp_path):
    cfg = load_config("arithmetic", ["algorithm=dr_grpo"])
    path = tmp_path / "resolved.yaml"
    path.write_text(to_yaml(cfg))
    again = load_config(str(path))
    assert again.algo_config() == cfg.algo_config() and again.train == cfg.train


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["train.lrr=1"], "unknown config key 'train.lrr' in 'train' (did you mean 'lr'?)"),
        (["algorithm=grpoo"], "unknown algorithm 'grpoo' (did you mean 'grpo'?)"),
        (["task=arithmatic"], "unknown task 'arithmatic' (did you mean 'arithmetic'?)"),
        (["train.steps=many"], "'train.steps' must be an integer"),
        (["algorithms.gvpo.anchor=ref"], "(did you mean 'reference'?)"),
        (["algorithms.gvpo.betta=0.2"], "unknown config key 'algorithms.gvpo.betta'"),
        (["tasks.arithmetic.digit=2"], "(did you mean 'digits'?)"),
        (["compare.algorithms=gvpo,ppoo"], "unknown algorithm 'ppoo'"),
        (["nonsense"], "must look like key=value"),
    ],
)
def test_bad_overrides_name_the_key_and_closest_choice(overrides, expected):
    with pytest.raises(BenchError) as e:
        load_config("arithmetic", overrides)
    assert expected in str(e.value)
    assert f"override '{overrides[0]}'" in str(e.value) or "key=value" in str(e.value)
    assert "\n" not in str(e.value)


def test_bad_key_in_file_names_file_and_line(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("inherit: arithmetic\ntrain:\n  steps: 3\n  lr_max: 0.1\n")
    with pytest.raises(BenchError, match=r"mine\.yaml:4: unknown config key 'train\.lr_max'"):
        load_config(str(path))


def test_invalid_yaml_names_line(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("train:\n  steps: [1, 2\n")
    with pytest.raises(BenchError, match=r"broken\.yaml:\d+: invalid YAML"):
        load_config(str(path))


def test_unknown_preset_suggests():
    with pytest.raises(
        BenchError, match=r"unknown preset 'arithmetik' \(did you mean 'arithmetic'\?\)"
    ):
        load_config("arithmetik")
    assert "arithmetic" in preset_names()


def test_offline_source_needs_pairs():
    with pytest.raises(
        BenchError, match="sampling.source=dataset gives preference pairs: set sampling.k=2"
    ):
        load_config("arithmetic", ["sampling.source=dataset"])
    cfg = load_config("offline_dpo")
    assert (
        cfg.sampling.k == 2
        and cfg.name == "arithmetic__dpo[dataset]__0"
        and cfg.label == "dpo[dataset]"
    )


def test_the_docs_list_every_validation_rule():
    from pathlib import Path

    from bench.config import validation_rules

    docs = (Path(__file__).resolve().parent.parent / "docs" / "errors.md").read_text()
    rules = validation_rules()
    assert len(rules) > 40
    missing = [f"| `{k}` | {r} |" for k, r in rules if f"| `{k}` | {r} |" not in docs]
    assert missing == []
