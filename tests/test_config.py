"""Run configuration: recipes, precedence (defaults < recipe < YAML < flags) and validation."""

from __future__ import annotations

from pathlib import Path

import pytest

from fewshot.config import RECIPES, RunConfig, load_yaml, resolve
from fewshot.learners import MahalanobisProtoNet
from fewshot.runs import build_learner


def write_yaml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "run.yaml"
    path.write_text(text)
    return path


def test_maml_omniglot_recipe():
    cfg = resolve({}, {"algo": "maml", "dataset": "omniglot"})
    assert (cfg.inner_lr, cfg.inner_steps, cfg.meta_batch) == (0.4, 1, 32)
    assert cfg.eval_inner_steps == 3 and cfg.test_inner_steps == 3
    assert (cfg.ways, cfg.shots, cfg.queries) == (5, 1, 15)
    assert cfg.net == "conv4-strided" and cfg.lr == 0.001


def test_protonet_and_sinusoid_recipes():
    proto = resolve({}, {})                                   # the default algo and dataset
    assert (proto.algo, proto.dataset) == ("protonet", "omniglot")
    assert proto.train_ways == 60 and proto.train_queries == 5 and proto.net == "conv4-pool"
    sin = resolve({}, {"algo": "maml", "dataset": "sinusoid"})
    assert not sin.applies("split") and sin.net == "mlp" and not sin.applies("norm")   # no splits; the MLP has no norm
    with pytest.raises(AttributeError, match="split does not apply to maml on sinusoid"):
        sin.split
    assert (sin.shots, sin.inner_lr, sin.meta_batch, sin.test_inner_steps) == (10, 0.01, 25, 10)
    reptile = resolve({}, {"algo": "reptile", "dataset": "sinusoid"})
    assert (reptile.inner_steps, reptile.inner_lr, reptile.meta_batch) == (5, 0.02, 5)


def test_recipes_are_valid_and_not_shared_mutable_state():
    for (algo, dataset), recipe in RECIPES.items():
        cfg = resolve({}, {"algo": algo, "dataset": dataset})
        own_nets = cfg.learner_spec.nets
        for key, value in recipe.items():
            if key == "net" and own_nets is not None:     # a learner with its own encoder, or none (the forest)
                assert cfg.net == (own_nets[0] if own_nets else None), (algo, dataset)
            elif cfg.applies(key):
                assert getattr(cfg, key) == value, (algo, dataset, key)
            else:                                         # a shared recipe's setting for other learners: dropped
                assert key not in cfg.flat(), (algo, dataset, key)
    before = dict(RECIPES[("maml", "omniglot")])
    resolve({}, {"algo": "maml", "dataset": "omniglot", "inner_lr": 0.1})
    assert RECIPES[("maml", "omniglot")] == before


def test_precedence_defaults_recipe_file_flags(tmp_path):
    # seed: default 0; inner_lr: default 0.4, recipe 0.01; lr_decay_every: default 2000
    assert RunConfig().seed == 0 and RunConfig(algo="maml").inner_lr == 0.4
    recipe_only = resolve({}, {"algo": "maml", "dataset": "sinusoid"})
    assert recipe_only.inner_lr == 0.01 and recipe_only.seed == 0 and recipe_only.lr_decay_every == 2000

    path = write_yaml(tmp_path, "algo: maml\ndataset: sinusoid\ninner_lr: 0.05\nseed: 3\nlr_decay_every: 4\n"
                                "meta_batch: 7\n")
    from_file = load_yaml(path)
    cfg = resolve(from_file, {})
    assert (cfg.inner_lr, cfg.seed, cfg.lr_decay_every, cfg.meta_batch) == (0.05, 3, 4, 7)
    assert cfg.shots == 10                                    # recipe value the file leaves alone

    cfg = resolve(from_file, {"inner_lr": 0.2, "seed": None, "meta_batch": 2})
    assert cfg.inner_lr == 0.2 and cfg.meta_batch == 2        # flags beat the file
    assert cfg.seed == 3                                      # an absent flag (None) does not
    assert cfg.lr_decay_every == 4
    # an option of another domain given in the file is refused, not silently kept
    with pytest.raises(ValueError, match="^holdout_val does not apply to maml on sinusoid with net mlp; drop it$"):
        resolve({**from_file, "holdout_val": 4}, {})


def test_flag_algo_picks_the_recipe_over_the_file_algo(tmp_path):
    path = write_yaml(tmp_path, "algo: maml\ndataset: sinusoid\n")
    cfg = resolve(load_yaml(path), {"algo": "reptile"})
    assert cfg.algo == "reptile" and cfg.inner_steps == 5 and cfg.meta_batch == 5


def test_unknown_yaml_key_names_the_key(tmp_path):
    path = write_yaml(tmp_path, "algo: maml\ninner_lrr: 0.1\n")
    with pytest.raises(ValueError, match="inner_lrr"):
        load_yaml(path)


