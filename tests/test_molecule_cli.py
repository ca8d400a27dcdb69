"""Molecule runs end to end through the ``fewshot`` command: each learner learns a small task above chance,
the eval JSON contract, and bad input.

The "small task": the real molecules of the Tox21 fixture, labelled by 12 substructures (SMARTS) instead of
assays, in a data root laid out like the shared one. A learner that ranks held-out substructure tasks
(the last 3 columns: ether, fused ring atom, aromatic nitrogen) from 5+/5- supports above chance has
learned to use the support set. (Chance is 0.5; the learners score 0.67 to 0.9 here. MAML and first-order MAML
meta-trained on 9 substructures transfer worst: their 2-way head learns the training tasks' labels.)
"""

from __future__ import annotations

import csv
import importlib.util
import json
import sys
import warnings
from pathlib import Path

import pytest
import yaml

pytest.importorskip("rdkit")
pytest.importorskip("sklearn")

from conftest import cli  # noqa: E402

FIXTURES = Path(__file__).parent / "data" / "molecules"
SMARTS = {"carbonyl": "[CX3]=[OX1]", "halogen": "[F,Cl,Br,I]", "hydroxyl": "[OX2H]", "benzene": "c1ccccc1",
          "sulfur": "[#16]", "ester": "[#6]C(=O)O[#6]", "alkene": "C=C", "chlorine": "Cl", "nitrogen": "[#7]",
          "ether": "[OD2]([#6])[#6]", "fused": "[R2]", "aromatic-n": "n"}
TINY = dict(fp_size=256, support_pos=5, support_neg=5, queries=16, meta_batch=4,
            steps=40, lr=0.003, val_every=20, val_episodes=8, checkpoint_every=20, log_every=10, draws=4,
            featurizer="ecfp")
NET = dict(hidden=64, embedding_dim=32)      # the net's options (the forest has no net)


@pytest.fixture(scope="module")
def substructure_root(tmp_path_factory) -> Path:
    from rdkit import Chem, RDLogger

    RDLogger.DisableLog("rdApp.*")
    root = tmp_path_factory.mktemp("substructures")
    smiles = [row[0] for row in csv.reader(open(FIXTURES / "tox21" / "tox21.csv"))][1:]
    patterns = {name: Chem.MolFromSmarts(s) for name, s in SMARTS.items()}
    (root / "tox21").mkdir()
    with open(root / "tox21" / "tox21.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["smiles", *SMARTS])
        for s in smiles:
            mol = Chem.MolFromSmiles(s)
            if mol is not None:
                w.writerow([s, *(int(mol.HasSubstructMatch(p)) for p in patterns.values())])
    return root




@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("FEWSHOT_CACHE", str(tmp_path_factory.getbasetemp() / "mol-cache"))


LEARNERS = {
    "protonet": {},
    "maml": dict(inner_lr=0.5, inner_steps=1, eval_inner_steps=5, steps=200),
    "fomaml": dict(inner_lr=0.5, inner_steps=1, eval_inner_steps=5, steps=200),
    "finetune": dict(batch_size=64, inner_steps=30, inner_lr=0.05),
    "forest": dict(trees=30, fp_counts=False),
    "protonet-graph": dict(algo="protonet", net="graph", featurizer="graph", hidden=32, graph_layers=2),
    "protonet-ragged": dict(algo="protonet", queries=200, ragged_queries=True, grad_clip=1.0),   # FS-Mol's recipe
}


@pytest.mark.parametrize("learner", sorted(LEARNERS))
def test_each_learner_ranks_held_out_substructure_tasks_above_chance(learner, substructure_root, tmp_path, capsys):
    options = {"algo": learner, **TINY, **({} if learner == "forest" else NET), **LEARNERS[learner]}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(options))
    run = tmp_path / "run"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")       # the fixture holds SMILES read with partial sanitization
        code, out, err = cli(["train", "--config", tmp_path / "c.yaml", "--dataset", "tox21", "--data-root",
                              substructure_root, "--out", run, "--no-progress", "--threads", "1"], capsys)
    assert code == 0, err
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    assert cfg["data"]["test_tasks"] == ["ether", "fused", "aromatic-n"]
    result = json.loads((run / "test.json").read_text())
    assert result["metric"] == "roc_auc" and result["tasks"] == 3 and result["support_size"] == 10
    assert result["mean"] > 0.6, result
    assert "test roc_auc" in out


