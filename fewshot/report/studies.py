"""``fewshot study``: hyperparameter sensitivity (Optuna), cost, and meta-learning vs transfer.

Each study writes into its output directory a figure, a Markdown table and ``figures.json`` (which
``fewshot report DIR`` shows), and is resumable: rerunning the same command continues it.

- :func:`sensitivity`: an Optuna study (SQLite storage by default; any RDB URL lets several processes or machines
  work on one study) over the inner step size, inner steps, meta-batch and outer learning rate (and the learner's
  own switches); every trial is a real training run of a fixed number of steps scored on validation episodes
  (``trials/NNNN``, resumed if a worker died in it); parameter importances by fANOVA and a heat map of the two
  most important.
- :func:`cost`: every learner trained for every budget of one grid (seconds), each scored on the same test
  episodes; accuracy against training time, peak memory and FLOPs, with the Pareto front.
- :func:`transfer`: every learner (the fine-tune transfer baseline among them) trained for one budget and
  scored at 5/20 ways and 1/5 shots.

Training runs of ``cost`` and ``transfer`` are ``fewshot train`` in a child process (:func:`run_child`), so that
each one's peak memory is its own.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import torch

from fewshot.report.figures import colour, new_figure, save
from fewshot.report.records import write_manifest

RESULTS = "results.jsonl"


# -- child processes and resumable results -------------------------------------------------------------
def run_child(argv: list[str]) -> tuple[str, float, float]:
    """Run ``fewshot ARGV`` in a child process: ``(stdout, wall seconds, the child's peak resident memory in
    MiB)`` (its own ``ru_maxrss``, from ``os.wait4``). Raises ``RuntimeError`` with its last error lines if it
    fails."""
    start = time.monotonic()
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen([sys.executable, "-m", "fewshot", *argv], stdout=out, stderr=err, text=True)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        seconds = time.monotonic() - start
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    if proc.returncode != 0:
        raise RuntimeError(f"fewshot {' '.join(argv)} failed (exit {proc.returncode}): {stderr.strip()[-800:]}")
    return stdout, seconds, usage.ru_maxrss / 1024


def measured(results: Path, key: str, measure: Callable[[], dict]) -> dict:
    """The row ``key`` of the JSON-lines file ``results``, measured by ``measure()`` and appended if absent, so an
    interrupted study resumes where it stopped."""
    rows = {}
    if results.is_file():
        for line in results.read_text().splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            rows[row["key"]] = row
    if key in rows:
        print(f"{key}: already measured in {results}", file=sys.stderr)
        return rows[key]
    row = {"key": key, **measure()}
    results.parent.mkdir(parents=True, exist_ok=True)
    with open(results, "a") as f:
        f.write(json.dumps(row) + "\n")
    return row


def _common(args) -> list[str]:
    common = ["--threads", str(args.threads), "--seed", str(args.seed)]
    if getattr(args, "data_root", None):
        common += ["--data-root", args.data_root]
    return common


def train_for(algo: str, out: Path, budget: float, args, *extra: str) -> tuple[float, float, int]:
    """Train ``algo`` on Omniglot with its recipe (and ``extra`` flags) for ``budget`` seconds into ``out`` in a
    child: ``(wall s, peak MiB, steps)``."""
    _, seconds, peak = run_child(["train", "--algo", algo, "--steps", "1000000", "--time-limit", str(budget), "--out",
                                  str(out), "--no-progress", *extra,
                                  *_common(args)])
    state = json.loads((out / "checkpoints" / "last.json").read_text())["state"]
    return seconds, peak, int(state["step"])


def score(run: Path, ways: int, shots: int, args) -> dict:
    """``fewshot eval RUN --ways --shots --episodes --json`` in a child: ``{"mean", "ci95", "episodes"}``."""
    stdout, _, _ = run_child(["eval", str(run), "--ways", str(ways), "--shots", str(shots), "--episodes",
                              str(args.episodes), "--json", *_common(args)])
    result = json.loads(stdout.splitlines()[-1])
    return {k: result[k] for k in ("mean", "ci95", "episodes")}


# -- cost ---------------------------------------------------------------------------------------------------
def step_flops(run: Path) -> float:
    """Matmul and convolution FLOPs of one meta-step (forward and backward, ``torch.utils.flop_counter``) of the
    run's learner on its first training task batch."""
    from torch.utils.flop_counter import FlopCounterMode

    from fewshot.runs import build_learner, load_run_config
    from fewshot.tasks.episode import stack_episodes

    config = load_run_config(run)
    learner = build_learner(config)
    tasks = learner.training_tasks(config.domain.train_tasks(config))
    batch = stack_episodes([tasks[i] for i in range(config.meta_batch)])
    counter = FlopCounterMode(display=False)
    with counter, learner.normalisation():
        learner.meta_backward(batch)
    return float(counter.get_total_flops())


