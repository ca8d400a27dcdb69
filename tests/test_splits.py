"""Train, validation and test classes never meet: Lake hold-outs, Vinyals split files, eval_data."""

from __future__ import annotations

from itertools import combinations

import pytest

from fewshot.config import RunConfig
from fewshot.datasets.omniglot import DEFAULT_SPLITS_DIR, list_alphabets, load_omniglot
from fewshot.domains.omniglot import assign_holdout, character, eval_data, omniglot_part
from fewshot.registry import DOMAINS


def lake_config(**kw) -> RunConfig:
    return assign_holdout(RunConfig(dataset="omniglot", split="background", image_size=28, **kw).validate())


@pytest.fixture(scope="module")
def lake_parts():
    config = lake_config()
    return config, {part: omniglot_part(config, part) for part in ("train", "val", "test")}


def characters(data) -> set[str]:
    return {character(name) for name in data.class_names}


def test_lake_parts_share_no_alphabet_or_character_and_cover_background(lake_parts):
    config, parts = lake_parts
    alphabets = {p: set(d.class_groups) for p, d in parts.items()}
    chars = {p: characters(d) for p, d in parts.items()}
    for a, b in combinations(parts, 2):
        assert not alphabets[a] & alphabets[b], (a, b)
        assert not chars[a] & chars[b], (a, b)
    background = list_alphabets("background")
    assert len(background) == 30
    assert alphabets["train"] | alphabets["val"] | alphabets["test"] == set(background)
    assert len(alphabets["val"]) == config.holdout_val == 3
    assert len(alphabets["test"]) == config.holdout_test == 5
    # every character of the background set lands in exactly one part
    total = sum(len(chars[p]) for p in parts)
    assert total == len(characters(load_omniglot("background", image_size=28))) == 964


def test_holdout_lists_are_recorded_in_the_config(lake_parts):
    config, parts = lake_parts
    assert config.val_alphabets and config.test_alphabets
    assert set(config.val_alphabets) == set(parts["val"].class_groups)
    assert set(config.test_alphabets) == set(parts["test"].class_groups)
    saved = config.flat()
    assert saved["val_alphabets"] == config.val_alphabets
    assert saved["test_alphabets"] == config.test_alphabets
    assert config.to_sections()["data"]["val_alphabets"] == config.val_alphabets    # what config.yaml holds
    assert config.to_sections()["data"]["test_alphabets"] == config.test_alphabets
    # a config rebuilt from its recorded options gives the same parts (what a resumed / evaluated run does)
    rebuilt = RunConfig(**saved).validate()
    assert characters(omniglot_part(rebuilt, "test")) == characters(parts["test"])


def test_rotations_on_a_lake_split_augment_training_classes_only(lake_parts):
    _, upright = lake_parts
    config = lake_config(rotations=True)
    train = omniglot_part(config, "train")
    assert len(train.class_names) == 4 * len(upright["train"].class_names)
    assert characters(train) == characters(upright["train"])
    for part in ("val", "test"):
        assert omniglot_part(config, part).class_names == upright[part].class_names


def test_holdout_is_the_same_for_every_run_seed():
    a, b = lake_config(seed=0), lake_config(seed=123)
    assert (a.val_alphabets, a.test_alphabets) == (b.val_alphabets, b.test_alphabets)


def test_holdout_keeps_given_lists():
    config = lake_config(val_alphabets=["Greek"], test_alphabets=["Latin", "Korean"])
    assert config.val_alphabets == ["Greek"] and config.test_alphabets == ["Latin", "Korean"]
    train = omniglot_part(config, "train")
    assert not {"Greek", "Latin", "Korean"} & set(train.class_groups)
    assert len(set(train.class_groups)) == 27


def test_holding_out_everything_is_refused():
    with pytest.raises(ValueError, match="30"):
        lake_config(holdout_val=10, holdout_test=20)


def test_overlapping_explicit_holdouts_are_refused():
    with pytest.raises(ValueError):
        config = lake_config(val_alphabets=["Greek"], test_alphabets=["Greek", "Latin"])
        val, test = omniglot_part(config, "val"), omniglot_part(config, "test")
        assert not characters(val) & characters(test)


def read_split(name: str) -> list[str]:
    return [line.strip() for line in (DEFAULT_SPLITS_DIR / f"{name}.txt").read_text().splitlines() if line.strip()]


def test_vinyals_split_files_share_no_character():
    files = {name: read_split(name) for name in ("train", "val", "test", "trainval")}
    chars = {name: {"/".join(line.split("/")[:2]) for line in lines} for name, lines in files.items()}
    for a, b in combinations(("train", "val", "test"), 2):
        assert not chars[a] & chars[b], f"vinyals {a} and {b} share {sorted(chars[a] & chars[b])[:3]}"
    # the published sizes: 1623 characters = 1028 train + 172 val + 423 test, each in 4 rotations
    assert (len(chars["train"]), len(chars["val"]), len(chars["test"])) == (1028, 172, 423)
    for name, lines in files.items():
        assert len(lines) == len(set(lines)) == 4 * len(chars[name]), name
    assert set(files["trainval"]) == set(files["train"]) | set(files["val"])


def test_vinyals_val_loads_and_matches_its_file():
    data = load_omniglot("vinyals-val", image_size=28)
    assert set(data.class_names) == set(read_split("val"))
    assert not characters(data) & {"/".join(l.split("/")[:2]) for l in read_split("train")}


def test_eval_data_refuses_a_split_that_overlaps_training(lake_parts):
    config, _ = lake_parts
    with pytest.raises(ValueError, match="shares .* characters"):
        eval_data(config, "vinyals-val", None)


def test_eval_data_defaults_to_held_out_parts(lake_parts):
    config, parts = lake_parts
    for split in (None, "test", "background"):
        name, data = eval_data(config, split, None)
        assert name == "background:test"
        assert characters(data) == characters(parts["test"])
    name, data = eval_data(config, "val", None)
    assert name == "background:val" and characters(data) == characters(parts["val"])
    name, tasks = DOMAINS["omniglot"].test_tasks(config, None, None)
    train_chars = characters(parts["train"])
    assert not {character(tasks.data.class_names[c]) for c in tasks.episode_classes(0)} & train_chars


def test_vinyals_run_parts_are_disjoint():
    config = RunConfig(split="vinyals-train", image_size=28).validate()
    val = omniglot_part(config, "val")
    assert set(val.class_names) == set(read_split("val"))
