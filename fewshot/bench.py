"""``fewshot bench speed``: meta-training step time, memory and FLOP rate, beside peer libraries.

One row per (library, algo, net, ways, meta-batch): a meta-step is ``zero_grad`` plus the
meta-gradient of one task batch accumulated into ``.grad`` (no optimiser step, so every
repeat sees the same weights). Each row runs in a fresh Python process (this module with
``--worker``) on real Omniglot episodes (the background set that ships with the package,
28x28, ``--queries`` per class) and the algorithm's recipe (``fewshot.config.RECIPES``).

Columns:

* ``tasks_per_s``: meta-batch / the median meta-step time over ``--repeats`` steps, after
  ``--warmup`` steps, the steps pooled over ``--rounds`` worker processes per row; the rows of
  one configuration take turns (fewshot, learn2learn, higher, fewshot, ...), so other load on
  the machine hits them alike and their ratios are fair.
* ``peak_mb``: how far the process's peak resident memory (``ru_maxrss``, host RSS, MiB) rose
  during the steps above what it held after imports, model and data (the largest over the
  rounds). It counts activations, the double-backward graph, gradients and what the allocator
  keeps cached; it is what a user's machine must have free. Linux carries a parent's peak RSS
  into a child across fork+exec, so the parent starts every worker before it computes anything
  large; a worker whose baseline is still the inherited value reports NaN.
* ``gflops``: matmul and convolution FLOPs of one meta-step (counted by
  ``torch.utils.flop_counter.FlopCounterMode``: forward, backward and double backward; not the
  elementwise ops) / the median step time. The header gives the machine's float32 matrix
  multiply rate measured in the same run, and the table the fraction of it.
* ``grad_rel_diff``: ``||g - g_ref|| / ||g_ref||`` over all meta-gradients flattened, from one step
  on identical weights and data: a peer against fewshot (float32); a fewshot row against a plain
  ``torch.autograd`` loop written out here (:func:`reference_meta_backward`); ``null`` where there
  is no second implementation (Reptile, ProtoNet).

``library`` names variants in brackets: ``fewshot[checkpoint]`` (gradient checkpointing of the
inner loop), ``fewshot[bf16]`` (CPU autocast to bfloat16; its ``grad_rel_diff`` is against float32
fewshot), ``fewshot[compile]`` (``torch.compile`` of the per-task meta-gradient), ``fewshot[vmap]`` (the tasks of
the meta-batch in one ``torch.func.vmap`` call, BatchNorm from primitives: :mod:`fewshot.nets.norm`),
``fewshot[cudagraphs]`` (``torch.compile`` with ``mode="reduce-overhead"``: the per-task step replayed as a CUDA
graph; ``--device cuda`` only).

``--device cuda`` times each step to the end of its kernels (``torch.cuda.synchronize``) and reports as
``peak_mb`` the GPU memory a step allocates beyond the weights and episodes it holds.
"""

from __future__ import annotations

import resource
import sys

# Read first: in a worker this is the peak RSS inherited from the parent process.
_INHERITED_MAXRSS = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

import argparse  # noqa: E402
import contextlib  # noqa: E402
import dataclasses  # noqa: E402
import importlib.util  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import time  # noqa: E402
from typing import Callable  # noqa: E402

import torch  # noqa: E402
from torch.nn import functional as F  # noqa: E402

ALGOS = ("maml", "fomaml", "anil", "reptile", "protonet")
PEERS = ("learn2learn", "higher")
PEER_ALGOS = ("maml", "fomaml")               # the step each peer library offers as such
VARIANTS = ("checkpoint", "bf16", "compile", "vmap", "cudagraphs")
ROW_KEYS = ("library", "algo", "net", "ways", "shots", "meta_batch", "order", "tasks_per_s", "peak_mb",
            "gflops", "grad_rel_diff")


