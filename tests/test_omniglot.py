"""Tests for fewshot.datasets.omniglot on tiny archives in the official layout."""

from __future__ import annotations

import hashlib
import io
import re
import shutil
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fewshot.datasets import omniglot
from fewshot.datasets.labelled import LabelledData
from fewshot.datasets.omniglot import list_alphabets, load_omniglot

DRAWERS = 4
BACKGROUND = {"Greek": 3, "Latin": 3}
EVALUATION = {"Tengwar": 2}


def _glyph(seed: int, size: int = 105) -> np.ndarray:
    """A random, asymmetric 'drawing': ``bool`` ``[size, size]``, True = white paper."""
    rng = np.random.default_rng(seed)
    paper = np.ones((size, size), dtype=bool)
    for _ in range(4):
        top, left = rng.integers(0, size - 30, 2)
        height, width = rng.integers(5, 30, 2)
        paper[top : top + height, left : left + width] = False
    paper[5:40, 5:12] = False  # an L in the top-left corner breaks every symmetry
    paper[33:40, 5:30] = False
    return paper


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _layout(set_name: str, alphabets: dict[str, int], first_id: int = 1) -> dict[str, bytes]:
    """Official-layout PNG members ``images_<set>/<A>/characterNN/<id>_<drawer>.png`` -> bytes."""
    members, char_id = {}, first_id
    for alphabet, n_chars in alphabets.items():
        for c in range(1, n_chars + 1):
            for drawer in range(1, DRAWERS + 1):
                name = f"images_{set_name}/{alphabet}/character{c:02d}/{char_id:04d}_{drawer:02d}.png"
                members[name] = _png(Image.fromarray(_glyph(char_id * 100 + drawer)))
            char_id += 1
    return members


def _write_zip(path: Path, members: dict[str, bytes], compression: int = zipfile.ZIP_DEFLATED) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w", compression=compression) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return path


def _make_root(root: Path, evaluation: bool = True) -> Path:
    """A data root with ``omniglot/images_background.zip`` (and ``images_evaluation.zip``)."""
    _write_zip(root / "omniglot" / "images_background.zip", _layout("background", BACKGROUND))
    if evaluation:
        _write_zip(root / "omniglot" / "images_evaluation.zip", _layout("evaluation", EVALUATION, first_id=100))
    return root


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return _make_root(tmp_path / "data")


@pytest.fixture
def cache(tmp_path: Path) -> Path:
    return tmp_path / "cache"


def _load(split: str, root: Path, cache: Path, **kwargs) -> LabelledData:
    return load_omniglot(split, data_root=root, cache_dir=cache, **kwargs)


def test_background_shapes_names_and_order(root: Path, cache: Path) -> None:
    data = _load("background", root, cache, image_size=28)
    assert data.x.shape == (6 * DRAWERS, 1, 28, 28) and data.x.dtype == torch.uint8
    assert data.y.dtype == torch.int64
    assert data.y.tolist() == [c for c in range(6) for _ in range(DRAWERS)]
    assert data.class_names == tuple(f"{a}/character{c:02d}" for a in ("Greek", "Latin") for c in (1, 2, 3))
    assert data.class_groups == ("Greek",) * 3 + ("Latin",) * 3


def test_pixels_are_inverted_and_bilinear_resized(root: Path, cache: Path) -> None:
    with zipfile.ZipFile(root / "omniglot" / "images_background.zip") as archive:
        original = Image.open(io.BytesIO(archive.read("images_background/Greek/character01/0001_02.png")))
        original.load()
    full = _load("background", root, cache, image_size=105).x[1, 0].numpy()
    np.testing.assert_array_equal(full, np.where(np.asarray(original), 0, 255))  # strokes (black) -> 255
    small = _load("background", root, cache, image_size=28).x[1, 0].numpy()
    expected = 255 - np.asarray(original.convert("L").resize((28, 28), Image.Resampling.BILINEAR))
    np.testing.assert_array_equal(small, expected)


