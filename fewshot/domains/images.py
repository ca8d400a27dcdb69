"""The user's own images: ``fewshot train --dataset images --data-root DIR``.

``DIR`` holds ``train/``, ``val/`` and ``test/`` folders of class subfolders of image files (how copies of
mini-ImageNet, tiered-ImageNet, CIFAR-FS and CUB are usually kept), or the Ravi–Larochelle split files
``train.csv``, ``val.csv``, ``test.csv`` (``filename,label``) over one ``images/`` folder
(:mod:`fewshot.datasets.image_folder`). Images of any size, RGB or grey, are resized to ``image_size``; the
decoded splits are cached on disk. Training episodes come from ``train``, validation from ``val``, and
``fewshot eval RUN`` scores ``test`` (``--split val`` the validation classes). The three splits must share
no class.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from fewshot.datasets.image_folder import check_disjoint, load_image_folder
from fewshot.datasets.labelled import LabelledData
from fewshot.domains.base import ImageDomain, episode_seeds
from fewshot.registry import register_domain
from fewshot.tasks.sampler import ClassificationTasks


@dataclass
class ImageFolderOptions:
    """The ``data`` section of an ``images`` run.

    Attributes:
        ways, shots, queries: N, K and Q of validation and test episodes.
        train_ways, train_queries: of training episodes (``None``: as above).
        image_size: the side images are resized to (stretched, not cropped).
        image_channels: 1 (grey) or 3 (RGB); ``None``: 3 when any training image is colour (filled in when a run
            starts).
        data_root: the directory holding the splits.
    """

    ways: int = 5
    shots: int = 1
    queries: int = 15
    train_ways: int | None = None
    train_queries: int | None = None
    image_size: int = 84
    image_channels: int | None = None
    data_root: str | None = None

    def validate(self) -> None:
        for name in ("ways", "shots", "queries", "image_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("train_ways", "train_queries"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.image_channels not in (None, 1, 3):
            raise ValueError(f"image_channels must be 1 (grey) or 3 (RGB), got {self.image_channels}")
        if self.image_size < 16:
            raise ValueError(f"image_size must be >= 16 for the Conv-4 nets (four 2x2 poolings), got {self.image_size}")


# mini-ImageNet settings of the papers, steps sized for a CPU.
_METRIC = dict(net="conv4-pool", ways=5, shots=1, queries=15, train_ways=20, train_queries=5, meta_batch=1,
               lr=0.001, steps=3000)
_MAML = dict(net="conv4-pool", channels=32, ways=5, shots=1, queries=15, meta_batch=4, inner_lr=0.01,
             inner_steps=5, eval_inner_steps=10, lr=0.001, steps=3000)       # Finn et al. 2017, mini-ImageNet
RECIPES = {
    "maml": _MAML, "fomaml": _MAML, "anil": _MAML, "metasgd": _MAML, "bmaml": dict(_MAML, particles=5),
    "reptile": dict(_MAML, meta_batch=5, inner_lr=0.001, inner_steps=8, eval_inner_steps=50),
    "protonet": dict(_METRIC, train_ways=30, train_queries=15, steps=2000),   # Snell et al. 2017: 30-way training
    "matching": _METRIC, "matching-fce": _METRIC,
    "relation": dict(_METRIC, net="relation-conv", train_ways=5, train_queries=15),
    "siamese": _METRIC,
    "finetune": dict(net="conv4-pool", ways=5, shots=1, queries=15, meta_batch=1, lr=0.001, batch_size=64,
                     inner_lr=0.01, inner_steps=100, steps=3000),
}


@lru_cache(maxsize=6)
def _split(root: str, split: str, image_size: int, channels: int | None) -> LabelledData:
    return load_image_folder(root, split, image_size, channels)


class ImageFolders(ImageDomain):
    name = "images"
    options = ImageFolderOptions
    nets = ("conv4-pool", "conv4-strided", "resnet12", "relation-conv")
    recipes = RECIPES
    ensemble_shared = ("data_root",)

    def _root(self, config, override: str | None = None) -> str:
        root = override or config.data_root
        if not root:
            raise ValueError("dataset images is read from --data-root DIR holding train/, val/ and test/ folders of "
                             "class subfolders (or train.csv, val.csv, test.csv over images/)")
        return root

    def part(self, config, split: str, data_root: str | None = None) -> LabelledData:
        return _split(self._root(config, data_root), split, config.image_size, config.image_channels)

    def channels(self, config) -> int:
        return config.image_channels or 3

    def fill_in(self, config) -> None:
        """Check that the splits share no class and fix the channels from the training images."""
        root = self._root(config)
        check_disjoint(root)
        if config.image_channels is None:
            config.image_channels = int(_split(root, "train", config.image_size, None).x.shape[1])

    def train_tasks(self, config) -> ClassificationTasks:
        return ClassificationTasks(self.part(config, "train"), config.train_ways or config.ways, config.shots,
                                   config.train_queries or config.queries, seed=episode_seeds(config)[0],
                                   name="the training split")

    def val_tasks(self, config) -> ClassificationTasks:
        return ClassificationTasks(self.part(config, "val"), config.ways, config.shots, config.queries,
                                   seed=episode_seeds(config)[1], name="the validation split")

    def test_tasks(self, config, split=None, data_root=None, *, ways=None, shots=None, queries=None, seed=0,
                   args=None):
        split = {None: "test", "valid": "val"}.get(split, split)
        if split not in ("test", "val"):
            raise ValueError(f"image-folder runs are evaluated on --split test or val, not {split!r}")
        data = self.part(config, split, data_root)
        return f"images:{split}", ClassificationTasks(data, ways or config.ways, shots or config.shots,
                                                      queries or config.queries, seed=seed,
                                                      name=f"the {split} split")


register_domain(ImageFolders())
