"""``--device``: choosing where torch computes, and training / scoring on a GPU.

The tests marked ``gpu`` need a CUDA GPU and are skipped without one (CI has none); each compares the GPU
against the CPU on the same episodes, so they check the device plumbing, not just that it runs."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from conftest import cli, tiny_protonet
from fewshot.devices import resolve_device
from fewshot.evaluate import evaluate
from fewshot.learners.base import Learner
from fewshot.learners.augmented import SupportAugmented
from fewshot.learners.ensemble import Ensemble
from fewshot.tasks.augment import random_affine
from fewshot.tasks.episode import Episode, stack_episodes
from fewshot.tasks.seeding import generator

gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture(autouse=True)
def full_float32():
    """GPU convolutions and products in full float32, not TF32 (cuDNN's default, ~1e-3 relative error), so that
    the GPU can be held to the CPU's results at tight tolerance."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def test_resolve_device_names_the_device_or_the_fix(monkeypatch):
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(ValueError, match="unknown device 'gpu'; use cpu, cuda, cuda:N"):
        resolve_device("gpu")
    with pytest.raises(ValueError, match="unknown device 'xla'"):   # a torch device type we do not run on
        resolve_device("xla")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("cuda:1") == torch.device("cuda:1")
    with pytest.raises(ValueError, match=r"has 2 CUDA GPU\(s\), cuda:0 to cuda:1"):
        resolve_device("cuda:2")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="sees no CUDA GPU on this machine"):
        resolve_device("cuda")


def test_learner_device_is_its_parameters_device():
    """PyTorch's ``meta`` device (shapes without data) stands in for a GPU on a machine without one."""
    from fewshot.learners import RandomForest
    from fewshot.runs import build_learner

    learner = build_learner(tiny_protonet())
    assert learner.device == torch.device("cpu")
    members = [build_learner(tiny_protonet()).to("meta") for _ in range(2)]
    assert members[0].device == torch.device("meta")
    assert Ensemble(members).device == SupportAugmented(members[0], copies=1).device == torch.device("meta")
    assert RandomForest(3).device == torch.device("cpu")                  # no parameters: it runs on the CPU


class DeviceRecorder(Learner):
    """A learner on ``device`` that scores every episode 1 (its episodes' query labels are ``0..Q-1``: identity
    logits, made on the CPU since a ``meta`` tensor has no values) and records the device each one arrived on."""

    def __init__(self, device: str):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1, device=device))
        self.seen: list[torch.device] = []

    def query_outputs(self, episode, steps=None) -> torch.Tensor:
        self.seen += [t.device for t in (episode.support_x, episode.support_y, episode.query_x, episode.query_y)]
        return torch.eye(episode.query_x.shape[0])


def test_the_evaluator_moves_each_episode_to_the_learners_device():
    episodes = [Episode(torch.zeros(2, 1, 4, 4), torch.arange(2), torch.zeros(2, 1, 4, 4), torch.arange(2))] * 3
    learner = DeviceRecorder("meta")
    assert evaluate(learner, episodes, episodes=3).mean == 1.0
    assert learner.seen == [torch.device("meta")] * 12


def test_distorted_copies_are_made_on_the_images_device():
    """The distortions are drawn on the CPU (one seeded stream for every device) and applied where the images are."""
    copies = random_affine(torch.zeros(3, 1, 28, 28, device="meta"), generator(0))
    assert copies.device == torch.device("meta") and copies.shape == (3, 1, 28, 28)


def test_mps_is_refused_where_apple_metal_is_missing(monkeypatch):
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    with pytest.raises(ValueError, match="Apple's Metal \\(MPS\\) backend is not available here; use --device cpu"):
        resolve_device("mps")


@gpu
@pytest.mark.parametrize("net", ["conv4-pool", "resnet12"])
def test_a_meta_gradient_on_the_gpu_is_the_cpus(net, tmp_path, monkeypatch):
    """The same weights and training episode give the same loss and meta-gradient on both devices."""
    monkeypatch.setenv("FEWSHOT_CACHE", str(tmp_path / "cache"))
    from fewshot.runs import build_learner, start

    config = tiny_protonet(net=net, channels=8, queries=5, train_queries=5)
    train_tasks, _ = start(config)
    torch.manual_seed(0)
    on_cpu = build_learner(config)
    on_gpu = copy.deepcopy(on_cpu).to("cuda")
    batch = stack_episodes([train_tasks[0]])
    cpu_metrics, gpu_metrics = on_cpu.meta_backward(batch), on_gpu.meta_backward(batch.to("cuda"))
    assert gpu_metrics["loss"] == pytest.approx(cpu_metrics["loss"], rel=1e-5)
    for (name, a), b in zip(on_cpu.named_parameters(), on_gpu.parameters()):
        scale = float(a.grad.abs().max())
        assert torch.allclose(b.grad.cpu(), a.grad, rtol=1e-4, atol=1e-5 * scale), name