def pareto(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the points ``(cost, accuracy)`` no other point beats (lower or equal cost and higher or equal
    accuracy, one strictly), in order of cost."""
    front = [i for i, (c, a) in enumerate(points)
             if not any((c2 <= c and a2 >= a) and (c2 < c or a2 > a) for c2, a2 in points)]
    return sorted(front, key=lambda i: points[i][0])


def cost(args) -> Path:
    """``fewshot study cost``: every learner of ``args.learners`` trained for each of ``args.budgets`` seconds,
    validated on and scored on the same ``args.episodes`` episodes (5-way 1-shot test episodes of the held-out
    alphabets); a Pareto plot and a table."""
    out = Path(args.out)
    rows = []
    for algo in args.learners:
        for budget in args.budgets:
            run = out / "runs" / f"{algo}-{budget:g}s"

            def measure() -> dict:
                print(f"{algo}: training for {budget:g} s", file=sys.stderr, flush=True)
                seconds, peak, steps = train_for(algo, run, budget, args, "--set", f"test_episodes={args.episodes}",
                                                 "--set", f"val_episodes={args.episodes}")
                test = json.loads((run / "test.json").read_text().splitlines()[-1])
                return {"learner": algo, "budget_s": budget, "train_s": seconds, "peak_mb": peak, "steps": steps,
                        "gflops": step_flops(run) * steps / 1e9, "mean": test["mean"], "ci95": test["ci95"],
                        "episodes": test["episodes"]}

            rows.append(measured(out / RESULTS, f"{algo}@{budget:g}", measure))
    axes_of = (("train_s", "training wall time (s)"), ("peak_mb", "peak memory (MiB)"), ("gflops", "training GFLOPs"))
    fig, axes = new_figure(15, 4.4, 1, 3)
    for ax, (key, label) in zip(axes[0], axes_of):
        for i, algo in enumerate(args.learners):
            mine = [r for r in rows if r["learner"] == algo]
            ax.errorbar([r[key] for r in mine], [r["mean"] for r in mine], yerr=[r["ci95"] for r in mine], marker="o",
                        capsize=3, color=colour(i), label=algo)
        front = pareto([(r[key], r["mean"]) for r in rows])
        ax.plot([rows[i][key] for i in front], [rows[i]["mean"] for i in front], "k--", linewidth=1,
                label="Pareto front")
        ax.set_xscale("log")
        ax.set_xlabel(label)
        ax.set_ylabel("test accuracy, 5-way 1-shot")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.suptitle(f"accuracy against cost, budgets {', '.join(f'{b:g}' for b in args.budgets)} s, "
                 f"{args.episodes} test episodes (95 % CI)", fontsize=10)
    save(fig, out / "cost.png")
    lines = ["| learner | budget (s) | steps | accuracy (%) | training (s) | peak memory (MiB) | GFLOPs |",
             "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['learner']} | {r['budget_s']:g} | {r['steps']} | {100 * r['mean']:.2f} ± {100 * r['ci95']:.2f} | "
              f"{r['train_s']:.0f} | {r['peak_mb']:.0f} | {r['gflops']:.1f} |" for r in rows]
    (out / "cost.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return write_manifest(out, "Cost: accuracy against time, memory and FLOPs", [
        ("cost.png", "Test accuracy against training wall time, peak memory and training FLOPs (matmul and "
                     "convolution FLOPs of one meta-step times the steps trained); dashed: the Pareto front.")],
        ["cost.md"])


# -- meta-learning vs transfer -----------------------------------------------------------------------------
SETTINGS = ((5, 1), (5, 5), (20, 1), (20, 5))    # (ways, shots) of the test episodes


def transfer(args) -> Path:
    """``fewshot study transfer``: every learner trained for ``args.budget`` seconds on the Lake background
    protocol and scored on ``args.episodes`` episodes of each of :data:`SETTINGS`. Learners whose output layer
    fixes the ways (MAML to Reptile) train a 5-way and a 20-way model with half the budget each."""
    from fewshot.registry import LEARNERS

    out = Path(args.out)
    rows = []
    for algo in args.learners:
        def measure() -> dict:
            ways_of_runs = (5, 20) if LEARNERS[algo].head else (5,)
            runs, seconds, peak = {}, 0.0, 0.0
            for ways in ways_of_runs:
                print(f"{algo}: training {ways}-way for {args.budget / len(ways_of_runs):g} s", file=sys.stderr,
                      flush=True)
                run = out / "runs" / f"{algo}-{ways}way"
                s, mb, _ = train_for(algo, run, args.budget / len(ways_of_runs), args, "--ways", str(ways))
                runs[ways], seconds, peak = run, seconds + s, max(peak, mb)
            row = {"learner": algo, "train_s": round(seconds, 1), "peak_mb": round(peak, 1), "budget_s": args.budget}
            for ways, shots in SETTINGS:
                row[f"{ways}w{shots}s"] = score(runs[ways if ways in runs else 5], ways, shots, args)
            return row

        rows.append(measured(out / RESULTS, f"{algo}@{args.budget:g}@{args.episodes}", measure))
    fig, axes = new_figure(11, 4.2, 1, 2)
    for ax, ways in zip(axes[0], (5, 20)):
        for i, row in enumerate(rows):
            points = [(shots, row[f"{ways}w{shots}s"]) for w, shots in SETTINGS if w == ways]
            ax.errorbar([s for s, _ in points], [100 * p["mean"] for _, p in points],
                        yerr=[100 * p["ci95"] for _, p in points], marker="o", capsize=3,
                        color="black" if row["learner"] == "finetune" else colour(i),
                        linewidth=2.5 if row["learner"] == "finetune" else 1.2, label=row["learner"])
        ax.set_xticks([1, 5])
        ax.set_xlabel("shots")
        ax.set_ylabel("test accuracy (%)")
        ax.set_title(f"{ways}-way", fontsize=10)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.suptitle(f"meta-learning vs the fine-tune transfer baseline (black), {args.budget:g} s each, "
                 f"{args.episodes} test episodes (95 % CI)", fontsize=10)
    save(fig, out / "transfer.png")
    columns = [f"{w}w{s}s" for w, s in SETTINGS]
    lines = ["| learner | " + " | ".join(columns) + " | training (s) | peak memory (MB) |", "|" + "---|" * 7]
    lines += [f"| {r['learner']} | " + " | ".join(f"{100 * r[c]['mean']:.2f} ± {100 * r[c]['ci95']:.2f}"
                                                for c in columns) + f" | {r['train_s']:.0f} | {r['peak_mb']:.0f} |"
              for r in rows]
    (out / "transfer.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return write_manifest(out, "Meta-learning vs transfer learning", [
        ("transfer.png", "Test accuracy against shots at 5 and 20 ways; the fine-tune baseline in black.")],
        ["transfer.md"])


# -- sensitivity ----------------------------------------------------------------------------------------------
#: name -> (kind, low, high) of the searched settings; "log" floats, "int" ranges, "choice" lists
SPACE: dict[str, tuple] = {
    "inner_lr": ("log", 0.01, 1.0),
    "inner_steps": ("int", 1, 5),
    "meta_batch": ("choice", (2, 4, 8, 16, 32)),
    "lr": ("log", 1e-4, 1e-2),
}
EXECUTION_ONLY = ("vectorize",)     # options that change how, not what, is computed: never searched


def search_space(algo: str, task: str = "classification") -> dict[str, tuple]:
    """:data:`SPACE` restricted to the options of ``algo``, plus its own boolean options (e.g. MAML's
    ``multi_step_loss``) as choices; an option whose field metadata names the tasks it is for
    (``{"tasks": ("regression",)}``, e.g. DKT's ``task_scale``) only on those."""
    import dataclasses

    from fewshot.registry import LEARNERS

    spec = LEARNERS[algo]
    own = {f.name: f for f in dataclasses.fields(spec.options)} if dataclasses.is_dataclass(spec.options) else {}
    space = {k: v for k, v in SPACE.items() if k in ("meta_batch", "lr") or k in own}
    for name, f in own.items():
        if f.type in (bool, "bool") and name not in EXECUTION_ONLY and task in f.metadata.get("tasks", (task,)):
            space[name] = ("choice", (False, True))
    return space


def study_task(args) -> str:
    """The task kind of the study's domain (``classification`` or ``regression``, whose validation score is an
    error, minimised); meta-RL domains are refused: their learners' settings (a KL bound, a clipping range) are
    not the searched ones, and an iteration takes minutes."""
    from fewshot.registry import DOMAINS, LEARNERS

    task = DOMAINS[args.dataset].task
    if task not in ("classification", "regression"):
        raise ValueError(f"fewshot study sensitivity searches supervised few-shot learning (classification or "
                         f"regression); {args.dataset} is a meta-RL domain: tune its learners with fewshot train "
                         f"--set (docs/experiments/meta-rl.md)")
    if task not in LEARNERS[args.algo].tasks:
        raise ValueError(f"{args.algo} does not learn {task} ({args.dataset}); choose one of "
                         + ", ".join(sorted(a for a, spec in LEARNERS.items() if task in spec.tasks)))
    return task


def suggest(trial, space: dict[str, tuple]) -> dict[str, Any]:
    values = {}
    for name, (kind, *bounds) in space.items():
        if kind == "log":
            values[name] = trial.suggest_float(name, bounds[0], bounds[1], log=True)
        elif kind == "int":
            values[name] = trial.suggest_int(name, bounds[0], bounds[1])
        else:
            values[name] = trial.suggest_categorical(name, list(bounds[0]))
    return values


def _optuna():
    try:
        import optuna
    except ImportError:
        raise ValueError("fewshot study sensitivity needs Optuna: pip install optuna (or 'fewshot[study]')") from None
    return optuna


def open_study(args, direction: str = "maximize"):
    """The Optuna study ``args.study_name`` in ``args.storage`` (default ``sqlite:///OUT/study.db``), created or
    loaded, maximising or minimising its trials' scores; a trial whose worker stopped sending heartbeats is
    retried (its run resumed)."""
    import warnings

    optuna = _optuna()
    from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback

    from sqlalchemy.exc import SQLAlchemyError

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    sampler = optuna.samplers.TPESampler(seed=args.seed + args.worker, n_startup_trials=args.startup_trials)
    for attempt in range(5):         # workers starting together race to create the tables and the study
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                storage = RDBStorage(args.storage, heartbeat_interval=30, grace_period=120,
                                     heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=2))
            study = optuna.create_study(study_name=args.study_name, storage=storage, sampler=sampler,
                                        direction=direction, load_if_exists=True)
            if study.direction.name.lower() != direction:
                raise ValueError(f"study {args.study_name} in {args.storage} was created to "
                                 f"{study.direction.name.lower()} its score; this one would {direction} it: give "
                                 "another --study-name")
            return study
        except (SQLAlchemyError, optuna.exceptions.DuplicatedStudyError):
            if attempt == 4:
                raise
            time.sleep(1 + attempt)


def objective(args, space: dict[str, tuple]):
    """One trial: a run of ``args.steps`` steps with the suggested settings, scored by its best validation metric
    over ``args.val_episodes`` episodes (validated every ``args.val_every`` steps and at the end). A run that
    diverges scores chance on classification; on regression, which has no chance level, the trial is pruned (kept
    in the study with its settings and counted towards ``--trials``, left out of the importances)."""
    from fewshot.config import resolve
    from fewshot.runs import trainer_for

    def run(trial) -> float:
        params = suggest(trial, space)
        # a retried trial (its worker died) inherits the user attributes, so its run resumes where it stopped
        run_dir = Path(trial.user_attrs.get("run_dir") or Path(args.out) / "trials" / f"{trial.number:04d}")
        trial.set_user_attr("run_dir", str(run_dir))
        trial.set_user_attr("pid", os.getpid())
        values = {"algo": args.algo, "dataset": args.dataset, **params, **args.fixed, "steps": args.steps,
                  "val_every": min(args.val_every, args.steps), "val_episodes": args.val_episodes,
                  "checkpoint_every": min(args.val_every, args.steps), "seed": args.seed}
        if args.data_root:
            values["data_root"] = args.data_root
        config = resolve(values, {})
        start = time.monotonic()
        try:
            result = trainer_for(config, run_dir, progress=False).run()
            value = result.best_val
        except FloatingPointError:           # diverged: scored as chance, or pruned
            trial.set_user_attr("diverged", True)
            if config.domain.task != "classification":
                raise _optuna().TrialPruned("the run diverged") from None
            value = 1.0 / config.ways
        trial.set_user_attr("seconds", time.monotonic() - start)
        return value

    return run


def sensitivity(args) -> Path | None:
    """``fewshot study sensitivity``: run trials until the study holds ``args.trials`` complete or pruned ones
    (every worker on the same storage shares that count), then write the importances, heat map and table."""
    _optuna()
    from optuna.study import MaxTrialsCallback
    from optuna.trial import TrialState

    task = study_task(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    args.storage = args.storage or f"sqlite:///{(out / 'study.db').resolve()}"
    space = {k: v for k, v in search_space(args.algo, task).items() if k not in args.fixed}   # --set fixes one
    study = open_study(args, "minimize" if task == "regression" else "maximize")
    workers = [subprocess.Popen(worker_argv(args, k)) for k in range(1, args.workers)]
    finished = (TrialState.COMPLETE, TrialState.PRUNED)     # a pruned (diverged) trial uses up its budget too
    if len(study.get_trials(states=finished)) < args.trials:
        study.optimize(objective(args, space), callbacks=[MaxTrialsCallback(args.trials, states=finished)],
                       catch=(RuntimeError,))
    for w in workers:
        if w.wait() != 0:
            raise RuntimeError(f"a sensitivity worker failed (exit {w.returncode}); rerun the command to continue")
    return None if args.no_analysis else analyse(study, args, space)


def worker_argv(args, index: int) -> list[str]:
    """The command line of worker ``index``: this study's, one worker, its own sampler seed."""
    argv = [sys.executable, "-m", "fewshot", "study", "sensitivity", "--algo", args.algo, "--dataset", args.dataset,
            "--trials", str(args.trials), "--steps", str(args.steps), "--val-every", str(args.val_every),
            "--val-episodes", str(args.val_episodes), "--storage", args.storage, "--study-name", args.study_name,
            "--out", args.out, "--seed", str(args.seed), "--worker", str(index), "--workers", "1", "--threads",
            str(args.threads), "--startup-trials", str(args.startup_trials), "--no-analysis"]
    for key, value in args.fixed.items():
        argv += ["--set", f"{key}={json.dumps(value)}"]
    return argv + (["--data-root", args.data_root] if args.data_root else [])


def importances(study) -> dict[str, float]:
    """fANOVA importances (Hutter et al. 2014; ``optuna.importance.FanovaImportanceEvaluator``, seed 0) of the
    complete trials."""
    optuna = _optuna()
    return optuna.importance.get_param_importances(
        study, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=0))


def _axis(trials, name: str, space: dict[str, tuple], cells: int):
    """``(cell edges, each trial's position, tick positions and labels or None, log scale)`` of one axis: a choice
    setting has a cell per choice, a numeric one ``cells`` cells (log-spaced for a log-scaled setting)."""
    import numpy as np

    kind, *bounds = space[name]
    if kind == "choice":
        choices = list(bounds[0])
        positions = [choices.index(t.params[name]) for t in trials]
        return np.arange(len(choices) + 1) - 0.5, positions, (list(range(len(choices))), choices), False
    values = [float(t.params[name]) for t in trials]
    lo, hi = min(values), max(values)
    hi = hi if hi > lo else lo * 1.01 + 1e-9
    edges = np.geomspace(lo, hi, cells + 1) if kind == "log" else np.linspace(lo, hi, cells + 1)
    return edges, values, None, kind == "log"


def heat_map(ax, fig, trials, a: str, b: str, space: dict[str, tuple], cells: int = 6) -> None:
    """The mean validation score of the trials in each cell of a grid over ``a`` and ``b`` (a cell per choice,
    else ``cells`` cells, log-spaced for log-scaled settings), the trials drawn over it."""
    import numpy as np

    (xe, xs, xticks, xlog), (ye, ys, yticks, ylog) = (_axis(trials, n, space, cells) for n in (a, b))
    total, count = np.zeros((len(ye) - 1, len(xe) - 1)), np.zeros((len(ye) - 1, len(xe) - 1))
    for x, y, t in zip(xs, ys, trials):
        i = min(max(np.searchsorted(xe, x, side="right") - 1, 0), len(xe) - 2)
        j = min(max(np.searchsorted(ye, y, side="right") - 1, 0), len(ye) - 2)
        total[j, i] += t.value
        count[j, i] += 1
    mean = np.where(count > 0, total / np.maximum(count, 1), np.nan)
    mesh = ax.pcolormesh(xe, ye, np.ma.masked_invalid(mean), cmap="viridis", shading="flat")
    fig.colorbar(mesh, ax=ax, label="mean validation score of the cell's trials")
    ax.scatter(xs, ys, c="white", edgecolor="black", s=22, zorder=3)
    from matplotlib.ticker import NullFormatter

    for axis, set_scale, set_ticks, log, ticks in ((ax.xaxis, ax.set_xscale, ax.set_xticks, xlog, xticks),
                                                   (ax.yaxis, ax.set_yscale, ax.set_yticks, ylog, yticks)):
        if log:
            set_scale("log")
            axis.set_minor_formatter(NullFormatter())     # the decades only: minor labels overlap
        if ticks:
            set_ticks(ticks[0], [str(c) for c in ticks[1]])
    ax.set_xlabel(a)
    ax.set_ylabel(b)


def analyse(study, args, space: dict[str, tuple]) -> Path:
    from optuna.trial import TrialState

    out = Path(args.out)
    trials = sorted(study.get_trials(states=(TrialState.COMPLETE,)), key=lambda t: t.number)
    if len(trials) < 2:
        raise ValueError(f"study {args.study_name} has {len(trials)} complete trial(s); importances need two or more "
                         "(raise --trials and rerun to continue it)")
    ranked = importances(study)
    names = list(ranked)
    fig, axes = new_figure(12, 4.4, 1, 2)
    axes[0][0].barh(names[::-1], [ranked[n] for n in names[::-1]], color=colour(0))
    axes[0][0].set_xlabel("fANOVA importance (share of the score's variance)")
    axes[0][0].set_title(f"{args.algo} on {args.dataset}: {len(trials)} trials of {args.steps} steps", fontsize=10)
    heat_map(axes[0][1], fig, trials, names[0], names[1] if len(names) > 1 else names[0], space)
    axes[0][1].set_title("the two most important settings", fontsize=10)
    save(fig, out / "sensitivity.png")
    best = study.best_trial
    lines = ["| setting | fANOVA importance |", "|---|---|"] + [f"| {n} | {ranked[n]:.3f} |" for n in names]
    lines += ["", f"Best trial {best.number}: validation {best.value:.4f} with "
              + ", ".join(f"{k}={_fmt(v)}" for k, v in best.params.items()) + ".", "",
              "| trial | " + " | ".join(space) + " | validation | seconds |", "|" + "---|" * (len(space) + 3)]
    sign = 1 if study.direction.name == "MINIMIZE" else -1
    for t in sorted(trials, key=lambda t: sign * t.value):
        lines.append(f"| {t.number} | " + " | ".join(_fmt(t.params.get(k)) for k in space)
                     + f" | {t.value:.4f} | {t.user_attrs.get('seconds', math.nan):.0f} |")
    (out / "sensitivity.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines[: len(names) + 4]))
    return write_manifest(out, f"Hyperparameter sensitivity of {args.algo}", [
        ("sensitivity.png", "fANOVA importances of the searched settings, and the mean validation score over a "
                            "grid of the two most important (each dot a trial).")], ["sensitivity.md"],
        f"Optuna study {args.study_name} in {args.storage}: {len(trials)} complete trials, each {args.steps} steps, "
        f"scored on {args.val_episodes} validation episodes.")


def _fmt(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def set_threads(threads: int | None) -> None:
    if threads:
        torch.set_num_threads(threads)
