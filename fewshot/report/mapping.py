"""The three mappings, measured: what ``fewshot explain`` draws.

- *feature mapping*: embeddings ``[n, D]`` of support and query examples (:func:`embed`), projected to 2-D;
- *task mapping*: every task as the mean of its support embeddings (:func:`task_embeddings`);
- *model mapping*: how far each layer's weights move in the inner loop and how much each layer's representation
  changes, as linear CKA between the layer's outputs before and after adaptation (:func:`adaptation_change`;
  Raghu et al. 2020, "Rapid learning or feature reuse?"); Matching-network attention over the support set; and
  integrated-gradients saliency of one query's prediction (:func:`saliency`, Captum).

Everything is computed as the evaluator scores: eval mode, the learner's BatchNorm mode, episodes on the
learner's device.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

import torch
from torch import nn

from fewshot.evaluate import confidence_interval
from fewshot.learners.base import Learner
from fewshot.learners.gradient import GradientLearner
from fewshot.tasks.episode import Episode


def linear_cka(x: torch.Tensor, y: torch.Tensor) -> float:
    """Linear centred kernel alignment of two representations of the same ``n`` examples, ``x [n, p]`` and
    ``y [n, q]``: ``||Yc^T Xc||_F^2 / (||Xc^T Xc||_F ||Yc^T Yc||_F)`` with column-centred ``Xc, Yc`` (Kornblith et al.
    2019); 1 for representations equal up to rotation and scale, in ``[0, 1]``."""
    x, y = x.double().flatten(1), y.double().flatten(1)
    if x.shape[0] != y.shape[0] or x.shape[0] < 2:
        raise ValueError(f"CKA compares two representations of the same n >= 2 examples, got {x.shape[0]} and "
                         f"{y.shape[0]}")
    x, y = x - x.mean(0), y - y.mean(0)
    k, l = x @ x.T, y @ y.T            # n x n Gram matrices: ||Yc^T Xc||_F^2 = <K, L>, ||Xc^T Xc||_F = ||K||_F
    norm = torch.linalg.matrix_norm(k) * torch.linalg.matrix_norm(l)
    return float((k * l).sum() / norm) if norm > 0 else float("nan")


@contextmanager
def scoring(learner: Learner) -> Iterator[None]:
    """Eval mode and the learner's BatchNorm mode, as the evaluator scores; the mode is restored afterwards."""
    was_training = learner.training
    learner.eval()
    try:
        with learner.normalisation():
            yield
    finally:
        learner.train(was_training)


def _head(learner: GradientLearner) -> nn.Module:
    head = getattr(learner.model, "head", None)
    if not isinstance(head, nn.Module):
        raise ValueError(f"{type(learner).__name__}'s model has no submodule named 'head', so its embedding (the "
                         "head's input) is not defined; give the model a final layer named head")
    return head