@pytest.mark.parametrize("line, key", [("ways: five", "ways"), ("ways: 5.5", "ways"), ("ways: true", "ways"),
                                       ("lr: fast", "lr"), ("vectorize: 3", "vectorize"),
                                       ("val_alphabets: Greek", "val_alphabets"), ("algo: 3", "algo"),
                                       ("shots:", "shots")])
def test_wrong_type_names_the_key(tmp_path, line, key):
    path = write_yaml(tmp_path, line + "\n")
    with pytest.raises(ValueError, match=f"'{key}'"):
        load_yaml(path)


def test_acceptable_yaml_types(tmp_path):
    path = write_yaml(tmp_path, "lr: 1\ntime_limit: 30\nrotations: null\ntrain_ways: null\n"
                                "val_alphabets: [Greek]\ntest_alphabets: [Latin]\n")
    values = load_yaml(path)
    cfg = resolve(values, {})
    assert cfg.lr == 1 and cfg.time_limit == 30 and cfg.rotations is None and cfg.train_ways is None
    assert cfg.val_alphabets == ["Greek"]


def test_bad_yaml_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.yaml"):
        load_yaml(tmp_path / "nope.yaml")
    with pytest.raises(ValueError, match="mapping"):
        load_yaml(write_yaml(tmp_path, "- a\n- b\n"))
    with pytest.raises(ValueError, match="YAML"):
        load_yaml(write_yaml(tmp_path, "ways: [1\n"))
    assert load_yaml(write_yaml(tmp_path, "")) == {}


@pytest.mark.parametrize("flags, pattern", [
    ({"lr": 0.0}, "lr"), ({"lr": -1e-3}, "lr"), ({"inner_lr": 0.0}, "inner_lr"), ({"inner_lr": -0.4}, "inner_lr"),
    ({"lr": float("nan")}, "lr"), ({"steps": 0}, "steps"), ({"steps": -5}, "steps"),
    ({"inner_steps": -1}, "inner.steps"), ({"ways": 0}, "ways"), ({"shots": 0}, "shots"),
    ({"meta_batch": 0}, "meta_batch"), ({"train_ways": 0}, "train_ways"), ({"time_limit": 0.0}, "time_limit"),
    ({"image_size": 0}, "image_size"), ({"val_every": 0}, "val_every"),
])
def test_impossible_values_are_refused(flags, pattern):
    with pytest.raises(ValueError, match=pattern):
        resolve({}, {"algo": "maml", "dataset": "omniglot", **flags})


def test_zero_inner_steps_is_allowed():
    assert resolve({}, {"algo": "maml", "inner_steps": 0}).inner_steps == 0


def test_negative_eval_inner_steps_message_names_key_and_value():
    with pytest.raises(ValueError) as err:
        resolve({}, {"algo": "maml", "eval_inner_steps": -2})
    assert "eval_inner_steps" in str(err.value) and "-2" in str(err.value)


@pytest.mark.parametrize("flags, pattern", [
    ({"algo": "mamll"}, "mamll"), ({"dataset": "mnist"}, "mnist"),
    ({"split": "vinyals-test"}, "vinyals-test"), ({"net": "resnet"}, "resnet"), ({"norm": "layer"}, "layer"),
    ({"algo": "maml", "dataset": "sinusoid", "net": "conv4-pool"}, "mlp"),
    ({"algo": "protonet", "dataset": "sinusoid"}, "sinusoid"),
])
def test_unknown_choices_are_refused(flags, pattern):
    with pytest.raises(ValueError, match=pattern):
        resolve({}, flags)


def test_unknown_algo_in_yaml_is_refused(tmp_path):
    values = load_yaml(write_yaml(tmp_path, "algo: prototypical\n"))
    with pytest.raises(ValueError, match="prototypical"):
        resolve(values, {})


def test_wrong_flag_type_is_refused():
    with pytest.raises(ValueError, match="'ways'"):
        resolve({}, {"ways": "5"})


@pytest.mark.parametrize("path", sorted((Path(__file__).parent.parent / "configs").glob("*.yaml")),
                         ids=lambda p: p.name)
def test_shipped_recipes_resolve_to_valid_configs(path):
    """Every recipe in configs/ loads, type-checks and validates; its keys are what the run will use."""
    values = load_yaml(path)
    config = resolve(values, {})
    for key, value in values.items():
        assert getattr(config, key) == value, key


def test_siamese_distance_is_validated_and_reaches_the_learner():
    with pytest.raises(ValueError, match="siamese distance"):
        RunConfig(algo="siamese", distance="cosine").validate()
    learner = build_learner(RunConfig(algo="siamese", distance="l1-weighted").validate())
    assert learner.distance_kind == "l1-weighted" and learner.loss_kind == "bce"
    assert isinstance(build_learner(RunConfig(algo="protonet", distance="mahalanobis").validate()),
                      MahalanobisProtoNet)
    with pytest.raises(ValueError, match="^distance does not apply to maml on omniglot with net conv4-pool; drop it$"):
        RunConfig(algo="maml", distance="mahalanobis").validate()
