"""Benchmark: one second-order MAML meta-step, fewshot vs a plain-autograd reference.

What is measured
----------------
One meta-step = zero the gradients, then accumulate the meta-gradient of a task batch
into ``.grad``: for each task, one (or ``--inner-steps``) inner SGD step(s) on the support
set keeping the inner gradient in the graph (second order), the query loss of the adapted
weights, and a backward per task. No optimiser step, so every repeat sees the same weights.

Setup (defaults): MAML 5-way 1-shot, 15 queries per class, meta-batch 32, inner lr 0.4, one
inner step; Conv-4 with BatchNorm (per-batch statistics), 64 filters, a 5-way linear head,
random 28x28 single-channel inputs. Both variants of ``fewshot.nets.Conv4`` ("pool" and
"strided") can be run. Weights and data come from ``--seed`` and are identical for both
implementations.

Implementations
---------------
* ``fewshot``: ``GradientLearner(Conv4(...)).meta_backward(batch)`` (torch.func inner loop).
* ``reference``: written out below with no fewshot code: a Python loop over tasks,
  ``F.conv2d``/``F.batch_norm``/... over a list of tensors, ``torch.autograd.grad(
  create_graph=True)`` for the inner step and ``.backward()`` per task.

Reported per (implementation, net)
----------------------------------
* ``median_s``: median wall time of a meta-step over ``--repeats`` steps, after ``--warmup``.
* ``tasks_per_s``: meta-batch / median_s.
* ``peak_mb``: peak resident-memory growth of the meta-steps. Each (implementation, net) runs
  in its own fresh Python process (this script re-invoked with a hidden ``--worker`` flag).
  After imports, model and data creation the worker reads ``ru_maxrss`` (the process's
  high-water mark of resident memory, from ``getrusage(RUSAGE_SELF)``), runs warm-up and
  timed steps, and reads it again; the difference is how far the meta-steps pushed the
  peak above what the process already held: activations, the double-backward graph,
  gradients and allocator growth. It is host RSS (the benchmark runs on CPU), counts
  memory the allocator keeps cached, and is MiB (2**20 bytes). Warm-up steps count too.
  Caveat: Linux carries a parent's peak RSS into a child's ``ru_maxrss`` across
  fork+exec, so all workers are started before the parent computes anything, and a worker
  whose baseline is still the inherited value reports ``peak_mb`` as NaN.
* ``grad_rel_diff``: ||g_fewshot - g_ref|| / ||g_ref|| over all parameters flattened, from
  one meta-step of each implementation in float32 on the same weights and data (computed
  once, in this parent process; the same value is shown on both rows of a net).
* ``ref_over_fewshot``: median_s of the reference / median_s of fewshot for that net (>1:
  fewshot is faster); also shown on both rows of a net.

Timings use torch's default thread count unless ``--threads`` is given (printed in the
header). Other load on the machine skews them badly: threads that outnumber free cores
make every operator wait on the slowest thread.

Usage::

    python benchmarks/maml_step.py [--net pool|strided|both] [--meta-batch 32] [--ways 5]
        [--shots 1] [--queries 15] [--inner-steps 1] [--repeats 10] [--warmup 2] [--json]
        [--inner-lr 0.4] [--seed 0] [--threads N]
"""

from __future__ import annotations

import resource
import sys

# Read before the heavy imports: in a worker this is the peak RSS inherited from the parent.
INHERITED_MAXRSS = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

import argparse  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import time  # noqa: E402

import torch  # noqa: E402
from torch.nn import functional as F

from fewshot.learners.gradient import GradientLearner
from fewshot.nets import Conv4
from fewshot.tasks.episode import TaskBatch

IMPLEMENTATIONS = ("fewshot", "reference")
SETTINGS = ("meta_batch", "ways", "shots", "queries", "inner_steps", "inner_lr", "repeats", "warmup", "seed",
            "threads")
IMAGE_SIZE, CHANNELS, HIDDEN = 28, 1, 64


# -- setup: seeded weights and data ---------------------------------------------------------
def make_model(args, net: str) -> Conv4:
    torch.manual_seed(args.seed)
    return Conv4(in_channels=CHANNELS, hidden=HIDDEN, out_features=args.ways, variant=net, norm="batch")


