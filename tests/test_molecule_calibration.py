"""Molecule runs scored for calibration and uncertainty-aware ranking through the command: DKT and ProtoNet on the
FS-Mol fixture, the enrichment keys (``enrichment_ucb`` only for the learner with a posterior), and temperature
scaling, which leaves every ranking as it was."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import yaml

pytest.importorskip("rdkit")
pytest.importorskip("sklearn")
pytest.importorskip("gpytorch")

from conftest import cli  # noqa: E402

MOLECULES = Path(__file__).parent / "data" / "molecules"
TINY = dict(holdout_val=2, draws=2, fp_size=256, queries=16, meta_batch=2, steps=3, val_every=3, val_episodes=4,
            checkpoint_every=3, log_every=1, hidden=32, embedding_dim=16, featurizer="ecfp")


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("FEWSHOT_CACHE", str(tmp_path_factory.getbasetemp() / "mol-cache"))


def last_json(out: str) -> dict:
    return json.loads(out.strip().splitlines()[-1])


@pytest.mark.parametrize("algo", ["dkt", "protonet"])
def test_fsmol_calibration_and_enrichment(algo, tmp_path, capsys):
    (tmp_path / "c.yaml").write_text(yaml.safe_dump({**TINY, **({"samples": 32} if algo == "dkt" else {})}))
    run = tmp_path / algo
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")      # the fixture holds SMILES read with partial sanitization
        code, out, err = cli(["train", "--algo", algo, "--dataset", "fsmol", "--config", tmp_path / "c.yaml",
                              "--data-root", MOLECULES, "--out", run, "--no-progress", "--threads", 1], capsys)
        assert code == 0, err
        argv = ["eval", run, "--split", "valid", "--support-size", 16, "--data-root", MOLECULES, "--json",
                "--calibration"]
        code, out, err = cli(argv, capsys)
        assert code == 0, err
        result = last_json(out)
        code, out, err = cli([*argv, "--temperature", "0.5"], capsys)
    assert code == 0, err
    scaled = last_json(out)
    ranking = {"enrichment_expected", "enrichment_ucb"} if algo == "dkt" else {"enrichment_expected"}
    assert ranking <= set(result) and not ({"enrichment_expected", "enrichment_ucb"} - ranking) & set(result)
    assert all(0 <= result[k] <= 20 for k in ranking) and result["tasks"] == 3 and 0 <= result["ece"] <= 1
    for key in ("mean", *ranking):            # a temperature moves probabilities, never their order
        assert scaled[key] == pytest.approx(result[key], abs=1e-12)
    assert scaled["nll"] != result["nll"]
