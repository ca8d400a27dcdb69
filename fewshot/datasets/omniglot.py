"""Omniglot (Lake et al., 2015) as :class:`~fewshot.datasets.labelled.LabelledData`.

Omniglot holds 1,623 handwritten characters from 50 alphabets, each drawn by 20
people. The official archives are split into a *background* set (30 alphabets,
964 characters) and an *evaluation* set (20 alphabets, 659 characters), each a
zip of ``images_<set>/<Alphabet>/characterNN/<id>_<drawer>.png`` files
(105x105, 1-bit, black strokes on white).

Splits:
    ``background``, ``evaluation``: every character of that set (Lake protocol).
    ``vinyals-train``, ``-val``, ``-test``, ``-trainval``: the classes listed in
        the Vinyals et al. (2016) split files, one class per line
        ``Alphabet/characterNN/rotDDD``. They draw on both sets (train uses 13
        evaluation alphabets), so the evaluation archive is needed unless every
        alphabet asked for is a background one (``vinyals-val`` is).

The background set ships with the package (``fewshot/datasets/data/omniglot/``). A data
root that holds the evaluation set but not the background one (neither
``images_background.zip`` nor the extracted folder) reads the shipped copy instead, once
its checksum is verified (:func:`embedded_background`); a data root without either set
is refused naming the missing archive, as it is most likely a mistyped path.

Image processing, in order:
    1. decode the PNG with Pillow and convert it to 8-bit grayscale;
    2. resize 105 -> ``image_size`` with Pillow's ``BILINEAR`` filter (on a
       downscale Pillow widens the triangle filter to the scale factor, so this
       is an antialiased area-like average without the ringing LANCZOS adds to
       binary strokes);
    3. invert, so that ink is high: strokes are 255, background is 0;
    4. rotations (when asked for) are applied last with ``torch.rot90`` over
       ``(H, W)``, i.e. counter-clockwise by 90, 180 or 270 degrees; they are
       exact pixel permutations of the resized image.

The decoded, resized images of a whole set are cached as an uncompressed NumPy
``.npz`` file, keyed by the source's path, size and modification time and by
``image_size``, so a repeated load skips decoding entirely.
"""

from __future__ import annotations

import hashlib
import io
import os
import warnings
import zipfile
import zlib
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from fewshot.datasets.download import OMNIGLOT_MD5
from fewshot.datasets.labelled import LabelledData
from fewshot.files import atomic_write, cache_root

SETS = ("background", "evaluation")
VINYALS_SPLITS = ("vinyals-train", "vinyals-val", "vinyals-test", "vinyals-trainval")
SPLITS = SETS + VINYALS_SPLITS
ROTATIONS = (0, 90, 180, 270)
ORIGINAL_SIZE = 105
PACKAGE_DATA_ROOT = Path(__file__).resolve().parent / "data"
DEFAULT_SPLITS_DIR = PACKAGE_DATA_ROOT / "omniglot" / "splits" / "vinyals"
EMBEDDED_BACKGROUND = PACKAGE_DATA_ROOT / "omniglot" / "images_background.zip"
# The shipped background zip is not byte for byte the official archive (MD5 in download.OMNIGLOT_MD5): it
# was rebuilt with its 19,280 PNGs stored uncompressed and without folder entries (8,704,330 bytes, not
# 9,464,212). It is accepted if it is either that official archive or exactly the file fewshot ships.
EMBEDDED_BACKGROUND_SHA256 = "af0187d3e3e081c3e7fe523f0c4e048ea85423ef07a177373da84568f004eeae"

_ALLOWED_MODES = ("1", "L")
_CACHE_FORMAT = 1
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, zipfile.BadZipFile, zlib.error)


@dataclass(frozen=True)
class _Member:
    """One PNG of a set: its archive path and where it sits in the layout."""

    name: str
    alphabet: str
    character: str
    filename: str


@dataclass(frozen=True)
class _DecodedSet:
    """A whole Omniglot set, decoded and resized.

    Attributes:
        images: ``uint8`` ``[N, S, S]``, ink = 255, sorted by (alphabet,
            character, filename) so each character's images are contiguous.
        starts: ``int64`` ``[C + 1]``; character ``c`` owns
            ``images[starts[c]:starts[c + 1]]``.
        alphabets: alphabet of each character, ``C`` entries.
        characters: folder name (``characterNN``) of each character, ``C`` entries.
    """

    images: np.ndarray
    starts: np.ndarray
    alphabets: tuple[str, ...]
    characters: tuple[str, ...]

    def index(self) -> dict[tuple[str, str], int]:
        """Character position by ``(alphabet, character)``."""
        return {key: c for c, key in enumerate(zip(self.alphabets, self.characters))}