def test_rotations_are_rot90_counter_clockwise(root: Path, cache: Path) -> None:
    data = _load("evaluation", root, cache, rotations=True)
    angles = ("rot000", "rot090", "rot180", "rot270")
    assert data.class_names == tuple(f"Tengwar/character{c:02d}/{r}" for c in (1, 2) for r in angles)
    upright = data.x[data.y == 0]
    assert not torch.equal(data.x[data.y == 1], upright)
    for k in (1, 2, 3):
        torch.testing.assert_close(data.x[data.y == k], torch.rot90(upright, k, dims=(-2, -1)))


def test_default_rotations_depend_on_split(root: Path, cache: Path, tmp_path: Path) -> None:
    (tmp_path / "splits").mkdir()
    (tmp_path / "splits" / "val.txt").write_text("Greek/character01/rot000\nGreek/character01/rot090\n")
    assert _load("background", root, cache).num_classes == 6
    vinyals = _load("vinyals-val", root, cache, splits_dir=tmp_path / "splits")
    assert vinyals.class_names == ("Greek/character01/rot000", "Greek/character01/rot090")


def test_alphabets_filter(root: Path, cache: Path) -> None:
    data = _load("background", root, cache, alphabets=["Latin"])
    assert data.groups == ["Latin"] and len(data) == 3 * DRAWERS
    torch.testing.assert_close(data.x, _load("background", root, cache).x[3 * DRAWERS :])
    with pytest.raises(ValueError, match=r"unknown alphabets \['Klingon'\].*known: \['Greek', 'Latin'\]"):
        _load("background", root, cache, alphabets=["Latin", "Klingon"])


def test_list_alphabets(root: Path) -> None:
    assert list_alphabets("background", root) == ["Greek", "Latin"]
    assert list_alphabets("evaluation", root) == ["Tengwar"]
    with pytest.raises(ValueError, match="valid sets: background, evaluation"):
        list_alphabets("train", root)


def test_unknown_split_and_bad_size(root: Path, cache: Path) -> None:
    with pytest.raises(ValueError, match="valid splits: background, evaluation, vinyals-train"):
        _load("omniglot-train", root, cache)
    with pytest.raises(ValueError, match="image_size"):
        _load("background", root, cache, image_size=0)


@pytest.fixture
def splits(tmp_path: Path) -> Path:
    """Vinyals-style split files over the fixture: train mixes both sets, val is background only."""
    folder = tmp_path / "splits"
    folder.mkdir()
    (folder / "train.txt").write_text(
        "Tengwar/character02/rot090\nTengwar/character02/rot000\nLatin/character03/rot270\n\n"
        "Greek/character01/rot000\nGreek/character01/rot180\n"
    )
    (folder / "val.txt").write_text("Latin/character01/rot000\nLatin/character01/rot090\n")
    return folder


def test_vinyals_split_uses_both_sets(root: Path, cache: Path, splits: Path) -> None:
    data = _load("vinyals-train", root, cache, splits_dir=splits)
    assert data.class_names == (
        "Greek/character01/rot000",
        "Greek/character01/rot180",
        "Latin/character03/rot270",
        "Tengwar/character02/rot000",
        "Tengwar/character02/rot090",
    )
    assert data.class_groups == ("Greek", "Greek", "Latin", "Tengwar", "Tengwar")
    assert len(data) == 5 * DRAWERS
    evaluation = _load("evaluation", root, cache)
    tengwar2 = evaluation.x[evaluation.y == 1]
    torch.testing.assert_close(data.x[data.y == 4], torch.rot90(tengwar2, 1, dims=(-2, -1)))
    background = _load("background", root, cache)
    latin3 = background.x[background.y == 5]
    torch.testing.assert_close(data.x[data.y == 2], torch.rot90(latin3, 3, dims=(-2, -1)))


def test_vinyals_without_rotations_and_with_alphabets(root: Path, cache: Path, splits: Path) -> None:
    data = _load("vinyals-train", root, cache, splits_dir=splits, rotations=False)
    assert data.class_names == ("Greek/character01", "Latin/character03", "Tengwar/character02")
    greek = _load("vinyals-train", root, cache, splits_dir=splits, alphabets=["Greek"])
    assert greek.class_names == ("Greek/character01/rot000", "Greek/character01/rot180")
    with pytest.raises(ValueError, match="unknown alphabets"):
        _load("vinyals-val", root, cache, splits_dir=splits, alphabets=["Greek"])


