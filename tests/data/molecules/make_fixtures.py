"""Rebuild the tiny molecule fixtures of the tests from the shared data (run from the repository root):

    python tests/data/molecules/make_fixtures.py /path/to/shared/data

tox21/tox21.csv: the first 360 rows of the chemprop Tox21 table plus the first 15 further actives of each
of SR-HSE, SR-MMP and SR-p53 (so the Tox21 protocol's 10+/10- supports fit). fsmol/: 6 FS-Mol training
tasks (4 of the smallest, CHEMBL1010645, whose phosphonates RDKit reads only without its valence check, and
CHEMBL1000314) and the 3 smallest validation tasks, with a task split naming them.
"""

import csv
import gzip
import json
import sys
from pathlib import Path

src, out = Path(sys.argv[1]), Path(__file__).resolve().parent
rows = list(csv.reader(open(src / "tox21" / "tox21.csv", newline="")))
header, body = rows[0], rows[1:]
keep = body[:360]
for column in ("SR-HSE", "SR-MMP", "SR-p53"):
    j = header.index(column)
    keep += [r for r in body[360:] if r[j] == "1" and r not in keep][:15]
(out / "tox21").mkdir(exist_ok=True)
with open(out / "tox21" / "tox21.csv", "w", newline="") as f:
    csv.writer(f, lineterminator="\n").writerows([header] + keep)


def long_rows(path):
    with gzip.open(path, "rt", newline="") as f:
        return list(csv.DictReader(f))


train, valid = long_rows(src / "fsmol" / "fsmol_train.csv.gz"), long_rows(src / "fsmol" / "fsmol_valid.csv.gz")
sizes = {}
for r in train:
    sizes[r["task"]] = sizes.get(r["task"], 0) + 1
train_tasks = sorted(sizes, key=lambda t: (sizes[t], t))[:4] + ["CHEMBL1010645", "CHEMBL1000314"]
vsizes = {}
for r in valid:
    vsizes[r["task"]] = vsizes.get(r["task"], 0) + 1
valid_tasks = sorted(vsizes, key=lambda t: (vsizes[t], t))[:3]
(out / "fsmol").mkdir(exist_ok=True)
for name, data, tasks in (("train", train, train_tasks), ("valid", valid, valid_tasks)):
    with gzip.open(out / "fsmol" / f"fsmol_{name}.csv.gz", "wt", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(data[0]), lineterminator="\n")
        w.writeheader()
        w.writerows(r for r in data if r["task"] in tasks)
(out / "fsmol" / "fsmol-0.1.json").write_text(json.dumps(
    {"train": sorted(train_tasks) + ["CHEMBL0000000"], "valid": valid_tasks, "test": ["CHEMBL0000001"]}, indent=1))