def make_batch(args) -> TaskBatch:
    """Random images; labels 0..ways-1, each repeated shots (support) or queries (query) times."""
    g = torch.Generator().manual_seed(args.seed + 1)
    n_support, n_query = args.ways * args.shots, args.ways * args.queries
    shape = (args.meta_batch, CHANNELS, IMAGE_SIZE, IMAGE_SIZE)
    support_x = torch.randn(shape[0], n_support, *shape[1:], generator=g)
    query_x = torch.randn(shape[0], n_query, *shape[1:], generator=g)
    labels = torch.arange(args.ways)
    support_y = labels.repeat_interleave(args.shots).expand(args.meta_batch, -1).contiguous()
    query_y = labels.repeat_interleave(args.queries).expand(args.meta_batch, -1).contiguous()
    return TaskBatch(support_x, support_y, query_x, query_y)


# -- the reference: plain autograd, no fewshot code ----------------------------------------
def reference_forward(params: list[torch.Tensor], x: torch.Tensor, net: str) -> torch.Tensor:
    """Conv-4; ``params`` in Conv4's ``named_parameters`` order:
    per block conv weight, conv bias, bn weight, bn bias; then head weight, head bias."""
    for block in range(4):
        conv_w, conv_b, bn_w, bn_b = params[4 * block: 4 * block + 4]
        x = F.conv2d(x, conv_w, conv_b, stride=2 if net == "strided" else 1, padding=1)
        x = F.batch_norm(x, None, None, bn_w, bn_b, training=True)
        x = F.relu(x)
        if net == "pool":
            x = F.max_pool2d(x, 2)
    x = x.mean(dim=(2, 3))
    return F.linear(x, params[16], params[17])


def reference_meta_backward(params: list[torch.Tensor], batch: TaskBatch, net: str,
                            inner_lr: float, inner_steps: int) -> None:
    """Accumulate the second-order MAML meta-gradient (mean over tasks) into ``p.grad``."""
    num_tasks = batch.support_x.shape[0]
    for t in range(num_tasks):
        fast = list(params)
        for _ in range(inner_steps):
            support_loss = F.cross_entropy(reference_forward(fast, batch.support_x[t], net), batch.support_y[t])
            grads = torch.autograd.grad(support_loss, fast, create_graph=True)
            fast = [p - inner_lr * g for p, g in zip(fast, grads)]
        query_loss = F.cross_entropy(reference_forward(fast, batch.query_x[t], net), batch.query_y[t])
        (query_loss / num_tasks).backward()


# -- one meta-step of each implementation --------------------------------------------------
def make_step(impl: str, args, net: str):
    """A zero-argument function running one meta-step, and the parameters it fills ``.grad`` of."""
    model, batch = make_model(args, net), make_batch(args)
    if impl == "fewshot":
        learner = GradientLearner(model, inner_lr=args.inner_lr, inner_steps=args.inner_steps)
        params = list(learner.parameters())

        def step():
            learner.zero_grad(set_to_none=True)
            learner.meta_backward(batch)
    else:
        params = [p.detach().clone().requires_grad_(True) for p in model.parameters()]
        assert len(params) == 18, "reference_forward expects Conv-4 with BatchNorm and a head"

        def step():
            for p in params:
                p.grad = None
            reference_meta_backward(params, batch, net, args.inner_lr, args.inner_steps)
    return step, params


def meta_gradient(impl: str, args, net: str) -> torch.Tensor:
    """The flattened float32 meta-gradient of one step."""
    step, params = make_step(impl, args, net)
    step()
    return torch.cat([p.grad.reshape(-1) for p in params])


def relative_difference(g: torch.Tensor, g_ref: torch.Tensor) -> float:
    return float((g - g_ref).norm() / g_ref.norm())


# -- the worker: timing and peak memory in a fresh process ----------------------------------
def rss_mb(ru_maxrss: int) -> float:
    """ru_maxrss in MiB (it is KiB on Linux, bytes on macOS)."""
    return ru_maxrss / 2**20 if sys.platform == "darwin" else ru_maxrss / 2**10


def max_rss_mb() -> float:
    """The process's peak resident set size so far."""
    return rss_mb(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)


