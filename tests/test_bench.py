"""``fewshot bench speed`` and ``fewshot bench reproduce``: real steps, real measurements, the JSON contract."""

from __future__ import annotations

import argparse
import json
import math

import pytest
import torch

from fewshot import bench, reproduce
from conftest import cli




def test_speed_json_rows_have_exactly_the_contract_keys_and_real_measurements(capsys):
    code, out, _ = cli(["bench", "speed", "--algos", "maml,reptile", "--tasks", "5x2", "--repeats", "2",
                        "--warmup", "0", "--rounds", "1", "--peers", "higher", "--variants", "checkpoint,vmap",
                        "--json"], capsys)
    assert code == 0
    rows = [json.loads(line) for line in out.splitlines()]
    fewshot_rows = {(r["library"], r["algo"]): r for r in rows if r["library"].startswith("fewshot")}
    assert set(fewshot_rows) == {("fewshot", "maml"), ("fewshot[checkpoint]", "maml"), ("fewshot[vmap]", "maml"),
                                 ("fewshot", "reptile")}
    for row in rows:
        assert tuple(row) == bench.ROW_KEYS
        assert row["tasks_per_s"] > 0 and row["gflops"] > 0 and row["meta_batch"] == 2 and row["ways"] == 5
        assert math.isnan(row["peak_mb"]) or row["peak_mb"] >= 0
    maml, reptile = fewshot_rows["fewshot", "maml"], fewshot_rows["fewshot", "reptile"]
    assert maml["order"] == 2 and reptile["order"] == 1
    assert maml["grad_rel_diff"] < 1e-5            # against the plain-autograd loop
    assert fewshot_rows["fewshot[checkpoint]", "maml"]["grad_rel_diff"] < 1e-6
    assert fewshot_rows["fewshot[vmap]", "maml"]["grad_rel_diff"] < 1e-5   # vmap with BatchNorm: exact
    assert reptile["grad_rel_diff"] is None


def test_reference_meta_backward_agrees_with_the_library_in_float64():
    s = bench.Setting("fewshot", "maml", "strided", 3, 1, 2, 2, None, 1, 0, 0, 1)
    learner, config = bench.make_learner(s)
    learner.double()
    batch = bench.make_batch(s)
    batch = type(batch)(batch.support_x.double(), batch.support_y, batch.query_x.double(), batch.query_y)
    learner.meta_backward(batch)
    ours = [p.grad.clone() for p in learner.parameters()]
    learner.zero_grad(set_to_none=True)
    bench.reference_meta_backward(learner.model, [n for n, _ in learner.model.named_parameters()], batch,
                                  config.inner_lr, config.inner_steps, first_order=False)
    assert bench.relative_difference(ours, [p.grad for p in learner.parameters()]) < 1e-12


def test_matmul_rate_is_measured():
    assert bench.matmul_gflops(threads=1, size=128, repeats=2) > 0.1


@pytest.mark.parametrize("argv", [["bench", "speed", "--algos", "mamll"], ["bench", "speed", "--tasks", "5by32"],
                                  ["bench", "speed", "--variants", "fast"], ["bench"]])
def test_bad_bench_flags_exit_2_with_one_line(argv, capsys):
    code, _, err = cli(argv, capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1


def test_published_table_is_complete():
    for algo in ("maml", "fomaml", "protonet", "matching", "reptile"):
        for ways, shots in ((5, 1), (5, 5), (20, 1), (20, 5)):
            assert 80 < reproduce.PUBLISHED_OMNIGLOT[algo, ways, shots] < 100
    quick = reproduce.plan(argparse.Namespace(full=False, budget=None))
    full = reproduce.plan(argparse.Namespace(full=True, budget=None))
    assert len(quick.settings) == 6 and len(full.settings) == 21 and quick.budget_s < full.budget_s


def test_reproduce_trains_and_scores_a_recipe_without_the_evaluation_set(tmp_path):
    assert not reproduce.has_vinyals_test(str(tmp_path))
    p = reproduce.Plan([], budget_s=1.0, episodes=5, val_episodes=3)
    row = reproduce.run_row("protonet", 5, 1, p, tmp_path, "background", 0, None)
    assert row["data"] == "background:test"
    mean, ci = row["ours"]
    assert 0 <= mean <= 100 and row["theirs"] == 98.8 and row["steps"] >= 1
    sin = reproduce.run_row("sinusoid", 1, 5, p, tmp_path, "background", 0, None)
    assert set(sin["ours"]) == {1, 5, 10} and all(m >= 0 for m, _ in sin["ours"].values())


def test_checkpointed_inner_loop_is_exact_and_refuses_vmap():
    from fewshot.learners.gradient import MAML, MetaSGD
    from fewshot.nets import Conv4
    from test_meta_gradients import image_batch, library_gradient, relative_error

    torch.manual_seed(0)
    net = Conv4(out_features=3, hidden=8, variant="pool").double()
    batch = image_batch(torch.float64)
    plain = library_gradient(MetaSGD(net, 0.4, 3), batch)
    ckpt = library_gradient(MetaSGD(net, 0.4, 3).set_execution(checkpoint_inner=True), batch)
    assert relative_error(ckpt, plain) < 1e-12
    with pytest.raises(ValueError, match="task loop"):
        MAML(Conv4(out_features=3, norm="none"), 0.4, 1).set_execution(vectorize=True, checkpoint_inner=True)
