"""Shared fixtures: the embedded Omniglot background set, tiny synthetic data and tiny run configs."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from fewshot.config import resolve
from fewshot.datasets.labelled import LabelledData
from fewshot.datasets.omniglot import load_omniglot

# One intra-op thread: these tests run tiny tensors, where a second OpenMP thread only adds synchronisation,
# and on a busy machine (another job on the cores) spinning OpenMP barriers make small convs ~100x slower.
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def omniglot_background() -> LabelledData:
    """The 30 background alphabets shipped with the package, 28x28 (cached after the first decode)."""
    return load_omniglot("background", image_size=28)


def index_data(counts: list[int]) -> LabelledData:
    """Synthetic data whose input *is* the example's index: ``x[i] == [i]`` (float), class ``c`` has ``counts[c]``
    examples; lets a test recover exactly which examples an episode drew."""
    y = torch.repeat_interleave(torch.arange(len(counts)), torch.tensor(counts, dtype=torch.long))
    x = torch.arange(len(y), dtype=torch.float32).unsqueeze(1)
    names = tuple(f"group{c % 3}/class{c:02d}" for c in range(len(counts)))
    return LabelledData(x=x, y=y, class_names=names, class_groups=tuple(n.split("/")[0] for n in names))


TINY_SINUSOID: dict[str, Any] = dict(
    algo="maml", dataset="sinusoid", steps=6, meta_batch=2, shots=5, queries=5, inner_steps=1,
    eval_inner_steps=1, val_every=3, val_episodes=4, test_episodes=4, checkpoint_every=2, log_every=1,
)


def tiny_sinusoid(**overrides: Any):
    """A validated RunConfig for a few cheap MAML steps on sinusoid (recipe < these values < overrides)."""
    return resolve({}, {**TINY_SINUSOID, **overrides})


TINY_PROTONET: dict[str, Any] = dict(
    algo="protonet", dataset="omniglot", split="background", ways=5, train_ways=5, shots=1, queries=2,
    train_queries=2, meta_batch=1, steps=2, val_every=1, val_episodes=2, test_episodes=2, checkpoint_every=1,
    log_every=1, image_size=28, rotations=False, lr=0.001, lr_schedule="step", precision="float32",
)


def tiny_protonet(**overrides: Any):
    return resolve({}, {**TINY_PROTONET, **overrides})


def cli(argv: list, capsys) -> tuple[int, str, str]:
    """Run ``fewshot ARGV`` in-process: (exit status, stdout, stderr); argparse's own exits count as the status."""
    from fewshot.cli import main

    try:
        code = main([str(a) for a in argv])
    except SystemExit as e:
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err
