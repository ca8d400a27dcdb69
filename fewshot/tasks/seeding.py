"""Deterministic random streams derived from ``(seed, index)``.

Episode ``i`` of a task source with seed ``s`` must be the same in every process and on
every machine, so each draw gets its own generator seeded from both numbers.
"""

from __future__ import annotations

import numpy as np
import torch


def derive_seed(*keys: int) -> int:
    """A 63-bit seed mixed from integer keys with NumPy's ``SeedSequence`` (stable across versions)."""
    if any(k < 0 for k in keys):
        raise ValueError(f"seed keys must be non-negative, got {keys}")
    return int(np.random.SeedSequence(list(keys)).generate_state(1, dtype=np.uint64)[0] >> np.uint64(1))


def generator(*keys: int) -> torch.Generator:
    """A CPU ``torch.Generator`` seeded from ``keys`` (see :func:`derive_seed`)."""
    return torch.Generator().manual_seed(derive_seed(*keys))
