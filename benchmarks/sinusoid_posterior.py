"""Posterior samples of the function on a sinusoid task from 1, 2 and 5 support points (the PLATIPUS/BMAML figure).

For each trained run (DKT: joint draws of the GP posterior on a grid; BMAML: one curve per SVGD particle), one row
of panels: the true sinusoid, the support points, the posterior draws and the 95 % predictive interval. The
support points of the smaller sets are the first points of the 5-point set, so each panel adds points to the last.

    python benchmarks/sinusoid_posterior.py --run dkt=RUN_DIR --run bmaml=RUN_DIR \
        --out docs/figures/sinusoid-posterior.png
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from fewshot.runs import load_learner  # noqa: E402
from fewshot.tasks.sinusoid import SinusoidTasks  # noqa: E402

SUPPORTS = (1, 2, 5)


def curves(learner, cfg, sx, sy, grid, draws: int) -> tuple[torch.Tensor, object]:
    """Posterior function draws ``[S, G]`` on ``grid [G, 1]`` and the predictive interval there."""
    learner.eval()
    with torch.no_grad(), learner.normalisation():
        adapted = learner.adapt(sx, sy, steps=cfg.test_inner_steps)
        if hasattr(learner, "function_samples"):                     # DKT: joint GP posterior draws
            samples = learner.function_samples(adapted, grid, draws)[..., 0]
        else:                                                        # BMAML: the particles
            samples = learner.particle_outputs(adapted, grid)[..., 0]
        return samples, learner.predict_interval(adapted, grid)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", action="append", required=True, metavar="NAME=RUN_DIR",
                   help="a trained sinusoid run of a learner with predictive intervals (dkt, bmaml)")
    p.add_argument("--episode", type=int, default=7, help="the test task (episode of seed 0)")
    p.add_argument("--draws", type=int, default=10, help="DKT: posterior draws per panel")
    p.add_argument("--out", type=Path, required=True, help="the PNG to write")
    args = p.parse_args()
    torch.set_num_threads(1)
    tasks = SinusoidTasks(max(SUPPORTS), 1, seed=0)
    amp, phase = tasks.task_parameters(args.episode)
    support = tasks[args.episode]
    grid = torch.linspace(-5, 5, 200).unsqueeze(1)
    rows = [r.split("=", 1) for r in args.run]
    fig, axes = plt.subplots(len(rows), len(SUPPORTS), figsize=(4 * len(SUPPORTS), 3 * len(rows)), squeeze=False,
                             sharex=True, sharey=True)
    for (name, run_dir), row in zip(rows, axes):
        learner, cfg = load_learner(run_dir)
        for k, ax in zip(SUPPORTS, row):
            sx, sy = support.support_x[:k], support.support_y[:k]
            samples, interval = curves(learner, cfg, sx, sy, grid, args.draws)
            x = grid[:, 0].numpy()
            ax.fill_between(x, interval.lower[:, 0].numpy(), interval.upper[:, 0].numpy(), color="tab:blue",
                            alpha=0.15, label="95 % predictive interval")
            for i, s in enumerate(samples):
                ax.plot(x, s.numpy(), color="tab:blue", lw=0.8, alpha=0.6, label="posterior draws" if i == 0 else None)
            ax.plot(x, (amp * torch.sin(grid[:, 0] - phase)).numpy(), color="k", lw=1.5, ls="--", label="truth")
            ax.scatter(sx[:, 0].numpy(), sy[:, 0].numpy(), color="tab:red", zorder=5, label="support")
            ax.set_title(f"{name}, {k} support point{'s' if k > 1 else ''}")
            ax.set_ylim(-6, 6)
    axes[0, 0].legend(loc="lower left", fontsize=7)
    fig.suptitle(f"sinusoid task: amplitude {amp:.2f}, phase {phase:.2f} ({math.degrees(phase):.0f}°)")
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=110)
    print(args.out)


if __name__ == "__main__":
    main()
