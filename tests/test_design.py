"""The genetic algorithm keeps only valid molecules that meet the constraints, is seeded and resumes exactly; the
graph operators by hand; the ``fewshot design`` command's outputs and bad input on the FS-Mol fixture."""

from __future__ import annotations

import csv
import json
import warnings
from pathlib import Path

import pytest
import torch
import yaml

pytest.importorskip("rdkit")

from conftest import cli  # noqa: E402
from fewshot.drug.design import GAConfig, _join, evolve, finish, structure_ok  # noqa: E402
from fewshot.drug.properties import Constraints, canonical, properties, tanimoto_diversity  # noqa: E402

FIXTURES = Path(__file__).parent / "data" / "molecules"
SEEDS = ["CC(=O)Nc1ccc(O)cc1", "CC(C)Cc1ccc(cc1)C(C)C(=O)O", "O=C(O)c1ccccc1OC(C)=O", "CCN(CC)CCNC(=O)c1ccc(N)cc1",
         "Clc1ccc(cc1)C(c1ccccc1)N1CCNCC1", "COc1ccc2[nH]cc(CCN(C)C)c2c1"]


def _qed(smiles: list[str]) -> torch.Tensor:
    from rdkit import Chem
    from rdkit.Chem import QED

    return torch.tensor([QED.qed(Chem.MolFromSmiles(s)) for s in smiles])


def test_join_and_finish_by_hand():
    from rdkit import Chem

    joined = _join(Chem.MolFromSmiles("CC[1*]"), Chem.MolFromSmiles("[1*]O"))
    assert finish(joined)[1] == "CCO"
    ring = _join(Chem.MolFromSmiles("[1*]CCC[2*]"), Chem.MolFromSmiles("[1*]CC[2*]"))   # both ends: a new ring
    assert finish(ring)[1] == "C1CCCC1"                 # 3 + 2 atoms
    assert _join(Chem.MolFromSmiles("CC[1*]"), Chem.MolFromSmiles("[2*]O")) is None       # cut numbers must pair
    five_bonds = Chem.RWMol(Chem.MolFromSmiles("CC(C)(C)(C)C", sanitize=False))
    assert finish(five_bonds) is None                 # a pentavalent carbon is not a molecule
    assert not structure_ok(Chem.MolFromSmiles("C1CCCCCCC1"))                # an 8-membered ring
    assert not structure_ok(Chem.MolFromSmiles("CC=C=CCCC"))                 # an allene
    assert structure_ok(Chem.MolFromSmiles("c1ccccc1CCO"))


def test_constraints_by_hand():
    c = Constraints(qed_min=0.5, sa_max=3.0, mw=(200, 400), logp=(0, 3))
    assert c.violations({"qed": 0.6, "sa": 2.0, "mw": 300, "logp": 1}) == []
    assert c.violations({"qed": 0.4, "sa": 3.5, "mw": 450, "logp": -1}) == ["qed", "sa", "mw", "logp"]
    with pytest.raises(ValueError, match="the mw range must be LOW,HIGH with LOW <= HIGH"):
        Constraints(mw=(500, 200))


def test_diversity_is_the_mean_pairwise_tanimoto_distance():
    from rdkit import Chem, DataStructs
    from rdkit.Chem import rdFingerprintGenerator

    gen = rdFingerprintGenerator.GetMorganGenerator(radius=2, fpSize=2048)
    fps = [gen.GetFingerprint(Chem.MolFromSmiles(s)) for s in SEEDS[:3]]
    pairs = [(0, 1), (0, 2), (1, 2)]
    expected = sum(1 - DataStructs.TanimotoSimilarity(fps[i], fps[j]) for i, j in pairs) / 3
    assert tanimoto_diversity(SEEDS[:3]) == pytest.approx(expected)
    assert tanimoto_diversity([SEEDS[0], SEEDS[0]]) == 0.0


