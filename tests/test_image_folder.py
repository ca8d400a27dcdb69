"""Tests for fewshot.datasets.image_folder on small image datasets generated in both layouts."""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fewshot.datasets.image_folder import (
    IMAGE_SPLITS,
    check_disjoint,
    detect_layout,
    list_classes,
    load_image_folder,
)

# Class names per split, deliberately unsorted.
CLASSES = {"train": ["n02", "n01", "n04", "n03"], "val": ["n11", "n10", "n12"], "test": ["n21", "n20", "n22"]}


@dataclass(frozen=True)
class _Fixture:
    """One generated image: a solid colour ``value`` (an int for grey, an RGB tuple for colour)."""

    split: str
    label: str
    filename: str
    value: int | tuple[int, int, int]
    data: bytes


def _encode(image: Image.Image, filename: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG" if filename.lower().endswith(".jpg") else "PNG")
    return buffer.getvalue()


def _fixtures() -> list[_Fixture]:
    """Per class 4-5 solid images, 30x40 or 50x50, one JPEG and one upper-case ``.PNG`` each; the first
    image of each train class is RGB, every other image grey, every colour distinct."""
    out = []
    for s, split in enumerate(IMAGE_SPLITS):
        for c, label in enumerate(CLASSES[split]):
            for i in reversed(range(4 + c % 2)):  # written in reverse order: loading must sort
                grey = 10 + 60 * s + 12 * c + 2 * i
                value = (grey, 255 - grey, 100) if split == "train" and i == 0 else grey
                filename = f"{label}{i:04d}." + {1: "jpg", 3: "PNG"}.get(i, "png")
                size = (30, 40) if i % 2 else (50, 50)
                image = Image.new("RGB" if isinstance(value, tuple) else "L", size, value)
                out.append(_Fixture(split, label, filename, value, _encode(image, filename)))
    return out


def _write_folders(root: Path, fixtures: list[_Fixture]) -> None:
    for f in fixtures:
        (root / f.split / f.label).mkdir(parents=True, exist_ok=True)
        (root / f.split / f.label / f.filename).write_bytes(f.data)
    # Entries that must be ignored: hidden and non-image files, a hidden folder, a stray file.
    (root / "train" / "n01" / ".hidden.png").write_bytes(b"not an image")
    (root / "train" / "n01" / "notes.txt").write_text("not an image")
    (root / "train" / ".thumbnails").mkdir()
    (root / "train" / "README.md").write_text("a stray file")


def _write_csv(root: Path, fixtures: list[_Fixture]) -> None:
    (root / "images").mkdir(parents=True)
    rows = {split: ["filename,label"] for split in IMAGE_SPLITS}
    for f in fixtures:
        (root / "images" / f.filename).write_bytes(f.data)
        rows[f.split].append(f"{f.filename},{f.label}")
    for split, lines in rows.items():
        (root / f"{split}.csv").write_text("\n".join(lines) + "\n")


@pytest.fixture(autouse=True)
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("FEWSHOT_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture
def fixtures() -> list[_Fixture]:
    return _fixtures()


@pytest.fixture
def folders(tmp_path: Path, fixtures: list[_Fixture]) -> Path:
    _write_folders(tmp_path / "folders", fixtures)
    return tmp_path / "folders"


@pytest.fixture
def csv_root(tmp_path: Path, fixtures: list[_Fixture]) -> Path:
    _write_csv(tmp_path / "csv", fixtures)
    return tmp_path / "csv"


def _no_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args, **kwargs):
        raise RuntimeError("an image was decoded")

    monkeypatch.setattr(Image, "open", refuse)


def _pillow_grey(rgb: tuple[int, int, int]) -> int:
    return Image.new("RGB", (1, 1), rgb).convert("L").getpixel((0, 0))


# --- layouts, order, labels ------------------------------------------------------------------------


def test_detect_layout(folders: Path, csv_root: Path, fixtures: list[_Fixture]) -> None:
    assert detect_layout(folders) == "folders"
    assert detect_layout(csv_root) == "csv"
    _write_folders(csv_root, fixtures)  # both layouts: the CSV one wins
    assert detect_layout(csv_root) == "csv"


@pytest.mark.parametrize("layout", ["folders", "csv"])
def test_loads_sorted_classes_files_and_labels(layout: str, folders: Path, csv_root: Path,
                                               fixtures: list[_Fixture]) -> None:
    root = folders if layout == "folders" else csv_root
    for split in IMAGE_SPLITS:
        data = load_image_folder(root, split, image_size=8)
        expected = sorted((f for f in fixtures if f.split == split), key=lambda f: (f.label, f.filename))
        names = sorted(CLASSES[split])
        assert list_classes(root, split) == names
        assert data.class_names == tuple(names)
        assert data.class_groups == (split,) * len(names)
        assert data.x.dtype == torch.uint8 and data.y.dtype == torch.int64
        assert data.x.shape == (len(expected), 3 if split == "train" else 1, 8, 8)
        assert data.y.tolist() == [names.index(f.label) for f in expected]
        for image, f in zip(data.x, expected):  # solid images stay solid after the resize
            want = torch.tensor(f.value if isinstance(f.value, tuple) else (f.value,) * image.shape[0])
            tolerance = 2 if f.filename.endswith(".jpg") else 0
            assert (image.int() - want.view(-1, 1, 1)).abs().max() <= tolerance, f.filename


def test_csv_and_folder_layouts_give_identical_data(folders: Path, csv_root: Path) -> None:
    for split in IMAGE_SPLITS:
        a, b = load_image_folder(folders, split, 10), load_image_folder(csv_root, split, 10)
        assert torch.equal(a.x, b.x) and torch.equal(a.y, b.y)
        assert a.class_names == b.class_names and a.class_groups == b.class_groups


def test_channel_rule(folders: Path, fixtures: list[_Fixture]) -> None:
    assert load_image_folder(folders, "train", 6).x.shape[1] == 3  # one RGB image is enough
    grey = load_image_folder(folders, "val", 6)
    assert grey.x.shape[1] == 1
    rgb = load_image_folder(folders, "val", 6, channels=3)
    assert rgb.x.shape[1] == 3 and torch.equal(rgb.x, grey.x.expand(-1, 3, -1, -1))

    train = load_image_folder(folders, "train", 6, channels=1)
    assert train.x.shape[1] == 1
    first = next(f for f in fixtures if f.filename == "n010000.png")
    assert (train.x[0] == _pillow_grey(first.value)).all()


def test_resize_stretches_with_pillow_bilinear(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    noise = Image.fromarray(rng.integers(0, 256, (40, 30, 3), dtype=np.uint8))
    for label in ("a", "b"):
        (tmp_path / "d" / "train" / label).mkdir(parents=True)
        noise.save(tmp_path / "d" / "train" / label / "x.png")
    data = load_image_folder(tmp_path / "d", "train", 12)
    want = np.asarray(noise.resize((12, 12), Image.Resampling.BILINEAR)).transpose(2, 0, 1)
    assert torch.equal(data.x[0], torch.from_numpy(want.copy()))


def test_transparency_is_composited_on_white(tmp_path: Path) -> None:
    for label, alpha in (("clear", 0), ("opaque", 255)):
        (tmp_path / "d" / "train" / label).mkdir(parents=True)
        Image.new("RGBA", (20, 20), (200, 0, 0, alpha)).save(tmp_path / "d" / "train" / label / "x.png")
    data = load_image_folder(tmp_path / "d", "train", 4)
    assert data.class_names == ("clear", "opaque")
    assert (data.x[0] == 255).all()
    assert data.x[1].amax(dim=(1, 2)).tolist() == [200, 0, 0] and data.x[1].amin(dim=(1, 2)).tolist() == [200, 0, 0]


def test_every_extension_any_case(tmp_path: Path) -> None:
    image = Image.new("L", (12, 9), 77)
    formats = {"a.png": {}, "b.JPG": {"quality": 100}, "c.jpeg": {"quality": 100}, "d.bmp": {},
               "e.gif": {}, "f.webp": {"lossless": True}, "g.TIF": {}, "h.tiff": {}}
    for label in ("x", "y"):
        (tmp_path / "d" / "train" / label).mkdir(parents=True)
        for name, options in formats.items():
            image.save(tmp_path / "d" / "train" / label / name, **options)
    data = load_image_folder(tmp_path / "d", "train", 5, channels=1)
    assert data.x.shape == (2 * len(formats), 1, 5, 5)
    assert (data.x.int() - 77).abs().max() <= 1


def test_16_bit_grey_is_scaled_to_8_bits(tmp_path: Path) -> None:
    for label, value in (("a", 0x8080), ("b", 0xFFFF)):
        (tmp_path / "d" / "train" / label).mkdir(parents=True)
        Image.fromarray(np.full((6, 6), value, dtype=np.uint16)).save(tmp_path / "d" / "train" / label / "x.png")
    data = load_image_folder(tmp_path / "d", "train", 3)
    assert data.x.shape[1] == 1
    assert data.x[0].unique().tolist() == [128] and data.x[1].unique().tolist() == [255]


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    pixels = np.zeros((20, 40), dtype=np.uint8)
    pixels[:, 20:] = 255  # stored: dark left half; orientation 3 turns it by 180 degrees
    exif = Image.Exif()
    exif[0x0112] = 3
    for label in ("a", "b"):
        (tmp_path / "d" / "train" / label).mkdir(parents=True)
        Image.fromarray(pixels).save(tmp_path / "d" / "train" / label / "x.jpg", quality=100, exif=exif)
    image = load_image_folder(tmp_path / "d", "train", 8).x[0, 0]
    assert image[:, 0].min() > 240 and image[:, -1].max() < 15


# --- cache -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("layout", ["folders", "csv"])
def test_second_load_decodes_nothing(layout: str, folders: Path, csv_root: Path, cache: Path,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    root = folders if layout == "folders" else csv_root
    first = load_image_folder(root, "train", 8)
    assert len(list((cache / "image_folder").glob("*.npz"))) == 1
    _no_decoding(monkeypatch)
    again = load_image_folder(root, "train", 8)
    assert torch.equal(first.x, again.x) and torch.equal(first.y, again.y)
    with pytest.raises(RuntimeError, match="decoded"):  # another size or channel count is another key
        load_image_folder(root, "train", 9)
    with pytest.raises(RuntimeError, match="decoded"):
        load_image_folder(root, "train", 8, channels=1)


@pytest.mark.parametrize("change", ["touch", "add"])
def test_changed_or_added_file_invalidates_the_cache(change: str, folders: Path, fixtures: list[_Fixture],
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    load_image_folder(folders, "train", 8)
    image = folders / "train" / "n01" / "n010000.png"
    if change == "touch":
        st = image.stat()
        os.utime(image, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    else:
        (folders / "train" / "n01" / "n019999.png").write_bytes(image.read_bytes())
    _no_decoding(monkeypatch)
    with pytest.raises(RuntimeError, match="decoded"):
        load_image_folder(folders, "train", 8)


def test_corrupt_cache_is_ignored(folders: Path, cache: Path) -> None:
    first = load_image_folder(folders, "val", 8)
    (cache_file,) = (cache / "image_folder").glob("*.npz")
    cache_file.write_bytes(b"garbage")
    with pytest.warns(UserWarning, match="unreadable image cache"):
        assert torch.equal(load_image_folder(folders, "val", 8).x, first.x)


# --- bad input -------------------------------------------------------------------------------------


def test_missing_root(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="is not a folder"):
        load_image_folder(tmp_path / "nowhere", "train", 8)


def test_root_with_neither_layout(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"looked for train\.csv.*train/"):
        detect_layout(tmp_path)


def test_missing_split_folder(folders: Path) -> None:
    (folders / "val").rename(folders / "validation")
    with pytest.raises(FileNotFoundError, match=r"no val split.*val\.csv.*val/"):
        load_image_folder(folders, "val", 8)


def test_missing_split_csv(csv_root: Path) -> None:
    (csv_root / "val.csv").unlink()
    with pytest.raises(FileNotFoundError, match=r"no val split.*val\.csv.*val/"):
        list_classes(csv_root, "val")


def test_empty_class_folder(folders: Path) -> None:
    (folders / "train" / "n05").mkdir()
    with pytest.raises(ValueError, match=r"n05 holds no images \(nothing"):
        load_image_folder(folders, "train", 8)


def test_class_without_image_files(folders: Path) -> None:
    (folders / "train" / "n05").mkdir()
    (folders / "train" / "n05" / "labels.txt").write_text("x")
    with pytest.raises(ValueError, match=r"n05 holds no images \(only 1 non-image"):
        load_image_folder(folders, "train", 8)


@pytest.mark.parametrize("content", [b"not an image", "truncated"])
def test_unreadable_image(content: bytes | str, folders: Path) -> None:
    image = folders / "train" / "n03" / "n030002.png"
    image.write_bytes(image.read_bytes()[:60] if content == "truncated" else content)
    with pytest.raises(ValueError, match=r"cannot decode image .*n030002\.png"):
        load_image_folder(folders, "train", 8)


def test_csv_without_header(csv_root: Path) -> None:
    lines = (csv_root / "train.csv").read_text().splitlines()
    (csv_root / "train.csv").write_text("\n".join(lines[1:]) + "\n")
    with pytest.raises(ValueError, match=r"train\.csv:1: expected the header line 'filename,label'"):
        load_image_folder(csv_root, "train", 8)


def test_csv_row_naming_a_missing_file(csv_root: Path) -> None:
    with open(csv_root / "train.csv", "a") as f:
        f.write("\nghost.jpg,n01\n")  # a blank line first: line numbers count it
    with pytest.raises(ValueError, match=r"train\.csv:21: image 'ghost\.jpg' not found"):
        load_image_folder(csv_root, "train", 8)


def test_csv_malformed_and_duplicate_rows(csv_root: Path) -> None:
    path = csv_root / "val.csv"
    lines = path.read_text().splitlines()
    path.write_text("\n".join(lines + ["a.jpg,n10,extra"]) + "\n")
    with pytest.raises(ValueError, match=r"val\.csv:15: expected 'filename,label'"):
        load_image_folder(csv_root, "val", 8)
    path.write_text("\n".join(lines + [lines[1]]) + "\n")
    with pytest.raises(ValueError, match=r"val\.csv:15: image 'n110003\.PNG' is listed twice"):
        load_image_folder(csv_root, "val", 8)


def test_split_with_one_class(folders: Path) -> None:
    for label in ("n21", "n22"):
        for image in (folders / "test" / label).iterdir():
            image.unlink()
        (folders / "test" / label).rmdir()
    with pytest.raises(ValueError, match=r"has 1 class\(es\); an episode needs at least 2"):
        load_image_folder(folders, "test", 8)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"image_size": 0}, "image_size must be a positive int"),
    ({"image_size": 8, "channels": 2}, "channels must be 1, 3 or None"),
    ({"image_size": 8, "split": "trainval"}, "unknown split 'trainval'"),
])
def test_bad_arguments(kwargs: dict, message: str, folders: Path) -> None:
    with pytest.raises(ValueError, match=message):
        load_image_folder(folders, **{"split": "train", **kwargs})


# --- disjoint splits -------------------------------------------------------------------------------


def test_check_disjoint(folders: Path, csv_root: Path, fixtures: list[_Fixture]) -> None:
    check_disjoint(folders)
    check_disjoint(csv_root)

    (folders / "test" / "n01").mkdir()
    (folders / "test" / "n01" / "x.png").write_bytes(fixtures[0].data)
    with pytest.raises(ValueError, match="class 'n01' is in both the train and the test split"):
        check_disjoint(folders)

    with open(csv_root / "val.csv", "a") as f:
        f.write("n010000.png,n02\n")
    (csv_root / "test.csv").unlink()  # absent splits are skipped
    with pytest.raises(ValueError, match="class 'n02' is in both the train and the val split"):
        check_disjoint(csv_root)