def test_vinyals_needs_evaluation_only_when_used(tmp_path: Path, cache: Path, splits: Path) -> None:
    background_only = _make_root(tmp_path / "bg", evaluation=False)
    assert _load("vinyals-val", background_only, cache, splits_dir=splits).num_classes == 2
    with pytest.raises(FileNotFoundError) as info:
        _load("vinyals-train", background_only, cache, splits_dir=splits)
    message = str(info.value)
    assert str(background_only / "omniglot" / "images_evaluation.zip") in message
    assert "--data-root" in message and "fewshot download omniglot" in message


def test_vinyals_character_missing_from_data(root: Path, cache: Path, splits: Path) -> None:
    (splits / "test.txt").write_text("Tengwar/character09/rot000\n")
    with pytest.raises(ValueError, match=r"not in the Omniglot data.*Tengwar/character09"):
        _load("vinyals-test", root, cache, splits_dir=splits)
    (splits / "test.txt").write_text("Tengwar/character01\n")
    with pytest.raises(ValueError, match=r"test.txt:1: expected 'Alphabet/characterNN/rotDDD'"):
        _load("vinyals-test", root, cache, splits_dir=splits)


def test_extracted_folder_equals_zip(root: Path, cache: Path, tmp_path: Path) -> None:
    extracted = tmp_path / "extracted"
    with zipfile.ZipFile(root / "omniglot" / "images_background.zip") as archive:
        archive.extractall(extracted / "omniglot")
    from_zip = _load("background", root, cache, rotations=True)
    from_folder = _load("background", extracted, cache, rotations=True)
    torch.testing.assert_close(from_folder.x, from_zip.x)
    torch.testing.assert_close(from_folder.y, from_zip.y)
    assert from_folder.class_names == from_zip.class_names
    assert list_alphabets("background", extracted) == ["Greek", "Latin"]


def test_cache_hit_skips_the_archive(root: Path, cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first = _load("background", root, cache, image_size=20)
    files = list((cache / "omniglot").iterdir())
    assert [f.suffix for f in files] == [".npz"]  # no temp file left behind

    opened = []
    real_zipfile = zipfile.ZipFile

    def spy(file, *args, **kwargs):
        opened.append(Path(file) if isinstance(file, (str, Path)) else file)
        return real_zipfile(file, *args, **kwargs)

    monkeypatch.setattr(zipfile, "ZipFile", spy)  # np.load opens the .npz through it too
    second = _load("background", root, cache, image_size=20)
    assert root / "omniglot" / "images_background.zip" not in opened
    torch.testing.assert_close(second.x, first.x)
    assert second.class_names == first.class_names
    _load("background", root, cache, image_size=21)
    assert root / "omniglot" / "images_background.zip" in opened  # the spy does see archive reads


def test_cache_key_follows_size_and_archive(root: Path, cache: Path) -> None:
    _load("background", root, cache, image_size=20)
    _load("background", root, cache, image_size=24)
    assert len(list((cache / "omniglot").glob("background-*.npz"))) == 2
    archive = root / "omniglot" / "images_background.zip"
    _write_zip(archive, _layout("background", {"Greek": 1}))
    assert _load("background", root, cache, image_size=20).class_names == ("Greek/character01",)


def test_unreadable_cache_is_rebuilt(root: Path, cache: Path) -> None:
    first = _load("background", root, cache)
    (cache_file,) = (cache / "omniglot").iterdir()
    cache_file.write_bytes(b"not an npz")
    with pytest.warns(UserWarning, match="unreadable Omniglot cache"):
        torch.testing.assert_close(_load("background", root, cache).x, first.x)


def test_environment_defaults(root: Path, cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FEWSHOT_DATA_ROOT", str(root))
    monkeypatch.setenv("FEWSHOT_CACHE", str(cache))
    assert load_omniglot("evaluation").class_names == ("Tengwar/character01", "Tengwar/character02")
    assert len(list((cache / "omniglot").glob("evaluation-*.npz"))) == 1


def test_missing_data_names_path_and_fix(tmp_path: Path, cache: Path) -> None:
    with pytest.raises(FileNotFoundError) as info:
        _load("evaluation", tmp_path / "nowhere", cache)
    message = str(info.value)
    assert str(tmp_path / "nowhere" / "omniglot" / "images_evaluation.zip") in message
    assert "--data-root" in message and "fewshot download omniglot --data-root DIR" in message


def test_empty_archive(tmp_path: Path, cache: Path) -> None:
    _write_zip(tmp_path / "omniglot" / "images_background.zip", {"images_background/README.txt": b"hi"})
    with pytest.raises(ValueError, match="holds no Omniglot images"):
        _load("background", tmp_path, cache)


def test_truncated_archive(root: Path, cache: Path) -> None:
    archive = root / "omniglot" / "images_background.zip"
    archive.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    with pytest.raises(ValueError, match=r"images_background\.zip is not a readable zip.*truncated or corrupt"):
        _load("background", root, cache)


def test_corrupt_member_names_archive_and_member(tmp_path: Path, cache: Path) -> None:
    members = _layout("background", {"Greek": 1})
    archive = _write_zip(tmp_path / "omniglot" / "images_background.zip", members, compression=zipfile.ZIP_STORED)
    victim = "images_background/Greek/character01/0001_03.png"
    with zipfile.ZipFile(archive) as zf:
        info = zf.getinfo(victim)
    raw = bytearray(archive.read_bytes())
    data_start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)
    raw[data_start + 40 : data_start + 60] = bytes(20)  # clobber the middle of the PNG
    archive.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match=rf"{victim} in .*images_background\.zip"):
        _load("background", tmp_path, cache)


