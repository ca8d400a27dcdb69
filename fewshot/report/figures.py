"""The figures of ``fewshot report``, drawn from run directories (:class:`~fewshot.report.records.Run`).

Every function takes runs and an output path, draws with matplotlib's Agg canvas (no display, no change to the
global backend) and returns the path written, or ``None`` when the runs hold nothing to draw. Confidence bands
are 95 % normal intervals: validation records carry their own ``ci95``; the training curve's band is
``1.96 * std / sqrt(w)`` over a window of ``w`` consecutive logged steps.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Iterable, Sequence

from fewshot.evaluate import confidence_interval
from fewshot.report.records import EPISODE_KEYS, Run, episode_key

DPI = 100
COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#7f7f7f")


def new_figure(width: float, height: float, rows: int = 1, cols: int = 1, layout: str | None = "constrained",
               **kwargs):
    """A matplotlib figure on the Agg canvas and its axes (an array when ``rows * cols > 1``); ``layout=None``
    skips the layout engine (half the drawing time) for figures that set their margins themselves."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout=layout)
    FigureCanvasAgg(fig)
    return fig, fig.subplots(rows, cols, squeeze=rows * cols == 1, **kwargs)


def save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI)
    return path


def colour(i: int) -> str:
    return COLOURS[i % len(COLOURS)]


def windowed(values: Sequence[float], window: int) -> tuple[list[float], list[float]]:
    """Trailing-window means and 95 % half-widths ``1.96 * std / sqrt(w)`` of ``values``; ``w`` is at most
    ``window`` (fewer at the start)."""
    means, halves = [], []
    for i in range(len(values)):
        chunk = list(values[max(0, i - window + 1): i + 1])
        mean, half = confidence_interval(chunk)
        means.append(mean)
        halves.append(half)
    return means, halves


def _metric_keys(records: Iterable[dict]) -> list[str]:
    keys = []
    for r in records:
        keys += [k for k, v in r.items() if k not in ("step", "split", "time", "ci95", "lr") and isinstance(v, (int, float))
                 and not isinstance(v, bool) and k not in keys]
    return keys


def _band(ax, x, mean, half, c, label, style="-"):
    """A curve with its 95 % band; points (``style`` with a marker) get error bars too, so one point shows its CI."""
    if "o" in style:
        ax.errorbar(x, mean, yerr=half, fmt=style, color=c, label=label, linewidth=1.6, capsize=3, markersize=4)
    else:
        ax.plot(x, mean, style, color=c, label=label, linewidth=1.6)
    ax.fill_between(x, [m - h for m, h in zip(mean, half)], [m + h for m, h in zip(mean, half)], color=c, alpha=0.2,
                    linewidth=0)


def learning_curves(runs: Sequence[Run], path: Path, window: int = 10) -> Path | None:
    """Training loss, training metric and validation metric (95 % bands) of every run, against steps (top row)
    and wall time (bottom row, where the runs' TensorBoard events give it); runs overlaid."""
    if not any(r.log for r in runs):
        return None
    train_keys = _metric_keys(rec for r in runs for rec in r.split("train"))
    val_keys = _metric_keys(rec for r in runs for rec in r.split("val"))
    panels = [("train", k) for k in train_keys[:2]] + [("val", k) for k in val_keys[:1]]
    timed = any("time" in rec for r in runs for rec in r.log)
    rows = 2 if timed else 1
    fig, axes = new_figure(4.4 * len(panels), 3.3 * rows, rows, len(panels), layout=None)   # drawn at every run's end
    fig.subplots_adjust(left=0.08, right=0.98, top=0.92, bottom=0.1 if rows == 2 else 0.16, wspace=0.3, hspace=0.35)
    for j, (split, key) in enumerate(panels):
        for i, run in enumerate(runs):
            records = [rec for rec in run.split(split) if key in rec]
            if not records:
                continue
            values = [rec[key] for rec in records]
            if split == "val":
                mean, half = values, [rec.get("ci95", 0.0) for rec in records]
            else:
                mean, half = windowed(values, window)
            for row, axis in enumerate(("step", "time")[:rows]):
                if axis == "time" and not all("time" in rec for rec in records):
                    continue
                x = [rec[axis] / (60 if axis == "time" else 1) for rec in records]
                _band(axes[row][j], x, mean, half, colour(i), run.name, "-" if split == "train" else "o-")
        for row, axis in enumerate(("steps", "wall time (min)")[:rows]):
            ax = axes[row][j]
            ax.set_xlabel(axis)
            ax.set_ylabel(f"{split} {key}")
            ax.grid(alpha=0.3)
        axes[0][j].set_title(f"{'training' if split == 'train' else 'validation'} {key}"
                             + (f" ({window}-record window, 95 % band)" if split == "train" else " (95 % CI)"),
                             fontsize=9)
    axes[0][0].legend(fontsize=8)
    return save(fig, path)


