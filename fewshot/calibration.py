"""Calibration of classifiers: how far the predicted probabilities are from the frequencies they claim.

The probabilities are the softmax of a learner's query outputs (for a learner whose outputs are
log-probabilities, such as an ensemble or a posterior average, the softmax gives them back). The
metrics, over ``n`` predictions ``p_i`` (class probabilities) with true classes ``y_i``:

- **ECE**, expected calibration error: the top-label confidence ``c_i = max_k p_ik`` is binned into 15
  equal-width bins over [0, 1], bin ``b`` (0..14) holding the confidences in ``(b/15, (b+1)/15]`` (the first
  bin also holds 0); ``ECE = sum_b (n_b / n) |acc_b - conf_b|``, with ``acc_b`` the fraction of bin ``b``'s
  predictions whose top class is right and ``conf_b`` their mean confidence (Guo et al. 2017).
- **MCE**, maximum calibration error: ``max_b |acc_b - conf_b|`` over the non-empty bins.
- **NLL**: the mean of ``-log p_i(y_i)``.
- **Brier score**, multi-class form: the mean over predictions of ``sum_k (p_ik - [k == y_i])^2`` (0 to 2).
  For binary assays (:func:`episode_statistics` with ``binary=True``) the binary form ``(p_i1 - y_i)^2`` of the
  class-1 probability, which is half the multi-class form.

Predictions are pooled over the query sets of all evaluation episodes; the 95 % interval of each metric is a
percentile bootstrap over episodes (:func:`bootstrap_bounds`: episodes resampled with replacement, 1000
resamples, seeded), reported as the half-width ``(high - low) / 2`` (the ends are in
:attr:`Calibration.bounds`). Binary assay tasks are scored task by task and averaged over tasks
(:func:`task_mean`), the interval then ``1.96 * std / sqrt(tasks)`` like the ranking metrics.

Temperature scaling (Guo et al. 2017) divides the logits by one ``T > 0`` fitted on validation episodes by
minimising their NLL (:func:`fit_temperature`; the wrapper that applies it is
:class:`~fewshot.learners.temperature.TemperatureScaled`).
"""

from __future__ import annotations

import io
import json
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.nn import functional as F
from torch.utils.data import Dataset

from fewshot.files import atomic_write

BINS = 15
RESAMPLES = 1000
METRICS = ("ece", "mce", "nll", "brier")
TEMPERATURE_RANGE = (1e-2, 1e2)      # the bounds of the temperature search

# Layout of one row of episode statistics (float64): per-bin counts, correct predictions and summed confidence,
# then the summed NLL, the summed Brier score and the number of predictions.
_COUNT, _CORRECT, _CONF = slice(0, BINS), slice(BINS, 2 * BINS), slice(2 * BINS, 3 * BINS)
_NLL, _BRIER, _N = 3 * BINS, 3 * BINS + 1, 3 * BINS + 2
WIDTH = 3 * BINS + 3


def bin_index(confidence: torch.Tensor, bins: int = BINS) -> torch.Tensor:
    """The bin of each confidence in [0, 1]: bin ``b`` holds ``(b/bins, (b+1)/bins]``, the first bin also 0."""
    edges = torch.arange(1, bins, dtype=torch.float64) / bins          # the inner edges 1/bins .. (bins-1)/bins
    return torch.bucketize(confidence.double(), edges, right=False)


def _log_probs(outputs: torch.Tensor) -> torch.Tensor:
    if outputs.dim() != 2 or outputs.shape[1] < 2:
        raise ValueError(f"calibration needs class logits [n, classes >= 2], got shape {tuple(outputs.shape)}")
    return F.log_softmax(outputs.detach().double(), dim=1)


