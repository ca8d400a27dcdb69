"""Run configuration: recipes, precedence (defaults < recipe < YAML < flags) and validation."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from fewshot.config import RECIPES, RunConfig, load_yaml, resolve
from fewshot.learners import MahalanobisProtoNet
from fewshot.runs import build_learner


def write_yaml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "run.yaml"
    path.write_text(text)
    return path


def test_maml_omniglot_recipe():
    cfg = resolve({}, {"algo": "maml", "dataset": "omniglot"})
    assert (cfg.inner_lr, cfg.inner_steps, cfg.meta_batch) == (0.4, 1, 8)
    assert cfg.rotations and cfg.lr_schedule == "cosine" and cfg.precision == "float32"
    paper = resolve(load_yaml(Path(__file__).parent.parent / "configs" / "maml-omniglot-5w1s.yaml"), {})
    assert (paper.meta_batch, paper.rotations, paper.lr_schedule) == (32, False, "step")   # Finn et al.'s
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


def test_the_default_fsmol_protonet_is_the_measured_fsmol_recipe():
    """``fewshot train --algo protonet --dataset fsmol`` with no config trains configs/protonet-fsmol.yaml's
    recipe (all but its step budget and time limit, which the command's flags set)."""
    shipped = resolve(load_yaml(Path(__file__).parent.parent / "configs" / "protonet-fsmol.yaml"), {}).flat()
    default = resolve({}, {"algo": "protonet", "dataset": "fsmol"}).flat()
    differ = {k for k in shipped if shipped[k] != default[k]}
    assert differ <= {"steps", "time_limit"}, {k: (default[k], shipped[k]) for k in differ}


def test_the_default_sinusoid_dkt_is_the_measured_task_scale_recipe():
    shipped = resolve(load_yaml(Path(__file__).parent.parent / "configs" / "dkt-linear-taskscale-sinusoid.yaml"),
                      {}).flat()
    default = resolve({}, {"algo": "dkt", "dataset": "sinusoid"}).flat()
    assert {k for k in shipped if shipped[k] != default[k]} == set()
    assert default["task_scale"] is True and default["kernel"] == "linear" and default["shots"] == 5


def test_siamese_distance_is_validated_and_reaches_the_learner():
    with pytest.raises(ValueError, match="siamese distance"):
        RunConfig(algo="siamese", distance="cosine").validate()
    learner = build_learner(RunConfig(algo="siamese", distance="l1-weighted").validate())
    assert learner.distance_kind == "l1-weighted" and learner.loss_kind == "bce"
    assert isinstance(build_learner(RunConfig(algo="protonet", distance="mahalanobis").validate()),
                      MahalanobisProtoNet)
    with pytest.raises(ValueError, match="^distance does not apply to maml on omniglot with net conv4-pool; drop it$"):
        RunConfig(algo="maml", distance="mahalanobis").validate()


# -- sections: files, messages, run directories ---------------------------------------------------------------


def test_a_flat_and_a_sectioned_config_file_resolve_equal(tmp_path):
    flat = tmp_path / "flat.yaml"
    flat.write_text("algo: maml\ndataset: omniglot\nnet: conv4-strided\nchannels: 32\nways: 20\nshots: 5\n"
                    "inner_lr: 0.1\neval_inner_steps: 5\nmeta_batch: 4\nlr: 0.002\ntest_episodes: 50\n")
    sectioned = tmp_path / "sectioned.yaml"
    sectioned.write_text("data:\n  dataset: omniglot\n  ways: 20\n  shots: 5\nmodel:\n  net: conv4-strided\n"
                         "  channels: 32\nlearner:\n  algo: maml\n  inner_lr: 0.1\n  eval_inner_steps: 5\n"
                         "train:\n  meta_batch: 4\n  lr: 0.002\neval:\n  test_episodes: 50\n")
    assert load_yaml(flat) == load_yaml(sectioned)
    a, b = resolve(load_yaml(flat), {}), resolve(load_yaml(sectioned), {})
    assert a == b and a.to_sections() == b.to_sections()
    assert (a.ways, a.channels, a.inner_lr, a.meta_batch, a.test_episodes, a.inner_steps) == (20, 32, 0.1, 4, 50, 1)


@pytest.mark.parametrize("text, message", [
    ("train:\n  meta_batchsize: 4\n", "unknown option 'meta_batchsize'; did you mean 'meta_batch'?"),
    ("learner:\n  algo: maml\n  inner_lrr: 0.1\n", "unknown option 'inner_lrr'; did you mean 'inner_lr'?"),
    ("learner:\n  lr: 0.1\n", "option 'lr' belongs in section train, not learner"),
    ("trian:\n  lr: 0.1\n", "unknown section 'trian'; did you mean 'train'?"),
    ("train: 3\ndata:\n  ways: 5\n", "section 'train' must hold a mapping of option: value"),
    ("ways: 5\ntrain:\n  lr: 0.1\n", "unknown section 'ways'; a config file has sections data, model, learner, "
                                     "train, eval (or is one flat mapping)"),
])
def test_a_sectioned_file_names_a_misspelt_or_misplaced_key(tmp_path, text, message):
    path = write_yaml(tmp_path, text)
    with pytest.raises(ValueError) as error:
        load_yaml(path)
    assert str(error.value) == f"{path}: {message}"


@pytest.mark.parametrize("flags, message", [
    ({"dataset": "sinusoid", "algo": "maml", "distort": True}, "distort does not apply to maml on sinusoid with net "
                                                                "mlp; drop it"),
    ({"algo": "protonet", "multi_step_loss": True}, "multi_step_loss does not apply to protonet on omniglot with net "
                                                    "conv4-pool; drop it"),
    ({"dropout": 0.3}, "dropout does not apply to protonet on omniglot with net conv4-pool; drop it"),
    ({"algo": "protonet", "inner_steps": 3}, "inner_steps does not apply to protonet on omniglot with net "
                                             "conv4-pool; drop it"),
    ({"net": "mlp"}, "net 'mlp' does not fit dataset 'omniglot': use conv4-pool or conv4-strided or resnet12"),
    ({"algo": "relation", "net": "resnet12"}, "relation builds its own encoder (relation-conv), not resnet12: drop net"),
    ({"algo": "mamll"}, "unknown algorithm 'mamll'; did you mean 'maml'?"),
    ({"dataset": "omniglott"}, "unknown dataset 'omniglott'; did you mean 'omniglot'?"),
    ({"net": "conv4"}, "unknown net 'conv4'; did you mean 'conv4-pool'?"),
])
def test_options_that_do_not_fit_the_run_are_refused_naming_the_fix(flags, message):
    with pytest.raises(ValueError) as error:
        resolve({}, flags)
    assert str(error.value) == message


def test_config_objects_read_write_and_replace_by_name():
    config = resolve({}, {"algo": "maml"})
    config.ways = 20
    assert config.ways == 20 and config.sections["data"].ways == 20 and config.flat()["ways"] == 20
    assert config.applies("inner_lr") and not config.applies("distance") and not config.applies("support_size")
    with pytest.raises(AttributeError, match="support_size does not apply to maml on omniglot"):
        config.support_size = 16
    with pytest.raises(AttributeError, match=r"replace\(algo=...\)"):
        config.algo = "protonet"
    proto = config.replace(algo="protonet")            # the old learner's options are dropped, the rest kept
    assert proto.algo == "protonet" and proto.ways == 20 and not proto.applies("inner_lr")
    assert config.algo == "maml" and RunConfig(**config.flat()) == config
    with pytest.raises(ValueError, match="inner_lr does not apply to protonet"):
        config.replace(algo="protonet", inner_lr=0.1)


# An older run's config.yaml: every option of the old flat RunConfig, whether or not it applied to the run.
OLD_FLAT_DEFAULTS = dict(
    algo="protonet", dataset="omniglot", split="background", ways=5, shots=1, queries=15, train_ways=None,
    train_queries=None, within_alphabet=False, meta_batch=32, steps=2000, inner_steps=1, eval_inner_steps=None,
    inner_lr=0.4, lr=0.001, lr_decay=1.0, lr_decay_every=2000, net="conv4-pool", norm="batch", channels=64,
    pooling="mean", image_size=28, rotations=None, distort=False, vectorize=False, multi_step_loss=False, margin=1.0,
    distance="euclidean", batch_size=64, pretrain_classes=None, val_alphabets=[], test_alphabets=[], holdout_val=3,
    holdout_test=5, val_every=250, val_episodes=200, test_episodes=600, log_every=10, checkpoint_every=100,
    time_limit=None, grad_clip=None, ema=None, on_nonfinite="stop", precision="float32", seed=0, data_root=None,
    featurizer="ecfp", fp_radius=2, fp_size=2048, fp_counts=True, support_size=16, support_pos=None,
    support_neg=None, ragged_queries=False, draws=10, hidden=1024, embedding_dim=512, dropout=0.0, graph_layers=3,
    trees=100, input_dim=None, test_tasks=[],
)


def old_flat_file(config: RunConfig, **quirks) -> str:
    """The config.yaml the old code wrote for the run ``config`` describes: flat, all of the old options."""
    values = {**OLD_FLAT_DEFAULTS, **{k: v for k, v in config.flat().items() if k in OLD_FLAT_DEFAULTS}, **quirks}
    return yaml.safe_dump(values, sort_keys=False)


@pytest.mark.parametrize("kind", ["protonet", "sinusoid", "relation"])
def test_an_old_flat_run_directory_loads_and_resumes(kind, tmp_path):
    """A run directory of the old code (flat config.yaml holding options that do not apply, e.g. inner_steps for
    ProtoNet, split: sinusoid, net: conv4-pool for relation) loads, and resumes to the uninterrupted run."""
    from conftest import tiny_protonet, tiny_sinusoid
    from fewshot.runs import load_learner, load_run_config, run_config, trainer_for

    make, quirks = {"protonet": (lambda **kw: tiny_protonet(**kw), {"inner_steps": 1, "inner_lr": 0.4}),
                    "sinusoid": (lambda **kw: tiny_sinusoid(**kw), {"split": "sinusoid", "net": "mlp",
                                                                    "norm": "none"}),
                    "relation": (lambda **kw: tiny_protonet(algo="relation", **kw), {"net": "conv4-pool"})}[kind]
    straight = trainer_for(make(steps=4), tmp_path / "straight", progress=False).run()
    old = tmp_path / "old"
    config = make(steps=2)
    trainer_for(config, old, progress=False).run()
    text = old_flat_file(config, **quirks)
    (old / "config.yaml").write_text(text)
    assert not any(isinstance(v, dict) for v in yaml.safe_load(text).values())        # flat
    loaded = load_run_config(old)
    assert loaded == config.replace(val_inner_steps=None)      # the old code did not record val_inner_steps
    assert not loaded.applies(next(iter(quirks))) or kind == "relation"
    learner, _ = load_learner(old, "last")
    resumed = trainer_for(run_config(old, {}, {"steps": 4}), old, progress=False).run()
    assert resumed.step == 4
    for (name, a), (_, b) in zip(resumed.learner.state_dict().items(), straight.learner.state_dict().items()):
        assert torch.equal(a, b), name
    saved = yaml.safe_load((old / "config.yaml").read_text())   # resuming rewrites it in sections
    assert list(saved) == ["data", "model", "learner", "train", "eval"] and saved["train"]["steps"] == 4


def test_a_runs_config_yaml_holds_only_the_options_that_apply(tmp_path):
    from conftest import tiny_protonet, tiny_sinusoid
    from fewshot.runs import trainer_for

    trainer_for(tiny_protonet(steps=1), tmp_path / "proto", progress=False).run()
    trainer_for(tiny_sinusoid(steps=1), tmp_path / "sin", progress=False).run()
    proto = yaml.safe_load((tmp_path / "proto" / "config.yaml").read_text())
    sin = yaml.safe_load((tmp_path / "sin" / "config.yaml").read_text())
    for saved in (proto, sin):
        assert list(saved) == ["data", "model", "learner", "train", "eval"]
        config = RunConfig(**{k: v for section in saved.values() for k, v in section.items()})
        assert all(config.applies(k) for section in saved.values() for k in section)
        assert config.to_sections() == saved
    keys = {k for section in proto.values() for k in section}
    assert {"val_alphabets", "channels", "distance", "lr"} <= keys
    assert not keys & {"support_size", "featurizer", "hidden", "inner_lr", "inner_steps", "eval_inner_steps",
                       "margin", "batch_size", "trees"}
    assert proto["learner"] == {"algo": "protonet", "distance": "euclidean"}
    keys = {k for section in sin.values() for k in section}
    assert {"inner_lr", "inner_steps", "shots"} <= keys
    assert not keys & {"split", "norm", "channels", "val_alphabets", "image_size", "distort", "support_size"}
    assert sin["model"] == {"net": "mlp"} and sin["train"]["val_inner_steps"] == 1   # the eval_inner_steps of the run