# A class: (alphabet, character folder, rotation in degrees counter-clockwise).
_ClassKey = tuple[str, str, int]


def load_omniglot(
    split: str,
    data_root: str | Path | None = None,
    image_size: int = 28,
    rotations: bool | None = None,
    alphabets: Sequence[str] | None = None,
    cache_dir: str | Path | None = None,
    splits_dir: str | Path | None = None,
) -> LabelledData:
    """Load an Omniglot split as ``uint8`` images ``[M, 1, S, S]`` (ink = 255).

    Args:
        split: one of :data:`SPLITS`.
        data_root: folder holding ``omniglot/images_<set>.zip`` or the extracted
            ``omniglot/images_<set>/``. ``None``: ``$FEWSHOT_DATA_ROOT`` if set,
            else the background zip shipped with the package (no evaluation set).
            A folder with the evaluation set only reads the shipped background set.
        image_size: side ``S`` of the returned images.
        rotations: add the 90/180/270 degree rotations of each character as
            classes of their own. ``None``: on for the ``vinyals-*`` splits (as
            listed in the split files), off for ``background``/``evaluation``.
        alphabets: keep only these alphabets.
        cache_dir: where decoded sets are cached. ``None``: ``$FEWSHOT_CACHE``
            if set, else ``~/.cache/fewshot``.
        splits_dir: folder with the Vinyals ``{train,val,test,trainval}.txt``
            files. ``None``: the copies shipped with the package.

    Returns:
        ``LabelledData`` with ``x`` ``uint8`` ``[M, 1, S, S]``, ``y`` ``int64``
        ``[M]``, class names ``"Alphabet/characterNN"`` (plus ``"/rotDDD"`` when
        rotations are on) sorted by (alphabet, character, rotation), and the
        alphabet as each class's group. Examples are grouped by class, each
        class's images in filename order.

    Raises:
        ValueError: unknown split or alphabet, bad ``image_size``, a damaged
            archive, or an image that is not a 105x105 1-bit/grayscale PNG.
        FileNotFoundError: an Omniglot set needed by the split is not under
            ``data_root``.
    """
    if split not in SPLITS:
        raise ValueError(f"unknown Omniglot split {split!r}; valid splits: {', '.join(SPLITS)}")
    if not isinstance(image_size, int) or image_size < 1:
        raise ValueError(f"image_size must be a positive int, got {image_size!r}")
    root = resolve_data_root(data_root)
    cache = cache_root(cache_dir)
    if rotations is None:
        rotations = split in VINYALS_SPLITS

    if split in SETS:
        decoded = _load_set(root, split, image_size, cache)
        classes = _set_classes(decoded, rotations)
        classes = _keep_alphabets(classes, alphabets, f"the {split} set")
        return _assemble([decoded], classes, rotations)

    split_file = Path(splits_dir or DEFAULT_SPLITS_DIR) / f"{split.removeprefix('vinyals-')}.txt"
    classes = _read_split_file(split_file, rotations)
    classes = _keep_alphabets(classes, alphabets, f"split {split}")
    needed = {alphabet for alphabet, _, _ in classes}
    return _assemble(_load_sets_covering(needed, root, image_size, cache), classes, rotations)


def list_alphabets(set_name: str, data_root: str | Path | None = None) -> list[str]:
    """The alphabets of an Omniglot set (``background`` or ``evaluation``), sorted.

    Reads only the archive's listing (no images are decoded). ``data_root`` is
    resolved as in :func:`load_omniglot`.
    """
    if set_name not in SETS:
        raise ValueError(f"unknown Omniglot set {set_name!r}; valid sets: {', '.join(SETS)}")
    source = _find_source(resolve_data_root(data_root), set_name)
    with _open_source(source) as (names, _):
        members = _png_members(names, source, set_name)
    return sorted({m.alphabet for m in members})


def resolve_data_root(data_root: str | Path | None) -> Path:
    """``data_root`` if given, else ``$FEWSHOT_DATA_ROOT``, else the package's own data."""
    if data_root is not None:
        return Path(data_root).expanduser()
    from_env = os.environ.get("FEWSHOT_DATA_ROOT")
    return Path(from_env).expanduser() if from_env else PACKAGE_DATA_ROOT


