"""``fewshot explain RUN``: the three mappings of a run drawn (:mod:`fewshot.report.mapping` measures them).

Writes into the output directory (default ``RUN/explain``, which ``fewshot report RUN`` shows):

- ``features.png``: support and query embeddings of a test episode, PCA and t-SNE (scikit-learn), coloured by
  class, prototypes (class means of the support embeddings) marked, for the net freshly initialised from the run's
  config and seed and for the trained one;
- ``tasks.png``: test tasks (each the mean of its support embeddings) mapped to 2-D and coloured by group
  (Omniglot alphabet, assay), the same map coloured by the learner's accuracy on each task, and the cosine
  similarity matrix of the tasks;
- gradient learners: ``model.png`` and ``model.md``, weight movement and CKA before vs after the inner loop per
  layer (:func:`~fewshot.report.mapping.adaptation_change`), for the trained learner and for the same net freshly
  initialised;
- Matching networks: ``attention.png``, the attention of every query over the support set;
- image runs: ``saliency.png``, integrated gradients of a few queries' predictions.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from fewshot.report.figures import colour, new_figure, save
from fewshot.report.mapping import (adaptation_change, episode_embeddings, saliency, scoring, task_embeddings)
from fewshot.report.records import write_manifest


def project(points: torch.Tensor, method: str, seed: int = 0):
    """``points [n, D]`` -> ``[n, 2]`` (NumPy) by scikit-learn's PCA or t-SNE (perplexity ``min(30, (n - 1) / 3)``)."""
    try:
        from sklearn.decomposition import PCA
        from sklearn.manifold import TSNE
    except ImportError:
        raise ValueError("the projections need scikit-learn: pip install scikit-learn (or 'fewshot[explain]')") from None
    x = points.double().numpy()
    if method == "pca":
        return PCA(n_components=2, random_state=seed).fit_transform(x)
    perplexity = max(2.0, min(30.0, (len(x) - 1) / 3))
    return TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(x)


def _draw_episode(ax, xy, support_y, query_y, ways: int) -> None:
    s, q = len(support_y), len(query_y)
    for c in range(ways):
        qm = (query_y == c).numpy()
        sm = (support_y == c).numpy()
        ax.scatter(xy[s:s + q][qm, 0], xy[s:s + q][qm, 1], s=12, color=colour(c), alpha=0.6, marker="o")
        ax.scatter(xy[:s][sm, 0], xy[:s][sm, 1], s=40, color=colour(c), edgecolor="black", marker="s")
        ax.scatter(xy[s + q + c, 0], xy[s + q + c, 1], s=220, color=colour(c), edgecolor="black", marker="*")
    ax.set_xticks([])
    ax.set_yticks([])


def feature_map(before, after, episode, out: Path, steps: int | None) -> Path:
    """``features.png``: the embeddings of ``episode`` by ``before`` (fresh) and ``after`` (trained)."""
    fig, axes = new_figure(10, 8.4, 2, 2)
    ways = int(episode.support_y.max()) + 1
    for row, (learner, when) in enumerate(((before, "before meta-training"), (after, "after meta-training"))):
        support, query = episode_embeddings(learner, episode, steps)
        protos = torch.stack([support[episode.support_y == c].mean(0) for c in range(ways)])
        points = torch.cat([support, query, protos])
        for col, method in enumerate(("pca", "tsne")):
            _draw_episode(axes[row][col], project(points, method), episode.support_y, episode.query_y, ways)
            axes[row][col].set_title(f"{when}: {'PCA' if method == 'pca' else 't-SNE'}", fontsize=10)
    fig.suptitle(f"one {ways}-way test episode: queries (dots), support (squares), prototypes (stars), by class",
                 fontsize=10)
    return save(fig, out / "features.png")


def task_groups(tasks, indices: list[int]) -> list[str]:
    """The group of each task: its assay, or the Omniglot alphabet of its first class, else ``"task"``."""
    if hasattr(tasks, "episode_task"):
        return [tasks.episode_task(i) for i in indices]
    groups = getattr(getattr(tasks, "data", None), "class_groups", None)
    if groups is not None and hasattr(tasks, "episode_classes"):
        return [groups[tasks.episode_classes(i)[0]] for i in indices]
    return ["task"] * len(indices)


def grouped_tasks(tasks):
    """Episodes whose classes share one group (Omniglot: within one alphabet) when the data has groups."""
    data = getattr(tasks, "data", None)
    if getattr(data, "class_groups", None) is None or getattr(tasks, "within_group", True):
        return tasks
    from fewshot.tasks.sampler import ClassificationTasks

    try:
        return ClassificationTasks(data, tasks.ways, tasks.shots, tasks.queries, seed=tasks.seed, within_group=True)
    except ValueError:           # no group holds enough classes for the episodes
        return tasks


