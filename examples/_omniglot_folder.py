"""A folder of image files for the examples: a few Omniglot alphabets unpacked from the copy shipped with fewshot.

Your own data would be a folder like this one (one subfolder per class); the examples read it with a plain
``torch.utils.data.Dataset`` of their own, as a user would.
"""

from __future__ import annotations

import functools
import zipfile
from importlib.resources import files
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

ARCHIVE = files("fewshot.datasets") / "data" / "omniglot" / "images_background.zip"
# the alphabets `fewshot train` holds out of the background set by default, so that the examples' scores and
# the command's are measured on the same classes; every other alphabet trains
HELD_OUT = {"val": ["Braille", "Gujarati", "Hebrew"],
            "test": ["Anglo-Saxon_Futhorc", "Futurama", "Grantha", "N_Ko", "Syriac_(Estrangelo)"]}


def split_of(alphabet: str) -> str:
    return next((split for split, alphabets in HELD_OUT.items() if alphabet in alphabets), "train")


def unpack(root: Path) -> dict[str, Path]:
    """``root/<split>/<Alphabet>/<character>/*.png``, the alphabets split as :data:`HELD_OUT` says (once)."""
    folders = {split: root / split for split in ("train", "val", "test")}
    if all(folder.is_dir() for folder in folders.values()):
        return folders
    with zipfile.ZipFile(ARCHIVE) as archive:
        for name in archive.namelist():
            parts = name.split("/")            # images_background/<Alphabet>/<character>/<file>.png
            if len(parts) == 4 and name.endswith(".png"):
                target = folders[split_of(parts[1])] / "/".join(parts[1:])
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(archive.read(name))
    return folders


class ImageFiles(Dataset):
    """Every PNG under ``root/<group>/<class>/``: item ``i`` is ``(image [1, 28, 28] in [0, 1], class id)``,
    read from disk the first time it is asked for. ``targets`` lets the episode sampler read the labels without
    the images."""

    def __init__(self, root: Path, size: int = 28):
        self.files = sorted(root.glob("*/*/*.png"))
        classes = sorted({f.parent for f in self.files})
        index = {c: i for i, c in enumerate(classes)}
        self.targets = [index[f.parent] for f in self.files]
        self.size = size

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self._image(i), self.targets[i]

    @functools.lru_cache(maxsize=None)       # decoded on first use, then kept (about 3 KB an image)
    def _image(self, i: int) -> torch.Tensor:
        image = Image.open(self.files[i]).convert("L").resize((self.size, self.size), Image.BILINEAR)
        ink = 1.0 - np.asarray(image, dtype=np.float32) / 255.0        # strokes high, background 0
        return torch.from_numpy(ink).unsqueeze(0)
