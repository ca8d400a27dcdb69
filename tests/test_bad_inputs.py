"""The bad-input table (docs/bad-inputs.md): every row is a case here, answered by exit status 2 and one error
line (CLI) or a ValueError / FileNotFoundError (API), never by a traceback; the message must be the one the
table shows (with the test's directory written as DIR; a message ending in "…" is a prefix)."""

from __future__ import annotations

import io
import re
import shutil
import sys
import zipfile
from pathlib import Path
from typing import Callable, NamedTuple

import pytest
import torch
from PIL import Image
from torch import nn

import fewshot

from conftest import index_data, tiny_protonet, tiny_sinusoid
from fewshot.checkpoint import tensor_path
from fewshot.cli import main
from fewshot.datasets import omniglot
from fewshot.datasets.labelled import LabelledData
from fewshot.datasets.omniglot import load_omniglot
from fewshot.distributed import task_slice
from fewshot.evaluate import evaluate
from fewshot.tasks.sampler import ClassificationTasks
from fewshot.tasks.sinusoid import SinusoidTasks
from fewshot.runs import trainer_for

TABLE = Path(__file__).resolve().parent.parent / "docs" / "bad-inputs.md"
MOLECULES = Path(__file__).resolve().parent / "data" / "molecules"


class Case(NamedTuple):
    id: str
    what: str
    run: str | Callable[[Path], object]   # CLI arguments ("{d}" is the fixture directory), or an API call
    setup: Callable[[Path, pytest.MonkeyPatch], None] | None = None   # the environment the row describes