def test_the_ga_proposes_only_valid_molecules_within_the_constraints():
    tight = Constraints(qed_min=0.5, sa_max=3.5, mw=(180, 360), logp=(0, 4))
    st = evolve(SEEDS, _qed, tight, GAConfig(population=40, steps=4, proposals=200, seed=1), progress=False)
    assert st.products == 160 and len(st.proposals) == 160 - st.invalid - st.rejected > 20
    for smiles, fit, props in st.proposals:
        from rdkit import Chem

        mol = Chem.MolFromSmiles(smiles)
        assert mol is not None and "." not in smiles and canonical(smiles) == smiles and structure_ok(mol)
        again = properties(mol)
        assert tight.met(again) and again == pytest.approx(props)
        assert fit == pytest.approx(float(_qed([smiles])[0]), abs=1e-6)
    assert len({s for s, _ in st.population}) == len(st.population) <= 40


def test_the_ga_is_seeded_and_resumes_exactly(tmp_path):
    cfg = GAConfig(population=20, steps=4, proposals=50, seed=3)
    straight = evolve(SEEDS, _qed, Constraints(), cfg, progress=False)
    assert evolve(SEEDS, _qed, Constraints(), cfg, progress=False) == straight
    other = evolve(SEEDS, _qed, Constraints(), GAConfig(population=20, steps=4, proposals=50, seed=4), progress=False)
    assert other.proposals != straight.proposals
    state = tmp_path / "state.json"
    evolve(SEEDS, _qed, Constraints(), GAConfig(population=20, steps=2, proposals=50, seed=3), state, progress=False)
    resumed = evolve(SEEDS, _qed, Constraints(), cfg, state, progress=False)
    assert json.loads(json.dumps(resumed.__dict__)) == json.loads(json.dumps(straight.__dict__))


# -- the command ------------------------------------------------------------------------------------------

FOREST_RUN = {"data": {"dataset": "fsmol", "featurizer": "ecfp", "fp_counts": False, "holdout_val": 2},
              "model": {"net": None}, "learner": {"algo": "forest", "trees": 10}}
TASK = "CHEMBL763161"      # a validation task of the fixture


@pytest.fixture
def setup(tmp_path, monkeypatch) -> tuple[Path, Path]:
    from fewshot.drug.oracle import main as write_support

    monkeypatch.setenv("FEWSHOT_CACHE", str(tmp_path / "cache"))
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.yaml").write_text(yaml.safe_dump(FOREST_RUN))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert write_support(["--data-root", str(FIXTURES), "--task", TASK, "--out", str(tmp_path / "s.csv")]) == 0
    return tmp_path / "run", tmp_path / "s.csv"