def test_fsmol_eval_json_contract_and_missing_test_file(tmp_path, capsys):
    (tmp_path / "c.yaml").write_text(yaml.safe_dump({"holdout_val": 2, "trees": 20, "draws": 2}))
    run = tmp_path / "forest"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        code, out, err = cli(["train", "--algo", "forest", "--dataset", "fsmol", "--config", tmp_path / "c.yaml",
                              "--data-root", FIXTURES, "--out", run, "--no-progress"], capsys)
        assert code == 0, err
        assert "scoring the official valid tasks instead" in err
        assert not (run / "checkpoints").exists()
        code, out, err = cli(["eval", run, "--dataset", "fsmol", "--split", "valid", "--support-size", "16",
                              "--data-root", FIXTURES, "--json"], capsys)
    assert code == 0, err
    last = json.loads(out.strip().splitlines()[-1])
    assert set(last) == {"metric", "mean", "stderr", "tasks", "support_size"}
    assert last["metric"] == "delta_auprc" and last["tasks"] == 3 and last["support_size"] == 16
    assert -1 < last["mean"] < 1 and last["stderr"] >= 0
    code, out, err = cli(["eval", run, "--dataset", "fsmol", "--split", "test", "--support-size", "16",
                          "--data-root", FIXTURES, "--json"], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "fsmol_test.csv.gz" in err


@pytest.mark.parametrize("argv, pattern", [
    (["train", "--dataset", "tox21", "--no-progress"], "--data-root"),
    (["train", "--dataset", "tox21", "--algo", "relation", "--data-root", "X"],
     "relation builds its own encoder (relation-conv), which does not fit tox21"),
    (["train", "--dataset", "omniglot", "--algo", "forest"],
     "forest uses no net, so it needs feature vectors; omniglot gives images: use it on fsmol, tox21"),
    (["train", "--dataset", "fsmol", "--support-pos", "3", "--data-root", "X"], "positives and negatives"),
])
def test_bad_molecule_input_is_one_line(argv, pattern, tmp_path, capsys):
    code, out, err = cli([*argv, "--out", tmp_path / "r"], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and pattern in err, err


def paired_runs_script():
    """``benchmarks/paired_runs.py`` as a module (the benchmarks folder is not a package)."""
    spec = importlib.util.spec_from_file_location("paired_runs", Path(__file__).parent.parent / "benchmarks" /
                                                  "paired_runs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_paired_runs_script_pairs_the_scores_that_eval_prints(tmp_path, capsys, monkeypatch):
    paired = paired_runs_script()
    means = {}
    for seed in (0, 1):
        (tmp_path / "c.yaml").write_text(yaml.safe_dump({"holdout_val": 2, "trees": 5, "draws": 2, "seed": seed}))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            code, _, err = cli(["train", "--algo", "forest", "--dataset", "fsmol", "--config", tmp_path / "c.yaml",
                                "--data-root", FIXTURES, "--out", tmp_path / f"f{seed}", "--no-progress"], capsys)
            assert code == 0, err
            code, out, err = cli(["eval", tmp_path / f"f{seed}", "--split", "valid", "--support-size", "16",
                                  "--draws", "2", "--data-root", FIXTURES, "--json"], capsys)
        assert code == 0, err
        means[seed] = json.loads(out.strip().splitlines()[-1])["mean"]
    monkeypatch.setattr(sys, "argv", ["paired_runs.py", str(tmp_path / "f0"), str(tmp_path / "f1"), "--data-root",
                                      str(FIXTURES), "--draws", "2"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        paired.main()
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].endswith(f"delta_auprc {means[0]:.4f} over 3 tasks")
    assert lines[1].endswith(f"delta_auprc {means[1]:.4f} over 3 tasks")
    assert lines[2].startswith(f"A - B: {means[0] - means[1]:.4f} ± ")


def test_paired_runs_script_names_a_missing_run_in_one_line(tmp_path, monkeypatch):
    paired = paired_runs_script()
    monkeypatch.setattr(sys, "argv", ["paired_runs.py", str(tmp_path / "nope"), str(tmp_path / "nope"),
                                      "--data-root", str(FIXTURES)])
    with pytest.raises(SystemExit, match=r"paired_runs.py: error: .*nope is not a fewshot run directory"):
        paired.main()
