"""Return-vs-adaptation-steps figure and table of meta-RL runs, from their ``fewshot eval RUN --json`` lines.

    python benchmarks/meta_rl_curves.py benchmarks/meta_rl/nav2d-*.json --out docs/experiments/meta-rl-nav2d.png

Each file holds one eval JSON line (its last line is read) and is named ``DATASET-LABEL.json``; the label
names its line (``oracle`` and ``pretrained`` name the baselines). The figure draws the mean return over held-out
tasks after 0..K policy-gradient steps with its 95 % interval, one line per file. The printed Markdown
table gives the same numbers and, when ``oracle`` and ``pretrained`` are among the runs, the fraction of the
gap between ``pretrained`` and ``oracle`` (before adaptation, the oracle needing none) that each run closes
after each step: ``(R - R_pretrained,k) / (R_oracle,0 - R_pretrained,k)``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def load(paths: list[str]) -> dict[str, dict]:
    results = {}
    for path in paths:
        lines = [line for line in Path(path).read_text().splitlines() if line.strip()]
        result = json.loads(lines[-1])
        results[Path(path).stem.removeprefix(f"{result['dataset']}-")] = result
    return results


def table(results: dict[str, dict]) -> str:
    steps = max(r["adapt_steps"] for r in results.values())
    head = "| run | " + " | ".join(f"{k} steps" for k in range(steps + 1)) + " |"
    rows = [head, "|---|" + "---|" * (steps + 1)]
    for algo, r in results.items():
        cells = [f"{x['mean']:.2f} ± {x['ci95']:.2f}" for x in r["returns"]]
        rows.append(f"| {algo} | " + " | ".join(cells) + " |")
    if "oracle" in results and "pretrained" in results:
        ceiling = results["oracle"]["returns"][0]["mean"]
        floor = [x["mean"] for x in results["pretrained"]["returns"]]
        for algo, r in results.items():
            if algo in ("oracle", "pretrained"):
                continue
            closed = [(x["mean"] - f) / (ceiling - f) for x, f in zip(r["returns"], floor)]
            rows.append(f"| {algo}: gap closed | " + " | ".join(f"{c:.0%}" for c in closed) + " |")
    return "\n".join(rows)


def figure(results: dict[str, dict], out: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 3.8))
    for label, r in results.items():
        steps = [x["steps"] for x in r["returns"]]
        mean = [x["mean"] for x in r["returns"]]
        ci = [x["ci95"] for x in r["returns"]]
        ax.errorbar(steps, mean, yerr=ci, marker="o", capsize=3, label=label)
    ax.set_xlabel("policy-gradient adaptation steps")
    ax.set_ylabel("return (mean over held-out tasks, 95 % CI)")
    ax.set_xticks(steps)
    ax.set_title(title)
    ax.legend(loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", nargs="+", help="files holding `fewshot eval RUN --json` output")
    parser.add_argument("--out", required=True, help="the PNG to write")
    parser.add_argument("--title", default="nav2d: return after adaptation")
    args = parser.parse_args()
    results = load(args.results)
    figure(results, Path(args.out), args.title)
    print(table(results))


if __name__ == "__main__":
    main()
