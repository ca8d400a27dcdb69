"""Molecule datasets without RDKit, run files readable by others, progress bars in log files."""

from __future__ import annotations

import builtins
import io
import json
import os
import re
import stat
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from PIL import Image

from fewshot.datasets import featurize as featurize_module
from fewshot.datasets.featurize import RDKIT_HINT, FeaturizerSpec, MissingDependency, MissingRDKitError, featurize
from fewshot.files import atomic_write
from fewshot.progress import progress_bar

REPO = Path(__file__).resolve().parent.parent


# -- Omniglot: the shipped background set behind a data root holding only the evaluation set -------------


def test_eval_on_a_data_root_holding_only_the_evaluation_zip(tmp_path: Path, capsys, monkeypatch) -> None:
    """``fewshot eval RUN --split evaluation --data-root DIR``: the run's training characters (needed to check
    that the evaluation classes are held out) come from the background set shipped with the package."""
    from conftest import cli, tiny_protonet
    from fewshot.runs import trainer_for

    monkeypatch.setenv("FEWSHOT_CACHE", str(tmp_path / "cache"))
    trainer_for(tiny_protonet(steps=1), tmp_path / "run", progress=False).run()
    archive = tmp_path / "data" / "omniglot" / "images_evaluation.zip"
    archive.parent.mkdir(parents=True)
    with zipfile.ZipFile(archive, "w") as zf:
        for a in range(6):
            for drawer in range(1, 5):
                image = Image.new("1", (105, 105), 1)
                image.paste(0, (10 * a, 10 * drawer, 10 * a + 30, 10 * drawer + 40))
                buffer = io.BytesIO()
                image.save(buffer, "PNG")
                zf.writestr(f"images_evaluation/Script{a}/character01/0001_{drawer:02d}.png", buffer.getvalue())
    code, out, err = cli(["eval", tmp_path / "run", "--split", "evaluation", "--data-root", tmp_path / "data",
                          "--episodes", "2", "--json"], capsys)
    assert code == 0, err
    summary = json.loads(out.splitlines()[-1])
    assert summary["split"] == "evaluation" and summary["episodes"] == 2 and summary["ways"] == 5


# -- RDKit ----------------------------------------------------------------------------------------------


