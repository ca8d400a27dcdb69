"""Molecules: readers, featurization and its cache, assay episodes, ranking metrics and the molecule encoders.

Fixtures: ``tests/data/molecules`` (405 Tox21 rows, 6 + 3 FS-Mol tasks; see its README).
"""

from __future__ import annotations

import builtins
import gzip
import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("rdkit")
sklearn_metrics = pytest.importorskip("sklearn.metrics")

from fewshot.datasets import featurize as featurize_module  # noqa: E402
from fewshot.datasets.featurize import ATOM_FIELDS, FeaturizerSpec, MissingRDKitError, featurize  # noqa: E402
from fewshot.datasets.molecules import (AssayData, attach_features, fsmol_path, load_assays, read_dataset,  # noqa: E402
                                        read_table)
from fewshot.evaluate import evaluate  # noqa: E402
from fewshot.learners.base import Learner  # noqa: E402
from fewshot.metrics import average_precision, delta_auprc, roc_auc  # noqa: E402
from fewshot.nets.molecules import FingerprintMLP, GraphNet, unpack_graphs  # noqa: E402
from fewshot.tasks.assays import AssayTasks, SupportSpec, stratified  # noqa: E402
from fewshot.tasks.episode import RaggedTaskBatch, TaskBatch, stack_episodes  # noqa: E402

FIXTURES = Path(__file__).parent / "data" / "molecules"
ECFP = FeaturizerSpec("ecfp", radius=2, size=256)


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
    """Feature caches go to a temporary directory shared by this module's tests."""
    monkeypatch.setenv("FEWSHOT_CACHE", str(tmp_path_factory.getbasetemp() / "mol-cache"))


@pytest.fixture(scope="module")
def tox21(tmp_path_factory) -> AssayData:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")    # the fixture holds SMILES read with partial sanitization
        return attach_features(read_table(FIXTURES / "tox21" / "tox21.csv"), ECFP, "tox21-fixture",
                               cache_dir=tmp_path_factory.mktemp("tox21-cache"))


# -- readers ---------------------------------------------------------------------------------------


def test_wide_table_reads_tasks_and_skips_missing_labels():
    data = read_table(FIXTURES / "tox21" / "tox21.csv")
    assert data.task_names[-3:] == ["SR-HSE", "SR-MMP", "SR-p53"] and len(data.assays) == 12
    rows = [line.split(",") for line in (FIXTURES / "tox21" / "tox21.csv").read_text().splitlines()[1:]]
    for j, assay in enumerate(data.assays, start=1):
        measured = [r for r in rows if r[j] != ""]
        assert len(assay.labels) == len(measured)
        assert assay.positives == sum(r[j] == "1" for r in measured)
        assert [data.smiles[m] for m in assay.molecules.tolist()] == [r[0] for r in measured]


def test_fsmol_reader_follows_the_task_split_and_reports_absent_tasks():
    with pytest.warns(UserWarning, match="1 of the 7 train tasks"):
        data = read_dataset("fsmol", FIXTURES, "train")
    assert len(data.assays) == 6 and "CHEMBL1010645" in data.task_names
    assert read_dataset("fsmol", FIXTURES, "valid").task_names == sorted(
        json.loads((FIXTURES / "fsmol" / "fsmol-0.1.json").read_text())["valid"])


def test_missing_fsmol_test_file_names_the_path_and_what_to_do(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"fsmol_test\.csv\.gz.*not found.*--data-root.*157 test tasks"):
        fsmol_path(FIXTURES, "test")


def test_bad_labels_are_refused(tmp_path):
    (tmp_path / "t.csv").write_text("smiles,a\nCCO,2\n")
    with pytest.raises(ValueError, match="line 2.*not 0, 1 or empty"):
        read_table(tmp_path / "t.csv")


def test_invalid_smiles_are_counted_reported_and_skipped(tmp_path):
    (tmp_path / "t.csv").write_text("smiles,a,b\nCCO,1,0\nnot_a_smiles,0,1\nC1CC,1,\nc1ccccc1O,0,1\nXx,,1\n")
    raw = read_table(tmp_path / "t.csv")
    with pytest.warns(UserWarning, match=r"3 of 5 SMILES could not be read by RDKit and were skipped \(e\.g\. "):
        data = attach_features(raw, ECFP, "bad", cache_dir=tmp_path)
    kept = {a.name: [data.smiles[m] for m in a.molecules.tolist()] for a in data.assays}
    assert kept == {"a": ["CCO", "c1ccccc1O"], "b": ["CCO", "c1ccccc1O"]}


