"""Build a stand-in for Lake et al.'s one-shot runs (``all_runs.zip``) from held-out background alphabets.

The official runs draw on the Omniglot *evaluation* set, which is not shipped. This script
writes 20 runs in the same layout (``runNN/training/classNN.png``, ``runNN/test/itemNN.png``,
``runNN/class_labels.txt``, plus a ``fixture.json`` manifest) from the 5 background alphabets
that every Lake-split run holds out for testing (:func:`fewshot.domains.omniglot.assign_holdout`
with the default config), reading the background zip shipped with the package. Each run uses
one alphabet, 20 of its characters, one drawer for the training images and another for the
queries; alphabets with fewer than 20 characters are skipped (and named).

    python benchmarks/make_lake_runs.py --data-root DIR       # writes DIR/omniglot/all_runs.zip
    fewshot eval RUN_DIR --benchmark omniglot-lake-runs --data-root DIR --json

``fewshot eval`` refuses the runs if they share a character with the evaluated run's training
classes (for instance a run trained with other held-out alphabets).
"""

from __future__ import annotations

import argparse
import json
import sys
import zipfile
from pathlib import Path

from fewshot.config import RunConfig
from fewshot.datasets.lake_runs import RUNS_ARCHIVE, RUNS_FOLDER, WAYS, write_lake_runs
from fewshot.datasets.omniglot import PACKAGE_DATA_ROOT
from fewshot.domains.omniglot import assign_holdout

EMBEDDED_BACKGROUND = PACKAGE_DATA_ROOT / "omniglot" / "images_background.zip"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-root", required=True, help="writes DATA_ROOT/omniglot/all_runs.zip")
    parser.add_argument("--runs", type=int, default=20, help="number of runs (default 20, as Lake's)")
    parser.add_argument("--seed", type=int, default=0, help="which characters and drawers (default 0)")
    parser.add_argument("--folder", action="store_true", help="write the extracted folder all_runs/ instead")
    parser.add_argument("--force", action="store_true", help="overwrite existing runs")
    args = parser.parse_args(argv)

    out_dir = Path(args.data_root) / "omniglot"
    target = out_dir / (RUNS_FOLDER if args.folder else RUNS_ARCHIVE)
    if target.exists() and not args.force:
        print(f"make_lake_runs: {target} exists; pass --force to overwrite it", file=sys.stderr)
        return 2
    # the held-out test alphabets of every Lake-split run with the default holdout (HOLDOUT_SEED is fixed)
    held_out = assign_holdout(RunConfig(split="background", data_root=str(PACKAGE_DATA_ROOT))).test_alphabets
    path = write_lake_runs(out_dir, EMBEDDED_BACKGROUND, held_out, runs=args.runs, seed=args.seed,
                           archive=not args.folder)
    manifest = json.loads((zipfile.ZipFile(path).read("fixture.json") if path.is_file()
                           else (path / "fixture.json").read_bytes()))
    used, skipped = manifest["alphabets"], manifest["skipped_alphabets"]
    per_alphabet = {a: sum(r["alphabet"] == a for r in manifest["runs"]) for a in used}
    print(f"held-out test alphabets of the background protocol: {', '.join(held_out)}")
    print(f"used (>= {WAYS} characters): " + ", ".join(f"{a} ({n} runs)" for a, n in per_alphabet.items()))
    if skipped:
        print(f"skipped (fewer than {WAYS} characters): {', '.join(skipped)}")
    print(f"wrote {args.runs} runs to {path}")
    print(f"evaluate: fewshot eval RUN_DIR --benchmark omniglot-lake-runs --data-root {args.data_root} --json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