@gpu
def test_a_run_trained_on_the_gpu_loads_scores_and_resumes_on_the_cpu(tmp_path, monkeypatch):
    """Five ProtoNet steps (with a weight average) on the GPU start where the CPU's do (the first logged loss; later
    steps drift apart, as float rounding does under Adam), and the GPU run's checkpoint loads on the CPU, scores
    the validation episodes as the GPU does, and resumes there."""
    monkeypatch.setenv("FEWSHOT_CACHE", str(tmp_path / "cache"))
    from fewshot.runs import load_learner, trainer_for

    config = tiny_protonet(steps=5, val_every=5, ema=0.9, queries=5, train_queries=5)
    first = {}
    for device in ("cpu", "cuda"):
        result = trainer_for(config, tmp_path / device, progress=False, device=device).run()
        assert result.learner.device.type == device and result.step == 5
        first[device] = json.loads((tmp_path / device / "metrics.jsonl").read_text().splitlines()[0])
    assert first["cuda"]["step"] == first["cpu"]["step"] == 1
    assert first["cuda"]["loss"] == pytest.approx(first["cpu"]["loss"], rel=1e-5)
    on_cpu, cfg = load_learner(tmp_path / "cuda")
    on_gpu, _ = load_learner(tmp_path / "cuda")
    assert on_cpu.device.type == "cpu"
    on_gpu.to("cuda").eval()
    on_cpu.eval()
    for i in range(3):
        episode = cfg.domain.val_tasks(cfg)[i]
        expected = on_cpu.query_outputs(episode)
        assert torch.allclose(on_gpu.query_outputs(episode.to("cuda")).cpu(), expected, atol=1e-4, rtol=1e-4)
    resumed = trainer_for(cfg.replace(steps=7), tmp_path / "cuda", progress=False).run()
    assert resumed.step == 7 and resumed.learner.device.type == "cpu"


@gpu
def test_support_copies_and_ensembles_score_alike_on_both_devices(tmp_path, monkeypatch):
    monkeypatch.setenv("FEWSHOT_CACHE", str(tmp_path / "cache"))
    from fewshot.runs import build_learner, start

    torch.manual_seed(0)
    members = [build_learner(tiny_protonet()) for _ in range(2)]
    learner = SupportAugmented(Ensemble(members, sizes=[28, 24]), copies=3).eval()
    episode = start(tiny_protonet())[1][0]
    expected = learner.query_outputs(episode)
    got = learner.to("cuda").query_outputs(episode.to("cuda")).cpu()
    assert torch.allclose(got, expected, atol=1e-4, rtol=1e-4)


@gpu
@pytest.mark.parametrize("algo", ["maml", "matching-fce", "relation", "siamese", "finetune"])
def test_every_kind_of_learner_trains_a_step_on_the_gpu(algo, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("FEWSHOT_CACHE", str(tmp_path / "cache"))
    (tmp_path / "short.yaml").write_text("val_episodes: 2\ntest_episodes: 5\n")
    code, _, err = cli(["train", "--config", tmp_path / "short.yaml", "--algo", algo, "--ways", 5, "--steps", 2,
                        "--device", "cuda", "--no-progress", "--out", tmp_path / algo, "--threads", 1], capsys)
    assert code == 0, err
    code, out, err = cli(["eval", tmp_path / algo, "--episodes", 5, "--json", "--device", "cuda"], capsys)
    assert code == 0, err
    gpu_score = json.loads(out)["mean"]
    code, out, err = cli(["eval", tmp_path / algo, "--episodes", 5, "--json"], capsys)
    assert json.loads(out)["mean"] == pytest.approx(gpu_score, abs=0.02)   # a tie broken the other way at most


def _omniglot_tasks():
    from fewshot.datasets.omniglot import load_omniglot
    from fewshot.tasks.sampler import ClassificationTasks

    return ClassificationTasks(load_omniglot("background"), ways=5, shots=1, queries=3, seed=4)


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=gpu)])
def test_episodes_gathered_on_the_device_are_the_cpus(device):
    tasks = _omniglot_tasks()
    held = tasks.to(device)
    assert held.data.x.device.type == device and tasks.data.x.device.type == "cpu"
    for i in (0, 7):
        ours, expected = held[i], tasks[i]
        assert ours.support_x.device.type == device
        assert torch.equal(ours.support_x.cpu(), expected.support_x) and torch.equal(ours.query_y, expected.query_y)


def test_episodes_of_a_map_style_dataset_are_not_held_on_a_device():
    from fewshot.tasks.sampler import ClassificationTasks

    class Items(torch.utils.data.Dataset):
        def __len__(self):
            return 8

        def __getitem__(self, i):
            return torch.full((1, 4, 4), float(i)), i % 2

    tasks = ClassificationTasks(Items(), ways=2, shots=1, queries=1)
    assert not tasks.in_memory
    with pytest.raises(ValueError, match="load the examples into fewshot.LabelledData"):
        tasks.to("cpu")


@gpu
def test_the_vectorised_meta_step_with_batchnorm_on_the_gpu_is_the_loops():
    from fewshot.learners.gradient import MAML
    from fewshot.nets import Conv4

    torch.manual_seed(0)
    net = Conv4(out_features=5, hidden=16, variant="strided").double().cuda()
    batch = stack_episodes([_omniglot_tasks()[i] for i in range(4)]).to("cuda")
    batch = type(batch)(batch.support_x.double(), batch.support_y, batch.query_x.double(), batch.query_y)
    grads = []
    for vectorize in (False, True):
        learner = MAML(net, 0.4, 1).set_execution(vectorize=vectorize)
        learner.zero_grad()
        learner.meta_backward(batch)
        grads.append(torch.cat([p.grad.flatten() for p in learner.parameters()]))
    assert float((grads[1] - grads[0]).norm() / grads[0].norm()) < 1e-10
