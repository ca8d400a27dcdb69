"""Lake et al. (2015) one-shot runs: reading the layout, scoring, the fixture writer, within-alphabet episodes
and ``fewshot eval --benchmark omniglot-lake-runs``."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from conftest import cli, index_data, tiny_protonet
from fewshot.cli import main
from fewshot.datasets.lake_runs import lake_error, load_lake_runs, write_lake_runs
from fewshot.datasets.omniglot import PACKAGE_DATA_ROOT
from fewshot.learners.base import Learner
from fewshot.tasks.sampler import ClassificationTasks
from fewshot.config import resolve
from fewshot.domains.omniglot import assign_holdout
from fewshot.registry import DOMAINS

BACKGROUND = PACKAGE_DATA_ROOT / "omniglot" / "images_background.zip"
HELD_OUT = ["Anglo-Saxon_Futhorc", "Futurama", "Grantha", "N_Ko", "Syriac_(Estrangelo)"]  # default test holdout


def png(seed: int) -> bytes:
    """A distinct 105x105 1-bit image (sparse random 'ink' on white)."""
    ink = np.random.default_rng(seed).random((105, 105)) < 0.1
    buffer = io.BytesIO()
    Image.fromarray(np.where(ink, 0, 255).astype(np.uint8)).convert("1").save(buffer, format="PNG")
    return buffer.getvalue()


def synthetic_members(runs: int = 2, ways: int = 20) -> tuple[dict[str, bytes], list[list[int]]]:
    """Runs whose test item m is an exact copy of training class perm[m] (a random permutation per run)."""
    members, perms = {}, []
    for r in range(1, runs + 1):
        perm = np.random.default_rng(100 + r).permutation(ways).tolist()
        lines = []
        for k in range(ways):
            members[f"run{r:02d}/training/class{k + 1:02d}.png"] = png(1000 * r + k)
        for m, k in enumerate(perm):
            members[f"run{r:02d}/test/item{m + 1:02d}.png"] = png(1000 * r + k)
            lines.append(f"run{r:02d}/test/item{m + 1:02d}.png run{r:02d}/training/class{k + 1:02d}.png")
        members[f"run{r:02d}/class_labels.txt"] = ("\n".join(lines) + "\n").encode()
        perms.append(perm)
    return members, perms


def write_zip(root: Path, members: dict[str, bytes], prefix: str = "") -> Path:
    path = root / "omniglot" / "all_runs.zip"
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(prefix + name, data)
    return path


def zip_members(path: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(path) as zf:
        return {n: zf.read(n) for n in zf.namelist()}


class Oracle(Learner):
    """Predicts the support image nearest to the query: exact for queries that copy a support image."""

    def adapt(self, support_x, support_y, steps=None):
        return support_x.flatten(1), support_y

    def predict(self, adapted, query_x):
        xs, ys = adapted
        nearest = torch.cdist(query_x.flatten(1), xs).argmin(dim=1)
        return torch.nn.functional.one_hot(ys[nearest], int(ys.max()) + 1).float()


class Constant(Learner):
    """Always predicts class 0."""

    def adapt(self, support_x, support_y, steps=None):
        return int(support_y.max()) + 1

    def predict(self, ways, query_x):
        return torch.nn.functional.one_hot(torch.zeros(len(query_x), dtype=torch.long), ways).float()


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    root = tmp_path_factory.mktemp("lake-synthetic")
    members, perms = synthetic_members()
    write_zip(root, members)
    return root, members, perms


# --- reading and scoring --------------------------------------------------------------------------------------


def test_labels_file_is_honoured(synthetic):
    root, _, perms = synthetic
    runs = load_lake_runs(root, image_size=28)
    assert [r.name for r in runs] == ["run01", "run02"]
    for run, perm in zip(runs, perms):
        assert run.support_x.shape == run.query_x.shape == (20, 1, 28, 28) and run.support_x.dtype == torch.float32
        assert run.support_y.tolist() == list(range(20)) and run.query_y.tolist() == perm
        assert 0.0 <= float(run.support_x.min()) and float(run.support_x.max()) <= 1.0
        assert run.characters is None                                        # no manifest
    oracle = lake_error(Oracle(), runs)
    assert oracle["metric"] == "error" and oracle["runs"] == 2
    assert oracle["mean"] == 0.0 and oracle["per_run"] == [0.0, 0.0] and oracle["ci95"] == 0.0
    constant = lake_error(Constant(), runs)
    assert constant["mean"] == pytest.approx(0.95) and len(constant["per_run"]) == 2


def test_images_are_preprocessed_like_load_omniglot(tmp_path):
    from fewshot.datasets.omniglot import load_omniglot

    write_lake_runs(tmp_path / "omniglot", BACKGROUND, ["Futurama"], runs=1, seed=3)
    run = load_lake_runs(tmp_path, image_size=28)[0]
    manifest = json.loads(zip_members(tmp_path / "omniglot" / "all_runs.zip")["fixture.json"])["runs"][0]
    data = load_omniglot("background", image_size=28, alphabets=["Futurama"])
    k = data.class_names.index(run.characters[0])
    drawer = manifest["train_drawer"]                      # examples of a class are in drawer (filename) order
    expected = data.x[data.y == k][drawer - 1].float() / 255.0
    assert torch.equal(run.support_x[0], expected)


def test_zip_prefixed_zip_and_folder_agree(tmp_path):
    write_lake_runs(tmp_path / "a" / "omniglot", BACKGROUND, HELD_OUT, runs=3, seed=1)
    write_lake_runs(tmp_path / "b" / "omniglot", BACKGROUND, HELD_OUT, runs=3, seed=1, archive=False)
    members = zip_members(tmp_path / "a" / "omniglot" / "all_runs.zip")
    members["__MACOSX/all_runs/run01/._class_labels.txt"] = b"\x00junk"
    write_zip(tmp_path / "c", members, prefix="all_runs/")
    a, b, c = (load_lake_runs(tmp_path / d) for d in "abc")
    for x, y, z in zip(a, b, c):
        assert x.name == y.name == z.name and x.characters == y.characters == z.characters
        for field in ("support_x", "support_y", "query_x", "query_y"):
            assert torch.equal(getattr(x, field), getattr(y, field)) and torch.equal(getattr(x, field), getattr(z, field))


def test_writer_layout_drawers_bytes_and_determinism(tmp_path):
    path = write_lake_runs(tmp_path / "x", BACKGROUND, HELD_OUT + ["Braille"], runs=4, seed=5)
    members = zip_members(path)
    manifest = json.loads(members["fixture.json"])
    assert manifest["alphabets"] == sorted(HELD_OUT + ["Braille"]) and len(manifest["runs"]) == 4
    source = zip_members(BACKGROUND)
    for entry in manifest["runs"]:
        run, alphabet = entry["run"], entry["alphabet"]
        assert entry["train_drawer"] != entry["test_drawer"] and len(set(entry["characters"])) == 20
        labels = [line.split() for line in members[f"{run}/class_labels.txt"].decode().splitlines()]
        assert sorted(item for item, _ in labels) == [f"{run}/test/item{m:02d}.png" for m in range(1, 21)]
        assert sorted(cls for _, cls in labels) == [f"{run}/training/class{k:02d}.png" for k in range(1, 21)]
        assert [cls for _, cls in labels] != sorted(cls for _, cls in labels)     # a permutation, not identity
        for item, cls in labels:                                                  # original bytes, right drawers
            char = entry["characters"][int(cls[-6:-4]) - 1]
            (train_name,) = [n for n in source if n.startswith(f"images_background/{alphabet}/{char}/")
                             and n.endswith(f"_{entry['train_drawer']:02d}.png")]
            assert members[cls] == source[train_name]
            assert members[item] == source[train_name[:-6] + f"{entry['test_drawer']:02d}.png"]
    again = write_lake_runs(tmp_path / "y", BACKGROUND, HELD_OUT + ["Braille"], runs=4, seed=5)
    assert again.read_bytes() == path.read_bytes()
    other = write_lake_runs(tmp_path / "z", BACKGROUND, HELD_OUT + ["Braille"], runs=4, seed=6)
    assert other.read_bytes() != path.read_bytes()


def test_writer_skips_small_alphabets_and_refuses_unknown(tmp_path):
    with pytest.raises(ValueError, match="Klingon"):
        write_lake_runs(tmp_path, BACKGROUND, ["Klingon"], runs=1)
    with pytest.raises(ValueError, match="has 20 characters"):
        write_lake_runs(tmp_path, BACKGROUND, ["Ojibwe_(Canadian_Aboriginal_Syllabics)"], runs=1)  # 14 characters


def test_missing_runs_name_the_path_and_the_fix(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"all_runs\.zip.*make_lake_runs"):
        load_lake_runs(tmp_path)


def _break(members: dict[str, bytes], how: str) -> dict[str, bytes]:
    members = dict(members)
    labels = members["run01/class_labels.txt"].decode().splitlines()
    if how == "three fields":
        labels[0] += " extra"
    elif how == "missing class":
        labels[0] = labels[0].split()[0] + " run01/training/class99.png"
    elif how == "unlabelled item":
        labels = labels[1:]
    elif how == "twice":
        labels[1] = labels[0]
    elif how == "other run":
        labels[0] = labels[0].replace("run01/training", "run02/training")
    elif how == "no labels":
        return {k: v for k, v in members.items() if not k.endswith("class_labels.txt")}
    elif how == "bad image":
        members["run01/training/class01.png"] = b"not a png"
        return members
    members["run01/class_labels.txt"] = "\n".join(labels).encode()
    return members


@pytest.mark.parametrize("how, message", [
    ("three fields", r"run01/class_labels\.txt line 1: expected"),
    ("missing class", r"run01/class_labels\.txt line 1: training image run01/training/class99\.png is not in"),
    ("unlabelled item", r"run01/class_labels\.txt gives no class for 1 test images"),
    ("twice", r"run01/class_labels\.txt line 2: .* labelled twice"),
    ("other run", r"run01/class_labels\.txt line 1: names another run"),
    ("no labels", r"holds no runNN/class_labels\.txt"),
    ("bad image", r"bad image run01/training/class01\.png"),
])
def test_malformed_runs_name_the_member(synthetic, tmp_path, how, message):
    _, members, _ = synthetic
    write_zip(tmp_path, _break(members, how), prefix="all_runs/" if how == "twice" else "")
    with pytest.raises(ValueError, match=message):
        load_lake_runs(tmp_path)


# --- within-group episodes -----------------------------------------------------------------------------------


def test_within_group_episodes_share_one_group_and_are_deterministic():
    data = index_data([5] * 12 + [2] * 3)     # groups c % 3, 4 classes each with >= 3 examples; 12-14 too small
    tasks = ClassificationTasks(data, ways=3, shots=1, queries=2, seed=7, within_group=True)
    again = ClassificationTasks(data, ways=3, shots=1, queries=2, seed=7, within_group=True)
    groups = set()
    for i in range(40):
        classes = tasks.episode_classes(i)
        assert len({data.class_groups[c] for c in classes}) == 1 and all(c < 12 for c in classes)
        groups.add(data.class_groups[classes[0]])
        episode, twin = tasks[i], again[i]
        assert torch.equal(episode.support_x, twin.support_x) and torch.equal(episode.query_x, twin.query_x)
        # x[i] == i: the drawn examples belong to the episode's classes, label j to classes[j]
        assert data.y[episode.support_x.flatten().long()].tolist() == [classes[j] for j in episode.support_y]
        assert data.y[episode.query_x.flatten().long()].tolist() == [classes[j] for j in episode.query_y]
    assert groups == {"group0", "group1", "group2"}
    plain = ClassificationTasks(data, ways=3, shots=1, queries=2, seed=7)
    assert any(len({data.class_groups[c] for c in plain.episode_classes(i)}) > 1 for i in range(40))


def test_within_group_skips_small_groups_and_refuses_when_none_is_big_enough():
    data = index_data([5, 5, 5, 5, 5, 5, 1, 1, 1])    # group0: 3 classes (0, 3, 6); only 0 and 3 have 3 examples
    tasks = ClassificationTasks(data, ways=2, shots=1, queries=2, within_group=True)
    assert all(6 not in tasks.episode_classes(i) for i in range(30))
    with pytest.raises(ValueError, match=r"ways=3 .*largest group has 2.*lower ways"):
        ClassificationTasks(data, ways=3, shots=1, queries=2, within_group=True)


def test_within_alphabet_config_draws_training_and_validation_within_one_alphabet():
    config = assign_holdout(tiny_protonet(within_alphabet=True, train_ways=20))
    omniglot = DOMAINS["omniglot"]
    for tasks in (omniglot.train_tasks(config), omniglot.val_tasks(config)):
        for i in range(5):
            assert len({tasks.data.class_groups[c] for c in tasks.episode_classes(i)}) == 1
    with pytest.raises(ValueError, match="^within_alphabet does not apply to maml on sinusoid with net mlp; drop it$"):
        resolve({}, {"dataset": "sinusoid", "algo": "maml", "net": "mlp", "within_alphabet": True})


# --- the command line ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def lake_run(tmp_path_factory) -> Path:
    """A 1-step within-alphabet ProtoNet run trained through ``main`` from a YAML config."""
    root = tmp_path_factory.mktemp("lake-cli")
    config = root / "tiny.yaml"
    config.write_text(yaml.safe_dump({"algo": "protonet", "within_alphabet": True, "ways": 5, "train_ways": 20,
                                      "shots": 1, "queries": 2, "train_queries": 1, "meta_batch": 1,
                                      "val_every": 1, "val_episodes": 2, "test_episodes": 2,
                                      "checkpoint_every": 1, "log_every": 1}))
    run = root / "run"
    assert main(["train", "--config", str(config), "--steps", "1", "--out", str(run), "--no-progress"]) == 0
    assert yaml.safe_load((run / "config.yaml").read_text())["data"]["within_alphabet"] is True
    return run




def test_cli_lake_benchmark_prints_the_error_as_json(lake_run, tmp_path, capsys):
    test_alphabets = yaml.safe_load((lake_run / "config.yaml").read_text())["data"]["test_alphabets"]
    write_lake_runs(tmp_path / "omniglot", BACKGROUND, test_alphabets)
    code, out, err = cli(["eval", lake_run, "--benchmark", "omniglot-lake-runs", "--data-root", tmp_path, "--json"],
                         capsys)
    assert code == 0, err
    result = json.loads(out.strip().splitlines()[-1])
    assert result["metric"] == "error" and result["runs"] == 20 and len(result["per_run"]) == 20
    assert 0.0 <= result["mean"] <= 1.0 and result["ci95"] >= 0 and result["benchmark"] == "omniglot-lake-runs"
    code, out, _ = cli(["eval", lake_run, "--benchmark", "omniglot-lake-runs", "--data-root", tmp_path], capsys)
    assert code == 0 and out.startswith(f"error: {result['mean']:.4f}") and "20 runs" in out


def test_cli_lake_benchmark_refuses_training_characters_and_notes_a_missing_manifest(lake_run, tmp_path, capsys):
    write_lake_runs(tmp_path / "seen" / "omniglot", BACKGROUND, ["Latin", "Greek"], runs=2)   # training alphabets
    code, out, err = cli(["eval", lake_run, "--benchmark", "omniglot-lake-runs", "--data-root", tmp_path / "seen"],
                         capsys)
    assert code == 2 and out == "" and len(err.strip().splitlines()) == 1 and "share" in err
    members = zip_members(tmp_path / "seen" / "omniglot" / "all_runs.zip")
    del members["fixture.json"]                                                    # like the official archive
    write_zip(tmp_path / "official", members)
    code, out, err = cli(["eval", lake_run, "--benchmark", "omniglot-lake-runs", "--data-root",
                          tmp_path / "official", "--json"], capsys)
    assert code == 0 and "no fixture.json manifest" in err and json.loads(out.strip().splitlines()[-1])["runs"] == 2
    code, _, err = cli(["eval", lake_run, "--benchmark", "omniglot-lake-runs", "--data-root", tmp_path / "none"],
                       capsys)
    assert code == 2 and "make_lake_runs" in err and len(err.strip().splitlines()) == 1
    code, _, err = cli(["eval", lake_run, "--benchmark", "omniglot-lake-runs", "--ways", "5"], capsys)
    assert code == 2 and "drop --ways" in err