def hide_module(name: str) -> Callable[[Path, pytest.MonkeyPatch], None]:
    """A ``setup`` under which ``import name`` (and its submodules) fails as if it were not installed."""
    def setup(d: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        for module in [m for m in sys.modules if m == name or m.startswith(name + ".")] + [name]:
            monkeypatch.setitem(sys.modules, module, None)
    return setup


def damage_embedded_background(d: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The package's background zip replaced (for this test) by a file that is not it."""
    monkeypatch.setattr(omniglot, "EMBEDDED_BACKGROUND", d / "damaged-embedded.zip")


CASES = [
    # -- episode shape -------------------------------------------------------------------------------------
    Case("ways-1", "one-way episodes", "train --ways 1 --steps 1 --out {d}/r"),
    Case("ways-too-many", "more ways than the validation classes", "train --ways 200 --steps 1 --out {d}/r"),
    Case("shots-too-many", "more shots + queries than a class has examples",
         "train --shots 30 --steps 1 --out {d}/r"),
    Case("queries-0", "zero queries", "train --queries 0"),
    Case("eval-shots-too-many", "eval with more shots than a class has", "eval {d}/proto --shots 25"),
    Case("sampler-ways-1", "API: a 1-way sampler", lambda d: ClassificationTasks(index_data([4, 4]), 1, 1, 1)),
    Case("sampler-queries", "API: shots + queries over the class size",
         lambda d: ClassificationTasks(index_data([4, 4, 3]), 2, 2, 3)),
    Case("sinusoid-ways", "sinusoid with 5 ways", "train --dataset sinusoid --algo maml --ways 5 --out {d}/r"),
    Case("sinusoid-shots-0", "API: a sinusoid task without support points", lambda d: SinusoidTasks(0, 5)),
    # -- learning rates and steps --------------------------------------------------------------------------
    Case("lr-0", "zero learning rate", "train --lr 0"),
    Case("lr-negative", "negative learning rate", "train --lr -0.1"),
    Case("lr-inf", "infinite learning rate", "train --lr inf"),
    Case("inner-lr-nan", "NaN inner learning rate", "train --inner-lr nan"),
    Case("config-lr-inf", "infinite learning rate in a config file", "train --config {d}/lr-inf.yaml"),
    Case("steps-0", "zero steps", "train --steps 0"),
    Case("steps-negative", "negative steps", "train --steps -5"),
    Case("steps-fraction", "a fractional step count", "train --steps 1.5"),
    Case("meta-batch-0", "an empty meta-batch", "train --meta-batch 0"),
    Case("episodes-0", "API: evaluating on zero episodes", lambda d: evaluate(None, [], episodes=0)),
    Case("meta-batch-per-process", "API: fewer tasks than processes", lambda d: task_slice(2, 0, 4)),
    # -- algorithm, dataset, split ------------------------------------------------------------------------
    Case("algo-unknown", "unknown algorithm", "train --algo maml2"),
    Case("dataset-unknown", "unknown dataset", "train --dataset imagenet"),
    Case("split-unknown", "unknown training split", "train --split validation --out {d}/r"),
    Case("eval-split-unknown", "eval on an unknown split", "eval {d}/proto --split foo"),
    Case("sinusoid-classifier", "a metric learner on a regression task",
         "train --dataset sinusoid --algo protonet --out {d}/r"),
    Case("api-split-unknown", "API: load_omniglot of an unknown split", lambda d: load_omniglot("train")),
    # -- data archives -------------------------------------------------------------------------------------
    Case("data-missing", "a data root without either archive (no fallback to the shipped background set)",
         "train --data-root {d}/nowhere --out {d}/r"),
    Case("archive-empty-file", "an empty (0-byte) archive", "train --data-root {d}/empty-file --out {d}/r"),
    Case("archive-no-images", "a zip without Omniglot images", "train --data-root {d}/no-images --out {d}/r"),
    Case("archive-truncated", "a truncated archive", "train --data-root {d}/truncated --out {d}/r"),
    Case("archive-corrupt", "an archive with a corrupt member", "train --data-root {d}/corrupt --out {d}/r"),
    Case("image-wrong-size", "a 50x50 image inside the archive", "train --data-root {d}/wrong-size --out {d}/r"),
    Case("image-wrong-mode", "an RGB image inside the archive", "train --data-root {d}/wrong-mode --out {d}/r"),
    Case("download-into-file", "downloading into a path that is a file", "download omniglot --data-root {d}/a-file"),
    Case("eval-data-missing", "eval on the evaluation set of a data root without it",
         "eval {d}/proto --split evaluation --data-root {d}/nowhere"),
    Case("embedded-background-damaged", "a data root without the background set, the package's copy damaged",
         "eval {d}/proto --split evaluation --data-root {d}/eval-only", setup=damage_embedded_background),
    Case("rdkit-missing", "a molecule dataset without RDKit installed",
         "train --dataset tox21 --data-root {d}/molecules --steps 1 --out {d}/r", setup=hide_module("rdkit")),
    # -- config files --------------------------------------------------------------------------------------
    Case("config-missing", "a config file that does not exist", "train --config {d}/nope.yaml"),
    Case("config-syntax", "a config file that is not YAML", "train --config {d}/syntax.yaml"),
    Case("config-binary", "a binary config file", "train --config {d}/binary.yaml"),
    Case("config-list", "a config file that is a list", "train --config {d}/list.yaml"),
    Case("config-unknown-key", "an unknown key", "train --config {d}/unknown-key.yaml"),
    Case("config-unknown-did-you-mean", "a misspelt key in a sectioned file", "train --config {d}/sectioned-typo.yaml"),
    Case("config-wrong-type", "a value of the wrong type", "train --config {d}/wrong-type.yaml"),
    Case("config-lr-text", "a learning rate that YAML reads as text", "train --config {d}/lr-text.yaml"),
    Case("config-seed", "a negative seed", "train --config {d}/seed.yaml"),
    Case("config-image-size", "images too small for Conv-4", "train --config {d}/image-size.yaml --out {d}/r"),
    Case("config-holdout", "a negative number of held-out alphabets", "train --config {d}/holdout.yaml"),
    Case("config-on-nonfinite", "an unknown non-finite policy", "train --config {d}/on-nonfinite.yaml"),
    Case("config-precision", "an unknown training precision", "train --config {d}/precision.yaml"),
    Case("config-distance", "a distance the learner does not have", "train --config {d}/distance.yaml"),
    Case("config-grad-clip", "a gradient clip that is not positive", "train --config {d}/grad-clip.yaml"),
    Case("config-ragged-images", "ragged query sets on images", "train --config {d}/ragged.yaml"),
    Case("config-dropout", "dropout for a net without it", "train --config {d}/dropout.yaml"),
    Case("config-ema", "a weight-average decay outside (0, 1)", "train --config {d}/ema.yaml"),
    Case("config-lr-decay", "a learning-rate decay that would grow it", "train --config {d}/lr-decay.yaml"),
    Case("config-lr-schedule", "an unknown learning-rate schedule", "train --config {d}/lr-schedule.yaml"),
    Case("config-cosine-decay", "a step decay under the cosine schedule", "train --config {d}/cosine-decay.yaml"),
    Case("config-pooling", "an unknown pooling of the conv net", "train --config {d}/pooling.yaml"),
    Case("config-channels-relation", "conv widths for a learner with its own encoder",
         "train --config {d}/channels.yaml"),
    Case("config-pooling-resnet12", "a flattened last map for ResNet-12, which averages it",
         "train --config {d}/pooling-resnet12.yaml"),
    Case("config-relation-resnet12", "ResNet-12 for a learner with its own encoder",
         "train --config {d}/relation-resnet12.yaml"),
    Case("distort-molecules", "image distortions on a molecule dataset", "train --dataset tox21 --distort"),
    Case("config-pretrain-classes", "a fine-tune head of the wrong size",
         "train --config {d}/pretrain.yaml --out {d}/r"),
    # -- options of another owner, the model's outputs ----------------------------------------------------
    Case("train-option-not-applicable", "an option of another learner",
         "train --algo protonet --set inner_lr=0.1 --out {d}/r"),
    Case("train-task-scale-classification", "a per-task GP scale for a classifier",
         "train --algo dkt --set task_scale=true --out {d}/r"),
    Case("train-set-wrong-section", "`--set` naming an option under the wrong section",
         "train --set learner.lr=0.1 --out {d}/r"),
    Case("train-output-width", "API: a model whose output width is not the episodes' ways",
         lambda d: fewshot.fit(fewshot.MAML(nn.Linear(1, 10)), ClassificationTasks(index_data([3] * 6), 4, 1, 2),
                               steps=1, meta_batch=1, progress=False)),
    Case("train-encoder-not-vectors", "API: a ProtoNet encoder that returns feature maps, not vectors",
         lambda d: fewshot.fit(fewshot.ProtoNet(nn.Conv2d(1, 8, 3, padding=1)),
                               ClassificationTasks(images_8x8(), 4, 1, 2), steps=1, meta_batch=1, progress=False)),
    # -- run directories and checkpoints -------------------------------------------------------------------
    Case("out-is-a-file", "--out naming a file", "train --out {d}/a-file"),
    Case("resume-other-algo", "resuming a ProtoNet run as MAML", "train --algo maml --out {d}/proto"),
    Case("resume-damaged-log", "resuming a run whose metrics.jsonl is damaged", "train --out {d}/bad-log --steps 2"),
    Case("eval-missing-run", "eval of a directory that is not a run", "eval {d}/nowhere"),
    Case("eval-no-checkpoint", "eval of a run without checkpoints", "eval {d}/no-checkpoint"),
    Case("eval-damaged-config", "eval of a run with a damaged config.yaml", "eval {d}/bad-config"),
    Case("eval-tampered", "eval of a tampered checkpoint", "eval {d}/tampered"),
    Case("eval-other-architecture", "eval of a checkpoint from a different architecture",
         "eval {d}/other-architecture"),
    Case("eval-maml-ways", "eval of a 1-way MAML head with 5 ways", "eval {d}/sinusoid --ways 5"),
    Case("eval-within-alphabet-sinusoid", "episodes within one alphabet of a sinusoid run",
         "eval {d}/sinusoid --within-alphabet"),
    Case("eval-flag-other-domain", "a molecule flag for an Omniglot run", "eval {d}/proto --support-size 16"),
    Case("eval-augment-support-sinusoid", "distorted support copies for a sinusoid run",
         "eval {d}/sinusoid --augment-support 4"),
    Case("eval-ensemble-split", "an ensemble of runs trained on different data", "eval {d}/proto --ensemble {d}/sinusoid"),
    Case("eval-ensemble-trained-on", "an ensemble scored on validation alphabets one of its runs trained on",
         "eval {d}/proto --ensemble {d}/proto-v1 --split val"),
    Case("device-unknown", "a device torch does not have", "train --device gpu"),
    Case("device-no-gpu", "a GPU on a machine without one (CUDA hidden from torch)", "eval {d}/proto --device cuda"),
    Case("eval-other-dataset", "eval of an Omniglot run on sinusoid", "eval {d}/proto --dataset sinusoid"),
    # -- calibration and temperature scaling ---------------------------------------------------------------
    Case("eval-temperature-unfitted", "the fitted temperature of a run never calibrated",
         "eval {d}/proto --temperature fitted"),
    Case("eval-temperature-0", "a temperature of 0", "eval {d}/proto --temperature 0"),
    Case("eval-temperature-other-checkpoint", "a temperature fitted to another checkpoint",
         "eval {d}/calibrated --checkpoint last --temperature fitted"),
    Case("eval-temperature-damaged", "a damaged calibration.json", "eval {d}/bad-calibration --temperature fitted"),
    Case("eval-temperature-ensemble", "one run's fitted temperature for an ensemble",
         "eval {d}/proto --ensemble {d}/proto-v1 --temperature fitted"),
    Case("eval-calibration-sinusoid", "calibration of a regression run", "eval {d}/sinusoid --calibration"),
    Case("eval-calibration-benchmark", "calibration of the Lake benchmark's one-shot error",
         "eval {d}/proto --benchmark omniglot-lake-runs --calibration"),
    Case("eval-plot-into-file", "a reliability diagram into a path that is a file", "eval {d}/proto --plot {d}/a-file"),
    Case("calibrate-sinusoid", "temperature scaling of a regression run", "calibrate {d}/sinusoid"),
    Case("calibrate-missing-run", "calibrating a directory that is not a run", "calibrate {d}/nowhere"),
]


def images_8x8() -> LabelledData:
    """Four classes of six blank 8x8 grey images."""
    return LabelledData(torch.zeros(24, 1, 8, 8, dtype=torch.uint8), torch.arange(4).repeat_interleave(6))


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def write_zip(root: Path, members: dict[str, bytes], compression=zipfile.ZIP_DEFLATED,
              set_name: str = "background") -> Path:
    path = root / "omniglot" / f"images_{set_name}.zip"
    path.parent.mkdir(parents=True)
    with zipfile.ZipFile(path, "w", compression) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return path


def omniglot_members(odd: Image.Image | None = None, set_name: str = "background") -> dict[str, bytes]:
    """Ten alphabets of one character drawn twice (105x105, 1-bit); ``odd`` replaces the first image."""
    members = {f"images_{set_name}/Alpha{a}/character01/0001_{i:02d}.png": png(Image.new("1", (105, 105), 1))
               for a in range(10) for i in (1, 2)}
    if odd is not None:
        members["images_background/Alpha0/character01/0001_01.png"] = png(odd)
    return members


@pytest.fixture(scope="module")
def d(tmp_path_factory) -> Path:
    """Bad data roots, config files and run directories, made once."""
    d = tmp_path_factory.mktemp("bad")
    (d / "empty-file" / "omniglot").mkdir(parents=True)
    (d / "empty-file" / "omniglot" / "images_background.zip").write_bytes(b"")
    write_zip(d / "no-images", {"images_background/README.txt": b"not images"})
    good = write_zip(d / "good", omniglot_members(), compression=zipfile.ZIP_STORED)
    (d / "truncated" / "omniglot").mkdir(parents=True)
    (d / "truncated" / "omniglot" / "images_background.zip").write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with zipfile.ZipFile(good) as archive:
        info = archive.getinfo("images_background/Alpha0/character01/0001_01.png")
    raw = bytearray(good.read_bytes())
    start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)
    raw[start + 40: start + 60] = bytes(20)                       # clobber the middle of one PNG
    (d / "corrupt" / "omniglot").mkdir(parents=True)
    (d / "corrupt" / "omniglot" / "images_background.zip").write_bytes(bytes(raw))
    write_zip(d / "wrong-size", omniglot_members(Image.new("1", (50, 50), 1)))
    write_zip(d / "wrong-mode", omniglot_members(Image.new("RGB", (105, 105), "white")))
    (d / "a-file").write_text("not a directory\n")
    write_zip(d / "eval-only", omniglot_members(set_name="evaluation"), set_name="evaluation")
    (d / "damaged-embedded.zip").write_bytes(b"not the archive fewshot ships\n")
    shutil.copytree(MOLECULES / "tox21", d / "molecules" / "tox21")
    configs = {"lr-inf": "lr: .inf\n", "syntax": "ways: [1, 2\nlr: 3\n", "list": "- algo\n- maml\n",
               "unknown-key": "temperature: 2\n", "sectioned-typo": "train:\n  meta_batchsize: 4\n", "wrong-type": "ways: five\n", "lr-text": "lr: 1e-3\n",
               "seed": "seed: -1\n", "image-size": "image_size: 8\n", "holdout": "holdout_val: -1\n",
               "on-nonfinite": "on_nonfinite: ignore\n", "precision": "precision: fp16\n",
               "distance": "algo: protonet\ndistance: cosine\n", "pretrain": "algo: finetune\npretrain_classes: 5\n",
               "grad-clip": "grad_clip: 0\n", "ragged": "ragged_queries: true\n",
               "dropout": "dropout: 0.3\n", "ema": "ema: 1\n",
               "lr-decay": "lr_decay: 2\n", "pooling": "pooling: max\n", "lr-schedule": "lr_schedule: linear\n",
               "cosine-decay": "lr_decay: 0.5\n",
               "channels": "algo: relation\nchannels: 128\n",
               "pooling-resnet12": "net: resnet12\npooling: flatten\n",
               "relation-resnet12": "algo: relation\nnet: resnet12\n"}
    for name, text in configs.items():
        (d / f"{name}.yaml").write_text(text)
    (d / "binary.yaml").write_bytes(b"\xff\xfe\x00\x01")
    trainer_for(tiny_protonet(steps=1), d / "proto", progress=False).run()
    trainer_for(tiny_protonet(steps=1, holdout_val=1), d / "proto-v1", progress=False).run()
    trainer_for(tiny_sinusoid(steps=1), d / "sinusoid", progress=False).run()
    trainer_for(tiny_protonet(algo="maml", net="conv4-strided", train_ways=None, steps=1, inner_steps=1),
            d / "maml", progress=False).run()
    for name in ("bad-log", "no-checkpoint", "bad-config", "tampered", "other-architecture", "calibrated",
                 "bad-calibration"):
        shutil.copytree(d / "proto", d / name)
    (d / "calibrated" / "calibration.json").write_text('{"temperature": 1.5, "split": "val", "episodes": 10, '
                                                       '"checkpoint": "best", "nll_before": 1.0, "nll_after": 0.9}\n')
    (d / "bad-calibration" / "calibration.json").write_text('{"temperature": \n')
    log = d / "bad-log" / "metrics.jsonl"
    log.write_text('{"step": 1, "split": "train", "loss": 1.0}\n{"step": 1, "spl\n' + log.read_text())
    shutil.rmtree(d / "no-checkpoint" / "checkpoints")
    (d / "bad-config" / "config.yaml").write_bytes(b"\xff\xfe\x00\x01")
    victim = tensor_path(d / "tampered" / "checkpoints", "best")
    blob = bytearray(victim.read_bytes())
    blob[-10] ^= 0xFF
    victim.write_bytes(bytes(blob))
    shutil.rmtree(d / "other-architecture" / "checkpoints")
    shutil.copytree(d / "maml" / "checkpoints", d / "other-architecture" / "checkpoints")
    return d


def answer(case: Case, d: Path, capsys) -> tuple[str, str]:
    """``(kind, message)``: ``("exit 2", line)`` for the CLI, ``("ValueError", message)`` etc. for the API."""
    if callable(case.run):
        with pytest.raises((ValueError, FileNotFoundError)) as error:
            case.run(d)
        kind = "FileNotFoundError" if isinstance(error.value, FileNotFoundError) else "ValueError"
        return kind, str(error.value)
    argv = case.run.format(d=d).split()
    if argv[0] == "train":
        argv += ["--no-progress", "--threads", "1"]
    try:
        code = main(argv)
    except SystemExit as e:                      # argparse's own exits
        code = e.code
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, (code, err)
    assert lines and re.match(rf"fewshot( {argv[0]})?: error: ", lines[-1]), err
    assert all(line.startswith("run directory: ") for line in lines[:-1]), err   # nothing else: one error line
    return "exit 2", lines[-1]


def documented() -> dict[str, tuple[str, str]]:
    """``id -> (kind, message)`` from the table's rows ``| id | what | reproduce | kind: ``message`` |``."""
    rows = {}
    for line in TABLE.read_text().splitlines():
        match = re.match(r"\| `([\w-]+)` \|.*\| (exit 2|ValueError|FileNotFoundError): ``(.*)`` \|$", line)
        if match:
            rows[match[1]] = (match[2], match[3])
    return rows


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_refused_as_the_table_says(case, d, capsys, monkeypatch):
    monkeypatch.setenv("FEWSHOT_CACHE", str(d / "cache"))       # decoded once for the module, kept out of ~/.cache
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)   # device-no-gpu's answer on a GPU machine too
    if case.setup is not None:
        case.setup(d, monkeypatch)
    kind, message = answer(case, d, capsys)
    message = message.replace(str(d), "DIR")
    expected_kind, expected = documented()[case.id]
    assert kind == expected_kind
    if expected.endswith("…"):
        assert message.startswith(expected[:-1]), message
    else:
        assert message == expected, message
    assert not (d / "r" / "checkpoints").exists()                 # nothing was trained


def test_the_table_has_every_case_and_at_least_20():
    assert sorted(documented()) == sorted(c.id for c in CASES) and len(CASES) >= 20