def _find_source(root: Path, set_name: str) -> Path:
    """The zip ``<root>/omniglot/images_<set>.zip``, else the extracted folder next to it.

    The background set falls back to the package's copy (:func:`embedded_background`) when ``root``
    holds the evaluation set; otherwise a missing set is a ``FileNotFoundError`` naming both paths.
    """
    archive = root / "omniglot" / f"images_{set_name}.zip"
    folder = root / "omniglot" / f"images_{set_name}"
    if archive.is_file():
        return embedded_background() if _is_embedded(archive) else archive
    if folder.is_dir():
        return folder
    if set_name == "background" and _holds_set(root, "evaluation"):
        return embedded_background()
    raise FileNotFoundError(
        f"Omniglot {set_name} set not found: looked for {archive} and {folder}/. "
        f"Fix: pass --data-root DIR (data_root=DIR, or set FEWSHOT_DATA_ROOT) where DIR holds "
        f"omniglot/images_{set_name}.zip, or fetch it with `fewshot download omniglot --data-root DIR`."
        + (" The package ships only the background set." if set_name == "evaluation" else "")
    )


def _holds_set(root: Path, set_name: str) -> bool:
    folder = root / "omniglot"
    return (folder / f"images_{set_name}.zip").is_file() or (folder / f"images_{set_name}").is_dir()


def _is_embedded(path: Path) -> bool:
    try:
        return path.resolve() == EMBEDDED_BACKGROUND.resolve()
    except OSError:
        return False


_verified: dict[tuple[str, int, int], bool] = {}


def embedded_background() -> Path:
    """The background zip shipped with the package, after checking its bytes.

    It must be the official archive (MD5 of :data:`~fewshot.datasets.download.OMNIGLOT_MD5`) or the
    exact file fewshot ships (:data:`EMBEDDED_BACKGROUND_SHA256`); the check runs once per process
    (again if the file's size or modification time changes).

    Raises:
        FileNotFoundError: the file is missing from the installation.
        ValueError: it fails the check (a damaged or altered installation).
    """
    path = EMBEDDED_BACKGROUND
    fix = ("Fix: reinstall fewshot, or pass --data-root DIR where DIR holds omniglot/images_background.zip "
           "(`fewshot download omniglot --data-root DIR` fetches the official archives).")
    try:
        st = path.stat()
    except OSError as err:
        raise FileNotFoundError(f"the Omniglot background set shipped with fewshot, {path}, is missing "
                                f"({err.strerror}). {fix}") from None
    key = (str(path), st.st_size, st.st_mtime_ns)
    if key not in _verified:
        md5, sha256 = hashlib.md5(usedforsecurity=False), hashlib.sha256()
        with open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                md5.update(chunk)
                sha256.update(chunk)
        official = md5.hexdigest() == OMNIGLOT_MD5["images_background.zip"]
        if not official and sha256.hexdigest() != EMBEDDED_BACKGROUND_SHA256:
            raise ValueError(f"the Omniglot background set shipped with fewshot, {path}, fails its checksum "
                             f"(MD5 {md5.hexdigest()}): the installation is damaged. {fix}")
        _verified[key] = True
    return path


@contextmanager
def _open_source(source: Path) -> Iterator[tuple[list[str], Callable[[str], bytes]]]:
    """Yield the source's file names (``images_<set>/...``, ``/``-separated) and a reader."""
    if source.is_dir():
        names = [p.relative_to(source.parent).as_posix() for p in source.rglob("*.png")]
        yield names, lambda name: (source.parent / name).read_bytes()
        return
    try:
        archive = zipfile.ZipFile(source)
    except zipfile.BadZipFile as err:
        raise ValueError(
            f"{source} is not a readable zip ({err}); it is probably truncated or corrupt. "
            f"Fix: delete it and download it again (`fewshot download omniglot --data-root DIR`)."
        ) from err
    with archive:
        yield archive.namelist(), archive.read


