"""The library API on a user's own modules and data: aliased and tied parameters, frozen parameters, BatchNorm
modes, the shape checks of ``fit``, ``fit_support``, lazy datasets, the evaluator's result and resuming ``fit``."""

from __future__ import annotations

import copy
import importlib
import json
import warnings

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import Dataset

import fewshot
import reference
from fewshot.datasets.labelled import LabelledData
from fewshot.evaluate import EvalResult, evaluate
from fewshot.learners.finetune import FineTune
from fewshot.learners.gradient import ANIL, FOMAML, MAML, GradientLearner, MetaSGD, Reptile
from fewshot.learners.matching import MatchingNet
from fewshot.learners.protonet import ProtoNet
from fewshot.learners.relation import RelationNet
from fewshot.learners.siamese import SiameseNet
from fewshot.nets import Conv4
from fewshot.tasks.episode import stack_episodes
from fewshot.tasks.sampler import ClassificationTasks
from fewshot.train import fit

WAYS, DIM = 4, 8
# the modules themselves (the package namespace may export functions of the same names)
TRAIN_MODULE, EVALUATE_MODULE = importlib.import_module("fewshot.train"), importlib.import_module("fewshot.evaluate")


def blobs(classes: int = 8, per_class: int = 10, seed: int = 0, dtype=torch.float32) -> LabelledData:
    """``DIM``-D points around one Gaussian centre per class."""
    g = torch.Generator().manual_seed(seed)
    centres = 2.0 * torch.randn(classes, DIM, generator=g, dtype=dtype)
    y = torch.arange(classes).repeat_interleave(per_class)
    return LabelledData(centres[y] + 0.5 * torch.randn(len(y), DIM, generator=g, dtype=dtype), y)


def blob_tasks(seed: int = 0, dtype=torch.float32, **kwargs) -> ClassificationTasks:
    return ClassificationTasks(blobs(seed=seed, dtype=dtype), ways=WAYS, shots=2, queries=2, seed=seed, **kwargs)


def images(classes: int = 6, per_class: int = 6, size: int = 8, offset: float = 3.0, seed: int = 0) -> LabelledData:
    """Images far from zero mean and unit variance (``offset + 2 * noise``, a brighter square per class), so that
    BatchNorm's batch statistics are far from its initial running statistics."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(classes).repeat_interleave(per_class)
    x = offset + 2.0 * torch.rand(len(y), 1, size, size, generator=g)
    for i, c in enumerate(y.tolist()):
        x[i, 0, c % size, :] += 3.0
    return LabelledData(x, y)


class Net(nn.Module):
    """A user's module: a body and a linear ``head`` (what ANIL adapts)."""

    def __init__(self, out: int = WAYS, hidden: int = 16):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(DIM, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU())
        self.head = nn.Linear(hidden, out)

    def forward(self, x):
        return self.head(self.body(x))


def no_progress(**settings):
    return {"progress": False, "lr": 1e-2, "meta_batch": 2, **settings}


def parameters(module: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in module.named_parameters()}


def state(module: nn.Module) -> dict[str, torch.Tensor]:
    return {n: t.detach().clone() for n, t in module.state_dict().items()}


