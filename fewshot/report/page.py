"""``fewshot report``: one static page, ``OUT/index.html``, each figure a PNG beside it.

The page needs no server and no network: it opens from disk. It shows, for the run directories given, a table of
the runs, their learning curves, their test and evaluation results (accuracy against shots and ways, paired
differences on the same episodes), what their domain adds (ΔAUPRC per assay, meta-RL returns, reliability
diagrams), and the figures and tables of any ``fewshot explain`` or ``fewshot study`` directory given or found in
a run (``RUN/explain``).
"""

from __future__ import annotations

import html
import re
import shutil
import sys
from pathlib import Path
from typing import Sequence

from fewshot.files import atomic_write
from fewshot.report import figures
from fewshot.report.records import Run, is_run, read_manifest, read_run, unique_names

STYLE = """body{font-family:system-ui,sans-serif;max-width:1280px;margin:1.5em auto;padding:0 1em;color:#222}
h1{font-size:1.6em}h2{font-size:1.25em;border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:1.6em}
figure{margin:1em 0}img{max-width:100%;height:auto;border:1px solid #eee}figcaption{font-size:.9em;color:#444}
table{border-collapse:collapse;font-size:.9em;margin:.6em 0}td,th{border:1px solid #ccc;padding:.25em .6em;
text-align:left}th{background:#f4f4f4}p.note{color:#666;font-size:.9em}"""


def _cell(value) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    return html.escape("" if value is None else str(value))