def eval_table(runs: Sequence[Run]) -> list[tuple[Run, dict]]:
    """Every run's latest evaluation records with a mean (``test.json`` counted as one when no record has its
    episodes)."""
    rows = []
    for run in runs:
        records = run.latest_evals()
        keys = {episode_key(r) for r in records}
        if run.test is not None and "mean" in run.test and episode_key(run.test) not in keys:
            records.append(run.test)
        rows += [(run, r) for r in records if isinstance(r.get("mean"), (int, float))]
    return rows


def _half(record: dict) -> float:
    return record.get("ci95", 1.96 * record.get("stderr", 0.0))


def shots_and_ways(runs: Sequence[Run], path: Path) -> Path | None:
    """Accuracy (± 95 % CI) against shots at each number of ways, and against ways at each number of shots, from
    the runs' evaluation records; ``None`` when no run was scored at two settings."""
    rows = [(run, r) for run, r in eval_table(runs) if r.get("ways") and r.get("shots") and r.get("metric")]
    settings = {(r["ways"], r["shots"]) for _, r in rows}
    if len(settings) < 2:
        return None
    fig, axes = new_figure(10, 3.8, 1, 2)
    for i, run in enumerate(runs):
        mine = [r for rr, r in rows if rr is run and not r.get("within_alphabet") and not r.get("augment_support")]
        for ax, (fixed, varied) in zip(axes[0], (("ways", "shots"), ("shots", "ways"))):
            for k, level in enumerate(sorted({r[fixed] for r in mine})):
                points = sorted((r[varied], r["mean"], _half(r)) for r in mine if r[fixed] == level)
                if len(points) < 2:
                    continue
                x, y, e = zip(*points)
                ax.errorbar(x, y, yerr=e, marker="o", capsize=3, color=colour(i),
                            linestyle=("-", "--", ":", "-.")[k % 4], label=f"{run.name}, {level} {fixed}")
    for ax, varied in zip(axes[0], ("shots", "ways")):
        ax.set_xlabel(varied)
        ax.set_ylabel(rows[0][1]["metric"])
        ax.set_title(f"{rows[0][1]['metric']} against {varied} (95 % CI)", fontsize=10)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    return save(fig, path)


def paired_differences(runs: Sequence[Run]) -> list[dict]:
    """For every pair of runs scored on the same episodes (equal :data:`~fewshot.report.records.EPISODE_KEYS`
    and as many values), the mean per-episode (per-task for assays) difference ``b - a`` and its 95 % CI."""
    out = []
    for i, a in enumerate(runs):
        for b in runs[i + 1:]:
            theirs = {episode_key(r): r for r in b.latest_evals() if r.get("values")}
            for ra in a.latest_evals():
                rb = theirs.get(episode_key(ra))
                if rb is None or not ra.get("values") or len(ra["values"]) != len(rb["values"]):
                    continue
                diffs = [y - x for x, y in zip(ra["values"], rb["values"])]
                mean, half = confidence_interval(diffs) if len(diffs) > 1 else (diffs[0], 0.0)
                setting = ", ".join(f"{k} {ra[k]}" for k in EPISODE_KEYS if ra.get(k) is not None
                                    and k not in ("dataset", "seed", "episodes"))
                out.append({"a": a.name, "b": b.name, "metric": ra.get("metric", ""), "setting": setting,
                            "mean": mean, "ci95": half, "n": len(diffs)})
    return out