def test_design_writes_candidates_grid_and_summary_and_resumes(setup, tmp_path, capsys):
    run, support = setup
    rows = list(csv.DictReader(open(support)))
    assert len(rows) == 16 and {r["label"] for r in rows} == {"0", "1"}
    argv = ["design", run, "--support", support, "--n", "60", "--steps", "3", "--population", "30", "--out",
            tmp_path / "d", "--data-root", FIXTURES, "--oracle", TASK, "--json"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        code, out, err = cli(argv, capsys)
    assert code == 0, err
    s = json.loads(out.strip().splitlines()[-1])
    assert s["products"] == 90 and 0 < s["proposals"] <= 60 and s["proposal_valid"] == 1.0
    assert 0 < s["unique"] <= 1 and 0 <= s["novel"] <= 1 and 0 < s["diversity"] < 1
    assert s["oracle"]["task"] == TASK and 0 <= s["oracle"]["top10_mean"] <= 1
    assert 0 <= s["oracle"]["top10_above_best_active"] <= 10
    d = tmp_path / "d"
    assert (d / "top.png").read_bytes()[:4] == b"\x89PNG" and json.loads((d / "summary.json").read_text()) == s
    table = list(csv.DictReader(open(d / "candidates.csv")))
    support_smiles = {canonical(r["smiles"]) for r in rows}
    assert table and all(r["smiles"] not in support_smiles for r in table)
    assert [float(r["predicted_activity"]) for r in table] == sorted((float(r["predicted_activity"]) for r in table),
                                                                     reverse=True)
    assert all(Constraints().met({k: float(r[k]) for k in ("qed", "sa", "mw", "logp")}) for r in table)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        code, again, err = cli(argv, capsys)                 # resumed from the finished state: the same result
    again = json.loads(again.strip().splitlines()[-1])
    assert code == 0 and {k: v for k, v in again.items() if k != "wall_s"} == {k: v for k, v in s.items()
                                                                                 if k != "wall_s"}


@pytest.mark.parametrize("content, extra, pattern", [
    (None, [], "support file"),
    ("smiles,activity\nCCO,1\n", [], "expected columns smiles,label"),
    ("smiles,label\nCCO,2\n", [], "line 2: label '2' is not 0 or 1"),
    ("smiles,label\nC1CC,1\n", [], "line 2: RDKit cannot read SMILES 'C1CC'"),
    ("smiles,label\nCCO,1\nCCN,1\n", [], "at least one active (1) and one inactive (0)"),
    ("smiles,label\nCCO,1\nCCN,0\n", ["--oracle", TASK], "--oracle reads the assay's measurements from the data "
                                                         "root: pass --data-root DIR"),
    ("smiles,label\nCCO,1\nCCN,0\n", ["--mw", "500"], "give LOW,HIGH"),
])
def test_design_bad_input_is_one_line(setup, tmp_path, content, extra, pattern, capsys):
    run, _ = setup
    path = tmp_path / "bad.csv"
    if content is not None:
        path.write_text(content)
    code, out, err = cli(["design", run, "--support", path, "--out", tmp_path / "o", *extra], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and pattern in err, err


def test_a_support_molecule_read_only_with_partial_sanitization_is_kept(tmp_path):
    from fewshot.commands.design import read_support

    path = tmp_path / "s.csv"           # FS-Mol writes some phosphonates with a hypervalent [PH] (RDKit rejects it)
    path.write_text("smiles,label\nCCO,1\nCC(CC(=N)C(=O)O)C[PH](=O)(=O)O,0\n")
    smiles, labels = read_support(path)
    assert labels == [1, 0] and "[PH]" in smiles[1]


def test_nearest_similarity_is_the_largest_tanimoto_to_a_reference():
    from rdkit import Chem, DataStructs
    from rdkit.Chem import rdFingerprintGenerator

    from fewshot.drug.properties import nearest_similarity

    gen = rdFingerprintGenerator.GetMorganGenerator(radius=2, fpSize=2048)
    fp = [gen.GetFingerprint(Chem.MolFromSmiles(s)) for s in SEEDS]
    got = nearest_similarity(SEEDS[:2], SEEDS[2:4])
    for k in range(2):
        assert float(got[k]) == pytest.approx(max(DataStructs.TanimotoSimilarity(fp[k], fp[j]) for j in (2, 3)))
    assert nearest_similarity(SEEDS[:2], SEEDS[:2]).tolist() == [1.0, 1.0]
    assert nearest_similarity(SEEDS[:2], []).tolist() == [0.0, 0.0]


def test_the_trust_region_keeps_every_proposal_near_an_anchor():
    from fewshot.drug.properties import nearest_similarity

    anchors = SEEDS[:2]
    free = evolve(SEEDS, _qed, Constraints(), GAConfig(population=30, steps=3, proposals=90, seed=2), progress=False)
    assert min(nearest_similarity([s for s, _, _ in free.proposals], anchors).tolist()) < 0.35 and free.outside == 0
    cfg = GAConfig(population=30, steps=3, proposals=90, seed=2, min_similarity=0.35)
    st = evolve(SEEDS, _qed, Constraints(), cfg, progress=False, anchors=anchors)
    assert st.proposals and st.outside > 0
    assert len(st.proposals) == st.products - st.invalid - st.rejected - st.outside
    assert min(nearest_similarity([s for s, _, _ in st.proposals], anchors).tolist()) >= 0.35
    with pytest.raises(ValueError, match="needs anchor molecules"):
        evolve(SEEDS, _qed, Constraints(), cfg, progress=False)
    with pytest.raises(ValueError, match="min_similarity"):
        GAConfig(min_similarity=1.5)


def _poisoned_root(root: Path, support: Path, task: str) -> Path:
    """A copy of the FS-Mol fixture in which every label of ``task`` outside the support file is flipped."""
    import gzip
    import shutil

    shutil.copytree(FIXTURES, root)
    kept = {canonical(r["smiles"]) for r in csv.DictReader(open(support))}
    path = root / "fsmol" / "fsmol_valid.csv.gz"
    with gzip.open(path, "rt", newline="") as f:
        rows = list(csv.DictReader(f))
    flipped = 0
    for r in rows:
        if r["task"] == task and canonical(r["smiles"]) not in kept:
            r["label"] = "0.0" if float(r["label"]) == 1 else "1.0"
            flipped += 1
    assert flipped > 50
    with gzip.open(path, "wt", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return root


def test_the_generator_never_sees_the_oracle_or_the_assays_other_labels(setup, tmp_path, capsys, monkeypatch):
    """The proposals are fixed before the oracle or the assay's measurements are read, and flipping every label of
    the assay outside the support changes no proposal."""
    import fewshot.commands.design as command
    import fewshot.drug.oracle as oracle

    run, support = setup
    finished = []

    def evolve_then_mark(*args, **kwargs):
        state = evolve(*args, **kwargs)
        finished.append(len(state.proposals))
        return state

    def after_the_proposals(original):
        def read(*args, **kwargs):
            assert finished, "the generator read the assay's measurements before its proposals were fixed"
            return original(*args, **kwargs)
        return read

    monkeypatch.setattr(command, "evolve", evolve_then_mark)
    monkeypatch.setattr(oracle, "assay_measurements", after_the_proposals(oracle.assay_measurements))
    monkeypatch.setattr(oracle, "ProxyOracle", after_the_proposals(oracle.ProxyOracle))
    poisoned = _poisoned_root(tmp_path / "poisoned", support, TASK)
    outputs = []
    for root in (FIXTURES, poisoned):
        finished.clear()
        argv = ["design", run, "--support", support, "--n", "40", "--steps", "2", "--population", "20",
                "--min-similarity", "0.2", "--similarity-weight", "0.5", "--out", tmp_path / root.name,
                "--data-root", root, "--oracle", TASK, "--json"]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            code, out, err = cli(argv, capsys)
        assert code == 0, err
        outputs.append(json.loads(out.strip().splitlines()[-1]))
    clean, flipped = outputs
    assert clean["top"] and clean["top"] == flipped["top"] and clean["products"] == flipped["products"]
    assert clean["oracle"]["top10_mean"] != flipped["oracle"]["top10_mean"]      # the oracle did read the labels
    table = list(csv.DictReader(open(tmp_path / FIXTURES.name / "candidates.csv")))
    fitness = [float(r["fitness"]) for r in table]
    assert fitness == sorted(fitness, reverse=True) and min(float(r["similarity"]) for r in table) >= 0.2
    for r in table:
        assert float(r["fitness"]) == pytest.approx(0.5 * float(r["predicted_activity"]) + 0.5 * float(r["similarity"]),
                                                    abs=2e-3)


def test_fresh_only_does_not_propose_a_population_member_again():
    seeds = {canonical(s) for s in SEEDS}
    again = evolve(SEEDS, _qed, Constraints(), GAConfig(population=60, steps=1, proposals=200, seed=5), progress=False)
    repeated = sum(s in seeds for s, _, _ in again.proposals)
    assert repeated > 0            # the plain algorithm makes some of its parents again
    cfg = GAConfig(population=60, steps=1, proposals=200, seed=5, fresh_only=True)
    fresh = evolve(SEEDS, _qed, Constraints(), cfg, progress=False)
    assert fresh.repeats == repeated and not any(s in seeds for s, _, _ in fresh.proposals)
    assert [p for p in again.proposals if p[0] not in seeds] == fresh.proposals