def episode_statistics(outputs: torch.Tensor, labels: torch.Tensor, *, binary: bool = False) -> torch.Tensor:
    """Sufficient statistics of the calibration metrics of one episode's query predictions.

    Args:
        outputs: logits (or log-probabilities) ``[n, classes]``; probabilities are their softmax.
        labels: true classes ``[n]``.
        binary: score the Brier term in the binary form ``(p_1 - y)^2`` (two classes only).

    Returns:
        ``[WIDTH]`` float64: per-bin counts, correct predictions and summed confidences, then the summed NLL, the
        summed Brier score and the number of predictions. Rows of several episodes add up.
    """
    log_p = _log_probs(outputs)
    labels = labels.detach().long().flatten().cpu()
    if labels.shape[0] != log_p.shape[0]:
        raise ValueError(f"{log_p.shape[0]} predictions for {labels.shape[0]} labels")
    p = log_p.exp()
    confidence, predicted = p.max(dim=1)
    correct = (predicted == labels).double()
    b = bin_index(confidence)
    stats = torch.zeros(WIDTH, dtype=torch.float64)
    stats[_COUNT] = torch.bincount(b, minlength=BINS).double()
    stats[_CORRECT] = torch.bincount(b, weights=correct, minlength=BINS)
    stats[_CONF] = torch.bincount(b, weights=confidence, minlength=BINS)
    stats[_NLL] = -log_p.gather(1, labels[:, None]).sum()
    onehot = F.one_hot(labels, p.shape[1]).double()
    if binary:
        if p.shape[1] != 2:
            raise ValueError(f"the binary Brier score needs two classes, got {p.shape[1]}")
        stats[_BRIER] = ((p[:, 1] - onehot[:, 1]) ** 2).sum()
    else:
        stats[_BRIER] = ((p - onehot) ** 2).sum()
    stats[_N] = len(labels)
    return stats


def metrics(stats: torch.Tensor) -> dict[str, torch.Tensor]:
    """ECE, MCE, NLL and Brier score of summed statistics ``[..., WIDTH]`` (any leading axes)."""
    count, correct, conf = stats[..., _COUNT], stats[..., _CORRECT], stats[..., _CONF]
    n = stats[..., _N]
    gap = (correct - conf).abs()                          # n_b |acc_b - conf_b|
    per_bin = torch.where(count > 0, gap / count.clamp(min=1), torch.zeros_like(gap))
    return {"ece": gap.sum(-1) / n, "mce": per_bin.max(-1).values, "nll": stats[..., _NLL] / n,
            "brier": stats[..., _BRIER] / n}


