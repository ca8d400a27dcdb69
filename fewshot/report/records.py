"""Run directories read back for the figures, and the evaluation records ``fewshot eval`` keeps.

A run directory of :func:`fewshot.fit` or ``fewshot train`` holds ``config.yaml``, ``metrics.jsonl`` (one JSON object
per logged step, ``{"step", "split": "train" | "val", metric: value, ...}``), ``tensorboard/`` (whose events carry
the wall time of every logged step), ``test.json`` and, once ``fewshot eval`` has scored it, ``evals.jsonl``: one
record per evaluation (:func:`eval_record`), the summary line of ``--json`` plus the episodes' seed, the
per-episode (or, for assays, per-task) values that paired comparisons need, and the reliability bins when
calibration was measured.

Directories written by ``fewshot explain`` and ``fewshot study`` hold ``figures.json`` (:func:`write_manifest`):
their title, figures and tables, which ``fewshot report`` shows beside the runs.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from fewshot.files import atomic_write

EVALS_FILE = "evals.jsonl"
MANIFEST = "figures.json"
#: The keys that make two evaluation records the same episodes (a paired comparison needs them equal).
EPISODE_KEYS = ("dataset", "split", "ways", "shots", "queries", "seed", "episodes", "support_size", "support_pos",
                "support_neg", "within_alphabet", "augment_support")


def eval_record(summary: dict[str, Any], result, *, seed: int, queries: int | None = None,
                inner_steps: int | None = None) -> dict[str, Any]:
    """The record of one evaluation: ``summary`` (the ``--json`` line) with ``seed``, ``queries``,
    ``inner_steps``, ``values`` (per-episode metric, or per-task means for assays), ``per_task``
    (``{task: mean}`` for assays) and ``bins`` (``counts``, ``accuracy``, ``confidence`` of the reliability
    diagram) when ``result.calibration`` was scored."""
    record = {**summary, "seed": seed, "inner_steps": inner_steps, "values": list(result.values)}
    if queries is not None:
        record["queries"] = queries
    if result.tasks:
        record["per_task"] = dict(zip(result.tasks, result.values))
    cal = result.calibration
    if cal is not None:
        record["bins"] = {"counts": list(cal.bin_counts), "accuracy": list(cal.bin_accuracy),
                          "confidence": list(cal.bin_confidence)}
    return record


def record_eval(run_dir: str | Path, summary: dict[str, Any], result, *, seed: int, queries: int | None = None,
                inner_steps: int | None = None) -> None:
    """Append :func:`eval_record` to ``run_dir/evals.jsonl`` (what a domain's ``evaluate_runs`` calls after
    scoring one run; ensembles are not recorded in a member's directory)."""
    line = json.dumps(eval_record(summary, result, seed=seed, queries=queries, inner_steps=inner_steps))
    try:
        with open(Path(run_dir) / EVALS_FILE, "a") as f:
            f.write(line + "\n")
    except OSError as e:          # a read-only run directory is still scored; only the record is lost
        print(f"note: could not keep the evaluation record in {Path(run_dir) / EVALS_FILE} ({e.strerror})",
              file=sys.stderr)


def episode_key(record: dict[str, Any]) -> tuple:
    """What identifies the episodes an evaluation record was scored on."""
    return tuple(record.get(k) for k in EPISODE_KEYS)


def _json_lines(path: Path) -> list[dict[str, Any]]:
    """The records of a JSON-lines file; a last line cut short (a run killed mid-write) is dropped."""
    if not path.is_file():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return [r for r in records if isinstance(r, dict)]


def wall_times(run_dir: Path) -> dict[tuple[str, int], float]:
    """Seconds since the run's first logged event of every ``(split, step)`` in its TensorBoard events (a resumed
    run's pause is included); empty when the run has no events."""
    events = sorted((run_dir / "tensorboard").glob("events.out.tfevents.*"))
    if not events:
        return {}
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    first: dict[tuple[str, int], float] = {}
    for path in events:
        for event in EventFileLoader(str(path)).Load():
            for value in event.summary.value:
                split = value.tag.split("/", 1)[0]
                key = (split, int(event.step))
                first[key] = min(first.get(key, event.wall_time), event.wall_time)
    if not first:
        return {}
    start = min(first.values())
    return {key: t - start for key, t in first.items()}


@dataclass
class Run:
    """One run directory read back.

    Attributes:
        path: the directory; ``name`` its label in figures.
        config: ``config.yaml`` as written (sections ``data``, ``model``, ``learner``, ``train``, ``eval``).
        log: the records of ``metrics.jsonl``, each with ``"time"`` (seconds, from the TensorBoard events) when known.
        test: ``test.json`` (``None`` when the run was not tested).
        evals: the records of ``evals.jsonl``.
        episodes: the per-episode records of a meta-RL run (``episodes.jsonl``), if any.
    """

    path: Path
    name: str
    config: dict[str, Any]
    log: list[dict[str, Any]]
    test: dict[str, Any] | None
    evals: list[dict[str, Any]] = field(default_factory=list)
    episodes: list[dict[str, Any]] = field(default_factory=list)

    @property
    def algo(self) -> str:
        return (self.config.get("learner") or {}).get("algo") or self.config.get("algo") or "learner"

    @property
    def dataset(self) -> str:
        return (self.config.get("data") or {}).get("dataset") or self.config.get("dataset") or "data"

    def split(self, split: str) -> list[dict[str, Any]]:
        return [r for r in self.log if r.get("split") == split]

    def latest_evals(self) -> list[dict[str, Any]]:
        """The last record of each distinct set of episodes."""
        latest = {}
        for record in self.evals:
            latest[episode_key(record)] = record
        return list(latest.values())


def is_run(path: Path) -> bool:
    return (path / "config.yaml").is_file() or (path / "metrics.jsonl").is_file()


def read_run(path: str | Path, name: str | None = None) -> Run:
    """Read a run directory (raise ``FileNotFoundError`` naming the fix if it is not one)."""
    path = Path(path)
    if not is_run(path):
        raise FileNotFoundError(f"{path} is not a run directory (no config.yaml or metrics.jsonl); pass the out "
                                "directory of a `fewshot train` run or of fewshot.fit")
    config = {}
    if (path / "config.yaml").is_file():
        try:
            config = yaml.safe_load((path / "config.yaml").read_text()) or {}
        except yaml.YAMLError:
            raise ValueError(f"{path / 'config.yaml'} is not valid YAML; the run directory is damaged") from None
    log = _json_lines(path / "metrics.jsonl")
    times = wall_times(path)
    for record in log:
        key = (record.get("split"), record.get("step"))
        if "time" not in record and key in times:
            record["time"] = times[key]
    tests = _json_lines(path / "test.json")
    return Run(path, name or path.name, config if isinstance(config, dict) else {}, log, tests[-1] if tests else None,
               _json_lines(path / EVALS_FILE), _json_lines(path / "episodes.jsonl"))


def unique_names(paths: list[Path]) -> list[str]:
    """Labels for run directories: their names, with the parent's name where two names are the same."""
    names = [p.name for p in paths]
    return [f"{p.parent.name}/{p.name}" if names.count(p.name) > 1 else p.name for p in paths]


# -- figure directories of explain and study ------------------------------------------------------------
def write_manifest(out: Path, title: str, figures: list[tuple[str, str]], tables: list[str] = (),
                   text: str = "") -> Path:
    """Write ``out/figures.json``: ``title``, ``figures`` as ``(file name, caption)``, ``tables`` (Markdown files
    in ``out``) and a paragraph of ``text``, for ``fewshot report`` to show."""
    body = {"title": title, "text": text, "figures": [{"file": f, "caption": c} for f, c in figures],
            "tables": list(tables)}
    atomic_write(out / MANIFEST, (json.dumps(body, indent=1) + "\n").encode())
    return out / MANIFEST


def read_manifest(directory: Path) -> dict[str, Any] | None:
    path = directory / MANIFEST
    if not path.is_file():
        return None
    try:
        body = json.loads(path.read_text())
    except json.JSONDecodeError:
        raise ValueError(f"{path} is not valid JSON; rerun the command that wrote it") from None
    return body if isinstance(body, dict) else None