@dataclasses.dataclass(frozen=True)
class Setting:
    """One row's configuration (``library`` may carry a ``[variant]``)."""

    library: str
    algo: str
    net: str            # "pool" | "strided"
    ways: int
    shots: int
    queries: int
    meta_batch: int
    inner_steps: int | None   # None: the recipe's
    repeats: int
    warmup: int
    seed: int
    threads: int
    compare: bool = True      # compute grad_rel_diff (the first round of a row only)
    device: str = "cpu"       # where the step computes (episodes are stacked on the CPU, then moved)

    @property
    def base_library(self) -> str:
        return self.library.split("[")[0]

    @property
    def variant(self) -> str | None:
        return self.library[len(self.base_library) + 1:-1] or None


# -- setup: the recipe's learner, seeded weights, real episodes ------------------------------
def make_learner(s: Setting):
    """The fewshot learner of the algorithm's recipe (its hyperparameters from the run config of
    ``fewshot.config.RECIPES``) and that run config."""
    from fewshot.config import resolve
    from fewshot.learners.gradient import ANIL, FOMAML, MAML, GradientLearner, Reptile
    from fewshot.learners.protonet import ProtoNet
    from fewshot.nets import Conv4

    flags = {"algo": s.algo, "dataset": "omniglot", "net": f"conv4-{s.net}", "ways": s.ways, "shots": s.shots,
             "queries": s.queries, "meta_batch": s.meta_batch, "inner_steps": s.inner_steps, "seed": s.seed}
    if s.algo == "protonet":
        flags["train_ways"], flags["train_queries"] = s.ways, s.queries
    config = resolve({}, flags)
    torch.manual_seed(s.seed)

    def net(out_features: int | None = None) -> Conv4:
        return Conv4(hidden=config.channels, out_features=out_features, variant=s.net, norm=config.norm,
                     pooling=config.pooling, image_size=config.image_size)

    if s.algo == "protonet":
        learner = ProtoNet(net())
    else:
        cls = {"maml": MAML, "fomaml": FOMAML, "anil": ANIL, "reptile": Reptile}[s.algo]
        kwargs = {} if cls is Reptile else {"multi_step_loss": getattr(config, "multi_step_loss", False)}
        learner = cls(net(out_features=s.ways), config.inner_lr, config.inner_steps, **kwargs)
        learner.set_execution(vectorize=getattr(config, "vectorize", False))   # options that do not apply: off
    if s.variant == "vmap":
        if not isinstance(learner, GradientLearner) or s.algo == "reptile":
            raise ValueError("fewshot[vmap] applies to maml, fomaml and anil")
        learner.set_execution(vectorize=True)
    if s.variant == "checkpoint":
        if not isinstance(learner, GradientLearner) or learner.first_order:
            raise ValueError("fewshot[checkpoint] applies to second-order gradient learners (maml, anil)")
        learner.set_execution(vectorize=learner.execution.vectorize, checkpoint_inner=True)
    return learner.to(s.device), config


def make_batch(s: Setting):
    """``meta_batch`` real Omniglot episodes (background set shipped with the package), stacked."""
    from fewshot.datasets.omniglot import load_omniglot
    from fewshot.tasks.episode import stack_episodes
    from fewshot.tasks.sampler import ClassificationTasks

    tasks = ClassificationTasks(load_omniglot("background"), s.ways, s.shots, s.queries, seed=s.seed)
    return stack_episodes([tasks[i] for i in range(s.meta_batch)]).to(s.device)


# -- meta-steps: fewshot, its variants, the peers, the plain-autograd reference ----------------
def reference_meta_backward(model: torch.nn.Module, names: list[str], batch, inner_lr: float, steps: int,
                            first_order: bool) -> None:
    """MAML written out with plain autograd (no fewshot code): a loop over tasks,
    ``torch.autograd.grad`` for the inner steps on the parameters ``names``, a backward per task."""
    params = dict(model.named_parameters())
    for t in range(batch.num_tasks):
        fast = dict(params)
        for _ in range(steps):
            loss = F.cross_entropy(torch.func.functional_call(model, fast, (batch.support_x[t],)), batch.support_y[t])
            grads = torch.autograd.grad(loss, [fast[n] for n in names], create_graph=not first_order)
            fast.update({n: fast[n] - inner_lr * (g.detach() if first_order else g) for n, g in zip(names, grads)})
        query = F.cross_entropy(torch.func.functional_call(model, fast, (batch.query_x[t],)), batch.query_y[t])
        (query / batch.num_tasks).backward()


