"""Checkpoints: exact round trip, refusal of damaged or mismatched files, crash safety, no pickle."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from fewshot import files
from fewshot.checkpoint import (CheckpointError, load_model, load_optimizer, read_checkpoint, save_checkpoint,
                                tensor_path)
from fewshot.learners import MetaSGD, ProtoNet
from fewshot.nets import Conv4


def make(ways: int = 5, seed: int = 0) -> tuple[torch.nn.Module, torch.optim.Adam]:
    torch.manual_seed(seed)
    model = Conv4(hidden=8, out_features=ways, variant="strided")
    return model, torch.optim.Adam(model.parameters(), lr=1e-2)


def adam_step(model: torch.nn.Module, opt: torch.optim.Optimizer, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(6, 1, 28, 28, generator=g)
    y = torch.randint(0, model.head.out_features, (6,), generator=g)
    opt.zero_grad()
    torch.nn.functional.cross_entropy(model(x), y).backward()
    opt.step()


def trained(seed: int = 0, steps: int = 2):
    model, opt = make(seed=seed)
    for s in range(steps):
        adam_step(model, opt, seed=100 * seed + s)
    return model, opt


def load_into(directory: Path, name: str, model, opt):
    tensors, meta = read_checkpoint(directory, name)
    load_model(model, tensors, tensor_path(directory, name))
    load_optimizer(opt, tensors, meta)
    return tensors, meta


def assert_same_state(model_a, opt_a, model_b, opt_b):
    sa, sb = model_a.state_dict(), model_b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k
    oa, ob = opt_a.state_dict(), opt_b.state_dict()
    assert oa["state"].keys() == ob["state"].keys() and oa["state"]
    for pid in oa["state"]:
        assert oa["state"][pid].keys() == ob["state"][pid].keys()
        for key, value in oa["state"][pid].items():
            other = ob["state"][pid][key]
            assert torch.equal(torch.as_tensor(value), torch.as_tensor(other)), (pid, key)
    for ga, gb in zip(oa["param_groups"], ob["param_groups"]):
        assert ga["lr"] == gb["lr"] and tuple(ga["betas"]) == tuple(gb["betas"]) and ga["eps"] == gb["eps"]


def test_round_trip_is_exact(tmp_path):
    model, opt = trained()
    rng = torch.get_rng_state()
    save_checkpoint(tmp_path, "last", model, opt, {"step": 7, "best_val": 0.25})
    fresh_model, fresh_opt = make(seed=1)                     # different init, empty Adam state
    assert not torch.equal(fresh_model.head.weight, model.head.weight)
    tensors, meta = load_into(tmp_path, "last", fresh_model, fresh_opt)
    assert_same_state(model, opt, fresh_model, fresh_opt)
    assert meta["state"] == {"step": 7, "best_val": 0.25}
    assert torch.equal(tensors["rng/torch"], rng)
    # Adam's step counter came back: one more identical step keeps both copies bit-identical
    adam_step(model, opt, seed=999)
    adam_step(fresh_model, fresh_opt, seed=999)
    for a, b in zip(model.parameters(), fresh_model.parameters()):
        assert torch.equal(a, b)


def test_round_trip_of_a_learner_with_learned_inner_lrs(tmp_path):
    torch.manual_seed(0)
    learner = MetaSGD(Conv4(hidden=8, out_features=3, variant="strided"), 0.4, 1)
    with torch.no_grad():
        learner.inner_lrs[0].add_(0.5)
    opt = torch.optim.Adam(learner.parameters())
    save_checkpoint(tmp_path, "best", learner, opt, {"step": 1})
    torch.manual_seed(1)
    other = MetaSGD(Conv4(hidden=8, out_features=3, variant="strided"), 0.4, 1)
    tensors, _ = read_checkpoint(tmp_path, "best")
    load_model(other, tensors, tensor_path(tmp_path, "best"))
    for (na, a), (nb, b) in zip(learner.state_dict().items(), other.state_dict().items()):
        assert na == nb and torch.equal(a, b)


def test_files_are_safetensors_and_json_without_pickle(tmp_path):
    model, opt = trained()
    save_checkpoint(tmp_path, "last", model, opt, {"step": 2})
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == sorted(["last.json", tensor_path(tmp_path, "last").name])          # no temporary files left behind either
    meta = json.loads((tmp_path / "last.json").read_text())
    assert meta["format"] == "fewshot-checkpoint-1" and len(meta["tensors_sha256"]) == 64
    assert not list(tmp_path.rglob("*.pt")) + list(tmp_path.rglob("*.pkl")) + list(tmp_path.rglob("*.pth"))
    blob = tensor_path(tmp_path, "last").read_bytes()
    assert b"\x80\x04\x95" not in blob[:16]                   # not a pickle protocol-4 stream
    header_len = int.from_bytes(blob[:8], "little")
    header = json.loads(blob[8: 8 + header_len])
    assert "model/head.weight" in header and any(k.startswith("optimizer/") for k in header)


@pytest.mark.parametrize("damage", ["truncate", "flip", "empty"])
def test_damaged_tensor_file_is_refused_naming_it(tmp_path, damage):
    model, opt = trained()
    save_checkpoint(tmp_path, "last", model, opt, {"step": 2})
    path = tensor_path(tmp_path, "last")
    blob = bytearray(path.read_bytes())
    if damage == "truncate":
        blob = blob[: len(blob) // 2]
    elif damage == "flip":
        blob[len(blob) - 10] ^= 0xFF                          # inside the tensor data
    else:
        blob = bytearray()
    path.write_bytes(bytes(blob))
    with pytest.raises(CheckpointError) as err:
        read_checkpoint(tmp_path, "last")
    assert str(path) in str(err.value)


def test_corrupt_or_foreign_json_is_refused_naming_it(tmp_path):
    model, opt = trained()
    save_checkpoint(tmp_path, "last", model, opt, {"step": 2})
    meta_path = tmp_path / "last.json"
    good = meta_path.read_text()
    meta_path.write_text(good[: len(good) // 2])
    with pytest.raises(CheckpointError, match="last.json"):
        read_checkpoint(tmp_path, "last")
    meta_path.write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(CheckpointError, match="last.json"):
        read_checkpoint(tmp_path, "last")


def test_missing_files_are_named(tmp_path):
    model, opt = trained()
    save_checkpoint(tmp_path, "last", model, opt, {"step": 2})
    missing = tensor_path(tmp_path, "last")
    missing.unlink()
    with pytest.raises(FileNotFoundError, match=missing.name):
        read_checkpoint(tmp_path, "last")


def test_tensor_file_of_another_checkpoint_is_refused(tmp_path):
    a, opt_a = trained(seed=0)
    b, opt_b = trained(seed=1)
    save_checkpoint(tmp_path / "a", "last", a, opt_a, {"step": 2})
    save_checkpoint(tmp_path / "b", "last", b, opt_b, {"step": 2})
    target = tensor_path(tmp_path / "a", "last")
    target.write_bytes(tensor_path(tmp_path / "b", "last").read_bytes())
    with pytest.raises(CheckpointError, match=target.name):
        read_checkpoint(tmp_path / "a", "last")


def test_different_architecture_is_refused(tmp_path):
    model, opt = trained()                                    # 5-way head
    save_checkpoint(tmp_path, "last", model, opt, {"step": 2})
    tensors, _ = read_checkpoint(tmp_path, "last")
    wide, _ = make(ways=20)
    before = {k: v.clone() for k, v in wide.state_dict().items()}
    with pytest.raises(CheckpointError, match="different architecture") as err:
        load_model(wide, tensors, tensor_path(tmp_path, "last"))
    assert "head" in str(err.value) and tensor_path(tmp_path, "last").name in str(err.value)
    assert all(torch.equal(before[k], v) for k, v in wide.state_dict().items())   # left untouched
    with pytest.raises(CheckpointError, match="different architecture"):
        load_model(ProtoNet(Conv4(hidden=8)), tensors, tensor_path(tmp_path, "last"))
    with pytest.raises(CheckpointError, match="different architecture"):
        load_model(Conv4(hidden=16, out_features=5, variant="strided"), tensors, tensor_path(tmp_path, "last"))


def failing_after(n_ok: int, real):
    """A stand-in for ``real`` that works ``n_ok`` times, then raises ENOSPC."""
    calls = {"n": 0}

    def fake(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] > n_ok:
            raise OSError(28, "No space left on device")
        return real(*args, **kwargs)
    return fake


def save_two_versions(tmp_path, monkeypatch, target: str, n_ok: int):
    """Save checkpoint v1, then try v2 with ``os.<target>`` failing after ``n_ok`` calls."""
    old, old_opt = trained(seed=0)
    save_checkpoint(tmp_path, "last", old, old_opt, {"step": 2})
    files_before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    new, new_opt = trained(seed=1, steps=3)
    monkeypatch.setattr(files.os, target, failing_after(n_ok, getattr(os, target)))
    with pytest.raises(OSError, match="No space"):
        save_checkpoint(tmp_path, "last", new, new_opt, {"step": 3})
    monkeypatch.undo()
    return old, old_opt, files_before


@pytest.mark.parametrize("target, n_ok", [("fsync", 0), ("replace", 0)])
def test_failed_write_keeps_the_previous_checkpoint(tmp_path, monkeypatch, target, n_ok):
    old, old_opt, files_before = save_two_versions(tmp_path, monkeypatch, target, n_ok)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == files_before   # intact, no temp files
    model, opt = make(seed=5)
    _, meta = load_into(tmp_path, "last", model, opt)
    assert meta["state"]["step"] == 2
    assert_same_state(old, old_opt, model, opt)


def test_crash_between_the_two_renames_keeps_a_loadable_checkpoint(tmp_path, monkeypatch):
    old, old_opt, _ = save_two_versions(tmp_path, monkeypatch, "replace", n_ok=1)
    model, opt = make(seed=5)
    _, meta = load_into(tmp_path, "last", model, opt)          # raises CheckpointError today
    assert meta["state"]["step"] in (2, 3)


class FullDisk:
    """Stands in for ``os.fdopen``: files whose writes go through until ``budget`` bytes (over all files), then
    write what still fits and raise ENOSPC, as a disk that fills up mid-write does."""

    def __init__(self, budget: int):
        self.left, self.real = budget, os.fdopen

    def __call__(self, fd, mode):
        f, disk = self.real(fd, mode), self

        class Filling:
            def __enter__(self):
                return self

            def __exit__(self, *exc):
                f.close()

            def write(self, data):
                data = bytes(data)
                f.write(data[: disk.left])
                if len(data) > disk.left:
                    disk.left = 0
                    raise OSError(28, "No space left on device")
                disk.left -= len(data)

            def __getattr__(self, name):
                return getattr(f, name)
        return Filling()


@pytest.mark.parametrize("fails_in", ["tensor file", "json"])
def test_disk_full_midway_keeps_the_previous_checkpoint(tmp_path, monkeypatch, fails_in):
    old, old_opt = trained(seed=0)
    save_checkpoint(tmp_path / "old", "last", old, old_opt, {"step": 2})
    files_before = {p.name: p.read_bytes() for p in (tmp_path / "old").iterdir()}
    new, new_opt = trained(seed=1, steps=3)
    save_checkpoint(tmp_path / "probe", "last", new, new_opt, {"step": 3})
    tensor_bytes = tensor_path(tmp_path / "probe", "last").stat().st_size
    budget = tensor_bytes // 3 if fails_in == "tensor file" else tensor_bytes + 100
    monkeypatch.setattr(files.os, "fdopen", FullDisk(budget))
    with pytest.raises(OSError, match="No space"):
        save_checkpoint(tmp_path / "old", "last", new, new_opt, {"step": 3})
    monkeypatch.undo()
    after = {p.name: p.read_bytes() for p in (tmp_path / "old").iterdir()}
    if fails_in == "json":   # the new tensor file is complete but uncommitted: an orphan the next save removes
        after.pop(tensor_path(tmp_path / "probe", "last").name)
    assert after == files_before                                   # the old files, untouched; no temporary file
    model, opt = make(seed=5)
    _, meta = load_into(tmp_path / "old", "last", model, opt)
    assert meta["state"]["step"] == 2
    assert_same_state(old, old_opt, model, opt)