def _stats(probs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    probs = probs.detach().double()
    if not bool(((probs >= 0) & (probs <= 1)).all()):
        raise ValueError("probabilities must lie in [0, 1]")
    return episode_statistics(probs.clamp(min=1e-300).log(), labels)


def expected_calibration_error(probs: torch.Tensor, labels: torch.Tensor) -> float:
    """ECE of class probabilities ``[n, classes]`` for labels ``[n]`` (15 bins; module docstring)."""
    return float(metrics(_stats(probs, labels))["ece"])


def maximum_calibration_error(probs: torch.Tensor, labels: torch.Tensor) -> float:
    """MCE: the largest ``|accuracy - confidence|`` over the non-empty bins of the top-label confidence."""
    return float(metrics(_stats(probs, labels))["mce"])


def negative_log_likelihood(probs: torch.Tensor, labels: torch.Tensor) -> float:
    """Mean ``-log p(true class)`` of class probabilities ``[n, classes]``."""
    return float(metrics(_stats(probs, labels))["nll"])


def brier_score(probs: torch.Tensor, labels: torch.Tensor) -> float:
    """Multi-class Brier score: mean over predictions of ``sum_k (p_k - onehot_k)^2``."""
    return float(metrics(_stats(probs, labels))["brier"])


def bootstrap_bounds(stats: torch.Tensor, resamples: int = RESAMPLES, seed: int = 0) -> dict[str, tuple[float, float]]:
    """Percentile 95 % bootstrap interval over episodes of each metric: ``stats [episodes, WIDTH]`` resampled with
    replacement ``resamples`` times (a generator seeded with ``seed``), the metrics of each resample's pooled
    predictions, their 2.5th and 97.5th percentiles."""
    episodes = stats.shape[0]
    g = torch.Generator().manual_seed(seed)
    draws = torch.randint(episodes, (resamples, episodes), generator=g)
    weights = torch.zeros(resamples, episodes, dtype=torch.float64).scatter_add_(
        1, draws, torch.ones(resamples, episodes, dtype=torch.float64))
    values = metrics(weights @ stats)
    q = torch.tensor([0.025, 0.975], dtype=torch.float64)
    return {name: tuple(float(v) for v in torch.quantile(values[name], q)) for name in METRICS}


@dataclass(frozen=True)
class Calibration:
    """Calibration metrics of an evaluation (module docstring), each with a 95 % interval.

    Attributes:
        ece, mce, nll, brier: the metrics (pooled over all query predictions, or the mean over tasks).
        ece_ci95, mce_ci95, nll_ci95, brier_ci95: half-widths of their 95 % intervals.
        bounds: metric -> (low, high) of the interval (the percentile bootstrap's ends, or mean ± half-width).
        interval: how the interval was found, in words.
        predictions: query predictions scored.
        bin_counts, bin_accuracy, bin_confidence: the 15 bins of all predictions pooled (the reliability diagram).
    """

    ece: float
    mce: float
    nll: float
    brier: float
    ece_ci95: float
    mce_ci95: float
    nll_ci95: float
    brier_ci95: float
    interval: str
    predictions: int
    bounds: dict[str, tuple[float, float]] = field(repr=False, default_factory=dict)
    bin_counts: tuple[int, ...] = field(repr=False, default=())
    bin_accuracy: tuple[float, ...] = field(repr=False, default=())
    bin_confidence: tuple[float, ...] = field(repr=False, default=())

    def as_dict(self) -> dict[str, float]:
        """``{"ece", "mce", "nll", "brier", "ece_ci95", "mce_ci95", "nll_ci95", "brier_ci95"}``."""
        return {**{m: getattr(self, m) for m in METRICS}, **{f"{m}_ci95": getattr(self, f"{m}_ci95") for m in METRICS}}

    def __str__(self) -> str:
        parts = ", ".join(f"{m.upper() if m != 'brier' else 'Brier'} {getattr(self, m):.4f} ± "
                          f"{getattr(self, m + '_ci95'):.4f}" for m in METRICS)
        return f"{parts} (95 % intervals: {self.interval})"


def _bins(stats: torch.Tensor) -> tuple[tuple[int, ...], tuple[float, ...], tuple[float, ...]]:
    count = stats[_COUNT]
    safe = count.clamp(min=1)
    acc = torch.where(count > 0, stats[_CORRECT] / safe, torch.full_like(count, math.nan))
    conf = torch.where(count > 0, stats[_CONF] / safe, torch.full_like(count, math.nan))
    return tuple(int(c) for c in count), tuple(float(a) for a in acc), tuple(float(c) for c in conf)


def pooled(stats: torch.Tensor, resamples: int = RESAMPLES, seed: int = 0) -> Calibration:
    """The metrics of all predictions of ``stats [episodes, WIDTH]`` pooled, with bootstrap intervals over
    episodes (:func:`bootstrap_bounds`)."""
    total = stats.sum(0)
    values = {k: float(v) for k, v in metrics(total).items()}
    bounds = bootstrap_bounds(stats, resamples, seed)
    halves = {f"{m}_ci95": (bounds[m][1] - bounds[m][0]) / 2 for m in METRICS}
    return Calibration(**values, **halves, bounds=bounds, predictions=int(total[_N]),
                       interval=f"percentile bootstrap over {stats.shape[0]} episodes, {resamples} resamples",
                       **dict(zip(("bin_counts", "bin_accuracy", "bin_confidence"), _bins(total))))


def task_mean(stats: torch.Tensor) -> Calibration:
    """The mean over tasks of each task's metrics (``stats [tasks, WIDTH]``, each row a task's episodes summed),
    the interval ``1.96 * std / sqrt(tasks)`` (the standard error over tasks, as for the ranking metrics)."""
    per_task = metrics(stats)
    tasks = stats.shape[0]
    values, halves, bounds = {}, {}, {}
    for m in METRICS:
        v = per_task[m]
        mean = float(v.mean())
        half = 1.96 * float(v.std(unbiased=True)) / math.sqrt(tasks) if tasks > 1 else 0.0
        values[m], halves[f"{m}_ci95"], bounds[m] = mean, half, (mean - half, mean + half)
    return Calibration(**values, **halves, bounds=bounds, predictions=int(stats[:, _N].sum()),
                       interval=f"1.96 x standard error over {tasks} tasks",
                       **dict(zip(("bin_counts", "bin_accuracy", "bin_confidence"), _bins(stats.sum(0)))))


# -- temperature scaling ---------------------------------------------------------------------------------------
@torch.no_grad()
def query_logits(learner, tasks: Dataset, episodes: int | None = None, inner_steps: int | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(outputs [n, classes], labels [n])``: the learner's query outputs over episodes ``0..episodes-1`` of
    ``tasks`` (None: all of a finite source), concatenated (float64, on the CPU); scored as the evaluator scores
    them (eval mode, the learner's BatchNorm mode)."""
    if getattr(learner, "task", "classification") != "classification":
        raise ValueError("temperature scaling needs class logits; this learner does regression")
    from fewshot.evaluate import episode_count, scored_episodes

    outputs, labels = [], []
    for _, episode, out in scored_episodes(learner, tasks, episode_count(tasks, episodes), inner_steps):
        outputs.append(_log_probs(out.double()))
        labels.append(episode.query_y.long().flatten())
    classes = {o.shape[1] for o in outputs}
    if len(classes) > 1:       # outputs of different widths cannot be pooled into one [n, classes]
        raise ValueError(f"episodes of different widths {sorted(classes)}; fit the temperature on episodes of one "
                         "number of ways")
    return torch.cat(outputs), torch.cat(labels)


def temperature_nll(outputs: torch.Tensor, labels: torch.Tensor, temperature: float) -> float:
    """Mean NLL of ``softmax(outputs / temperature)`` for ``labels``."""
    log_p = F.log_softmax(outputs.double() / temperature, dim=1)
    return float(-log_p.gather(1, labels.long()[:, None]).mean())


def fit_temperature_to(outputs: torch.Tensor, labels: torch.Tensor, iterations: int = 100) -> float:
    """The temperature ``T`` in :data:`TEMPERATURE_RANGE` that minimises the NLL of ``softmax(outputs / T)``.

    A golden-section search on ``log T``: the NLL is convex in ``1/T`` (a log-sum-exp less a linear term), so
    unimodal in ``log T``, and the bounded search also ends where a perfectly separated set would send ``T`` to
    0. Warns when the optimum lies on a bound of the range.
    """
    outputs, labels = outputs.detach().double(), labels.detach().long()
    lo, hi = (math.log(t) for t in TEMPERATURE_RANGE)
    ratio = (math.sqrt(5) - 1) / 2

    def nll(u: float) -> float:
        return temperature_nll(outputs, labels, math.exp(u))

    a, b = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
    fa, fb = nll(a), nll(b)
    for _ in range(iterations):
        if fa <= fb:
            hi, b, fb = b, a, fa
            a = hi - ratio * (hi - lo)
            fa = nll(a)
        else:
            lo, a, fa = a, b, fb
            b = lo + ratio * (hi - lo)
            fb = nll(b)
    temperature = math.exp((lo + hi) / 2)
    low, high = TEMPERATURE_RANGE
    if temperature < low * 1.01 or temperature > high / 1.01:
        warnings.warn(f"the fitted temperature {temperature:.4g} lies on the bound of the search range "
                      f"[{low}, {high}]; the validation predictions are degenerate (all right, or all wrong)",
                      stacklevel=2)
    return temperature


def fit_temperature(learner, tasks: Dataset, episodes: int | None = 600, *, inner_steps: int | None = None) -> float:
    """Temperature scaling (Guo et al. 2017): the ``T > 0`` minimising the mean NLL of ``softmax(logits / T)``
    over the query predictions of episodes ``0..episodes-1`` of ``tasks`` (None: all of a finite source).

    Fit it on validation episodes (a domain's ``val_tasks(config)``), never on the episodes it will be judged
    on; apply it with :class:`~fewshot.learners.temperature.TemperatureScaled`.
    """
    outputs, labels = query_logits(learner, tasks, episodes, inner_steps)
    return fit_temperature_to(outputs, labels)


# -- the reliability diagram -----------------------------------------------------------------------------------
def reliability_diagram(calibration: Calibration, path: str | Path, title: str = "") -> Path:
    """Write a reliability diagram PNG: per-bin accuracy against confidence (bars), the diagonal of perfect
    calibration, the gap to it, and a histogram of the predictions per bin below; ECE in the title. Uses
    matplotlib's Agg canvas (no display, no global backend change)."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise ValueError("the reliability diagram needs matplotlib: pip install matplotlib") from None
    path = Path(path)
    width = 1 / BINS
    left = [b * width for b in range(BINS)]
    counts = calibration.bin_counts
    acc = [0.0 if math.isnan(a) else a for a in calibration.bin_accuracy]
    conf = calibration.bin_confidence
    fig = Figure(figsize=(5, 6.2))
    FigureCanvasAgg(fig)
    top, bottom = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    top.bar(left, acc, width=width, align="edge", edgecolor="black", color="#4c72b0", label="accuracy")
    gaps = [(a - c) if not math.isnan(c) else 0.0 for a, c in zip(acc, conf)]
    top.bar(left, [-g for g in gaps], bottom=acc, width=width, align="edge", edgecolor="#c44e52", fill=False,
            hatch="///", linewidth=0.8, label="gap to the bin's confidence")
    top.plot([0, 1], [0, 1], "k--", linewidth=1, label="perfect calibration")
    top.set_xlim(0, 1)
    top.set_ylim(0, 1)
    top.set_ylabel("accuracy")
    top.legend(loc="upper left", fontsize=8)
    heading = f"ECE {calibration.ece:.4f} ± {calibration.ece_ci95:.4f}"
    top.set_title(f"{title}\n{heading}" if title else heading, fontsize=10)
    bottom.bar(left, counts, width=width, align="edge", edgecolor="black", color="#8c8c8c")
    bottom.set_xlabel(f"confidence (top-label probability, {BINS} bins)")
    bottom.set_ylabel("predictions")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    atomic_write(path, buffer.getvalue())
    return path


# -- run directories -----------------------------------------------------------------------------------------
CALIBRATION_FILE = "calibration.json"     # written by `fewshot calibrate RUN` into the run directory


def calibrate_run(run_dir: Path, checkpoint: str = "best", episodes: int | None = None,
                  inner_steps: int | None = None, data_root: str | None = None, device="cpu") -> dict:
    """Fit a temperature to a run of the ``fewshot`` command on its validation episodes only (600, or all of a
    smaller source), write ``run_dir/calibration.json`` and return what it holds."""
    from fewshot.files import atomic_write
    from fewshot.runs import load_learner

    learner, cfg = load_learner(run_dir, checkpoint)
    if cfg.domain.task != "classification":
        raise ValueError(f"temperature scaling divides class logits; run {run_dir} is a {cfg.dataset} "
                         f"({cfg.domain.task}) run")
    if data_root is not None and cfg.applies("data_root"):
        cfg.data_root = data_root
    tasks = cfg.domain.val_tasks(cfg)
    episodes = episodes or min(600, len(tasks))
    if episodes > len(tasks):
        raise ValueError(f"asked for {episodes} validation episodes but run {run_dir} has {len(tasks)}; pass "
                         f"--episodes {len(tasks)} or fewer")
    steps = inner_steps if inner_steps is not None else cfg.test_inner_steps
    outputs, labels = query_logits(learner.to(device), tasks, episodes, steps)
    temperature = fit_temperature_to(outputs, labels)
    record = {"temperature": temperature, "split": "val", "episodes": episodes, "checkpoint": checkpoint,
              "nll_before": temperature_nll(outputs, labels, 1.0),
              "nll_after": temperature_nll(outputs, labels, temperature), "inner_steps": steps,
              "predictions": len(labels)}
    atomic_write(Path(run_dir) / CALIBRATION_FILE, (json.dumps(record) + "\n").encode())
    return record


def fitted_temperature(run_dir: Path, checkpoint: str) -> float:
    """The temperature ``fewshot calibrate`` stored in ``run_dir/calibration.json`` for ``checkpoint``."""
    path = run_dir / CALIBRATION_FILE
    if not path.is_file():
        raise FileNotFoundError(f"run {run_dir} has no fitted temperature (no {path}): fit one on its validation "
                                f"episodes with `fewshot calibrate {run_dir}`, then evaluate again")
    try:
        record = json.loads(path.read_text())
        temperature = float(record["temperature"])
        fitted_on = record.get("checkpoint", "best")
    except (ValueError, KeyError, TypeError, UnicodeDecodeError):
        raise ValueError(f"{path} is damaged (it holds no temperature): fit it again with "
                         f"`fewshot calibrate {run_dir}`, which rewrites it") from None
    if not (temperature > 0 and math.isfinite(temperature)):
        raise ValueError(f"{path} holds temperature {temperature}, not a number > 0: fit it again with "
                         f"`fewshot calibrate {run_dir}`, which rewrites it")
    if fitted_on != checkpoint:
        raise ValueError(f"the temperature in {path} was fitted to checkpoint {fitted_on}, not {checkpoint}: "
                         f"evaluate with --checkpoint {fitted_on}, or fit one to {checkpoint} with "
                         f"`fewshot calibrate {run_dir} --checkpoint {checkpoint}` first")
    return temperature
