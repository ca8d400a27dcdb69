"""``benchmarks/scaling.py``: the sweep's points and its figure (the rows come from ``fewshot.bench``)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
from PIL import Image

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "scaling.py"


def _module():
    spec = importlib.util.spec_from_file_location("scaling", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_each_axis_is_swept_with_the_others_at_the_base():
    scaling = _module()
    got = scaling.points({"ways": [5, 20], "inner_steps": [3]})
    assert got == [("ways", {**scaling.BASE, "ways": 5}), ("ways", {**scaling.BASE, "ways": 20}),
                   ("inner_steps", {**scaling.BASE, "inner_steps": 3})]


def test_the_figure_draws_both_libraries_on_every_axis(tmp_path):
    scaling = _module()
    rows = [{"axis": axis, "library": library, **scaling.BASE, axis: value, "step_s": value * k, "peak_mb": 10 * k}
            for axis, values in (("meta_batch", [1, 4]), ("ways", [5, 20])) for value in values
            for library, k in (("fewshot", 1.0), ("fewshot[vmap]", 2.0))]
    scaling.plot(rows, tmp_path / "s.png")
    pixels = np.asarray(Image.open(tmp_path / "s.png").convert("L"), dtype=float)
    assert pixels.shape[1] > 400 and pixels.std() > 10     # drawn, not blank
