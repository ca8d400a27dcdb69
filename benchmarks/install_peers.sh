#!/usr/bin/env bash
# Build a separate virtual environment with the peer libraries that `fewshot bench speed` compares
# against: higher and learn2learn. They are never dependencies of fewshot.
#
#   bash benchmarks/install_peers.sh [VENV]      # default VENV: .venv-peers
#   VENV/bin/fewshot bench speed ...             # then bench from that environment
#
# learn2learn 0.2.0 does not build on Python 3.11 as released: its shipped .c files include a
# header that 3.11 removed. We regenerate them from its .pyx sources with Cython 3 and install
# with --no-deps (its requirements would pull qpth, which downgrades numpy, and gsutil, ~40
# packages). torchvision's PyPI wheels are CUDA builds that fail to import beside CPU torch, and
# learn2learn imports torchvision (and gym) at import time only for its dataset classes, so a
# small shim package stands in for torchvision: any use of it raises.
set -euo pipefail
VENV=$(realpath -m "${1:-.venv-peers}")
ROOT=$(cd "$(dirname "$0")/.." && pwd)
python3 -m venv "$VENV"
PY="$VENV/bin/python"
"$PY" -m pip install -q torch==2.13.0
"$PY" -m pip install -q -e "$ROOT"
"$PY" -m pip install -q higher "cython>=3" setuptools wheel numpy scipy requests tqdm pillow gym
SRC=$(mktemp -d)
"$PY" -m pip download -q --no-deps --no-binary :all: -d "$SRC" learn2learn==0.2.0
tar xzf "$SRC"/learn2learn-0.2.0.tar.gz -C "$SRC"
( cd "$SRC/learn2learn-0.2.0" && rm -f learn2learn/data/*.c && "$PY" setup.py -q build_ext --inplace >/dev/null \
  && "$PY" -m pip install -q --no-deps --no-build-isolation . )
SITE=$("$PY" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
mkdir -p "$SITE/torchvision/datasets" "$SITE/torchvision/transforms"
cat > "$SITE/torchvision/_shim.py" <<'PY'
"""A stand-in for torchvision (installed by fewshot's benchmarks/install_peers.sh): importable, unusable."""


class Unavailable:
    def __init__(self, *args, **kwargs):
        raise ImportError("torchvision is a shim in this environment (benchmarks/install_peers.sh)")


def __getattr__(name):
    if name.startswith("__"):
        raise AttributeError(name)
    return Unavailable
PY
for mod in "" datasets transforms; do
  for sub in "" folder omniglot; do
    [ -n "$sub" ] && [ "$mod" != datasets ] && continue
    f="$SITE/torchvision/${mod:+$mod/}${sub:+$sub.py}"
    [ -z "$sub" ] && f="$SITE/torchvision/${mod:+$mod/}__init__.py"
    printf 'from torchvision._shim import Unavailable, __getattr__  # noqa: F401\n' > "$f"
  done
done
printf 'from torchvision import datasets, transforms  # noqa: F401\nfrom torchvision._shim import Unavailable, __getattr__  # noqa: F401\n' \
  > "$SITE/torchvision/__init__.py"
"$PY" -c "import higher, learn2learn; print('peers ready: learn2learn', learn2learn.__version__)"
