"""The one-shot classification runs of Lake et al. (2015): 20-way, 1-shot, within one alphabet.

The benchmark (``all_runs.zip`` of the Omniglot repository) holds 20 runs. Run ``NN`` is::

    runNN/training/class01.png ... class20.png   one drawing each of 20 characters of one alphabet
    runNN/test/item01.png ... item20.png         20 queries, the same characters by another drawer
    runNN/class_labels.txt                       lines "runNN/test/itemMM.png runNN/training/classKK.png"

Each line names a query and its correct training class. Lake's own scoring script sorts the
training and test file names; we do the same, so support label ``j`` is the ``j``-th training
file in name order and a query's label is the position of the training file its line names.
The score is the error rate (1 - accuracy) of each run, averaged over the runs.

Where the runs are read from, under ``data_root``: ``omniglot/all_runs.zip`` (members either
``runNN/...`` or under one folder such as ``all_runs/runNN/...``), else the extracted folder
``omniglot/all_runs/``. Images are preprocessed exactly as :func:`~fewshot.datasets.omniglot.load_omniglot`
does (bilinear resize, ink high), then scaled to ``float32`` in ``[0, 1]`` as episodes are.

The official archive is not shipped. :func:`write_lake_runs` builds a stand-in in the same
layout from chosen alphabets of an Omniglot set (``benchmarks/make_lake_runs.py`` does so from
the background alphabets our runs hold out for testing), and adds ``fixture.json``, a manifest
of the source alphabet and characters, so an evaluation can check that the runs share no
character with the learner's training classes.
"""

from __future__ import annotations

import io
import json
import re
import zipfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from fewshot.datasets.omniglot import _DECODE_ERRORS, _decode_png, _open_source, resolve_data_root
from fewshot.files import atomic_write
from fewshot.tasks.episode import Episode
from fewshot.tasks.seeding import generator

RUNS_ARCHIVE = "all_runs.zip"
RUNS_FOLDER = "all_runs"
MANIFEST = "fixture.json"
MANIFEST_FORMAT = "fewshot-lake-runs/1"
LABELS_FILE = "class_labels.txt"
WAYS = 20

_LABELS_RE = re.compile(r"^(?P<prefix>(?:.*/)?)(?P<run>run\d+)/class_labels\.txt$")
_IMAGE_RE = re.compile(r"(?:^|/)(?P<run>run\d+)/(?P<part>training|test)/(?P<file>[^/]+\.png)$", re.IGNORECASE)


@dataclass(frozen=True)
class LakeRun:
    """One run: a 1-shot support set and its queries, labels in ``0..ways-1``.

    Attributes:
        name: ``"runNN"``.
        support_x: ``float32`` ``[ways, 1, S, S]`` in ``[0, 1]``, ink high; the training files in name order.
        support_y: ``[ways]``, ``0..ways-1``.
        query_x: ``float32`` ``[Q, 1, S, S]``; the test files in name order.
        query_y: ``[Q]``: the support label of each query's correct training class (``class_labels.txt``).
        support_files, query_files: the files, relative to the runs' root (``runNN/training/classNN.png``).
        characters: ``"Alphabet/characterNN"`` of each support class (label order), from ``fixture.json``;
            ``None`` for runs without a manifest (the official archive).
    """

    name: str
    support_x: torch.Tensor
    support_y: torch.Tensor
    query_x: torch.Tensor
    query_y: torch.Tensor
    support_files: tuple[str, ...]
    query_files: tuple[str, ...]
    characters: tuple[str, ...] | None = None

    @property
    def ways(self) -> int:
        return int(self.support_y.shape[0])

    def episode(self) -> Episode:
        return Episode(self.support_x, self.support_y, self.query_x, self.query_y)


def find_lake_runs(data_root: str | Path | None = None) -> Path:
    """``<data_root>/omniglot/all_runs.zip``, else the folder ``<data_root>/omniglot/all_runs/``.

    ``data_root`` is resolved as in :func:`~fewshot.datasets.omniglot.load_omniglot`.

    Raises:
        FileNotFoundError: neither exists; the message names both paths and the fix.
    """
    root = resolve_data_root(data_root)
    archive, folder = root / "omniglot" / RUNS_ARCHIVE, root / "omniglot" / RUNS_FOLDER
    if archive.is_file():
        return archive
    if folder.is_dir():
        return folder
    hint = ""
    if (root / RUNS_ARCHIVE).is_file() or (root / RUNS_FOLDER).is_dir():
        hint = f" ({root / RUNS_ARCHIVE} exists: pass its grandparent, the directory that holds omniglot/)"
    raise FileNotFoundError(
        f"Lake one-shot runs not found: looked for {archive} and {folder}/{hint}. Fix: pass --data-root DIR "
        f"(data_root=DIR) where DIR holds omniglot/{RUNS_ARCHIVE} (the official archive from "
        f"github.com/brendenlake/omniglot, python/one-shot-classification/), or build a stand-in from held-out "
        f"background alphabets with `python benchmarks/make_lake_runs.py --data-root DIR`."
    )