@pytest.mark.parametrize(
    ("image", "problem"),
    [
        (Image.new("1", (50, 50), 1), "is 50x50 pixels, expected 105x105"),
        (Image.new("RGB", (105, 105), "white"), "mode is 'RGB'"),
    ],
)
def test_bad_image_names_archive_and_member(tmp_path: Path, cache: Path, image: Image.Image, problem: str) -> None:
    members = _layout("background", {"Greek": 1})
    victim = "images_background/Greek/character01/0001_02.png"
    members[victim] = _png(image)
    _write_zip(tmp_path / "omniglot" / "images_background.zip", members)
    with pytest.raises(ValueError, match=rf"{victim} in .*images_background\.zip: image {problem}"):
        _load("background", tmp_path, cache)


def test_embedded_background_set(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The real background zip shipped with the package (about 2 s to decode, then cached)."""
    monkeypatch.delenv("FEWSHOT_DATA_ROOT", raising=False)
    data = load_omniglot("background", cache_dir=tmp_path)
    assert data.x.shape == (19280, 1, 28, 28) and data.num_classes == 964 and len(data.groups) == 30
    assert torch.bincount(data.y).eq(20).all()
    assert data.x.float().mean() < 40  # mostly background (0): ink is high
    start = time.perf_counter()
    vinyals_val = load_omniglot("vinyals-val", cache_dir=tmp_path)  # background alphabets only, from the cache
    assert time.perf_counter() - start < 2
    assert vinyals_val.num_classes == 688 and len(vinyals_val) == 688 * 20


# -- the shipped background set as a fallback ------------------------------------------------------------


def _evaluation_only_root(root: Path) -> Path:
    """A data root holding only ``omniglot/images_evaluation.zip`` (one fake evaluation alphabet)."""
    _write_zip(root / "omniglot" / "images_evaluation.zip", _layout("evaluation", EVALUATION, first_id=100))
    return root


def test_evaluation_only_root_reads_the_shipped_background_set(tmp_path: Path, cache: Path) -> None:
    """``fewshot eval RUN --split evaluation --data-root DIR`` with DIR holding only the evaluation zip: every
    reader of the background set (list_alphabets, load_omniglot, the Vinyals splits) falls back to the copy
    in the package, once its checksum is verified."""
    root = _evaluation_only_root(tmp_path / "data")
    assert omniglot._find_source(root, "background") == omniglot.EMBEDDED_BACKGROUND
    shipped = list_alphabets("background", None)
    assert len(shipped) == 30 and list_alphabets("background", root) == shipped
    assert list_alphabets("evaluation", root) == ["Tengwar"]
    greek = _load("background", root, cache, alphabets=["Greek"])
    assert greek.num_classes == 24 and len(greek) == 24 * 20
    splits = tmp_path / "splits"
    splits.mkdir()
    (splits / "train.txt").write_text("Greek/character01/rot090\nTengwar/character02/rot000\n")
    mixed = _load("vinyals-train", root, cache, splits_dir=splits)
    assert mixed.class_names == ("Greek/character01/rot090", "Tengwar/character02/rot000")
    torch.testing.assert_close(mixed.x[mixed.y == 0], torch.rot90(greek.x[greek.y == 0], 1, dims=(-2, -1)))


def test_extracted_evaluation_folder_also_falls_back(tmp_path: Path) -> None:
    root = tmp_path / "data"
    with zipfile.ZipFile(_evaluation_only_root(tmp_path / "zipped") / "omniglot" / "images_evaluation.zip") as zf:
        zf.extractall(root / "omniglot")
    assert omniglot._find_source(root, "background") == omniglot.EMBEDDED_BACKGROUND


def test_own_background_set_wins_over_the_shipped_one(root: Path) -> None:
    assert omniglot._find_source(root, "background") == root / "omniglot" / "images_background.zip"
    assert list_alphabets("background", root) == ["Greek", "Latin"]


def test_root_without_either_set_still_names_the_background_archive(tmp_path: Path, cache: Path) -> None:
    empty = tmp_path / "empty"
    (empty / "omniglot").mkdir(parents=True)
    for call in (lambda: list_alphabets("background", empty), lambda: _load("background", empty, cache)):
        with pytest.raises(FileNotFoundError) as info:
            call()
        assert f"looked for {empty / 'omniglot' / 'images_background.zip'} and" in str(info.value)


def test_shipped_background_set_passes_its_check() -> None:
    assert omniglot.embedded_background() == omniglot.EMBEDDED_BACKGROUND


def test_damaged_shipped_background_set_is_refused(tmp_path: Path, cache: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    root = _evaluation_only_root(tmp_path / "data")
    damaged = tmp_path / "package" / "images_background.zip"
    shutil.copytree(omniglot.EMBEDDED_BACKGROUND.parent, damaged.parent,
                    ignore=shutil.ignore_patterns("splits"))
    blob = bytearray(damaged.read_bytes())
    blob[len(blob) // 2] ^= 0xFF                                   # one flipped byte: still a readable zip
    damaged.write_bytes(bytes(blob))
    monkeypatch.setattr(omniglot, "EMBEDDED_BACKGROUND", damaged)
    expected = rf"shipped with fewshot, {re.escape(str(damaged))}, fails its checksum \(MD5 [0-9a-f]{{32}}\)"
    for call in (lambda: list_alphabets("background", root), lambda: _load("background", root, cache),
                 lambda: _load("vinyals-train", root, cache)):        # the real train.txt: both sets
        with pytest.raises(ValueError, match=expected):
            call()
    monkeypatch.setattr(omniglot, "EMBEDDED_BACKGROUND", tmp_path / "package" / "gone.zip")
    with pytest.raises(FileNotFoundError, match="shipped with fewshot, .*gone.zip, is missing"):
        list_alphabets("background", root)


def test_official_archive_in_the_package_passes_the_check(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The check accepts the official archive by its MD5 (download.OMNIGLOT_MD5), not only the shipped bytes."""
    official = _write_zip(tmp_path / "package" / "images_background.zip", _layout("background", {"Greek": 1}))
    monkeypatch.setattr(omniglot, "EMBEDDED_BACKGROUND", official)
    monkeypatch.setitem(omniglot.OMNIGLOT_MD5, "images_background.zip",
                        hashlib.md5(official.read_bytes()).hexdigest())
    assert list_alphabets("background", _evaluation_only_root(tmp_path / "data")) == ["Greek"]
