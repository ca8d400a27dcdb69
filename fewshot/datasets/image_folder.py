"""The user's own image datasets (mini-ImageNet, tiered-ImageNet, CIFAR-FS, CUB, ...) as :class:`LabelledData`.

Two layouts under a data root ``DIR``:

    folders: ``DIR/train/``, ``DIR/val/``, ``DIR/test/``, each holding one
        subfolder per class, each holding that class's image files.
    csv: the Ravi & Larochelle (2017) split files ``DIR/train.csv``,
        ``DIR/val.csv``, ``DIR/test.csv``, each a header line ``filename,label``
        and then one row per image, e.g. ``n0153282900000005.jpg,n01532829``,
        naming a file under ``DIR/images/`` and its class.

Layout rule: the CSV layout when any of ``train.csv``, ``val.csv``,
``test.csv`` is in ``DIR``, else the folder layout when any of ``train/``,
``val/``, ``test/`` is (so a root holding both is read as CSV).

Image files are those ending in ``.png .jpg .jpeg .bmp .gif .webp .tif .tiff``
(any case); hidden entries (names starting with ``.``) and other files are
ignored. Classes are sorted by name, and within a class the files by name; the
label ``y`` is the class's index in that order.

Image processing, in order:
    1. decode with Pillow (the first frame of an animated GIF) and apply the EXIF
       orientation;
    2. composite images with transparency onto a white background;
    3. convert to ``channels``: 1 -> grey (``"L"``), 3 -> ``"RGB"``; ``None``
       picks 3 if any image of the split is colour (a Pillow mode whose base is
       not ``"L"``, i.e. anything but ``1 L LA I I;16 F``), else 1. 16-bit grey
       images are scaled to 8 bits (``v >> 8``);
    4. resize to ``image_size x image_size`` with Pillow's ``BILINEAR`` filter
       (antialiased on a downscale, as for Omniglot), stretching, not cropping:
       the aspect ratio is not kept.

The decoded split is cached as an uncompressed NumPy ``.npz`` under
``cache_root()/image_folder/``, keyed by the absolute root, the split,
``image_size``, ``channels`` and every image's path relative to the root,
label, size and modification time (in load order), so a changed, added,
removed or relabelled file invalidates it. A cached load stats the files but decodes none.

A class that is in two splits leaks test classes into training; loading does
not look for that (it reads one split), so call :func:`check_disjoint` once.
"""

from __future__ import annotations

import csv
import hashlib
import io
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps
from tqdm import tqdm

from fewshot.datasets.labelled import LabelledData
from fewshot.files import atomic_write, cache_root

IMAGE_SPLITS = ("train", "val", "test")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")

_CACHE_FORMAT = 1
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError)


@dataclass(frozen=True)
class _Split:
    """The files of one split, not yet decoded.

    Attributes:
        classes: class names, sorted.
        files: absolute paths of the images, ``M`` entries, grouped by class in
            class order, sorted by name within a class.
        labels: class index of each file, ``M`` entries.
    """

    classes: tuple[str, ...]
    files: tuple[Path, ...]
    labels: tuple[int, ...]


def detect_layout(root: str | Path) -> str:
    """``"csv"`` or ``"folders"``: the layout of the data root (rule in the module docstring).

    Raises:
        FileNotFoundError: ``root`` is not a folder.
        ValueError: ``root`` holds neither layout.
    """
    root = _existing_root(root)
    if any((root / f"{split}.csv").is_file() for split in IMAGE_SPLITS):
        return "csv"
    if any((root / split).is_dir() for split in IMAGE_SPLITS):
        return "folders"
    raise ValueError(
        f"{root} holds no image dataset: looked for train.csv, val.csv, test.csv (CSV layout, images in "
        f"{root}/images/) and for train/, val/, test/ folders (folder layout, one subfolder per class). "
        f"Fix: pass the folder that holds one of these layouts."
    )


def list_classes(root: str | Path, split: str) -> list[str]:
    """The class names of a split, sorted (the split's files are listed, none decoded)."""
    return list(_list_split(_existing_root(root), split).classes)