def load_lake_runs(data_root: str | Path | None = None, image_size: int = 28) -> list[LakeRun]:
    """Every run under ``data_root`` (see :func:`find_lake_runs`), in run order.

    Raises:
        FileNotFoundError: no runs under ``data_root``.
        ValueError: a malformed layout, labels file or image; the message names the member.
    """
    if not isinstance(image_size, int) or image_size < 1:
        raise ValueError(f"image_size must be a positive int, got {image_size!r}")
    source = find_lake_runs(data_root)
    with _open_runs(source) as (names, read):
        prefix, run_names = _layout(names, source)
        manifest = _read_manifest(prefix, names, read, source)
        runs = [_load_run(source, prefix, run, names, read, image_size, manifest) for run in run_names]
    return runs


def lake_error(learner: Any, runs: Sequence[LakeRun], inner_steps: int | None = None) -> dict[str, Any]:
    """The one-shot error rate of ``learner`` on each run, through ``learner.evaluate_episode``.

    The learner is put in eval mode (and restored). Returns ``{"metric": "error", "mean": …,
    "ci95": …, "runs": len(runs), "per_run": [error of each run]}``; ``ci95`` is
    ``1.96 * std / sqrt(runs)`` over the runs, computed by :func:`~fewshot.evaluate.evaluate`.
    """
    from fewshot.evaluate import evaluate

    if not runs:
        raise ValueError("no Lake runs to evaluate on")
    if getattr(learner, "task", "classification") != "classification":
        raise ValueError(f"the Lake runs are classification; this learner does {learner.task}")
    result = evaluate(learner, [run.episode() for run in runs], len(runs), inner_steps=inner_steps)
    errors = [1.0 - accuracy for accuracy in result.values]
    mean, ci95 = 1.0 - result.mean, result.ci95
    return {"metric": "error", "mean": mean, "ci95": ci95, "runs": len(runs), "per_run": errors}


def write_lake_runs(out_dir: str | Path, set_source_zip: str | Path, alphabets: Sequence[str], runs: int = 20,
                    seed: int = 0, ways: int = WAYS, archive: bool = True) -> Path:
    """Build runs in the layout of ``all_runs.zip`` from ``alphabets`` of an Omniglot set.

    Run ``r`` (deterministic given ``(seed, r)``): one alphabet (the alphabets with at least
    ``ways`` characters, shuffled once by ``seed``, used in turn), ``ways`` of its characters,
    and two distinct drawers common to them: the first draws the training image of every
    character, the second its test image (Lake et al. 2015). Training classes are numbered
    in a random order and test items in another, so ``class_labels.txt`` is a permutation.
    The PNG bytes are copied unchanged. ``fixture.json`` records the source, the alphabet,
    the characters (training-class order) and the drawers of each run.

    Args:
        out_dir: the folder that receives ``all_runs.zip`` (``archive=True``) or ``all_runs/``; pass
            ``DATA_ROOT/omniglot`` for :func:`load_lake_runs` (``DATA_ROOT``) to find them.
        set_source_zip: an Omniglot set, ``images_<set>.zip`` or its extracted ``images_<set>/`` folder
            (members ``<top>/<Alphabet>/characterNN/<id>_<drawer>.png``).
        alphabets: the alphabets to draw from; those with fewer than ``ways`` characters are skipped.
        runs, seed, ways: how many runs, their seed, classes per run.
        archive: write a zip (members ``runNN/...`` at the top, as in the official archive), else a folder.

    Returns:
        The path written.

    Raises:
        ValueError: an alphabet is not in the source, or none has ``ways`` characters with two common drawers.
    """
    if runs < 1 or ways < 2:
        raise ValueError(f"need runs >= 1 and ways >= 2, got runs={runs}, ways={ways}")
    source = Path(set_source_zip)
    if not source.exists():
        raise FileNotFoundError(f"Omniglot set {source} not found; pass images_<set>.zip or its extracted folder")
    with _open_source(source) as (names, read):
        table = _drawings(names, source)            # alphabet -> character -> drawer -> member
        unknown = sorted(set(alphabets) - set(table))
        if unknown:
            raise ValueError(f"alphabets {unknown} are not in {source}; it holds {sorted(table)}")
        usable = sorted(a for a in set(alphabets) if len(table[a]) >= ways)
        if not usable:
            raise ValueError(f"none of the alphabets {sorted(set(alphabets))} has {ways} characters in {source} "
                             f"(sizes {({a: len(table[a]) for a in sorted(set(alphabets))})}); pass larger alphabets")
        order = [usable[i] for i in torch.randperm(len(usable), generator=generator(seed)).tolist()]
        files: dict[str, bytes] = {}
        manifest_runs = []
        for r in range(runs):
            g = generator(seed, r + 1)
            alphabet = order[r % len(order)]
            chars = sorted(table[alphabet])
            picked = [chars[i] for i in torch.randperm(len(chars), generator=g)[:ways].tolist()]
            common = sorted(set.intersection(*(set(table[alphabet][c]) for c in picked)))
            if len(common) < 2:
                raise ValueError(f"the characters drawn for run {r + 1} of {alphabet} share fewer than two drawers "
                                 f"in {source}; is the set complete?")
            train_drawer, test_drawer = (common[i] for i in torch.randperm(len(common), generator=g)[:2].tolist())
            item_order = torch.randperm(ways, generator=g).tolist()   # item m shows character picked[item_order[m]]
            run = f"run{r + 1:02d}"
            lines = []
            for k, char in enumerate(picked):
                files[f"{run}/training/class{k + 1:02d}.png"] = read(table[alphabet][char][train_drawer])
            for m, k in enumerate(item_order):
                files[f"{run}/test/item{m + 1:02d}.png"] = read(table[alphabet][picked[k]][test_drawer])
                lines.append(f"{run}/test/item{m + 1:02d}.png {run}/training/class{k + 1:02d}.png")
            files[f"{run}/{LABELS_FILE}"] = ("\n".join(lines) + "\n").encode()
            manifest_runs.append({"run": run, "alphabet": alphabet, "characters": picked,
                                  "train_drawer": train_drawer, "test_drawer": test_drawer})
    manifest = {"format": MANIFEST_FORMAT, "source": source.name, "seed": seed, "ways": ways,
                "alphabets": usable, "skipped_alphabets": sorted(set(alphabets) - set(usable)), "runs": manifest_runs}
    files[MANIFEST] = (json.dumps(manifest, indent=1) + "\n").encode()

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if archive:
        target = out_dir / RUNS_ARCHIVE
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w") as zf:
            for name in sorted(files):
                info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))   # byte-reproducible
                info.compress_type = zipfile.ZIP_STORED if name.endswith(".png") else zipfile.ZIP_DEFLATED
                info.external_attr = 0o644 << 16
                zf.writestr(info, files[name])
        atomic_write(target, buffer.getvalue())
        return target
    target = out_dir / RUNS_FOLDER
    for name, data in files.items():
        path = target / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return target