def assert_bit_identical(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name


def meta_gradient(learner: GradientLearner, batch) -> dict[str, torch.Tensor]:
    learner.zero_grad(set_to_none=True)
    learner.meta_backward(batch)
    return {n: p.grad.clone() for n, p in learner.named_parameters() if p.grad is not None}


# --- a submodule under two names, tied parameters ------------------------------------------------------------

class Aliased(nn.Module):
    """``seq`` and ``head`` are also reached as ``net.0`` and ``net.1``."""

    def __init__(self):
        super().__init__()
        self.seq = nn.Sequential(nn.Linear(DIM, 16), nn.Tanh())
        self.head = nn.Linear(16, WAYS)
        self.net = nn.Sequential(self.seq, self.head)

    def forward(self, x):
        return self.net(x)


class Plain(nn.Module):
    """The same function as :class:`Aliased`, each submodule under one name."""

    def __init__(self):
        super().__init__()
        self.seq = nn.Sequential(nn.Linear(DIM, 16), nn.Tanh())
        self.head = nn.Linear(16, WAYS)

    def forward(self, x):
        return self.head(self.seq(x))


def test_a_submodule_registered_twice_trains_with_maml_and_has_the_plain_meta_gradient():
    torch.manual_seed(0)
    model = Aliased()
    before = parameters(model)
    result = fit(MAML(model, inner_lr=0.4, inner_steps=2), blob_tasks(), steps=4, **no_progress())
    assert result.step == 4
    after = parameters(model)
    assert all(torch.isfinite(p).all() for p in after.values())
    assert all(not torch.equal(before[n], after[n]) for n in before)            # every weight was trained
    assert model.net[0] is model.seq and model.net[1] is model.head             # still one module, two names
    assert all(isinstance(p, nn.Parameter) for p in model.parameters())          # not left holding fast weights

    aliased, plain = Aliased().double(), Plain().double()
    plain.seq.load_state_dict(aliased.seq.state_dict())
    plain.head.load_state_dict(aliased.head.state_dict())
    batch = stack_episodes([blob_tasks(seed=1, dtype=torch.float64)[i] for i in range(3)])
    ours = meta_gradient(MAML(aliased, inner_lr=0.4, inner_steps=2), batch)
    theirs = meta_gradient(MAML(plain, inner_lr=0.4, inner_steps=2), batch)
    assert ours.keys() == theirs.keys() == {"model.seq.0.weight", "model.seq.0.bias", "model.head.weight",
                                            "model.head.bias"}
    for name in ours:
        torch.testing.assert_close(ours[name], theirs[name], rtol=1e-6, atol=1e-6)


class Tied(nn.Module):
    """Two linear layers sharing one weight Parameter."""

    def __init__(self):
        super().__init__()
        self.first = nn.Linear(DIM, DIM)
        self.second = nn.Linear(DIM, DIM)
        self.second.weight = self.first.weight
        self.head = nn.Linear(DIM, WAYS)

    def forward(self, x):
        return self.head(torch.tanh(self.second(torch.tanh(self.first(x)))))


def tied_forward(params: list[torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """:class:`Tied` written out: ``params`` are the shared weight, both biases, the head's weight and bias."""
    w, b1, b2, wh, bh = params
    return F.linear(torch.tanh(F.linear(torch.tanh(F.linear(x, w, b1)), w, b2)), wh, bh)


@pytest.mark.parametrize("cls", [MAML, FOMAML])
def test_tied_parameters_get_the_meta_gradient_of_an_independent_implementation(cls):
    torch.manual_seed(0)
    model = Tied().double()
    learner = cls(model, inner_lr=0.3, inner_steps=2)
    batch = stack_episodes([blob_tasks(seed=2, dtype=torch.float64)[i] for i in range(3)])
    ours = meta_gradient(learner, batch)
    names = ["model.first.weight", "model.first.bias", "model.second.bias", "model.head.weight", "model.head.bias"]
    assert list(ours) == names                                                  # the tied weight once
    params = [model.first.weight, model.first.bias, model.second.bias, model.head.weight, model.head.bias]
    theirs = reference.meta_gradient(tied_forward, params, batch, 0.3, 2, cls.first_order, [True] * 5,
                                     F.cross_entropy)
    for name, expected in zip(names, theirs):
        torch.testing.assert_close(ours[name], expected, rtol=1e-6, atol=1e-6)
    fit(learner.float(), blob_tasks(), steps=2, **no_progress())
    assert model.second.weight is model.first.weight                            # still tied after training


@pytest.mark.parametrize("model_cls", [Aliased, Tied])
def test_aliased_and_tied_models_are_checkpointed(model_cls, tmp_path):
    torch.manual_seed(0)
    result = fit(MAML(model_cls()), blob_tasks(), steps=2, out=tmp_path, **no_progress())
    assert result.step == 2 and (tmp_path / "checkpoints" / "last.json").is_file()


# --- frozen parameters ---------------------------------------------------------------------------------------

def frozen_learner(name: str, tasks: ClassificationTasks):
    """``name``'s learner over a :class:`Net` whose first layer is frozen, and that net."""
    torch.manual_seed(0)
    net = Net(out=WAYS if name in ("maml", "fomaml", "anil", "metasgd", "reptile") else 8)
    net.body[0].requires_grad_(False)
    build = {
        "maml": lambda: MAML(net, inner_lr=0.4, inner_steps=2),
        "fomaml": lambda: FOMAML(net, inner_lr=0.4, inner_steps=2),
        "anil": lambda: ANIL(net, inner_lr=0.4, inner_steps=2),
        "metasgd": lambda: MetaSGD(net, inner_lr=0.4, inner_steps=2),
        "reptile": lambda: Reptile(net, inner_lr=0.1, inner_steps=3),
        "protonet": lambda: ProtoNet(net),
        "matching": lambda: MatchingNet(net),
        "siamese": lambda: SiameseNet(net),
        "relation": lambda: RelationNet(net, nn.Sequential(nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 1))),
        "finetune": lambda: FineTune(net, tasks.pretrain_classes, head_steps=5, feature_dim=8, batch_size=16),
    }
    return build[name](), net


FROZEN = ["maml", "fomaml", "anil", "metasgd", "reptile", "protonet", "matching", "siamese", "relation", "finetune"]


@pytest.mark.parametrize("name", FROZEN)
def test_frozen_parameters_are_bit_identical_after_fit(name):
    tasks = blob_tasks()
    learner, net = frozen_learner(name, tasks)
    frozen = {n: p.detach().clone() for n, p in net.body[0].named_parameters()}
    trainable = {n: p.detach().clone() for n, p in net.body[2].named_parameters()}
    result = fit(learner, tasks, steps=3, **no_progress())                     # second-order MAML used to raise
    assert result.step == 3
    assert_bit_identical(frozen, {n: p.detach() for n, p in net.body[0].named_parameters()})
    assert all(not p.requires_grad and p.grad is None for p in net.body[0].parameters())
    assert all(not torch.equal(trainable[n], p) for n, p in net.body[2].named_parameters())   # the rest trained
    if isinstance(learner, GradientLearner):                                   # and the inner loop leaves it alone
        ep = tasks[100]
        fast = learner.adapt(ep.support_x, ep.support_y)
        assert torch.equal(fast["body.0.weight"], frozen["weight"]) and torch.equal(fast["body.0.bias"], frozen["bias"])
        adapted = "head.weight" if name == "anil" else "body.2.weight"
        assert not torch.equal(fast[adapted], dict(net.named_parameters())[adapted])


def test_second_order_maml_with_frozen_parameters_has_their_gradient_none_and_the_rest_exact():
    """With the first layer frozen the meta-gradient of the others is that of a reference that treats it as a constant."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(DIM, 6), nn.ReLU(), nn.Linear(6, WAYS)).double()   # reference.mlp_forward
    model[0].requires_grad_(False)
    batch = stack_episodes([blob_tasks(seed=3, dtype=torch.float64)[i] for i in range(2)])
    ours = meta_gradient(MAML(model, inner_lr=0.4, inner_steps=2), batch)
    assert list(ours) == ["model.2.weight", "model.2.bias"]
    params = [model[0].weight, model[0].bias, model[2].weight, model[2].bias]
    theirs = reference.meta_gradient(reference.mlp_forward, params, batch, 0.4, 2, False,
                                     [False, False, True, True], F.cross_entropy)
    torch.testing.assert_close(ours["model.2.weight"], theirs[2], rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(ours["model.2.bias"], theirs[3], rtol=1e-10, atol=1e-12)


# --- BatchNorm in a user's module ------------------------------------------------------------------------------

class BNNet(nn.Module):
    """A user's module with its own ``nn.BatchNorm2d`` (running statistics tracked, PyTorch's default)."""

    def __init__(self, out: int):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.head = nn.Linear(4, out)

    def forward(self, x):
        return self.head(F.relu(self.bn(self.conv(x))).mean(dim=(2, 3)))

    def batch_statistics_forward(self, x):
        """:meth:`forward` with the batch's own statistics, written out."""
        h = self.conv(x)
        mean, var = h.mean(dim=(0, 2, 3), keepdim=True), h.var(dim=(0, 2, 3), unbiased=False, keepdim=True)
        h = (h - mean) / torch.sqrt(var + self.bn.eps) * self.bn.weight.view(1, -1, 1, 1) + self.bn.bias.view(1, -1, 1, 1)
        return self.head(F.relu(h).mean(dim=(2, 3)))


def bn_buffers(net: BNNet) -> dict[str, torch.Tensor]:
    return {n: b.clone() for n, b in net.bn.named_buffers()}


class PredictSpy:
    """Records the outputs of ``learner.predict`` while active (what the evaluator scored)."""

    def __init__(self, learner):
        self.learner, self.outputs = learner, []

    def __enter__(self):
        original = type(self.learner).predict.__get__(self.learner)

        def predict(adapted, query_x):
            out = original(adapted, query_x)
            self.outputs.append(out.detach().clone())
            return out

        self.learner.predict = predict
        return self.outputs

    def __exit__(self, *exc):
        del self.learner.predict


@pytest.mark.parametrize("algo", ["maml", "protonet"])
def test_with_batch_statistics_the_evaluator_scores_what_training_computes_and_running_stats_stay(algo):
    torch.manual_seed(0)
    net = BNNet(out=WAYS if algo == "maml" else 8)
    learner = MAML(net, inner_lr=0.4, inner_steps=1) if algo == "maml" else ProtoNet(net)
    assert learner.batchnorm == "batch"
    tasks = ClassificationTasks(images(), ways=WAYS, shots=2, queries=2, seed=0)
    buffers = bn_buffers(net)
    fit(learner, tasks, steps=2, **no_progress())
    assert_bit_identical(bn_buffers(net), buffers)                             # untouched by fit
    eval_tasks = ClassificationTasks(images(), ways=WAYS, shots=2, queries=2, seed=7)
    with PredictSpy(learner) as scored:
        result = evaluate(learner, eval_tasks, episodes=3)
    assert_bit_identical(bn_buffers(net), buffers)                             # ... and by evaluate
    assert len(scored) == 3 and learner.training
    for i in range(3):
        ep = eval_tasks[i]
        with learner.normalisation():
            _, metrics = learner.episode_loss(ep)                              # the training-time forward
        assert result.values[i] == metrics["accuracy"]
        assert F.cross_entropy(scored[i], ep.query_y).item() == pytest.approx(metrics["loss"], rel=1e-5)
    assert_bit_identical(bn_buffers(net), buffers)
    # the running statistics would have given other logits: the comparison above can tell them apart
    running = copy.deepcopy(learner)
    running.batchnorm = "running"
    running.eval()
    with running.normalisation():
        assert not torch.allclose(running.query_outputs(eval_tasks[0]), scored[0], atol=1e-3)


def test_running_mode_scores_with_running_statistics_and_batch_mode_does_not():
    torch.manual_seed(0)
    net = BNNet(out=WAYS)
    with torch.no_grad():
        net.bn.running_mean.fill_(1.0)
        net.bn.running_var.fill_(0.25)
    batch_mode, running_mode = MAML(net, inner_steps=0), MAML(copy.deepcopy(net), inner_steps=0, batchnorm="running")
    tasks = ClassificationTasks(images(), ways=WAYS, shots=2, queries=2, seed=0)
    logits = {}
    for mode, learner in (("batch", batch_mode), ("running", running_mode)):
        with PredictSpy(learner) as scored:
            evaluate(learner, tasks, episodes=2)
        logits[mode] = scored[0]
    query_x = tasks[0].query_x
    with torch.no_grad():
        torch.testing.assert_close(logits["batch"], net.batch_statistics_forward(query_x))
        torch.testing.assert_close(logits["running"], copy.deepcopy(net).eval()(query_x))
    assert not torch.allclose(logits["batch"], logits["running"], atol=1e-3)
    # training in running mode updates the running statistics; scoring does not
    tracked = int(running_mode.model.bn.num_batches_tracked)
    fit(running_mode, tasks, steps=1, **no_progress())
    assert int(running_mode.model.bn.num_batches_tracked) > tracked
    buffers = bn_buffers(running_mode.model)
    evaluate(running_mode, tasks, episodes=2)
    assert_bit_identical(bn_buffers(running_mode.model), buffers)


def test_an_unknown_batchnorm_mode_is_refused():
    with pytest.raises(ValueError, match="batchnorm must be 'batch'.*or 'running'"):
        ProtoNet(nn.Flatten(), batchnorm="eval")


# --- the shape checks of fit -------------------------------------------------------------------------------------

def refuse_training(learner):
    def meta_backward(*args, **kwargs):
        raise AssertionError("a training step was taken")
    learner.meta_backward = meta_backward
    return learner


def test_fit_refuses_a_model_whose_output_width_is_not_the_ways(tmp_path):
    learner = refuse_training(MAML(nn.Sequential(nn.Linear(DIM, 16), nn.ReLU(), nn.Linear(16, 10))))
    with pytest.raises(ValueError, match="width 10") as error:
        fit(learner, blob_tasks(), steps=2, out=tmp_path, **no_progress())
    assert "4-way" in str(error.value) and "10" in str(error.value)
    assert not (tmp_path / "checkpoints").exists()


def test_fit_refuses_images_too_small_for_conv4_naming_the_shapes(tmp_path):
    tasks = ClassificationTasks(images(size=8), ways=WAYS, shots=2, queries=2, seed=0)
    learner = refuse_training(MAML(Conv4(hidden=8, out_features=WAYS)))
    with pytest.raises(ValueError, match="cannot run on the training episodes") as error:
        fit(learner, tasks, steps=2, out=tmp_path, **no_progress())
    assert "(8, 1, 8, 8)" in str(error.value) and "16x16" in str(error.value)
    assert not (tmp_path / "checkpoints").exists()


def test_fit_refuses_a_protonet_encoder_that_keeps_feature_maps(tmp_path):
    tasks = ClassificationTasks(images(size=16), ways=WAYS, shots=2, queries=2, seed=0)
    learner = refuse_training(ProtoNet(nn.Conv2d(1, 4, 3, padding=1)))
    with pytest.raises(ValueError, match=r"\[B, D\]") as error:
        fit(learner, tasks, steps=2, out=tmp_path, **no_progress())
    assert "(16, 4, 16, 16)" in str(error.value)                                # what the encoder gave
    assert not (tmp_path / "checkpoints").exists()


# --- predicting new inputs -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("algo", ["maml", "protonet"])
def test_fit_support_then_call_gives_the_query_outputs_of_the_episode(algo):
    torch.manual_seed(0)
    learner = (MAML(Conv4(hidden=8, out_features=WAYS), inner_lr=0.4, inner_steps=2) if algo == "maml"
               else ProtoNet(Conv4(hidden=8)))
    with pytest.raises(RuntimeError, match=r"fit_support\(support_x, support_y\) before learner\(query_x\)"):
        learner(torch.zeros(2, 1, 16, 16))
    ep = ClassificationTasks(images(size=16), ways=WAYS, shots=2, queries=3, seed=1)[0]
    before = parameters(learner)
    assert learner.fit_support(ep.support_x, ep.support_y) is learner
    logits = learner(ep.query_x)
    assert logits.shape == (12, WAYS)
    learner.eval()
    with learner.normalisation():
        expected = learner.query_outputs(ep)
    torch.testing.assert_close(logits, expected, rtol=1e-6, atol=1e-6)
    assert_bit_identical(parameters(learner), before)
    other = ClassificationTasks(images(size=16), ways=WAYS, shots=2, queries=3, seed=2)[0]
    assert not torch.allclose(learner.fit_support(other.support_x, other.support_y)(ep.query_x), logits)


# --- episodes from a user's data ---------------------------------------------------------------------------------

class CountingDataset(Dataset):
    """A map-style dataset of ``(x, y)`` items that counts the items it loads."""

    def __init__(self, x, y):
        self.x, self.y, self.loads = x, y, 0

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        self.loads += 1
        return self.x[i], int(self.y[i])


class WithTargets(CountingDataset):
    @property
    def targets(self):
        return self.y


def raw_data(labels=(10, 20, 30, 40, 50), per_class: int = 6):
    """Inputs ``[label value, example index]`` so an episode shows which examples it drew."""
    y = torch.tensor(labels).repeat_interleave(per_class)
    x = torch.stack([y.float(), torch.arange(len(y), dtype=torch.float32)], dim=1)
    return x, y


def test_a_dataset_without_targets_is_read_once_for_labels_then_lazily():
    x, y = raw_data()
    dataset = CountingDataset(x, y)
    tasks = ClassificationTasks(dataset, ways=3, shots=2, queries=1, seed=0)
    assert dataset.loads == len(dataset)                                        # one pass for the labels
    tasks[0]
    assert dataset.loads == len(dataset) + 3 * (2 + 1)
    tasks[5]
    assert dataset.loads == len(dataset) + 2 * 3 * (2 + 1)


def test_a_dataset_with_targets_is_not_iterated_for_labels():
    x, y = raw_data()
    dataset = WithTargets(x, y)
    tasks = ClassificationTasks(dataset, ways=3, shots=2, queries=1, seed=0)
    assert dataset.loads == 0
    tasks[0]
    assert dataset.loads == 3 * (2 + 1)


def test_labels_of_any_values_are_remapped_and_named_by_their_values():
    x, y = raw_data(labels=(30, 10, 20))
    tasks = ClassificationTasks((x, y), ways=3, shots=2, queries=2, seed=4)
    assert tasks.data.class_names == ("10", "20", "30")
    assert sorted(set(tasks.data.y.tolist())) == [0, 1, 2]
    for i in range(3):
        ep, classes = tasks[i], tasks.episode_classes(i)
        for label in range(3):                                                 # each label's examples are its class's
            value = float(tasks.data.class_names[classes[label]])
            assert bool((ep.support_x[ep.support_y == label, 0] == value).all())
            assert bool((ep.query_x[ep.query_y == label, 0] == value).all())
    lazy = ClassificationTasks(CountingDataset(x, y), ways=3, shots=2, queries=2, seed=4)
    assert lazy.data.class_names == ("10", "20", "30")


def test_a_dataset_numpy_arrays_and_tensors_give_the_same_episodes():
    x, y = raw_data()
    sources = {"tensors": (x, y), "numpy": (x.numpy(), y.numpy()), "dataset": CountingDataset(x, y),
               "targets": WithTargets(x, y), "labelled": LabelledData.from_arrays(x, y)}
    streams = {name: ClassificationTasks(data, ways=3, shots=2, queries=2, seed=9) for name, data in sources.items()}
    for i in range(4):
        expected = streams["tensors"][i]
        assert expected.support_x.dtype == torch.float32
        for name, tasks in streams.items():
            ep = tasks[i]
            for field in ("support_x", "support_y", "query_x", "query_y"):
                assert torch.equal(getattr(ep, field), getattr(expected, field)), (name, i, field)
    assert not torch.equal(streams["tensors"][0].support_x, streams["tensors"][1].support_x)


def test_the_data_is_named_in_errors():
    with pytest.raises(ValueError, match="ways=9 exceeds the 5 classes of the validation data"):
        ClassificationTasks(raw_data(), ways=9, shots=1, queries=1, name="the validation data")
    assert ClassificationTasks(raw_data(), ways=2, shots=1, queries=1, name="mine").name == "mine"


# --- the evaluator's result ----------------------------------------------------------------------------------------

def test_eval_result_prints_mean_ci_and_episodes_and_one_episode_warns():
    assert str(EvalResult("accuracy", 0.73512, 0.01434, (0.7,) * 3)) == "0.7351 ± 0.0143 (3 episodes)"
    learner, tasks = ProtoNet(nn.Flatten()), blob_tasks()
    result = evaluate(learner, tasks, episodes=5)
    assert str(result) == f"{result.mean:.4f} ± {result.ci95:.4f} (5 episodes)"
    with pytest.warns(UserWarning, match="1 episode"):
        single = evaluate(learner, tasks, episodes=1)
    assert single.ci95 == 0.0 and str(single).endswith("(1 episodes)")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        evaluate(learner, tasks, episodes=2)                                    # two: no warning


# --- resuming fit ----------------------------------------------------------------------------------------------------

def resumable_learner() -> MAML:
    torch.manual_seed(0)
    return MAML(Net(), inner_lr=0.4, inner_steps=1)


def run(out, steps: int, **settings):
    return fit(resumable_learner(), blob_tasks(), blob_tasks(seed=5), steps=steps, out=out, val_every=2,
               val_episodes=2, log_every=1, **no_progress(**settings))


def train_log(out) -> list[dict]:
    return [r for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if r["split"] == "train"]


def test_fit_resumes_a_run_bit_for_bit(tmp_path):
    whole = run(tmp_path / "whole", steps=6)
    first = run(tmp_path / "split", steps=3)
    assert first.step == 3
    resumed = run(tmp_path / "split", steps=6)
    assert resumed.step == 6
    assert_bit_identical(state(resumed.learner), state(whole.learner))
    assert not torch.equal(state(first.learner)["model.head.weight"], state(whole.learner)["model.head.weight"])
    assert train_log(tmp_path / "split") == train_log(tmp_path / "whole")


def interrupted_run(tmp_path, monkeypatch, module, point: str, visit: int):
    """A 6-step run into ``tmp_path/cut`` whose ``visit``-th arrival at ``point`` (a pause point of ``module``)
    raises KeyboardInterrupt; returns the step its ``checkpoints/last`` holds."""
    calls = []

    def interrupt(name):
        if name == point:
            calls.append(name)
            if len(calls) == visit:
                raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(module, "pause_point", interrupt)
        with pytest.raises(KeyboardInterrupt):
            run(tmp_path / "cut", steps=6, checkpoint_every=100)
    return json.loads((tmp_path / "cut" / "checkpoints" / "last.json").read_text())["state"]["step"]


@pytest.mark.parametrize("module, point, visit, kept", [
    (TRAIN_MODULE, "train-step", 3, 2),              # inside step 3, before its update: steps 1-2 kept
    (EVALUATE_MODULE, "evaluate-episode", 3, 4),     # during the second validation (2 episodes each, step 4)
])
def test_an_interrupt_keeps_the_last_completed_step_and_resumes_bit_for_bit(tmp_path, monkeypatch, module, point,
                                                                             visit, kept):
    assert interrupted_run(tmp_path, monkeypatch, module, point, visit) == kept   # no regular checkpoint yet
    resumed = run(tmp_path / "cut", steps=6, checkpoint_every=100)
    whole = run(tmp_path / "whole", steps=6, checkpoint_every=100)
    assert resumed.step == 6
    assert_bit_identical(state(resumed.learner), state(whole.learner))
    assert train_log(tmp_path / "cut") == train_log(tmp_path / "whole")


def test_maml_with_zero_inner_steps_warns_that_it_does_not_adapt():
    with pytest.warns(UserWarning, match="inner_steps=0 does not adapt"):
        fewshot.MAML(nn.Linear(2, 3), inner_steps=0)


def test_load_takes_a_string_path_and_run_files_are_readable_by_others(tmp_path):
    x, y = torch.randn(60, 4), torch.arange(60) % 6
    tasks = fewshot.ClassificationTasks((x, y), ways=3, shots=1, queries=2, seed=0)
    learner = fewshot.ProtoNet(nn.Sequential(nn.Linear(4, 8)))
    fewshot.fit(learner, tasks, val_tasks=tasks, steps=2, meta_batch=1, out=str(tmp_path / "run"), val_episodes=2,
                progress=False)
    loaded = fewshot.load(str(tmp_path / "run"), learner=fewshot.ProtoNet(nn.Sequential(nn.Linear(4, 8))))
    torch.testing.assert_close(loaded.encoder[0].weight, learner.encoder[0].weight)
    modes = {p.name: p.stat().st_mode & 0o777 for p in (tmp_path / "run").rglob("*") if p.is_file()}
    assert modes and all(mode & 0o044 == 0o044 for mode in modes.values()), modes
    with pytest.raises(ValueError, match="pass learner="):
        fewshot.load(tmp_path / "run")