def learn2learn_meta_backward(maml, batch, steps: int) -> None:
    """The learn2learn MAML step: ``clone()``, ``adapt(support_loss)``, query loss, backward per task."""
    for t in range(batch.num_tasks):
        learner = maml.clone()
        for _ in range(steps):
            learner.adapt(F.cross_entropy(learner(batch.support_x[t]), batch.support_y[t]))
        (F.cross_entropy(learner(batch.query_x[t]), batch.query_y[t]) / batch.num_tasks).backward()


def higher_meta_backward(model, batch, inner_lr: float, steps: int, first_order: bool) -> None:
    """The higher MAML step: ``innerloop_ctx`` with a differentiable SGD, backward per task."""
    import higher

    inner_opt = torch.optim.SGD(model.parameters(), lr=inner_lr)
    for t in range(batch.num_tasks):
        with higher.innerloop_ctx(model, inner_opt, copy_initial_weights=False,
                                  track_higher_grads=not first_order) as (fmodel, diffopt):
            for _ in range(steps):
                diffopt.step(F.cross_entropy(fmodel(batch.support_x[t]), batch.support_y[t]))
            query = F.cross_entropy(fmodel(batch.query_x[t]), batch.query_y[t]) / batch.num_tasks
            if not first_order:
                query.backward()
                continue
            # untracked fast weights are detached: their query gradient is the first-order meta-gradient
            for p, g in zip(model.parameters(), torch.autograd.grad(query, list(fmodel.parameters()))):
                p.grad = g if p.grad is None else p.grad + g


def compiled_meta_backward(learner, mode: str | None = None):
    """fewshot's MAML step with the per-task meta-gradient under ``torch.compile`` (``mode`` is its mode,
    e.g. ``"reduce-overhead"`` for CUDA graphs): the inner and outer gradients as ``torch.func.grad`` of
    ``torch.func.grad``, traced and fused by Inductor."""
    from torch.func import grad

    def support_loss(fast, x, y):
        return F.cross_entropy(learner.predict(fast, x), y)

    def query_loss(params, sx, sy, qx, qy):
        g = grad(support_loss)(params, sx, sy)
        fast = {n: p - learner.inner_lr * g[n] if n in learner.adapt_names else p for n, p in params.items()}
        for _ in range(learner.inner_steps - 1):
            g = grad(support_loss)(fast, sx, sy)
            fast = {n: p - learner.inner_lr * g[n] if n in learner.adapt_names else p for n, p in fast.items()}
        return F.cross_entropy(learner.predict(fast, qx), qy)

    meta_grad = torch.compile(grad(query_loss), mode=mode)
    params = dict(learner.model.named_parameters())

    def meta_backward(batch):
        detached = {n: p.detach() for n, p in params.items()}
        for t in range(batch.num_tasks):
            grads = meta_grad(detached, batch.support_x[t], batch.support_y[t], batch.query_x[t], batch.query_y[t])
            for n, p in params.items():
                step = grads[n] / batch.num_tasks
                p.grad = step if p.grad is None else p.grad + step
    return meta_backward


