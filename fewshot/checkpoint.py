"""Checkpoints without pickle: tensors in safetensors, everything else in JSON.

A checkpoint ``NAME`` is two files in one directory: ``NAME-<hash>.safetensors`` (model
and optimizer tensors, named by the first 16 hex digits of their SHA-256) and
``NAME.json`` (counters, optimizer hyper-parameters, the tensor file's name and full
SHA-256). Each file is written to a temporary name, fsynced and renamed; the JSON is
renamed last and is the single commit point, after which the previous tensor file is
deleted. A crash or a full disk at any moment therefore leaves the previous checkpoint
whole. Loading verifies the hash, so a tampered, truncated or mismatched tensor file is
refused with a message naming it.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors

from fewshot.faults import pause_point
from fewshot.files import atomic_write, remove_partial_writes


class CheckpointError(ValueError):
    """A checkpoint that cannot be trusted or does not fit the model."""


def _optimizer_split(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    state = optimizer.state_dict()
    tensors, plain = {}, {"param_groups": state["param_groups"], "state": {}}
    for pid, entries in state["state"].items():
        plain["state"][str(pid)] = {}
        for key, value in entries.items():
            if torch.is_tensor(value):
                tensors[f"optimizer/{pid}/{key}"] = value
            else:
                plain["state"][str(pid)][key] = value
    return tensors, plain


def save_checkpoint(directory: Path, name: str, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                    state: dict[str, Any], average: torch.nn.Module | None = None,
                    rng: torch.Tensor | None = None) -> None:
    """Save model, optimizer, the JSON-able ``state`` and the RNG state (``rng``, default: torch's current one)
    as checkpoint ``name``; with ``average`` (a :class:`torch.optim.swa_utils.AveragedModel`), its state too,
    under ``average/``."""
    opt_tensors, opt_plain = _optimizer_split(optimizer)
    tensors = {f"model/{k}": v for k, v in model.state_dict().items()}
    if average is not None:
        tensors.update({f"average/{k}": v for k, v in average.state_dict().items()})
    tensors.update(opt_tensors)
    tensors = _unshared({k: v.detach().cpu().contiguous() for k, v in tensors.items()})   # GPU models: from the CPU
    tensors["rng/torch"] = torch.get_rng_state() if rng is None else rng
    blob = save_tensors(tensors)
    digest = hashlib.sha256(blob).hexdigest()
    tensor_file = f"{name}-{digest[:16]}.safetensors"
    meta = {"format": "fewshot-checkpoint-1", "tensors": tensor_file, "tensors_sha256": digest,
            "optimizer": opt_plain, "state": state}
    atomic_write(directory / tensor_file, blob)
    pause_point(f"commit-{name}")
    atomic_write(directory / f"{name}.json", json.dumps(meta, indent=1).encode())
    for stale in directory.glob(f"{name}-*.safetensors"):   # the previous version, or one a crash orphaned
        if stale.name != tensor_file:
            stale.unlink(missing_ok=True)
    remove_partial_writes(directory, f"{name}-*.safetensors")   # temporary files a crash left
    remove_partial_writes(directory, f"{name}.json")


def _unshared(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The tensors with every one that shares memory with an earlier one copied: a module registered under two
    names, or tied parameters, appear in ``state_dict()`` once per name, and safetensors stores each tensor once."""
    seen, out = set(), {}
    for key, value in tensors.items():
        start = value.untyped_storage().data_ptr() if value.numel() else None
        out[key] = value.clone() if start in seen else value
        if start is not None:
            seen.add(start)
    return out


def tensor_path(directory: Path, name: str) -> Path:
    """The tensor file of checkpoint ``name`` (as its JSON names it)."""
    file = _tensor_file(Path(directory) / f"{name}.json")
    if file is None:
        raise FileNotFoundError(f"no readable checkpoint {Path(directory) / name}.json")
    return Path(directory) / file


def _tensor_file(meta_path: Path) -> str | None:
    """The tensor file an existing checkpoint's JSON names (None if there is no readable one)."""
    try:
        name = json.loads(meta_path.read_text()).get("tensors")
    except (OSError, ValueError, AttributeError):
        return None
    return name if isinstance(name, str) and "/" not in name and "\\" not in name else None


def read_checkpoint(directory: Path, name: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The verified tensors and JSON metadata of checkpoint ``name``."""
    meta_path = directory / f"{name}.json"
    if not meta_path.is_file():
        raise FileNotFoundError(f"checkpoint file {meta_path} is missing; is {directory.parent} a fewshot run directory?")
    try:
        meta = json.loads(meta_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"checkpoint file {meta_path} is corrupt ({e}); delete the run or restore it") from None
    if not isinstance(meta, dict) or meta.get("format") != "fewshot-checkpoint-1" or _tensor_file(meta_path) is None:
        raise CheckpointError(f"checkpoint file {meta_path} is not a fewshot checkpoint")
    tensor_path = directory / meta["tensors"]
    if not tensor_path.is_file():
        raise FileNotFoundError(f"checkpoint file {tensor_path} (named by {meta_path.name}) is missing; "
                                "the run directory is incomplete")
    blob = tensor_path.read_bytes()
    if hashlib.sha256(blob).hexdigest() != meta.get("tensors_sha256"):
        raise CheckpointError(f"checkpoint file {tensor_path} does not match {meta_path.name} (truncated, "
                              "tampered with or from another checkpoint); refusing to load it")
    try:
        tensors = load_tensors(blob)
    except SafetensorError as e:
        raise CheckpointError(f"checkpoint file {tensor_path} is unreadable: {e}") from None
    return tensors, meta


def load_model(model: torch.nn.Module, tensors: dict[str, torch.Tensor], source: Path,
               prefix: str = "model/") -> None:
    """Load the tensors named ``prefix...`` into ``model``; a different architecture is refused."""
    own = model.state_dict()
    given = {k.removeprefix(prefix): v for k, v in tensors.items() if k.startswith(prefix)}
    missing, unexpected = sorted(set(own) - set(given)), sorted(set(given) - set(own))
    wrong = sorted(k for k in set(own) & set(given) if own[k].shape != given[k].shape)
    if missing or unexpected or wrong:
        detail = (f"missing {missing[:3]}" if missing else f"unexpected {unexpected[:3]}" if unexpected
                  else f"shape of {wrong[0]} is {tuple(given[wrong[0]].shape)}, model has {tuple(own[wrong[0]].shape)}")
        raise CheckpointError(f"checkpoint {source} was saved from a different architecture ({detail}); "
                              "use a run directory made with the same algo, net and ways")
    model.load_state_dict(given)


def load_optimizer(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    """Restore the optimizer state written by :func:`save_checkpoint`."""
    plain = meta["optimizer"]
    state: dict[int, dict[str, Any]] = {int(pid): dict(v) for pid, v in plain["state"].items()}
    for key, value in tensors.items():
        if key.startswith("optimizer/"):
            _, pid, name = key.split("/", 2)
            state.setdefault(int(pid), {})[name] = value
    optimizer.load_state_dict({"state": state, "param_groups": plain["param_groups"]})