def load_image_folder(
    root: str | Path,
    split: str,
    image_size: int,
    channels: int | None = None,
    cache_dir: str | Path | None = None,
) -> LabelledData:
    """Load a split of an image dataset as ``uint8`` images ``[M, C, S, S]``.

    Args:
        root: the data root, in either layout (see the module docstring).
        split: one of :data:`IMAGE_SPLITS`.
        image_size: side ``S`` of the returned (square, stretched) images.
        channels: ``C``: 1 (grey), 3 (RGB) or ``None`` (3 if any image of the
            split is colour, else 1).
        cache_dir: where decoded splits are cached. ``None``: ``$FEWSHOT_CACHE``
            if set, else ``~/.cache/fewshot``.

    Returns:
        ``LabelledData`` with ``x`` ``uint8`` ``[M, C, S, S]``, ``y`` ``int64``
        ``[M]`` (the index of the class in sorted order), the sorted class
        names, and ``split`` as every class's group.

    Raises:
        FileNotFoundError: no such root, or the split is missing from it.
        ValueError: a bad argument, a malformed CSV, an empty class, fewer than
            two classes, or an image Pillow cannot decode (the message names it).
    """
    if not isinstance(image_size, int) or image_size < 1:
        raise ValueError(f"image_size must be a positive int, got {image_size!r}")
    if channels not in (None, 1, 3):
        raise ValueError(f"channels must be 1, 3 or None (pick from the images), got {channels!r}")
    root = _existing_root(root).resolve()
    listing = _list_split(root, split)
    cache_file = _cache_path(root, split, listing, image_size, channels, cache_root(cache_dir))
    x = _read_cache(cache_file, len(listing.files))
    if x is None:
        x = _decode(listing.files, split, image_size, channels)
        _write_cache(cache_file, x)
    return LabelledData(
        x=torch.from_numpy(x),
        y=torch.tensor(listing.labels, dtype=torch.long),
        class_names=listing.classes,
        class_groups=(split,) * len(listing.classes),
    )


def check_disjoint(root: str | Path) -> None:
    """Check that no class name is in two of the splits present under ``root``.

    Raises:
        ValueError: naming a shared class and the two splits (and how many
            classes are shared).
    """
    root = _existing_root(root)
    layout = detect_layout(root)
    present = [s for s in IMAGE_SPLITS if _split_source(root, layout, s).exists()]
    classes = {split: set(list_classes(root, split)) for split in present}
    for i, first in enumerate(present):
        for second in present[i + 1 :]:
            shared = sorted(classes[first] & classes[second])
            if shared:
                raise ValueError(
                    f"class {shared[0]!r} is in both the {first} and the {second} split of {root} "
                    f"({len(shared)} classes are shared); a few-shot split must hold disjoint classes. "
                    f"Fix: keep each class in one split only."
                )


def _existing_root(root: str | Path) -> Path:
    root = Path(root).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(
            f"data root {root} is not a folder. Fix: pass the folder holding train/, val/, test/ "
            f"(one subfolder per class) or train.csv, val.csv, test.csv and images/."
        )
    return root


def _split_source(root: Path, layout: str, split: str) -> Path:
    """``root/split.csv`` (CSV layout) or ``root/split/`` (folder layout)."""
    return root / f"{split}.csv" if layout == "csv" else root / split


def _list_split(root: Path, split: str) -> _Split:
    """The files of a split in either layout, checked (see :func:`load_image_folder` for the errors)."""
    if split not in IMAGE_SPLITS:
        raise ValueError(f"unknown split {split!r}; valid splits: {', '.join(IMAGE_SPLITS)}")
    layout = detect_layout(root)
    source = _split_source(root, layout, split)
    if not source.exists():
        raise FileNotFoundError(
            f"{root} has no {split} split: the {layout} layout was detected and {source} does not exist. "
            f"Fix: add {root / split}.csv (CSV layout, rows 'filename,label' naming files in {root}/images/) "
            f"or {root / split}/ with one subfolder of images per class (folder layout)."
        )
    by_class = _read_csv(source, root / "images") if layout == "csv" else _read_folders(source)
    if len(by_class) < 2:
        raise ValueError(
            f"the {split} split in {source} has {len(by_class)} class(es); an episode needs at least 2. "
            f"Fix: add classes to the split."
        )
    classes = tuple(sorted(by_class))
    files = [(sorted(by_class[name]), c) for c, name in enumerate(classes)]
    return _Split(
        classes=classes,
        files=tuple(path for paths, _ in files for path in paths),
        labels=tuple(c for paths, c in files for _ in paths),
    )


def _is_image(name: str) -> bool:
    return not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS)


def _read_folders(split_dir: Path) -> dict[str, list[Path]]:
    """Image paths by class, from ``split_dir/<class>/<image>``."""
    by_class = {}
    for class_dir in split_dir.iterdir():
        if class_dir.name.startswith(".") or not class_dir.is_dir():
            continue
        entries = [p for p in class_dir.iterdir() if not p.name.startswith(".")]
        images = [p for p in entries if _is_image(p.name) and p.is_file()]
        if not images:
            found = f"only {len(entries)} non-image entries" if entries else "nothing"
            raise ValueError(
                f"class folder {class_dir} holds no images ({found}; image files end in "
                f"{' '.join(IMAGE_EXTENSIONS)}). Fix: add its images or remove the folder."
            )
        by_class[class_dir.name] = images
    return by_class