def test_fsmol_phosphonate_task_is_recovered_and_named():
    with pytest.warns(UserWarning) as rec:
        data = load_assays("fsmol", FIXTURES, ECFP, "train")
    messages = " ".join(str(w.message) for w in rec)
    assert "partial sanitization" in messages and "CHEMBL1010645" in messages
    assert "could not be read" not in messages
    task = data.select(["CHEMBL1010645"]).assays[0]
    assert len(task.labels) == 36     # every molecule of the task kept


# -- featurization ---------------------------------------------------------------------------------


def test_ecfp_rows_equal_rdkit_counts(tox21):
    from rdkit import Chem
    from rdkit.Chem import rdFingerprintGenerator

    gen = rdFingerprintGenerator.GetMorganGenerator(radius=2, fpSize=256)
    idx = torch.tensor([0, 7, 42])
    rows = tox21.features.rows(idx)
    for r, i in zip(rows, idx.tolist()):
        expected = torch.from_numpy(gen.GetCountFingerprintAsNumPy(Chem.MolFromSmiles(tox21.smiles[i])).astype(np.float32))
        torch.testing.assert_close(r, torch.log1p(expected))


def test_cache_hit_skips_rdkit_and_returns_the_same_features(tmp_path, monkeypatch):
    smiles = ["CCO", "c1ccccc1", "CC(=O)Nc1ccc(O)cc1", "bogus"]
    spec = FeaturizerSpec("ecfp+desc", radius=1, size=64)
    first = featurize(smiles, spec, "t", cache_dir=tmp_path)
    assert len(list((tmp_path / "molecules").glob("t-ecfp-desc-*.safetensors"))) == 1

    def fail(*args, **kwargs):
        raise AssertionError("featurized again despite the cache")

    monkeypatch.setattr(featurize_module, "_compute", fail)
    second = featurize(smiles, spec, "t", cache_dir=tmp_path)
    idx = torch.tensor([0, 1, 2])
    torch.testing.assert_close(first.features.rows(idx), second.features.rows(idx))
    assert second.invalid == (3,)
    with pytest.raises(AssertionError, match="featurized again"):   # other settings: another key
        featurize(smiles, FeaturizerSpec("ecfp+desc", radius=2, size=64), "t", cache_dir=tmp_path)


def test_descriptors_are_standardised_and_finite(tmp_path):
    smiles = ["CCO", "c1ccccc1", "CC(=O)Nc1ccc(O)cc1", "CCCCCCCCCCCCCCCC", "O=C(O)c1ccccc1O"]
    done = featurize(smiles, FeaturizerSpec("ecfp+desc", size=32), "d", cache_dir=tmp_path)
    desc = done.features.rows(torch.arange(5))[:, 32:]
    assert desc.shape[1] == len(featurize_module.descriptor_functions()) and bool(torch.isfinite(desc).all())
    varying = desc.std(0) > 0
    torch.testing.assert_close(desc[:, varying].mean(0), torch.zeros(int(varying.sum())), atol=1e-5, rtol=0)


def test_descriptors_can_be_scaled_with_another_sets_statistics(tmp_path):
    spec = FeaturizerSpec("ecfp+desc", size=32)
    reference = ["CCO", "c1ccccc1", "CC(=O)Nc1ccc(O)cc1", "CCCCCCCCCCCCCCCC", "O=C(O)c1ccccc1O", "CCN(CC)CC"]
    other = ["CC(C)Cc1ccc(C(C)C(=O)O)cc1", "Clc1ccccc1Cl", "OCC(O)CO"]
    ref = featurize(reference, spec, "ref", cache_dir=tmp_path)
    scaled = featurize(other, spec, "other", cache_dir=tmp_path, scale=ref.scale)
    chem, functions = featurize_module.require_rdkit(), featurize_module.descriptor_functions()
    r, o = ([[f(chem.MolFromSmiles(m)) for _, f in functions] for m in smi] for smi in (reference, other))
    r, o = np.array(r, dtype=np.float64), np.array(o, dtype=np.float64)    # computed here, not by the featurizer
    std = r.std(0)
    expected = np.clip((o - r.mean(0)) / np.where(std > 1e-12, std, 1.0), -10, 10)
    np.testing.assert_allclose(scaled.features.rows(torch.arange(3))[:, 32:].numpy(), expected, atol=2e-4, rtol=1e-4)
    own = featurize(other, spec, "other", cache_dir=tmp_path)       # the same cache file, its own statistics
    assert not torch.allclose(own.features.rows(torch.arange(3)), scaled.features.rows(torch.arange(3)))