def _png_members(names: list[str], source: Path, set_name: str) -> list[_Member]:
    """The ``images_<set>/<Alphabet>/<character>/<file>.png`` entries, sorted.

    Raises:
        ValueError: when there are none.
    """
    top = f"images_{set_name}"
    members = []
    for name in names:
        parts = name.split("/")
        if len(parts) == 4 and parts[0] == top and parts[3].lower().endswith(".png"):
            members.append(_Member(name, parts[1], parts[2], parts[3]))
    if not members:
        raise ValueError(
            f"{source} holds no Omniglot images (expected {top}/<Alphabet>/characterNN/<id>_<drawer>.png). "
            f"Fix: point data_root at the official images_{set_name}.zip or its extracted folder."
        )
    return sorted(members, key=lambda m: (m.alphabet, m.character, m.filename))


def _decode_png(data: bytes, image_size: int) -> np.ndarray:
    """One Omniglot PNG as ``uint8`` ``[S, S]``, resized (bilinear) and inverted (ink = 255).

    Raises:
        ValueError: the image is not 105x105 or not 1-bit/8-bit grayscale.
        OSError: Pillow cannot decode it.
    """
    with Image.open(io.BytesIO(data)) as img:
        if img.size != (ORIGINAL_SIZE, ORIGINAL_SIZE):
            raise ValueError(f"image is {img.size[0]}x{img.size[1]} pixels, expected {ORIGINAL_SIZE}x{ORIGINAL_SIZE}")
        if img.mode not in _ALLOWED_MODES:
            raise ValueError(f"image mode is {img.mode!r}, expected '1' (1-bit) or 'L' (grayscale)")
        gray = img.convert("L")
    if image_size != ORIGINAL_SIZE:
        gray = gray.resize((image_size, image_size), Image.Resampling.BILINEAR)
    return 255 - np.asarray(gray, dtype=np.uint8)


def _decode_set(source: Path, set_name: str, image_size: int) -> _DecodedSet:
    """Decode every image of one set (see :class:`_DecodedSet`)."""
    with _open_source(source) as (names, read):
        members = _png_members(names, source, set_name)
        images = np.empty((len(members), image_size, image_size), dtype=np.uint8)
        for i, member in enumerate(members):
            try:
                images[i] = _decode_png(read(member.name), image_size)
            except _DECODE_ERRORS as err:
                raise ValueError(
                    f"bad Omniglot image {member.name} in {source}: {err}. "
                    f"Fix: re-download the set (`fewshot download omniglot --data-root DIR`)."
                ) from err
    keys = [(m.alphabet, m.character) for m in members]
    first = [i for i in range(len(keys)) if i == 0 or keys[i] != keys[i - 1]]
    return _DecodedSet(
        images=images,
        starts=np.array(first + [len(keys)], dtype=np.int64),
        alphabets=tuple(keys[i][0] for i in first),
        characters=tuple(keys[i][1] for i in first),
    )


def _cache_path(source: Path, set_name: str, image_size: int, cache: Path) -> Path:
    """Cache file for a set at a size, keyed by the source's path, size and mtime."""
    source = source.resolve()
    if source.is_dir():
        stats = sorted((p.relative_to(source).as_posix(), p.stat()) for p in source.rglob("*.png"))
        fingerprint = "".join(f"{name}:{st.st_size}:{st.st_mtime_ns};" for name, st in stats)
    else:
        st = source.stat()
        fingerprint = f"{st.st_size}:{st.st_mtime_ns}"
    key = f"{_CACHE_FORMAT}|{source}|{fingerprint}|{image_size}"
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    return cache / "omniglot" / f"{set_name}-{image_size}px-{digest}.npz"