def run_worker(args) -> dict:
    step, _ = make_step(args.worker, args, args.net)
    baseline = max_rss_mb()
    own_baseline = baseline > rss_mb(INHERITED_MAXRSS)  # else the parent's peak masks ours
    for _ in range(args.warmup):
        step()
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    median = statistics.median(times)
    return {"impl": args.worker, "net": args.net, "median_s": median,
            "tasks_per_s": args.meta_batch / median,
            "peak_mb": max_rss_mb() - baseline if own_baseline else float("nan"),
            "baseline_mb": baseline, "times_s": times}


def spawn_worker(args, impl: str, net: str) -> dict:
    """Run ``run_worker`` in a fresh interpreter and return its result."""
    argv = [sys.executable, __file__, "--worker", impl, "--net", net]
    for name in SETTINGS:
        argv += ["--" + name.replace("_", "-"), str(getattr(args, name))]
    out = subprocess.run(argv, capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"worker {impl}/{net} failed:\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


# -- the parent: gradients, workers, report --------------------------------------------------
def benchmark(args, nets: list[str]) -> list[dict]:
    """All rows. The workers run first, while the parent's peak RSS is still that of its imports."""
    rows = {(impl, net): spawn_worker(args, impl, net) for net in nets for impl in IMPLEMENTATIONS}
    settings = {**{k: getattr(args, k) for k in SETTINGS}, "threads": torch.get_num_threads()}
    for net in nets:
        grad_diff = relative_difference(meta_gradient("fewshot", args, net), meta_gradient("reference", args, net))
        ratio = rows["reference", net]["median_s"] / rows["fewshot", net]["median_s"]
        for impl in IMPLEMENTATIONS:
            rows[impl, net].update(grad_rel_diff=grad_diff, ref_over_fewshot=ratio, torch=torch.__version__,
                                   **settings)
    return list(rows.values())


def print_header(args) -> None:
    print(f"MAML second order, {args.ways}-way {args.shots}-shot, {args.queries} queries, "
          f"meta-batch {args.meta_batch}, {args.inner_steps} inner step(s) of lr {args.inner_lr}; "
          f"Conv-4 + BatchNorm, {HIDDEN} filters, {CHANNELS}x{IMAGE_SIZE}x{IMAGE_SIZE} random inputs")
    print(f"median of {args.repeats} meta-steps after {args.warmup} warm-up; torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads; peak_mb = ru_maxrss growth in a fresh process")
    print(f"{'impl':<10} {'net':<8} {'median_s':>9} {'tasks/s':>8} {'peak_mb':>8} "
          f"{'grad_rel_diff':>13} {'ref/fewshot':>11}")


def print_row(row: dict) -> None:
    print(f"{row['impl']:<10} {row['net']:<8} {row['median_s']:>9.3f} {row['tasks_per_s']:>8.1f} "
          f"{row['peak_mb']:>8.1f} {row['grad_rel_diff']:>13.2e} {row['ref_over_fewshot']:>11.2f}", flush=True)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--net", choices=("pool", "strided", "both"), default="both")
    p.add_argument("--meta-batch", type=int, default=32)
    p.add_argument("--ways", type=int, default=5)
    p.add_argument("--shots", type=int, default=1)
    p.add_argument("--queries", type=int, default=15)
    p.add_argument("--inner-steps", type=int, default=1)
    p.add_argument("--inner-lr", type=float, default=0.4)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's default)")
    p.add_argument("--json", action="store_true", help="one JSON object per row")
    p.add_argument("--worker", choices=IMPLEMENTATIONS, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker and args.net == "both":
        p.error("--worker needs a single --net")
    if args.repeats < 1 or args.meta_batch < 1 or args.inner_steps < 1:
        p.error("--repeats, --meta-batch and --inner-steps must be >= 1")
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.worker:
        print(json.dumps(run_worker(args)))
        return
    if not args.json:
        print_header(args)
    for row in benchmark(args, ["pool", "strided"] if args.net == "both" else [args.net]):
        if args.json:
            print(json.dumps(row), flush=True)
        else:
            print_row(row)


if __name__ == "__main__":
    main()