def test_fsmol_valid_descriptors_are_scaled_with_the_training_files_statistics(tmp_path):
    spec = FeaturizerSpec("ecfp+desc", size=32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")                               # the fixture's absent task, recovered SMILES
        train = featurize(read_dataset("fsmol", FIXTURES, "train").smiles, spec, "t", cache_dir=tmp_path)
        valid = load_assays("fsmol", FIXTURES, spec, "valid", cache_dir=tmp_path)
    expected = featurize(valid.smiles, spec, "v", cache_dir=tmp_path, scale=train.scale)
    idx = torch.arange(len(valid.smiles))
    assert torch.equal(valid.features.rows(idx), expected.features.rows(idx))


def test_missing_rdkit_names_the_extra(tmp_path, monkeypatch):
    real_import = builtins.__import__

    def no_rdkit(name, *args, **kwargs):
        if name == "rdkit" or name.startswith("rdkit."):
            raise ImportError("No module named 'rdkit'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_rdkit)
    with pytest.raises(MissingRDKitError, match=r"pip install -e '\.\[chem\]'"):
        featurize(["CCO"], ECFP, "x", cache_dir=tmp_path)


def test_graph_features_round_trip_through_the_encoder(tmp_path):
    from rdkit import Chem

    smiles = ["CCO", "c1ccccc1", "C", "CC(=O)Nc1ccc(O)cc1"]
    store = featurize(smiles, FeaturizerSpec("graph"), "g", cache_dir=tmp_path).features
    x = store.rows(torch.tensor([3, 0, 2]))
    atoms, source, target, bonds, graph = unpack_graphs(x)
    mols = [Chem.MolFromSmiles(smiles[i]) for i in (3, 0, 2)]
    assert atoms.shape == (sum(m.GetNumAtoms() for m in mols), len(ATOM_FIELDS))
    assert graph.tolist() == [b for b, m in enumerate(mols) for _ in range(m.GetNumAtoms())]
    assert len(source) == 2 * sum(m.GetNumBonds() for m in mols)
    assert bool((graph[source] == graph[target]).all())            # bonds stay inside their molecule
    torch.manual_seed(0)
    net = GraphNet(hidden=16, layers=2, embedding_dim=8)
    together = net(x)
    alone = torch.cat([net(store.rows(torch.tensor([i]))) for i in (3, 0, 2)])
    assert together.shape == (3, 8)
    torch.testing.assert_close(together, alone, rtol=1e-5, atol=1e-5)   # no leakage across molecules


# -- episodes --------------------------------------------------------------------------------------


def test_stratified_counts():
    assert stratified(16, 30, 100) == (5, 11)
    assert stratified(16, 1, 100) == (1, 15)        # at least one active
    assert stratified(16, 99, 100) == (15, 1)       # and one inactive
    assert stratified(128, 50, 100) == (64, 64)


@pytest.mark.parametrize("support", [SupportSpec(size=16), SupportSpec(positives=5, negatives=10)])
def test_episodes_have_the_asked_support_and_the_rest_as_query(tox21, support):
    tasks = AssayTasks(tox21.select(["NR-AhR", "SR-MMP"]), support, draws=3, seed=7)
    assert len(tasks) == 6
    for i in range(len(tasks)):
        assay, s, q = tasks.draw(i)
        s_pos, s_neg = support.counts(assay)
        assert int(assay.labels[s].sum()) == s_pos and int((assay.labels[s] == 0).sum()) == s_neg
        assert not set(s.tolist()) & set(q.tolist())
        assert sorted(s.tolist() + q.tolist()) == list(range(len(assay.labels)))   # the rest is the query
        assert tasks.episode_task(i) == assay.name == ["NR-AhR", "SR-MMP"][i // 3]
        ep = tasks[i]
        assert ep.support_x.shape == (s_pos + s_neg, 256) and ep.query_y.shape == (len(q),)
    again = AssayTasks(tox21.select(["NR-AhR", "SR-MMP"]), support, draws=3, seed=7)
    assert torch.equal(again[4].query_x, tasks[4].query_x)                  # a function of (seed, index)
    assert torch.equal(again.draw(4)[1], tasks.draw(4)[1])
    other = AssayTasks(tox21.select(["NR-AhR", "SR-MMP"]), support, draws=3, seed=8)
    assert any(not torch.equal(other.draw(i)[1], tasks.draw(i)[1]) for i in range(6))


def test_training_stream_has_fixed_shapes_and_stratified_queries(tox21):
    tasks = AssayTasks(tox21.select(["NR-AhR", "SR-MMP", "NR-AR"]), SupportSpec(positives=2, negatives=3),
                       queries=10, seed=0)
    shapes = {tuple(tasks[i].query_x.shape) for i in range(20)}
    assert shapes == {(10, 256)}
    assert {tasks.episode_task(i) for i in range(40)} <= {"NR-AhR", "SR-MMP", "NR-AR"}


def test_ragged_queries_take_up_to_the_bound_stratified_and_disjoint_from_the_support(tox21):
    names = ["NR-AhR", "SR-MMP", "NR-AR"]
    tasks = AssayTasks(tox21.select(names), SupportSpec(positives=2, negatives=3), queries=300, seed=0, ragged=True)
    sizes = {}
    for i in range(40):
        assay, s, q = tasks.draw(i)
        assert not set(s.tolist()) & set(q.tolist())
        rest = len(assay.labels) - 5
        assert len(q) == min(rest, 300)
        q_pos = int(assay.labels[q].sum())
        if rest > 300:                                  # capped: stratified like the task, up to rounding
            assert abs(q_pos - 300 * assay.positives / len(assay.labels)) <= 1
        assert 1 <= q_pos < len(q)
        sizes[assay.name] = len(q)
    assert len(set(sizes.values())) > 1                # the fixture's tasks differ in size: a ragged stream
    batch = stack_episodes([tasks[i] for i in range(8)])
    assert isinstance(batch, RaggedTaskBatch) and batch.num_tasks == 8
    assert [e.query_x.shape[0] for e in batch] == [tasks[i].query_x.shape[0] for i in range(8)]
    assert batch.split(2, 1)[0].query_x.shape == tasks[4].query_x.shape
    fixed = AssayTasks(tox21.select(names), SupportSpec(positives=2, negatives=3), queries=10, seed=0)
    assert isinstance(stack_episodes([fixed[i] for i in range(4)]), TaskBatch)
    with pytest.raises(ValueError, match="upper bound"):
        AssayTasks(tox21.select(names), SupportSpec(positives=2, negatives=3), draws=1, ragged=True)


def test_tasks_too_small_are_skipped_by_name(tox21):
    with pytest.warns(UserWarning, match="SR-p53"):
        tasks = AssayTasks(tox21.select(["NR-AhR", "SR-p53"]), SupportSpec(positives=55, negatives=10), draws=1)
    assert tasks.skipped == ["SR-p53"] and len(tasks) == 1
    with pytest.raises(ValueError, match="no task is large enough"), pytest.warns(UserWarning):
        AssayTasks(tox21.select(["SR-p53"]), SupportSpec(positives=500, negatives=10), draws=1)


# -- metrics ---------------------------------------------------------------------------------------


def test_metrics_equal_sklearn_with_ties():
    g = torch.Generator().manual_seed(0)
    for _ in range(50):
        n = int(torch.randint(4, 60, (1,), generator=g))
        labels = torch.randint(0, 2, (n,), generator=g)
        labels[0], labels[1] = 0, 1
        scores = torch.randint(0, 6, (n,), generator=g).double() / 5          # many ties
        assert roc_auc(scores, labels) == pytest.approx(sklearn_metrics.roc_auc_score(labels, scores), abs=1e-12)
        assert average_precision(scores, labels) == pytest.approx(
            sklearn_metrics.average_precision_score(labels, scores), abs=1e-12)


def test_metrics_on_known_inputs():
    labels = torch.tensor([1, 0, 1, 0, 0])
    assert roc_auc(torch.tensor([0.9, 0.1, 0.8, 0.3, 0.2]), labels) == 1.0
    assert roc_auc(torch.tensor([0.1, 0.9, 0.2, 0.8, 0.7]), labels) == 0.0
    assert roc_auc(torch.zeros(5), labels) == 0.5
    assert average_precision(torch.tensor([0.9, 0.1, 0.2, 0.8, 0.3]), labels) == pytest.approx((1 + 2 / 4) / 2)
    assert delta_auprc(torch.tensor([0.9, 0.1, 0.8, 0.3, 0.2]), labels) == pytest.approx(1 - 0.4)   # 2 of 5 active
    assert delta_auprc(torch.tensor([0.1, 0.9, 0.2, 0.8, 0.7]), labels) == pytest.approx((1 / 4 + 2 / 5) / 2 - 0.4)
    with pytest.raises(ValueError, match="one active and one inactive"):
        roc_auc(torch.ones(3), torch.ones(3))


class _Oracle(Learner):
    """Scores the query with its true labels (plus a fixed offset): perfect ranking."""

    def adapt(self, support_x, support_y, steps=None):
        return None

    def predict(self, adapted, query_x):
        raise AssertionError("not used")

    def query_outputs(self, episode, steps=None):
        return torch.stack([torch.zeros(len(episode.query_y)), episode.query_y.float()], 1)


def test_evaluator_averages_draws_per_task_then_over_tasks(tox21):
    tasks = AssayTasks(tox21.select(["NR-AhR", "SR-MMP", "NR-AR"]), SupportSpec(size=16), draws=4, metric="delta_auprc")
    res = evaluate(_Oracle(), tasks, None)
    assert res.metric == "delta_auprc" and res.tasks == ("NR-AhR", "SR-MMP", "NR-AR") and res.episodes == 12
    # a perfect ranking: AP = 1, minus the active fraction of the query set (the rest of the task)
    expected = [1 - (a.positives - tasks.support.counts(a)[0]) / (len(a.labels) - 16) for a in tasks.assays]
    assert list(res.values) == pytest.approx(expected)
    assert res.mean == pytest.approx(np.mean(expected))
    assert res.stderr == pytest.approx(np.std(expected, ddof=1) / np.sqrt(3))
    roc = evaluate(_Oracle(), AssayTasks(tasks.data, SupportSpec(size=16), draws=2, metric="roc_auc"), None)
    assert roc.mean == 1.0 and roc.stderr == 0.0


def test_fingerprint_mlp_shapes():
    net = FingerprintMLP(32, hidden=16, embedding_dim=8)
    assert net(torch.zeros(5, 32)).shape == (5, 8) and net.head is None
    assert FingerprintMLP(32, 16, 8, out_features=2)(torch.zeros(5, 32)).shape == (5, 2)
    with pytest.raises(ValueError, match="in_features"):
        FingerprintMLP(0)


def test_fingerprint_mlp_dropout_acts_in_training_only():
    torch.manual_seed(0)
    net, x = FingerprintMLP(32, hidden=64, embedding_dim=8, dropout=0.5), torch.rand(5, 32)
    assert not torch.equal(net(x), net(x))                        # training: a fresh mask per call
    net.eval()
    plain = FingerprintMLP(32, hidden=64, embedding_dim=8)
    plain.load_state_dict({k.replace("body.3", "body.2"): v for k, v in net.state_dict().items()})
    torch.testing.assert_close(net(x), plain(x))                 # evaluation: the same net without dropout
    with pytest.raises(ValueError, match="dropout"):
        FingerprintMLP(32, dropout=1.0)


def test_gzip_table_reads_like_the_plain_one(tmp_path):
    text = (FIXTURES / "tox21" / "tox21.csv").read_bytes()
    (tmp_path / "muv").mkdir()
    with gzip.open(tmp_path / "muv" / "muv.csv.gz", "wb") as f:
        f.write(text)
    shutil.copy(FIXTURES / "tox21" / "tox21.csv", tmp_path / "plain.csv")
    a, b = read_dataset("muv", tmp_path), read_table(tmp_path / "plain.csv")
    assert a.smiles == b.smiles and all(torch.equal(x.labels, y.labels) for x, y in zip(a.assays, b.assays))