def _read_cache(path: Path) -> _DecodedSet | None:
    """The cached set at ``path``, or ``None`` when absent or unreadable (with a warning)."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as npz:
            return _DecodedSet(
                images=npz["images"],
                starts=npz["starts"],
                alphabets=tuple(npz["alphabets"].tolist()),
                characters=tuple(npz["characters"].tolist()),
            )
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as err:
        warnings.warn(f"ignoring unreadable Omniglot cache {path} ({err}); decoding again", stacklevel=3)
        return None


def _write_cache(path: Path, decoded: _DecodedSet) -> None:
    """Write ``decoded`` to ``path`` atomically (:func:`~fewshot.files.atomic_write`); warn on failure."""
    buffer = io.BytesIO()
    np.savez(buffer, images=decoded.images, starts=decoded.starts,
             alphabets=np.array(decoded.alphabets, dtype=str), characters=np.array(decoded.characters, dtype=str))
    try:
        atomic_write(path, buffer.getvalue())
    except OSError as err:
        warnings.warn(f"cannot write Omniglot cache {path} ({err}); set cache_dir or FEWSHOT_CACHE", stacklevel=3)


def _load_set(root: Path, set_name: str, image_size: int, cache: Path) -> _DecodedSet:
    """A whole set at ``image_size``, from the cache when it is up to date."""
    source = _find_source(root, set_name)
    cache_file = _cache_path(source, set_name, image_size, cache)
    decoded = _read_cache(cache_file)
    if decoded is None:
        decoded = _decode_set(source, set_name, image_size)
        _write_cache(cache_file, decoded)
    return decoded


def _load_sets_covering(alphabets: set[str], root: Path, image_size: int, cache: Path) -> list[_DecodedSet]:
    """Load background, then evaluation only if some of ``alphabets`` are still missing."""
    loaded, missing = [], set(alphabets)
    for set_name in SETS:
        if not missing:
            break
        decoded = _load_set(root, set_name, image_size, cache)
        loaded.append(decoded)
        missing -= set(decoded.alphabets)
    if missing:
        raise ValueError(f"alphabets {sorted(missing)} are in neither Omniglot set under {root}")
    return loaded


def _set_classes(decoded: _DecodedSet, rotations: bool) -> list[_ClassKey]:
    """Every character of a set, times the four rotations when ``rotations``."""
    angles = ROTATIONS if rotations else (0,)
    return [(a, c, angle) for a, c in zip(decoded.alphabets, decoded.characters) for angle in angles]


def _read_split_file(path: Path, rotations: bool) -> list[_ClassKey]:
    """Classes of a Vinyals split file; without ``rotations``, its characters at 0 degrees."""
    if not path.is_file():
        raise FileNotFoundError(f"Vinyals split file {path} not found. Fix: pass splits_dir=DIR holding it.")
    classes = set()
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.strip().split("/")
        if len(parts) != 3 or parts[2] not in {f"rot{angle:03d}" for angle in ROTATIONS}:
            raise ValueError(f"{path}:{number}: expected 'Alphabet/characterNN/rotDDD', got {line!r}")
        angle = int(parts[2].removeprefix("rot")) if rotations else 0
        classes.add((parts[0], parts[1], angle))
    return sorted(classes)


def _keep_alphabets(classes: list[_ClassKey], alphabets: Sequence[str] | None, what: str) -> list[_ClassKey]:
    """The classes of ``alphabets`` (all when ``None``); unknown names raise ``ValueError``."""
    if alphabets is None:
        return classes
    wanted = {alphabets} if isinstance(alphabets, str) else set(alphabets)
    known = {alphabet for alphabet, _, _ in classes}
    unknown = sorted(wanted - known)
    if unknown:
        raise ValueError(f"unknown alphabets {unknown} for {what}; known: {sorted(known)}")
    return [key for key in classes if key[0] in wanted]


def _assemble(sets: list[_DecodedSet], classes: list[_ClassKey], rotations: bool) -> LabelledData:
    """Stack the images of ``classes`` (in order) into a ``LabelledData``."""
    where = {}
    for decoded in reversed(sets):  # the first set wins should an alphabet be in two
        where.update({key: (decoded, c) for key, c in decoded.index().items()})
    absent = [f"{a}/{c}" for a, c, _ in classes if (a, c) not in where]
    if absent:
        raise ValueError(f"{len(absent)} characters are not in the Omniglot data, e.g. {absent[:5]}")

    chunks, counts = [], []
    for alphabet, character, angle in classes:
        decoded, c = where[(alphabet, character)]
        images = torch.from_numpy(decoded.images[decoded.starts[c] : decoded.starts[c + 1]])
        chunks.append(torch.rot90(images, angle // 90, dims=(-2, -1)))
        counts.append(images.shape[0])
    size = sets[0].images.shape[-1]
    x = torch.cat(chunks).unsqueeze(1) if chunks else torch.empty(0, 1, size, size, dtype=torch.uint8)
    y = torch.repeat_interleave(torch.arange(len(classes)), torch.tensor(counts, dtype=torch.long))
    suffix = (lambda angle: f"/rot{angle:03d}") if rotations else (lambda angle: "")
    return LabelledData(
        x=x,
        y=y,
        class_names=tuple(f"{a}/{c}{suffix(angle)}" for a, c, angle in classes),
        class_groups=tuple(a for a, _, _ in classes),
    )