def html_table(header: Sequence[str], rows: Sequence[Sequence]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{_cell(v)}</td>" for v in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def markdown_table(text: str) -> str:
    """A Markdown pipe table (the tables the studies write) as HTML; other lines become paragraphs."""
    rows, parts = [], []
    for line in text.splitlines() + [""]:
        if line.strip().startswith("|"):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if not all(re.fullmatch(r":?-{3,}:?", c) for c in cells):
                rows.append(cells)
            continue
        if rows:
            parts.append(html_table(rows[0], rows[1:]))
            rows = []
        if line.strip():
            parts.append(f"<p>{html.escape(line.strip())}</p>")
    return "\n".join(parts)


def _figure(src: str, caption: str) -> str:
    return (f'<figure><img src="{html.escape(src)}" alt="{html.escape(caption)}">'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>")


def _run_rows(runs: Sequence[Run]) -> list[list]:
    rows = []
    for run in runs:
        val = [r for r in run.split("val") if "ci95" in r]
        key = next((k for k in (val[-1] if val else {}) if k not in ("step", "split", "time", "ci95")), None)
        best = max((r[key] for r in val), default=None) if key and key != "mse" else (
            min((r[key] for r in val), default=None) if key else None)
        test = run.test or {}
        half = test.get("ci95", 1.96 * test["stderr"] if "stderr" in test else None)
        test_text = f"{test['mean']:.4f} ± {half:.4f}" if "mean" in test and half is not None else ""
        steps = max((r.get("step", 0) for r in run.log), default=0)
        minutes = max((r.get("time", 0.0) for r in run.log), default=0.0) / 60
        rows.append([run.name, run.algo, run.dataset, steps, f"{minutes:.1f}", best, test.get("metric", key),
                     test_text, len(run.evals)])
    return rows


def _eval_rows(runs: Sequence[Run]) -> list[list]:
    rows = []
    for run, r in figures.eval_table(runs):
        half = figures._half(r)
        rows.append([run.name, r.get("split", ""), r.get("ways", ""), r.get("shots", r.get("support_size", "")),
                     r.get("episodes", r.get("tasks", "")), r.get("metric", ""), f"{r['mean']:.4f} ± {half:.4f}",
                     f"{r['ece']:.4f}" if "ece" in r else ""])
    return rows


def _manifest_section(directory: Path, out: Path, slug: str) -> str:
    """The figures and tables of an explain or study directory, copied under ``out/slug``."""
    body = read_manifest(directory)
    if body is None:
        return ""
    target = out / slug
    target.mkdir(parents=True, exist_ok=True)
    parts = [f"<h2>{html.escape(body.get('title', directory.name))}</h2>"]
    if body.get("text"):
        parts.append(f"<p>{html.escape(body['text'])}</p>")
    for fig in body.get("figures", []):
        source = directory / fig["file"]
        if source.is_file():
            shutil.copyfile(source, target / Path(fig["file"]).name)
            parts.append(_figure(f"{slug}/{Path(fig['file']).name}", fig.get("caption", "")))
    for table in body.get("tables", []):
        if (directory / table).is_file():
            parts.append(markdown_table((directory / table).read_text()))
    return "\n".join(parts)


def build_report(paths: Sequence[str | Path], out: str | Path, *, title: str = "fewshot report",
                 curves_only: bool = False) -> Path:
    """Write ``out/index.html`` and its figures for run directories and explain/study directories ``paths``;
    ``curves_only``: the run table and learning curves alone (what ``fewshot train`` writes). Returns the page."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file; pass a directory to write index.html into")
    paths = [Path(p) for p in paths]
    for p in paths:
        if not p.is_dir():
            raise FileNotFoundError(f"{p} is not a directory; pass run directories (the --out of `fewshot train`) "
                                    "or directories written by `fewshot explain` / `fewshot study`")
        if not is_run(p) and read_manifest(p) is None:
            raise FileNotFoundError(f"{p} is neither a run directory (no config.yaml or metrics.jsonl) nor a "
                                    "directory of `fewshot explain` or `fewshot study` (no figures.json)")
    out.mkdir(parents=True, exist_ok=True)
    run_paths = [p for p in paths if is_run(p)]
    runs = [read_run(p, name) for p, name in zip(run_paths, unique_names(run_paths))]
    parts = [f"<h1>{html.escape(title)}</h1>"]
    if runs:
        parts += ["<h2>Runs</h2>", html_table(["run", "learner", "dataset", "steps", "wall time (min)",
                                               "best validation", "metric", "test ± 95 % CI", "eval records"],
                                              _run_rows(runs))]
        curves = figures.learning_curves(runs, out / "learning-curves.png")
        parts.append("<h2>Learning curves</h2>")
        parts.append(_figure(curves.name, "Training loss and metric, validation metric, against steps and wall "
                                          "time (from the TensorBoard events); bands are 95 % intervals.")
                     if curves else '<p class="note">No logged steps yet.</p>')
    if runs and not curves_only:
        parts += _results(runs, out)
    extra = [(p, p.name) for p in paths if not is_run(p)]
    extra += [(p / "explain", f"{name}-explain") for p, name in zip(run_paths, unique_names(run_paths))
              if (p / "explain").is_dir()] if not curves_only else []
    for directory, slug in extra:
        parts.append(_manifest_section(directory, out, re.sub(r"[^A-Za-z0-9_.-]", "-", slug)))
    page = (f"<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
            f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"><style>{STYLE}</style></head>"
            f"<body>{''.join(parts)}</body></html>\n")
    atomic_write(out / "index.html", page.encode())
    return out / "index.html"


def _results(runs: Sequence[Run], out: Path) -> list[str]:
    parts = ["<h2>Test and evaluation results</h2>"]
    rows = _eval_rows(runs)
    parts.append(html_table(["run", "split", "ways", "shots / support", "episodes / tasks", "metric",
                             "mean ± 95 % CI", "ECE"], rows) if rows else
                 '<p class="note">No test or evaluation records (run `fewshot eval RUN`).</p>')
    drawn = [(figures.shots_and_ways(runs, out / "shots-ways.png"),
              "Test metric against shots and ways (each point a `fewshot eval` record, 95 % CI)."),
             (figures.paired_comparison(runs, out / "paired.png"),
              "Paired comparison: the mean difference between two runs scored on the same episodes, with the 95 % "
              "CI of the paired differences (narrower than comparing the two intervals)."),
             (figures.per_assay(runs, out / "per-assay.png"), "The metric of each test assay, per run."),
             (figures.rl_curves(runs, out / "rl.png"), "Meta-RL: return and success rate against steps.")]
    for path, caption in drawn:
        if path is not None:
            parts.append(_figure(path.name, caption))
    for path, caption in figures.reliability(runs, out):
        parts.append(_figure(path.name, caption))
    return parts


def run_report(run_dir: Path) -> Path | None:
    """The small report ``fewshot train`` writes at the end of a run: ``RUN/report/index.html`` with the run's
    table and learning curves; a failure to draw is a warning, never a failed run."""
    try:
        page = build_report([run_dir], run_dir / "report", title=f"run {run_dir.name}", curves_only=True)
    except (ImportError, OSError, ValueError) as e:
        print(f"warning: no report written for {run_dir} ({e})", file=sys.stderr)
        return None
    print(f"report: {page}", file=sys.stderr)
    return page