def task_map(learner, tasks, count: int, out: Path, steps: int | None) -> tuple[Path, dict]:
    """``tasks.png``: ``count`` test tasks mapped; returns the path and the accuracy per group."""
    count = min(count, len(tasks))
    indices = list(range(count))
    means, scores = task_embeddings(learner, tasks, indices, steps)
    groups = task_groups(tasks, indices)
    names = sorted(set(groups))
    xy = project(means, "pca" if count < 8 else "tsne")
    fig, axes = new_figure(15, 4.8, 1, 3)
    ax = axes[0][0]
    for k, name in enumerate(names):
        mask = [g == name for g in groups]
        ax.scatter(xy[mask, 0], xy[mask, 1], s=30, color=colour(k), label=name if len(names) <= 12 else None)
    if len(names) <= 12:
        ax.legend(fontsize=7)
    ax.set_title(f"{count} test tasks (mean support embedding), by {'assay' if hasattr(tasks, 'episode_task') else 'group'}",
                 fontsize=10)
    points = axes[0][1].scatter(xy[:, 0], xy[:, 1], c=scores, cmap="viridis", s=30)
    fig.colorbar(points, ax=axes[0][1], label="query metric")
    axes[0][1].set_title("the same map, coloured by the learner's metric on each task", fontsize=10)
    order = sorted(range(count), key=lambda i: groups[i])
    centred = means.double() - means.double().mean(0)       # centred: every embedding after a ReLU is positive
    unit = torch.nn.functional.normalize(centred[order], dim=1)
    image = axes[0][2].imshow((unit @ unit.T).numpy(), cmap="magma")
    fig.colorbar(image, ax=axes[0][2], label="cosine similarity (centred embeddings)")
    axes[0][2].set_title("task similarity (tasks sorted by group)", fontsize=10)
    for ax in (axes[0][0], axes[0][1]):
        ax.set_xticks([])
        ax.set_yticks([])
    per_group = {name: sum(s for s, g in zip(scores, groups) if g == name) / groups.count(name) for name in names}
    return save(fig, out / "tasks.png"), per_group


def model_map(trained, fresh, tasks, episodes: int, out: Path, steps: int | None, algo: str) -> tuple[Path, Path]:
    """``model.png`` and ``model.md``: per layer, weight movement and CKA before vs after the inner loop."""
    rows = {"trained": adaptation_change(trained, tasks, episodes, steps),
            "freshly initialised": adaptation_change(fresh, tasks, episodes, steps)}
    fig, axes = new_figure(12, 4.2, 1, 2)
    names = [r.layer or "(model)" for r in rows["trained"]]
    for k, (when, changes) in enumerate(rows.items()):
        x = [i + 0.4 * k for i in range(len(changes))]
        axes[0][0].bar(x, [c.movement for c in changes], width=0.4, yerr=[c.movement_ci95 for c in changes],
                       color=colour(k), label=when)
        compared = [(xi, c) for xi, c in zip(x, changes) if c.cka == c.cka]
        axes[0][1].bar([xi for xi, _ in compared], [c.cka for _, c in compared], width=0.4,
                       yerr=[c.cka_ci95 for _, c in compared], color=colour(k), label=when)
    for ax, label in zip(axes[0], ("||θ′ − θ|| / ||θ|| (inner loop)", "CKA of layer outputs, before vs after")):
        ax.set_xticks([i + 0.2 for i in range(len(names))], names, rotation=45, ha="right", fontsize=7)
        ax.set_ylabel(label)
        ax.grid(alpha=0.3, axis="y")
        ax.legend(fontsize=8)
    axes[0][1].set_ylim(0, 1.05)
    fig.suptitle(f"{algo}: how each layer changes when adapting to a test task ({episodes} episodes, 95 % CI)",
                 fontsize=10)
    lines = ["| layer | kind | weight movement (trained) | CKA before vs after (trained) | weight movement (fresh) "
             "| CKA (fresh) |", "|---|---|---|---|---|---|"]
    for a, b in zip(rows["trained"], rows["freshly initialised"]):
        cka = (lambda c: "—" if c.cka != c.cka else f"{c.cka:.4f} ± {c.cka_ci95:.4f}")
        lines.append(f"| {a.layer} | {a.kind} | {a.movement:.4f} ± {a.movement_ci95:.4f} | {cka(a)} | "
                     f"{b.movement:.4f} ± {b.movement_ci95:.4f} | {cka(b)} |")
    table = out / "model.md"
    table.write_text("\n".join(lines) + "\n")
    (out / "model.json").write_text(json.dumps({k: [c.__dict__ for c in v] for k, v in rows.items()}, indent=1))
    return save(fig, out / "model.png"), table


