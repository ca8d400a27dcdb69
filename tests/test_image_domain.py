"""``fewshot train --dataset images`` on folder layouts generated here: class folders and mini-ImageNet's CSVs."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from conftest import cli

SPLITS = {"train": 7, "val": 6, "test": 6}     # classes per split


def draw(rng: np.random.Generator, c: int, size: tuple[int, int]) -> Image.Image:
    """A class-specific colour with noise, in RGB (even classes) or grey."""
    base = np.array([(37 * c) % 256, (91 * c) % 256, (151 * c) % 256], dtype=float)
    pixels = np.clip(base + rng.normal(0, 20, (*size, 3)), 0, 255).astype(np.uint8)
    image = Image.fromarray(pixels)
    return image if c % 2 == 0 else image.convert("L")


def make_folders(root, csv: bool = False) -> None:
    rng = np.random.default_rng(0)
    c = 0
    for split, classes in SPLITS.items():
        rows = ["filename,label"]
        for _ in range(classes):
            c += 1
            for i in range(6):
                name = f"n{c:04d}_{i}.{'png' if i % 2 else 'jpg'}"
                path = (root / "images" / name) if csv else (root / split / f"class{c:03d}" / name)
                path.parent.mkdir(parents=True, exist_ok=True)
                draw(rng, c, (20 + 3 * i, 24)).save(path)
                rows.append(f"{name},n{c:04d}")
        if csv:
            (root / f"{split}.csv").write_text("\n".join(rows) + "\n")


TRAIN = ["--dataset", "images", "--set", "image_size=16", "--steps", "3", "--ways", "3", "--queries", "2",
         "--set", "train_queries=2",
         "--set", "val_every=3", "--set", "val_episodes=4", "--set", "test_episodes=5", "--no-progress",
         "--threads", "1"]


@pytest.mark.parametrize("layout", ["folders", "csv"])
@pytest.mark.parametrize("algo", ["protonet", "maml"])
def test_images_domain_trains_and_scores_both_layouts(layout, algo, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("FEWSHOT_CACHE", str(tmp_path / "cache"))
    root = tmp_path / "data"
    make_folders(root, csv=layout == "csv")
    run = tmp_path / "run"
    ways = ["--train-ways", "3"] if algo == "protonet" else []     # the recipe's 30-way training is mini-ImageNet's
    code, out, err = cli(["train", "--algo", algo, *TRAIN, *ways, "--meta-batch", "2", "--data-root", root,
                          "--out", run], capsys)
    assert code == 0, err
    test = json.loads((run / "test.json").read_text())
    assert test["dataset"] == "images" and test["split"] == "images:test" and test["episodes"] == 5
    code, out, err = cli(["eval", run, "--split", "val", "--episodes", "4", "--json", "--threads", "1"], capsys)
    assert code == 0, err
    line = json.loads(out.splitlines()[-1])
    assert line["split"] == "images:val" and line["ways"] == 3 and 0 <= line["mean"] <= 1
    import yaml

    data = yaml.safe_load((run / "config.yaml").read_text())["data"]
    assert data["image_channels"] == 3 and data["image_size"] == 16       # colour in training: RGB


def test_images_domain_refuses_a_class_in_two_splits_and_a_missing_root(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("FEWSHOT_CACHE", str(tmp_path / "cache"))
    root = tmp_path / "data"
    make_folders(root)
    (root / "test" / "class001").mkdir()
    (root / "train" / "class001" / "n0001_1.png").rename(root / "test" / "class001" / "n0001_1.png")
    code, _, err = cli(["train", *TRAIN, "--data-root", root, "--out", tmp_path / "run"], capsys)
    assert code == 2 and "class001" in err and "train" in err and "test" in err
    code, _, err = cli(["train", "--dataset", "images", "--out", tmp_path / "run2"], capsys)
    assert code == 2 and "--data-root DIR" in err
