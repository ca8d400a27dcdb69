"""Meta-learning vs transfer learning: every learner, one Omniglot split, one training budget, one table.

The study is ``fewshot study transfer`` (:func:`fewshot.report.studies.transfer`); this script runs it with the
same options (``--learners``, ``--budget``, ``--episodes``, ``--threads``, ``--out``, ``--seed``):

    python benchmarks/meta_vs_transfer.py --budget 60           # = fewshot study transfer --budget 60
"""

from __future__ import annotations

import sys

from fewshot.cli import main

if __name__ == "__main__":
    sys.exit(main(["study", "transfer", *sys.argv[1:]]))