def hide(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    """Make ``import name`` (and of its submodules) fail as if it were not installed."""
    for module in [m for m in sys.modules if m == name or m.startswith(name + ".")] + [name]:
        monkeypatch.setitem(sys.modules, module, None)


def test_molecule_modules_import_without_rdkit() -> None:
    code = ("import sys; sys.modules['rdkit'] = None\n"
            "import fewshot, fewshot.datasets.featurize, fewshot.datasets.molecules\n"
            "assert 'rdkit' not in {m.split('.')[0] for m, v in sys.modules.items() if v is not None}\n")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_missing_rdkit_is_one_clear_value_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    hide(monkeypatch, "rdkit")
    assert RDKIT_HINT == "molecule datasets need RDKit: pip install -e '.[chem]' (or pip install rdkit)"
    for kind in ("ecfp", "ecfp+desc", "graph"):
        with pytest.raises(MissingDependency) as info:
            featurize(["CCO"], FeaturizerSpec(kind), "x", cache_dir=tmp_path)
        assert str(info.value) == RDKIT_HINT
        assert isinstance(info.value, ValueError)          # the CLI's exit 2 and one line
        assert isinstance(info.value, ImportError) and isinstance(info.value, MissingRDKitError)
    for call in (featurize_module.require_rdkit, featurize_module.descriptor_functions,
                 lambda: featurize_module.parse_smiles("CCO")):
        with pytest.raises(MissingDependency, match=re.escape(RDKIT_HINT)):
            call()


def test_broken_rdkit_install_names_the_import_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_import = builtins.__import__

    def broken(name, *args, **kwargs):
        if name == "rdkit" or name.startswith("rdkit."):
            raise ImportError("libRDKitGraphMol.so.1: cannot open shared object file")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", broken)
    with pytest.raises(MissingDependency) as info:
        featurize(["CCO"], FeaturizerSpec("ecfp"), "x", cache_dir=tmp_path)
    assert str(info.value) == (RDKIT_HINT + "; importing rdkit.Chem failed: "
                               "libRDKitGraphMol.so.1: cannot open shared object file")


# -- file permissions -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_atomic_write_honours_the_umask(tmp_path: Path, umask: int, mode: int) -> None:
    old = os.umask(umask)
    try:
        atomic_write(tmp_path / "run" / "config.yaml", b"algo: protonet\n")
        atomic_write(tmp_path / "run" / "config.yaml", b"algo: maml\n")       # a replaced file too
        with open(tmp_path / "plain.txt", "w") as f:                          # what open() gives
            f.write("x")
    finally:
        os.umask(old)
    written = tmp_path / "run" / "config.yaml"
    assert written.read_bytes() == b"algo: maml\n"
    assert stat.S_IMODE(written.stat().st_mode) == mode == stat.S_IMODE((tmp_path / "plain.txt").stat().st_mode)
    assert [p.name for p in written.parent.iterdir()] == ["config.yaml"]        # no temporary file left


# -- progress bars --------------------------------------------------------------------------------------


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_in_a_log_is_plain_lines() -> None:
    log = io.StringIO()
    seen = list(progress_bar(range(200), desc="eval", file=log))
    assert seen == list(range(200))
    text = log.getvalue()
    assert "\r" not in text and "\x1b" not in text
    lines = text.splitlines()
    assert [re.match(r"eval: (\d+)% (\d+)/200 \[", line).groups() for line in lines] == [
        (str(p), str(2 * p)) for p in range(10, 101, 10)]


def test_progress_by_hand_resumed_with_postfix_and_messages() -> None:
    log = io.StringIO()
    bar = progress_bar(total=1000, initial=500, desc="protonet omniglot", file=log, unit="step")
    for step in range(500, 1000):
        bar.update(1)
        bar.set_postfix({"loss": "0.250"}, refresh=False)
        if step == 749:
            bar.write("step 750: validation accuracy 0.9000", file=log)
    bar.close()
    lines = log.getvalue().splitlines()
    assert "\r" not in log.getvalue()
    assert [line.split(" [")[0] for line in lines] == [
        "protonet omniglot: 60% 600/1000", "protonet omniglot: 70% 700/1000",
        "step 750: validation accuracy 0.9000",
        "protonet omniglot: 80% 800/1000", "protonet omniglot: 90% 900/1000", "protonet omniglot: 100% 1000/1000"]
    assert all(line.endswith("step/s, loss=0.250]") for line in lines if line.startswith("protonet"))


def test_progress_without_a_total_is_timed_and_closes_with_a_last_line() -> None:
    log = io.StringIO()
    bar = progress_bar(file=log, every_s=0, desc="featurizing")
    for _ in range(3):
        bar.update()
    bar.close()
    assert "\r" not in log.getvalue()
    assert [line.split(" [")[0] for line in log.getvalue().splitlines()] == [
        "featurizing: 1", "featurizing: 2", "featurizing: 3"]
    log = io.StringIO()
    bar = progress_bar(total=10, file=log, every_s=3600, every_percent=50)
    bar.update(3)
    assert log.getvalue() == ""
    bar.close()                                                     # stopped early: the last count is shown
    assert [line.split(" [")[0] for line in log.getvalue().splitlines()] == ["30% 3/10"]


def test_progress_disabled_or_on_a_terminal() -> None:
    log = io.StringIO()
    assert list(progress_bar(range(5), file=log, enabled=False)) == list(range(5))
    assert log.getvalue() == ""
    terminal = Terminal()
    for _ in progress_bar(range(5), file=terminal, mininterval=0):
        pass
    assert "\r" in terminal.getvalue()                              # a normal tqdm bar, redrawn in place