def make_step(s: Setting) -> tuple[Callable[[], None], list[torch.Tensor], Callable[[], list[torch.Tensor]] | None]:
    """(one meta-step, the parameters whose ``.grad`` it fills, a function giving the gradient
    to compare against, or ``None``)."""
    learner, config = make_learner(s)
    batch = make_batch(s)
    model = getattr(learner, "model", None)
    first_order = s.algo in ("fomaml", "reptile")
    library, variant = s.base_library, s.variant
    if library == "learn2learn":
        import learn2learn

        maml = learn2learn.algorithms.MAML(model, lr=config.inner_lr, first_order=first_order)
        params, run = list(model.parameters()), lambda: learn2learn_meta_backward(maml, batch, config.inner_steps)
    elif library == "higher":
        params = list(model.parameters())
        run = lambda: higher_meta_backward(model, batch, config.inner_lr, config.inner_steps, first_order)  # noqa: E731
    elif variant in ("compile", "cudagraphs"):
        if s.algo not in ("maml", "anil"):
            raise ValueError(f"fewshot[{variant}] applies to second-order maml and anil")
        if variant == "cudagraphs" and torch.device(s.device).type != "cuda":
            raise ValueError("fewshot[cudagraphs] replays CUDA graphs; run it with --device cuda")
        meta_backward = compiled_meta_backward(learner, "reduce-overhead" if variant == "cudagraphs" else None)
        params, run = list(model.parameters()), lambda: meta_backward(batch)
    else:
        params = list(learner.parameters())
        run = lambda: learner.meta_backward(batch)  # noqa: E731
    autocast = (torch.autocast(torch.device(s.device).type, dtype=torch.bfloat16) if variant == "bf16"
                else contextlib.nullcontext())

    def step() -> None:
        for p in params:
            p.grad = None
        with autocast:
            run()

    def expected() -> list[torch.Tensor]:
        """fewshot float32 for a peer or variant, the plain-autograd loop for fewshot itself."""
        if library != "fewshot" or variant is not None:
            return _one_gradient(make_step(dataclasses.replace(s, library="fewshot"))[:2])
        ref_model = make_learner(s)[0].model
        for p in ref_model.parameters():
            p.grad = None
        names = [n for n, _ in ref_model.named_parameters() if s.algo != "anil" or n.startswith("head.")]
        reference_meta_backward(ref_model, names, batch, config.inner_lr, config.inner_steps, first_order)
        return [p.grad.clone() for p in ref_model.parameters()]

    comparable = library != "fewshot" or variant is not None or s.algo in ("maml", "fomaml", "anil")
    return step, params, expected if comparable else None


def _one_gradient(step_and_params) -> list[torch.Tensor]:
    step, params = step_and_params
    step()
    return [p.grad.clone() for p in params]


