"""``--device``: choosing where torch computes, and training / scoring on a GPU.

The tests marked ``gpu`` need a CUDA GPU and are skipped without one (CI has none); each compares the GPU
against the CPU on the same episodes, so they check the device plumbing, not just that it runs."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch

from conftest import cli, tiny_protonet
from fewshot.devices import resolve_device
from fewshot.learners.augmented import SupportAugmented
from fewshot.learners.ensemble import Ensemble
from fewshot.tasks.sources import fill_in, val_tasks
from fewshot.train import Trainer, load_learner

gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


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
    learner = load_learner_free()
    assert learner.device == torch.device("cpu")
    assert Ensemble([learner, load_learner_free()]).device == torch.device("cpu")


def load_learner_free():
    from fewshot.learners import build_learner

    return build_learner(tiny_protonet())


@gpu
def test_training_on_the_gpu_follows_the_cpu_and_its_checkpoint_loads_anywhere(tmp_path, monkeypatch):
    """Ten ProtoNet steps (with a weight average) on the GPU track the same steps on the CPU, and the GPU run's
    checkpoint loads on the CPU and scores the validation episodes as the GPU does; then it resumes on the CPU."""
    monkeypatch.setenv("FEWSHOT_CACHE", str(tmp_path / "cache"))
    config = tiny_protonet(steps=10, val_every=10, ema=0.9, queries=5, train_queries=5)
    runs = {}
    for device in ("cpu", "cuda"):
        result = Trainer(config, tmp_path / device, progress=False, device=device).run()
        runs[device] = [json.loads(line) for line in (tmp_path / device / "metrics.jsonl").read_text().splitlines()]
        assert result.learner.device.type == device
    assert len(runs["cpu"]) == len(runs["cuda"]) == 11                 # 10 training lines and one validation
    for cpu_record, gpu_record in zip(runs["cpu"], runs["cuda"]):
        for key in cpu_record.keys() - {"time", "split"}:
            assert gpu_record[key] == pytest.approx(cpu_record[key], rel=1e-3, abs=1e-3), (key, gpu_record)
    on_cpu, cfg = load_learner(tmp_path / "cuda")
    assert on_cpu.device.type == "cpu"
    on_gpu, _ = load_learner(tmp_path / "cuda")
    on_gpu.to("cuda").eval()
    on_cpu.eval()
    for i in range(3):
        episode = val_tasks(cfg)[i]
        expected = on_cpu.query_outputs(episode)
        assert torch.allclose(on_gpu.query_outputs(episode.to("cuda")).cpu(), expected, atol=1e-4, rtol=1e-4)
    resumed = Trainer(replace(cfg, steps=12), tmp_path / "cuda", progress=False).run()
    assert resumed.step == 12 and resumed.learner.device.type == "cpu"


@gpu
def test_support_copies_and_ensembles_score_alike_on_both_devices(tmp_path, monkeypatch):
    monkeypatch.setenv("FEWSHOT_CACHE", str(tmp_path / "cache"))
    from fewshot.learners import build_learner

    torch.manual_seed(0)
    members = [build_learner(tiny_protonet()) for _ in range(2)]
    learner = SupportAugmented(Ensemble(members, sizes=[28, 24]), copies=3).eval()
    episode = val_tasks(fill_in(tiny_protonet()))[0]
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