def paired_comparison(runs: Sequence[Run], path: Path) -> Path | None:
    """The paired differences of :func:`paired_differences` as horizontal bars with their 95 % CIs."""
    pairs = paired_differences(runs)
    if not pairs:
        return None
    fig, ax = new_figure(9, 1.2 + 0.45 * len(pairs))
    labels = [f"{p['b']} − {p['a']}\n{p['setting']} ({p['n']} paired)" for p in pairs]
    y = list(range(len(pairs)))
    ax.errorbar([p["mean"] for p in pairs], y, xerr=[p["ci95"] for p in pairs], fmt="o", capsize=4,
                color=COLOURS[0])
    ax.axvline(0, color="black", linewidth=0.8)
    ax.set_yticks(y, labels, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel(f"difference in {pairs[0]['metric']} (95 % CI of the mean paired difference)")
    ax.grid(alpha=0.3, axis="x")
    return save(fig, path)


def per_assay(runs: Sequence[Run], path: Path) -> Path | None:
    """Molecule runs: the metric of every test assay (ΔAUPRC for FS-Mol) per run, assays sorted by the first run's
    value; ``None`` when no run recorded per-assay results."""
    tables = []
    for run in runs:
        record = next((r for r in reversed(run.evals) if isinstance(r.get("per_task"), dict)), None)
        if record is None and run.test is not None and isinstance(run.test.get("per_task"), dict):
            record = run.test
        if record is not None:
            tables.append((run, record))
    if not tables:
        return None
    first = tables[0][1]["per_task"]
    order = sorted(first, key=first.get)
    fig, ax = new_figure(10, 3.8)
    width = 0.8 / len(tables)
    for i, (run, record) in enumerate(tables):
        values = [record["per_task"].get(t, math.nan) for t in order]
        ax.bar([k + i * width for k in range(len(order))], values, width=width, color=colour(i),
               label=f"{run.name}: mean {record['mean']:.4f}")
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set_xlabel(f"test assay ({len(order)}, sorted by {tables[0][0].name})")
    if len(order) <= 30:
        ax.set_xticks([k + 0.4 - width / 2 for k in range(len(order))], order, rotation=60, fontsize=6, ha="right")
    else:
        ax.set_xticks([])
    ax.set_ylabel(first and tables[0][1].get("metric", "metric"))
    ax.set_title(f"{tables[0][1].get('metric', 'metric')} per assay", fontsize=10)
    ax.legend(fontsize=8)
    return save(fig, path)


def reliability(runs: Sequence[Run], out: Path) -> list[tuple[Path, str]]:
    """A reliability diagram (:func:`fewshot.calibration.reliability_diagram`) of every run's last evaluation that
    measured calibration."""
    from fewshot.calibration import Calibration, reliability_diagram

    written = []
    for run in runs:
        record = next((r for r in reversed(run.evals) if r.get("bins") and "ece" in r), None)
        if record is None:
            continue
        cal = Calibration(**{k: record[k] for k in ("ece", "mce", "nll", "brier", "ece_ci95", "mce_ci95", "nll_ci95",
                                                    "brier_ci95")}, interval="bootstrap",
                          predictions=sum(record["bins"]["counts"]), bin_counts=tuple(record["bins"]["counts"]),
                          bin_accuracy=tuple(record["bins"]["accuracy"]),
                          bin_confidence=tuple(record["bins"]["confidence"]))
        setting = f"{record.get('ways', '')}-way {record.get('shots', '')}-shot" if record.get("ways") else ""
        path = reliability_diagram(cal, out / f"reliability-{len(written)}.png", title=f"{run.name} {setting}")
        written.append((path, f"Reliability diagram of {run.name} ({record.get('split', '')}, {setting})."))
    return written


def _adaptation_curves(run: Run) -> dict[str, list[dict]]:
    """A meta-RL run's latest ``returns`` / ``success`` per adaptation step (``fewshot eval`` or ``test.json``)."""
    for record in [*reversed(run.evals), run.test or {}]:
        curves = {k: record[k] for k in ("returns", "success") if isinstance(record.get(k), list)}
        if curves:
            return curves
    return {}


def rl_curves(runs: Sequence[Run], path: Path) -> Path | None:
    """Meta-RL runs: the return (and success rate) against training steps (training records, and validation
    records with their 95 % CI), and against adaptation steps on held-out tasks (the ``returns`` and ``success``
    lists of the run's test or evaluation record, 95 % CI over tasks); ``None`` when no run has them."""
    trained = [k for k in ("return", "success") if any(k in rec for r in runs for rec in r.log)]
    adapted = [k for k in ("returns", "success") if any(k in _adaptation_curves(r) for r in runs)]
    panels = [("train", k) for k in trained] + [("adapt", k) for k in adapted]
    if not panels:
        return None
    fig, axes = new_figure(5 * len(panels), 3.6, 1, len(panels))
    for j, (kind, key) in enumerate(panels):
        ax = axes[0][j]
        for i, run in enumerate(runs):
            if kind == "adapt":
                points = _adaptation_curves(run).get(key, [])
                if points:
                    _band(ax, [p["steps"] for p in points], [p["mean"] for p in points],
                          [p.get("ci95", 0.0) for p in points], colour(i), run.name, "o-")
                continue
            for split, style in (("train", "-"), ("val", "o-")):
                records = [rec for rec in run.split(split) if key in rec]
                if not records:
                    continue
                values = [rec[key] for rec in records]
                mean, half = ((values, [rec.get(f"{key}_ci95", rec.get("ci95", 0.0)) for rec in records])
                              if split == "val" else windowed(values, 10))
                _band(ax, [rec["step"] for rec in records], mean, half, colour(i), f"{run.name} {split}", style)
        what = "return" if key in ("return", "returns") else "success rate"
        ax.set_xlabel("training steps" if kind == "train" else "adaptation (policy-gradient) steps")
        ax.set_ylabel(what)
        ax.set_title(f"{what} {'during meta-training' if kind == 'train' else 'on held-out tasks'} (95 % band)",
                     fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    return save(fig, path)