def relative_difference(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    flat_a, flat_b = torch.cat([x.flatten() for x in a]).double(), torch.cat([x.flatten() for x in b]).double()
    return float((flat_a - flat_b).norm() / flat_b.norm())


# -- the worker: one row in a fresh process ------------------------------------------------------
def _max_rss_mb() -> float:
    scale = 2**20 if sys.platform == "darwin" else 2**10    # ru_maxrss: bytes on macOS, KiB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / scale


def run_worker(s: Setting) -> dict:
    """Time ``s`` (warm-up, then ``repeats`` steps), then count FLOPs and compare gradients."""
    from torch.utils.flop_counter import FlopCounterMode

    torch.set_num_threads(s.threads)
    cuda = torch.device(s.device).type == "cuda"
    step, params, expected = make_step(s)
    baseline = _max_rss_mb()
    own_baseline = baseline > _INHERITED_MAXRSS / (2**20 if sys.platform == "darwin" else 2**10)
    for _ in range(s.warmup):
        step()
    if cuda:
        torch.cuda.synchronize(s.device)
        torch.cuda.reset_peak_memory_stats(s.device)
        resident = torch.cuda.memory_allocated(s.device)
    times = []
    for _ in range(s.repeats):
        start = time.perf_counter()
        step()
        if cuda:
            torch.cuda.synchronize(s.device)     # kernels are asynchronous: time them to their end
        times.append(time.perf_counter() - start)
    if cuda:     # GPU memory a step allocates beyond the weights and episodes held
        peak = (torch.cuda.max_memory_allocated(s.device) - resident) / 2**20
    else:
        peak = _max_rss_mb() - baseline if own_baseline else float("nan")
    counter = FlopCounterMode(display=False)
    with counter:
        step()
    grads = [p.grad.clone() for p in params]
    diff = relative_difference(grads, expected()) if expected is not None and s.compare else None
    return {"times": times, "peak_mb": peak, "flops": counter.get_total_flops(), "grad_rel_diff": diff}


class WorkerError(RuntimeError):
    """A benchmark worker process failed."""


def _spawn(s: Setting) -> dict:
    out = subprocess.run([sys.executable, "-m", "fewshot.bench", "--worker", json.dumps(dataclasses.asdict(s))],
                         capture_output=True, text=True)
    if out.returncode != 0:
        tail = out.stderr.strip().splitlines()[-1:] or ["(no output)"]
        raise WorkerError(f"benchmark worker {s.library}/{s.algo}/{s.net} failed: {tail[0]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


# -- the parent ------------------------------------------------------------------------------
def matmul_gflops(threads: int, size: int = 1024, repeats: int = 10, device: str = "cpu") -> float:
    """The device's float32 matrix-multiply rate: the fastest of ``repeats`` ``size``^3 products
    (the best the cores give; on a shared machine the median says more about the other load)."""
    torch.set_num_threads(threads)
    g = torch.Generator().manual_seed(0)
    a, b = (torch.randn(size, size, generator=g).to(device) for _ in range(2))
    sync = torch.cuda.synchronize if torch.device(device).type == "cuda" else (lambda: None)
    for _ in range(2):
        a @ b
    times = []
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        a @ b
        sync()
        times.append(time.perf_counter() - start)
    return 2 * size**3 / min(times) / 1e9


def available_peers() -> list[str]:
    return [p for p in PEERS if importlib.util.find_spec(p) is not None]


def settings(args: argparse.Namespace) -> list[list[Setting]]:
    """Groups of settings that share a configuration (their rows take turns)."""
    peers = [p for p in available_peers() if p in args.peers]
    variants = [f"fewshot[{v}]" for v in args.variants]
    groups = []
    for ways, meta_batch in args.tasks:
        for algo in args.algos:
            for net in args.nets:
                libraries = ["fewshot"]
                if algo in PEER_ALGOS:
                    libraries += peers
                if algo in ("maml", "anil"):
                    libraries += variants
                elif algo in PEER_ALGOS:
                    libraries += [v for v in variants if v in ("fewshot[bf16]", "fewshot[vmap]")]
                groups.append([Setting(lib, algo, net, ways, args.shots, args.queries, meta_batch, args.inner_steps,
                                       args.repeats, args.warmup, args.seed, args.threads,
                                       device=str(getattr(args, "device", "cpu"))) for lib in libraries])
    return groups


def measure(group: list[Setting], rounds: int) -> list[dict]:
    """Rows of one configuration, the libraries taking turns for ``rounds`` rounds."""
    results: dict[Setting, list[dict]] = {s: [] for s in group}
    per_round = [dataclasses.replace(s, repeats=max(1, -(-s.repeats // rounds))) for s in group]
    for i in range(rounds):
        for s, r in zip(group, per_round):
            results[s].append(_spawn(dataclasses.replace(r, compare=i == 0)))
    rows = []
    for s in group:
        times = [t for r in results[s] for t in r["times"]]
        median = statistics.median(times)
        first = results[s][0]
        rows.append({"library": s.library, "algo": s.algo, "net": s.net, "ways": s.ways, "shots": s.shots,
                     "meta_batch": s.meta_batch, "order": 1 if s.algo in ("fomaml", "reptile", "protonet") else 2,
                     "tasks_per_s": s.meta_batch / median, "peak_mb": max(r["peak_mb"] for r in results[s]),
                     "gflops": first["flops"] / median / 1e9, "grad_rel_diff": first["grad_rel_diff"],
                     "step_s": median, "steps_timed": len(times)})
    return rows


def _print_table_header(args, rate: float, peers: list[str]) -> None:
    print(f"fewshot bench speed: Omniglot background episodes 28x28, {args.shots}-shot, {args.queries} queries, "
          f"recipe settings; torch {torch.__version__}, {args.device}, {args.threads} thread(s); median of {args.repeats} "
          f"meta-steps after {args.warmup} warm-up, over {args.rounds} interleaved round(s)")
    print(f"float32 matmul rate measured in this run: {rate:.1f} GFLOP/s; peers installed: "
          f"{', '.join(peers) or 'none'}; peak_mb = "
          + ("GPU memory a step allocates beyond what it holds" if str(args.device).startswith("cuda")
             else "ru_maxrss growth in a fresh process"))
    print(f"{'library':<20} {'algo':<8} {'net':<8} {'ways':>4} {'T':>3} {'ord':>3} {'step_s':>7} {'tasks/s':>8} "
          f"{'peak_mb':>8} {'GFLOP/s':>8} {'of mm':>6} {'grad_rel_diff':>13}", flush=True)


def _print_row(row: dict, rate: float) -> None:
    diff = "-" if row["grad_rel_diff"] is None else f"{row['grad_rel_diff']:.2e}"
    print(f"{row['library']:<20} {row['algo']:<8} {row['net']:<8} {row['ways']:>4} {row['meta_batch']:>3} "
          f"{row['order']:>3} {row['step_s']:>7.3f} {row['tasks_per_s']:>8.1f} {row['peak_mb']:>8.1f} "
          f"{row['gflops']:>8.1f} {row['gflops'] / rate:>6.1%} {diff:>13}", flush=True)


def _print_ratios(rows: list[dict]) -> None:
    """fewshot over each peer: tasks/s ratio (>1 faster) and peak memory ratio (<1 leaner)."""
    by_key: dict[tuple, dict[str, dict]] = {}
    for row in rows:
        by_key.setdefault((row["algo"], row["net"], row["ways"], row["meta_batch"]), {})[row["library"]] = row
    for (algo, net, ways, meta_batch), libs in by_key.items():
        ours = libs.get("fewshot")
        for name, row in libs.items():
            if ours is None or name == "fewshot":
                continue
            print(f"ratio fewshot / {name}, {algo} {net} {ways}-way T={meta_batch}: tasks/s "
                  f"{ours['tasks_per_s'] / row['tasks_per_s']:.2f}x, peak memory "
                  f"{ours['peak_mb'] / row['peak_mb']:.2f}x")


def speed(args: argparse.Namespace) -> list[dict]:
    """Run ``fewshot bench speed`` and print its table (or JSON rows); returns the rows."""
    device = str(getattr(args, "device", "cpu"))
    if "cudagraphs" in args.variants and not device.startswith("cuda"):
        raise ValueError("--variants cudagraphs replays CUDA graphs; add --device cuda or drop it")
    rate = matmul_gflops(args.threads, device=device)
    peers = [p for p in available_peers() if p in args.peers]
    if not args.json:
        _print_table_header(args, rate, peers)
    else:
        print(f"float32 matmul rate {rate:.1f} GFLOP/s, {args.threads} thread(s); peers: {peers}", file=sys.stderr)
    rows = []
    for group in settings(args):
        for row in measure(group, args.rounds):
            rows.append(row)
            if args.json:
                print(json.dumps({k: row[k] for k in ROW_KEYS}), flush=True)
            else:
                _print_row(row, rate)
    if not args.json:
        _print_ratios(rows)
    return rows


def _worker_main(argv: list[str]) -> None:
    print(json.dumps(run_worker(Setting(**json.loads(argv[1])))))


if __name__ == "__main__" and sys.argv[1:2] == ["--worker"]:
    _worker_main(sys.argv[1:])