def attention_map(learner, episode, out: Path) -> Path:
    """``attention.png``: a Matching network's attention ``[Q, S]`` over the support set of one episode."""
    with scoring(learner), torch.no_grad():
        episode = episode.to(learner.device)
        weights = learner.attention(learner.adapt(episode.support_x, episode.support_y), episode.query_x).cpu()
    fig, ax = new_figure(7, 6)
    image = ax.imshow(weights.numpy(), aspect="auto", cmap="viridis")
    fig.colorbar(image, ax=ax, label="attention")
    ax.set_xlabel("support example (class by class)")
    ax.set_ylabel("query (class by class)")
    ax.set_title("Matching-network attention of each query over the support set", fontsize=10)
    return save(fig, out / "attention.png")


def saliency_map(learner, episode, out: Path, queries: int = 4) -> tuple[Path, list[float]]:
    """``saliency.png``: integrated gradients of ``queries`` queries (one per class); returns the deltas."""
    per_class = episode.query_x.shape[0] // (int(episode.support_y.max()) + 1)
    picks = [k * per_class for k in range(min(queries, int(episode.support_y.max()) + 1))]
    fig, axes = new_figure(2.4 * len(picks), 5, 2, len(picks))
    deltas = []
    for col, j in enumerate(picks):
        attr, delta, predicted = saliency(learner, episode, j)
        deltas.append(delta)
        image = episode.query_x[j]
        axes[0][col].imshow(image.mean(0).numpy() if image.dim() == 3 else image.numpy(), cmap="gray")
        axes[0][col].set_title(f"query {j}: true {int(episode.query_y[j])}, predicted {predicted}", fontsize=8)
        heat = attr.sum(0) if attr.dim() == 3 else attr
        bound = float(heat.abs().max()) or 1.0
        axes[1][col].imshow(heat.numpy(), cmap="bwr", vmin=-bound, vmax=bound)
        axes[1][col].set_title(f"integrated gradients (|δ| {delta:.1e})", fontsize=8)
        for ax in (axes[0][col], axes[1][col]):
            ax.set_xticks([])
            ax.set_yticks([])
    return save(fig, out / "saliency.png"), deltas


def explain_run(run_dir: Path, out: Path, *, episodes: int = 20, tasks: int = 60, checkpoint: str = "best",
                device="cpu") -> Path:
    """Draw the three mappings of ``run_dir`` into ``out``; returns its ``figures.json``."""
    from fewshot.learners.gradient import GradientLearner
    from fewshot.learners.matching import MatchingNet
    from fewshot.runs import build_learner, load_learner

    trained, config = load_learner(run_dir, checkpoint)
    torch.manual_seed(config.seed)           # the initialisation the run started from (fewshot.runs.trainer_for)
    fresh = build_learner(config)
    trained, fresh = trained.to(device), fresh.to(device)
    if not hasattr(config.domain, "test_tasks"):
        raise ValueError(f"{config.dataset} runs have no test episodes to explain")
    name, test = config.domain.test_tasks(config)
    steps = config.test_inner_steps
    out.mkdir(parents=True, exist_ok=True)
    figures = [("features.png", f"Feature mapping: embeddings of one test episode ({name}), before and after "
                                "meta-training, PCA and t-SNE."),]
    feature_map(fresh, trained, test[0], out, steps)
    path, per_group = task_map(trained, grouped_tasks(test), tasks, out, steps)
    figures.append((path.name, f"Task mapping: {tasks} test tasks, each its mean support embedding; accuracy per "
                               "task on the map; task similarity."))
    tables, text = [], f"Run {run_dir.name}: {config.algo} on {config.dataset} ({name}), checkpoint {checkpoint}."
    if isinstance(trained, GradientLearner):
        path, table = model_map(trained, fresh, test, episodes, out, steps, config.algo)
        figures.append((path.name, "Model mapping: how far each layer's weights move in the inner loop and how much "
                                   "its output changes (linear CKA, before vs after adaptation), trained and fresh."))
        tables.append(table.name)
    if isinstance(trained, MatchingNet):
        figures.append((attention_map(trained, test[0], out).name, "Matching-network attention over the support set."))
    if config.domain.images:
        path, _ = saliency_map(trained, test[0], out)
        figures.append((path.name, "Integrated-gradients saliency of queries' predicted logits (Captum); red "
                                   "raises the logit, blue lowers it."))
    (out / "groups.json").write_text(json.dumps(per_group, indent=1))
    return write_manifest(out, f"Mappings of {run_dir.name}", figures, tables, text)