def _drawings(names: list[str], source: Path) -> dict[str, dict[str, dict[int, str]]]:
    """``alphabet -> character -> drawer -> member`` of an Omniglot set's ``<top>/<A>/<c>/<id>_<drawer>.png``."""
    table: dict[str, dict[str, dict[int, str]]] = {}
    for name in names:
        parts = name.split("/")
        if len(parts) != 4 or not parts[3].lower().endswith(".png"):
            continue
        match = re.fullmatch(r"\d+_(\d+)\.png", parts[3], re.IGNORECASE)
        if match is None:
            raise ValueError(f"{source}: {name} is not named <id>_<drawer>.png like Omniglot's images")
        table.setdefault(parts[1], {}).setdefault(parts[2], {})[int(match.group(1))] = name
    if not table:
        raise ValueError(f"{source} holds no Omniglot images (<top>/<Alphabet>/characterNN/<id>_<drawer>.png)")
    return table


@contextmanager
def _open_runs(source: Path) -> Iterator[tuple[list[str], Callable[[str], bytes]]]:
    """The runs' member names (``/``-separated, relative to the zip or folder) and a reader."""
    if source.is_dir():
        names = [p.relative_to(source).as_posix() for p in source.rglob("*") if p.is_file()]
        yield names, lambda name: (source / name).read_bytes()
        return
    try:
        archive = zipfile.ZipFile(source)
    except zipfile.BadZipFile as err:
        raise ValueError(f"{source} is not a readable zip ({err}); it is probably truncated: fetch it again") from err
    with archive:
        yield [n for n in archive.namelist() if not n.endswith("/")], archive.read


def _junk(name: str) -> bool:
    """Archive debris: macOS resource forks and metadata folders."""
    return name.startswith("__MACOSX/") or name.rsplit("/", 1)[-1].startswith("._")


def _layout(names: list[str], source: Path) -> tuple[str, list[str]]:
    """The folder prefix the runs sit under (``""`` or e.g. ``"all_runs/"``) and the run names, sorted."""
    found: dict[str, str] = {}
    for name in names:
        if _junk(name):
            continue
        match = _LABELS_RE.match(name)
        if match:
            found[match.group("run")] = match.group("prefix")
    if not found:
        raise ValueError(f"{source} holds no runNN/{LABELS_FILE}: not the layout of the Lake one-shot runs "
                         f"(runNN/training/classNN.png, runNN/test/itemNN.png, runNN/{LABELS_FILE}). "
                         "Fix: point --data-root at the directory holding omniglot/all_runs.zip")
    prefixes = sorted(set(found.values()))
    if len(prefixes) > 1:
        raise ValueError(f"{source} holds runs under several folders ({prefixes}); keep one copy of the runs")
    return prefixes[0], sorted(found, key=lambda run: int(run[3:]))


