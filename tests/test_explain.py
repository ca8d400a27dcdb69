"""``fewshot explain``: CKA against its kernel definition, the inner-loop change per layer, embeddings,
integrated gradients against the completeness axiom, and the command end to end."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml

import fewshot
from fewshot.cli import main
from fewshot.report.mapping import (adaptation_change, embed, linear_cka, query_logit, saliency, scoring)
from fewshot.report.page import build_report
from tests.test_report import TINY, pixel_std


def hsic_cka(x: np.ndarray, y: np.ndarray) -> float:
    """CKA from its definition: HSIC(K, L) / sqrt(HSIC(K, K) HSIC(L, L)), K = X X^T, L = Y Y^T, H = I - 11^T/n."""
    n = x.shape[0]
    h = np.eye(n) - np.ones((n, n)) / n
    k, l = x @ x.T, y @ y.T
    hsic = lambda a, b: np.trace(a @ h @ b @ h)
    return hsic(k, l) / np.sqrt(hsic(k, k) * hsic(l, l))


def test_linear_cka_matches_the_kernel_definition_and_its_invariances():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(30, 7, generator=g), torch.randn(30, 4, generator=g)
    y = y + x[:, :4]                                     # partly shared
    assert linear_cka(x, y) == pytest.approx(hsic_cka(x.double().numpy(), y.double().numpy()), rel=1e-10)
    rotation, _ = torch.linalg.qr(torch.randn(7, 7, generator=g))
    assert linear_cka(x, 3.0 * x @ rotation + 2.0) == pytest.approx(1.0, abs=1e-10)
    assert 0.0 <= linear_cka(x, torch.randn(30, 7, generator=g)) < 0.5
    with pytest.raises(ValueError, match="same n"):
        linear_cka(x, y[:10])


@pytest.fixture(scope="module")
def episodes(omniglot_background):
    return fewshot.ClassificationTasks(omniglot_background.select_groups(["Greek", "Latin", "Korean"]), ways=5,
                                       shots=1, queries=3, seed=0)


def net(seed: int = 0):
    torch.manual_seed(seed)
    return fewshot.Conv4(out_features=5, hidden=8, variant="strided")


def test_embedding_is_the_heads_input(episodes):
    maml = fewshot.MAML(net(), inner_lr=0.4)
    x = episodes[0].query_x
    with scoring(maml), torch.no_grad():
        assert torch.allclose(embed(maml, x), maml.model.embed(x), atol=1e-6)
    proto = fewshot.ProtoNet(fewshot.Conv4(hidden=8))
    with scoring(proto), torch.no_grad():
        assert torch.equal(embed(proto, x), proto.encoder(x))


def test_anil_moves_only_the_head_and_maml_moves_the_body(episodes):
    anil = adaptation_change(fewshot.ANIL(net(), inner_lr=0.4), episodes, 3)
    body = [c for c in anil if c.layer != "head"]
    assert all(c.movement == 0.0 for c in body)
    assert all(c.cka == pytest.approx(1.0, abs=1e-9) for c in body if c.kind == "Conv2d")
    head = next(c for c in anil if c.layer == "head")
    assert head.movement > 0 and head.cka < 1
    maml = adaptation_change(fewshot.MAML(net(), inner_lr=0.4, inner_steps=2), episodes, 3)
    assert all(c.movement > 0 for c in maml)
    assert [c.layer for c in maml] == [c.layer for c in anil]


@pytest.mark.parametrize("learner", ["maml", "protonet"])
def test_integrated_gradients_are_complete(episodes, learner):
    """The attributions sum to f(query) - f(0) (completeness), f computed apart from Captum."""
    model = (fewshot.MAML(net(), inner_lr=0.4) if learner == "maml"
             else fewshot.ProtoNet(fewshot.Conv4(hidden=8)))
    episode = episodes[1]
    attributions, delta, predicted = saliency(model, episode, query=4, steps=64)
    assert attributions.shape == episode.query_x[4].shape
    gap = (query_logit(model, episode, 4, episode.query_x[4], predicted)
           - query_logit(model, episode, 4, torch.zeros_like(episode.query_x[4]), predicted))
    assert abs(gap) > 1e-3
    assert float(attributions.sum()) == pytest.approx(gap, rel=0.05, abs=1e-3)
    assert delta < 0.05 * abs(gap) + 1e-3


def test_explain_command_draws_the_three_mappings(tmp_path, capsys):
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump({**TINY, "steps": 2}))
    run = tmp_path / "maml"
    assert main(["train", "--config", str(config), "--algo", "maml", "--out", str(run), "--no-progress",
                 "--set", "eval_inner_steps=1"]) == 0
    assert main(["explain", str(run), "--episodes", "2", "--tasks", "8"]) == 0
    out = run / "explain"
    manifest = json.loads((out / "figures.json").read_text())
    drawn = [f["file"] for f in manifest["figures"]]
    assert drawn == ["features.png", "tasks.png", "model.png", "saliency.png"]
    assert all(pixel_std(out / name) > 10 for name in drawn)
    table = (out / "model.md").read_text()
    assert "| head | Linear |" in table and "| features.0.0 | Conv2d |" in table
    page = build_report([run], tmp_path / "report").read_text()
    assert 'src="maml-explain/model.png"' in page and "<table><tr><th>layer</th>" in page
    capsys.readouterr()
