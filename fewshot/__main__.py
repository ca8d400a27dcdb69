"""``python -m fewshot`` (and ``torchrun ... -m fewshot train``): the ``fewshot`` command."""

import sys

from fewshot.cli import main

sys.exit(main())