def _read_csv(csv_path: Path, image_dir: Path) -> dict[str, list[Path]]:
    """Image paths by class, from the rows ``filename,label`` of a split CSV (files in ``image_dir``)."""
    by_class, seen = {}, set()
    with open(csv_path, newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f)
        header = [field.strip() for field in next(reader, [])]
        if header != ["filename", "label"]:
            raise ValueError(
                f"{csv_path}:1: expected the header line 'filename,label', got {','.join(header)!r}. "
                f"Fix: make the first line of the CSV 'filename,label'."
            )
        for row in reader:
            if not row:
                continue
            where = f"{csv_path}:{reader.line_num}"
            fields = [field.strip() for field in row]
            if len(fields) != 2 or not all(fields):
                raise ValueError(f"{where}: expected 'filename,label', got {','.join(row)!r}")
            filename, label = fields
            path = image_dir / filename
            if not path.is_file():
                raise ValueError(
                    f"{where}: image {filename!r} not found (looked for {path}). "
                    f"Fix: put the file in {image_dir}/ or remove the row."
                )
            if filename in seen:
                raise ValueError(f"{where}: image {filename!r} is listed twice. Fix: remove one of the rows.")
            seen.add(filename)
            by_class.setdefault(label, []).append(path)
    return by_class


def _decode_one(path: Path, image_size: int, channels: int | None) -> np.ndarray:
    """One image as ``uint8`` ``[S, S]`` (grey) or ``[S, S, 3]`` (RGB); steps in the module docstring."""
    with Image.open(path) as img:
        img.load()
        colour = channels == 3 or (channels is None and Image.getmodebase(img.mode) != "L")
        ImageOps.exif_transpose(img, in_place=True)
        if img.mode.startswith("I;16"):
            img = Image.fromarray((np.asarray(img) >> 8).astype(np.uint8))
        if img.has_transparency_data:
            img = Image.alpha_composite(Image.new("RGBA", img.size, "white"), img.convert("RGBA"))
        img = img.convert("RGB" if colour else "L").resize((image_size, image_size), Image.Resampling.BILINEAR)
    return np.asarray(img, dtype=np.uint8)


def _decode(files: tuple[Path, ...], split: str, image_size: int, channels: int | None) -> np.ndarray:
    """Every image of a split as ``uint8`` ``[M, C, S, S]`` (``C`` per the channel rule)."""
    x = np.empty((len(files), channels or 1, image_size, image_size), dtype=np.uint8)
    for i, path in enumerate(tqdm(files, desc=f"decoding {split} images", unit="img", disable=None)):
        try:
            image = _decode_one(path, image_size, channels)
        except _DECODE_ERRORS as err:
            raise ValueError(
                f"cannot decode image {path}: {err}. Fix: replace or remove the file (it may be corrupt "
                f"or not an image)."
            ) from err
        if image.ndim == 3 and x.shape[1] == 1:
            x = np.repeat(x, 3, axis=1)  # the first colour image: the grey ones so far become RGB
        x[i] = image.transpose(2, 0, 1) if image.ndim == 3 else image
    return x


def _cache_path(
    root: Path, split: str, listing: _Split, image_size: int, channels: int | None, cache: Path
) -> Path:
    """Cache file of a decoded split, keyed as the module docstring says."""
    lines = [f"{_CACHE_FORMAT}|{root}|{split}|{image_size}|{channels}"]
    for path, label in zip(listing.files, listing.labels):
        st = path.stat()
        lines.append(f"{path.relative_to(root).as_posix()}|{listing.classes[label]}|{st.st_size}|{st.st_mtime_ns}")
    digest = hashlib.sha256("\n".join(lines).encode()).hexdigest()[:16]
    return cache / "image_folder" / f"{root.name}-{split}-{image_size}px-{digest}.npz"


def _read_cache(path: Path, count: int) -> np.ndarray | None:
    """The cached images at ``path`` (``count`` of them), or ``None`` when absent or unreadable (with a warning)."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as npz:
            x = npz["x"]
        if x.dtype != np.uint8 or x.ndim != 4 or x.shape[0] != count:
            raise ValueError(f"holds {x.dtype} {tuple(x.shape)}, expected uint8 [{count}, C, S, S]")
        return x
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as err:
        warnings.warn(f"ignoring unreadable image cache {path} ({err}); decoding again", stacklevel=3)
        return None


def _write_cache(path: Path, x: np.ndarray) -> None:
    """Write ``x`` to ``path`` atomically (:func:`~fewshot.files.atomic_write`); warn on failure."""
    buffer = io.BytesIO()
    np.savez(buffer, x=x)
    try:
        atomic_write(path, buffer.getvalue())
    except OSError as err:
        warnings.warn(f"cannot write image cache {path} ({err}); set cache_dir or FEWSHOT_CACHE", stacklevel=3)