def _read_manifest(prefix: str, names: list[str], read: Callable[[str], bytes], source: Path) -> dict | None:
    member = prefix + MANIFEST
    if member not in names:
        return None
    try:
        manifest = json.loads(read(member))
        runs = {entry["run"]: entry for entry in manifest["runs"]}
        for entry in runs.values():
            if not (isinstance(entry["alphabet"], str) and all(isinstance(c, str) for c in entry["characters"])):
                raise TypeError("alphabet and characters must be strings")
    except (ValueError, KeyError, TypeError) as err:
        raise ValueError(f"{source}: malformed {member} ({err!r}); rebuild the runs with "
                         "benchmarks/make_lake_runs.py or delete the manifest") from err
    return runs


def _natural(name: str) -> list:
    """Sort key comparing digit runs as numbers (``class2`` < ``class10``); equals name order when zero-padded."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def _load_run(source: Path, prefix: str, run: str, names: list[str], read: Callable[[str], bytes],
              image_size: int, manifest: dict | None) -> LakeRun:
    labels_member = f"{prefix}{run}/{LABELS_FILE}"

    def images(part: str) -> list[str]:
        folder = f"{prefix}{run}/{part}/"
        return sorted((n[len(prefix):] for n in names if n.startswith(folder) and n.lower().endswith(".png")
                       and "/" not in n[len(folder):] and not _junk(n)), key=_natural)

    training, test = images("training"), images("test")
    if len(training) < 2 or not test:
        raise ValueError(f"{source}: {prefix}{run}/ holds {len(training)} training and {len(test)} test images; "
                         f"a run needs {run}/training/classNN.png (at least two) and {run}/test/itemNN.png")
    try:
        text = read(labels_member).decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise ValueError(f"{source}: {labels_member} is not text ({err})") from err
    answer: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{source}: {labels_member} line {number}"
        fields = line.replace("\\", "/").split()
        if len(fields) != 2:
            raise ValueError(f"{where}: expected '{run}/test/itemNN.png {run}/training/classNN.png', got {line!r}")
        parsed = [_IMAGE_RE.search(f) for f in fields]
        if parsed[0] is None or parsed[1] is None or parsed[0].group("part").lower() != "test" \
                or parsed[1].group("part").lower() != "training":
            raise ValueError(f"{where}: expected '{run}/test/itemNN.png {run}/training/classNN.png', got {line!r}")
        item, cls = (f"{m.group('run')}/{m.group('part')}/{m.group('file')}" for m in parsed)
        if parsed[0].group("run") != run or parsed[1].group("run") != run:
            raise ValueError(f"{where}: names another run than {run}: {line!r}")
        if item not in test:
            raise ValueError(f"{where}: test image {item} is not in {source} (expected {prefix}{item})")
        if cls not in training:
            raise ValueError(f"{where}: training image {cls} is not in {source} (expected {prefix}{cls})")
        if item in answer:
            raise ValueError(f"{where}: {item} is labelled twice")
        answer[item] = cls
    unlabelled = [t for t in test if t not in answer]
    if unlabelled:
        raise ValueError(f"{source}: {labels_member} gives no class for {len(unlabelled)} test images, "
                         f"e.g. {prefix}{unlabelled[0]}")

    def decode(files: list[str]) -> torch.Tensor:
        out = torch.empty(len(files), 1, image_size, image_size)
        for i, name in enumerate(files):
            try:
                out[i, 0] = torch.from_numpy(_decode_png(read(prefix + name), image_size)).float().div_(255.0)
            except _DECODE_ERRORS as err:
                raise ValueError(f"{source}: bad image {prefix}{name}: {err}") from err
        return out

    position = {name: j for j, name in enumerate(training)}
    characters = None
    if manifest is not None:
        entry = manifest.get(run)
        if entry is None or len(entry["characters"]) != len(training):
            raise ValueError(f"{source}: {prefix}{MANIFEST} does not describe the {len(training)} classes of {run}; "
                             "rebuild the runs or delete the manifest")
        characters = tuple(f"{entry['alphabet']}/{c}" for c in entry["characters"])
    return LakeRun(
        name=run,
        support_x=decode(training),
        support_y=torch.arange(len(training)),
        query_x=decode(test),
        query_y=torch.tensor([position[answer[t]] for t in test], dtype=torch.long),
        support_files=tuple(training),
        query_files=tuple(test),
        characters=characters,
    )
