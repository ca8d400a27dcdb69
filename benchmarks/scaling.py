"""How MAML's meta-step time and peak memory grow with the meta-batch, the ways, the shots and the inner steps,
for the task loop and the vectorised step (``fewshot[vmap]``), on the strided Conv-4 with BatchNorm.

Each point is a ``fewshot bench speed`` row (fresh processes, the loop and vmap rows taking turns), so the
columns mean what ``fewshot/bench.py`` says. Writes ``OUT/scaling.jsonl`` (one row per point, with the swept
``axis``) and ``OUT/scaling.png`` (step time and peak memory against each axis)::

    python benchmarks/scaling.py --out docs/benchmarks-scaling            # about 15 minutes on 2 cores
    python benchmarks/scaling.py --out /tmp/scaling --quick               # a check of the script
    python benchmarks/scaling.py --out DIR --plot-only                    # redraw from DIR/scaling.jsonl
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from fewshot import bench

BASE = {"ways": 5, "shots": 1, "meta_batch": 4, "inner_steps": 1}
AXES = {"meta_batch": [1, 4, 16, 64], "ways": [5, 20, 60], "shots": [1, 5], "inner_steps": [1, 3, 5]}
QUICK_AXES = {"meta_batch": [1, 2], "ways": [5], "shots": [1], "inner_steps": [1]}


def points(axes: dict[str, list[int]]) -> list[tuple[str, dict[str, int]]]:
    """(axis, setting) for every value of every axis, the other settings at :data:`BASE`."""
    return [(axis, {**BASE, axis: value}) for axis, values in axes.items() for value in values]


def measure_point(setting: dict[str, int], repeats: int, rounds: int, threads: int) -> list[dict]:
    group = [bench.Setting(library, "maml", "strided", setting["ways"], setting["shots"], 15, setting["meta_batch"],
                           setting["inner_steps"], repeats, 1, 0, threads)
             for library in ("fewshot", "fewshot[vmap]")]
    return bench.measure(group, rounds)


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    axes_names = list(dict.fromkeys(r["axis"] for r in rows))
    fig, grid = plt.subplots(2, len(axes_names), figsize=(3.2 * len(axes_names), 5.6), squeeze=False)
    for column, axis in enumerate(axes_names):
        for library, style in (("fewshot", "o-"), ("fewshot[vmap]", "s--")):
            mine = sorted((r for r in rows if r["axis"] == axis and r["library"] == library), key=lambda r: r[axis])
            label = "loop" if library == "fewshot" else "vmap"
            xs = [r[axis] for r in mine]
            grid[0][column].plot(xs, [r["step_s"] for r in mine], style, label=label)
            grid[1][column].plot(xs, [r["peak_mb"] for r in mine], style, label=label)
        grid[0][column].set_title(axis.replace("_", " "))
        grid[1][column].set_xlabel(axis.replace("_", " "))
        for row in (0, 1):
            grid[row][column].set_xscale("log" if axis == "meta_batch" else "linear")
            grid[row][column].set_yscale("log")
            grid[row][column].grid(alpha=0.3)
    grid[0][0].set_ylabel("meta-step time (s)")
    grid[1][0].set_ylabel("peak memory (MB)")
    grid[0][0].legend()
    fig.suptitle(f"MAML, strided Conv-4 + BatchNorm, others at {BASE}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--quick", action="store_true", help="two tiny points (a check of the script)")
    parser.add_argument("--plot-only", action="store_true", help="redraw the figure from OUT/scaling.jsonl")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    log = out / "scaling.jsonl"
    if not args.plot_only:
        done = {(r["axis"], r["library"], r["meta_batch"], r["ways"], r["shots"], r["inner_steps"])
                for r in map(json.loads, log.read_text().splitlines())} if log.exists() else set()
        with open(log, "a") as f:           # rerunning continues: finished points are kept
            for axis, setting in points(QUICK_AXES if args.quick else AXES):
                if (axis, "fewshot", setting["meta_batch"], setting["ways"], setting["shots"],
                        setting["inner_steps"]) in done:
                    continue
                for row in measure_point(setting, 1 if args.quick else args.repeats, args.rounds, args.threads):
                    record = {"axis": axis, **row, "inner_steps": setting["inner_steps"]}
                    f.write(json.dumps(record) + "\n")
                    f.flush()
                    print(json.dumps(record), flush=True)
    plot([json.loads(line) for line in log.read_text().splitlines()], out / "scaling.png")
    print(f"figure: {out / 'scaling.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