def embed(learner: Learner, x: torch.Tensor, params: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
    """The learner's embedding of ``x [B, ...]`` -> ``[B, D]``: the encoder's output (metric learners, the
    fine-tune baseline) or the input of the model's ``head`` (gradient learners, with ``params``: e.g. fast
    weights; default the learner's own)."""
    x = x.to(learner.device)
    with torch.no_grad():
        if isinstance(learner, GradientLearner):
            captured = []
            handle = _head(learner).register_forward_hook(lambda m, inputs, out: captured.append(inputs[0]))
            try:
                learner.forward_with(params or dict(learner.model.named_parameters()), x)
            finally:
                handle.remove()
            return captured[0].flatten(1)
        encoder = getattr(learner, "encoder", None)
        if encoder is None:
            raise ValueError(f"{type(learner).__name__} has no encoder and no head, so it has no embedding to map")
        return encoder(x).flatten(1)


def adapted_params(learner: Learner, episode: Episode, steps: int | None = None):
    """``learner.adapt(support)`` without a meta-gradient (the evaluator's adaptation)."""
    with torch.no_grad():
        return learner.adapt(episode.support_x.to(learner.device), episode.support_y.to(learner.device), steps=steps)


def episode_embeddings(learner: Learner, episode: Episode, steps: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Support and query embeddings ``[S, D]``, ``[Q, D]`` of an episode, embedded together (as a metric learner
    embeds them); a gradient learner's with its fast weights after adapting to the support set."""
    with scoring(learner):
        params = adapted_params(learner, episode, steps) if isinstance(learner, GradientLearner) else None
        z = embed(learner, torch.cat([episode.support_x, episode.query_x]), params).cpu()
    n = episode.support_x.shape[0]
    return z[:n], z[n:]


def task_embeddings(learner: Learner, tasks, indices: list[int], steps: int | None = None
                    ) -> tuple[torch.Tensor, list[float]]:
    """Each task ``tasks[i]`` as the mean of its support embeddings ``[len(indices), D]`` (a metric learner's or
    a gradient learner's meta-learned body, before adaptation), and the learner's query metric on it."""
    means, scores = [], []
    for i in indices:
        episode = tasks[i]
        with scoring(learner):
            means.append(embed(learner, episode.support_x).mean(0).cpu())
            scores.append(learner.evaluate_episode(episode.to(learner.device), steps))
    return torch.stack(means), scores


def _layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The modules that hold parameters of their own (Conv, BatchNorm, Linear, ...), in order."""
    return [(name, m) for name, m in model.named_modules() if any(True for _ in m.parameters(recurse=False))]


def layer_outputs(learner: GradientLearner, params: dict[str, torch.Tensor], x: torch.Tensor,
                  kinds: tuple[type, ...] = (nn.Conv2d, nn.Linear)) -> dict[str, torch.Tensor]:
    """The output ``[B, features]`` of every ``kinds`` layer of the learner's model on ``x`` with ``params``."""
    outputs, handles = {}, []
    for name, module in _layers(learner.model):
        if isinstance(module, kinds):
            handles.append(module.register_forward_hook(
                lambda m, i, out, name=name: outputs.__setitem__(name, out.detach().flatten(1).cpu())))
    try:
        with torch.no_grad():
            learner.forward_with(params, x.to(learner.device))
    finally:
        for h in handles:
            h.remove()
    return outputs


@dataclass(frozen=True)
class LayerChange:
    """How one layer changed in the inner loop, over episodes: ``movement`` = ``||theta' - theta|| / ||theta||``
    of its parameters and ``cka`` = linear CKA of its outputs on the query set before and after adaptation
    (``nan`` for a layer whose output is not compared), each a mean with its 95 % half-width."""

    layer: str
    kind: str
    movement: float
    movement_ci95: float
    cka: float
    cka_ci95: float


def adaptation_change(learner: GradientLearner, tasks, episodes: int, steps: int | None = None) -> list[LayerChange]:
    """Per layer of a gradient learner's model, the weight movement and the CKA of :class:`LayerChange` over
    episodes ``0..episodes-1`` of ``tasks``, adapting with ``steps`` inner steps (``None``: the learner's)."""
    if not isinstance(learner, GradientLearner):
        raise ValueError(f"the inner-loop change is measured for gradient learners (MAML, ANIL, ...), not "
                         f"{type(learner).__name__}")
    layers = _layers(learner.model)
    owned = {name: [n for n, _ in m.named_parameters(recurse=False)] for name, m in layers}
    movement = {name: [] for name, _ in layers}
    cka = {name: [] for name, _ in layers}
    theta = {n: p.detach() for n, p in learner.model.named_parameters()}
    for i in range(episodes):
        episode = tasks[i]
        with scoring(learner):
            fast = {k: v.detach() for k, v in adapted_params(learner, episode, steps).items()}
            before = layer_outputs(learner, theta, episode.query_x)
            after = layer_outputs(learner, fast, episode.query_x)
        for name, _ in layers:
            keys = [f"{name}.{p}" if name else p for p in owned[name]]
            keys = [k for k in keys if k in theta]
            change = sum(float((fast[k] - theta[k]).pow(2).sum()) for k in keys) ** 0.5
            size = sum(float(theta[k].pow(2).sum()) for k in keys) ** 0.5
            movement[name].append(change / size if size > 0 else 0.0)
            if name in before:
                cka[name].append(linear_cka(before[name], after[name]))
    rows = []
    for name, module in layers:
        m, mh = confidence_interval(movement[name])
        c, ch = confidence_interval(cka[name]) if cka[name] else (float("nan"), float("nan"))
        rows.append(LayerChange(name, type(module).__name__, m, mh, c, ch))
    return rows


def saliency(learner: Learner, episode: Episode, query: int, steps: int = 32) -> tuple[torch.Tensor, float, int]:
    """Integrated gradients (Sundararajan et al. 2017, with Captum) of query ``query``'s logit of its predicted
    class, from an all-zero image to the query, the support set and the other queries held fixed (so per-batch
    BatchNorm sees the batch the evaluator scores).

    Returns ``(attributions of the query's shape, convergence delta, predicted class)``; by the completeness
    axiom the attributions sum to ``f(query) - f(0)`` up to the delta."""
    try:
        from captum.attr import IntegratedGradients
    except ImportError:
        raise ValueError("saliency needs Captum: pip install captum (or pip install 'fewshot[explain]')") from None
    device = learner.device
    episode = episode.to(device)
    with scoring(learner):
        adapted = adapted_params(learner, episode)
        with torch.no_grad():
            predicted = int(learner.predict(adapted, episode.query_x)[query].argmax())

        def logits(x: torch.Tensor) -> torch.Tensor:          # [k, ...] -> [k, ways]
            rows = []
            for row in x:
                batch = torch.cat([episode.query_x[:query], row.unsqueeze(0), episode.query_x[query + 1:]])
                rows.append(learner.predict(adapted, batch)[query])
            return torch.stack(rows)

        x = episode.query_x[query: query + 1]
        attributions, delta = IntegratedGradients(logits).attribute(
            x, baselines=torch.zeros_like(x), target=predicted, n_steps=steps, return_convergence_delta=True)
    return attributions[0].detach().cpu(), float(delta.abs().max()), predicted


def query_logit(learner: Learner, episode: Episode, query: int, x: torch.Tensor, target: int) -> float:
    """Query ``query``'s logit of class ``target`` when its input is ``x`` (the rest of the episode as given)."""
    episode = episode.to(learner.device)
    with scoring(learner):
        adapted = adapted_params(learner, episode)
        batch = torch.cat([episode.query_x[:query], x.to(learner.device).unsqueeze(0), episode.query_x[query + 1:]])
        with torch.no_grad():
            return float(learner.predict(adapted, batch)[query, target])
