#!/usr/bin/env bash
# x2dfd GPU suite: one command, one GPU (H100/H200), no network, <= 8 min; writes gpu_suite.json, gpu_suite.md and
# gpu_suite.log to $OUT when set, else to bench/out/gpu_suite (or --out DIR). Options: see bench/gpu_suite.py --help.
#
#   bash bench/gpu_suite.sh                          # configs from ../shared/checkpoints, full llava-1.5-7b shape, bf16
#   bash bench/gpu_suite.sh --tiny                   # the same code on CPU with a reduced model (~1 min)
#
# On a machine without ../shared (the device machine), carry a copy of the config folder inside the repo (git-ignored
# through .git/info/exclude: /.gpu_shared/), and the bitsandbytes wheel in .whl/ (also excluded: /.whl/):
#
#   mkdir -p .gpu_shared && cp -r ../shared/checkpoints/llava-1.5-7b-hf .gpu_shared/
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 -d .whl bitsandbytes==0.50.2
#   bash bench/gpu_suite.sh --shared .gpu_shared     # there (carry: .whl, .gpu_shared)
#
# This script installs what is missing, offline and without dependencies: the project itself (pip install -e .,
# which maps x2dfd.experts, x2dfd.feature_assessment, ... to the stage folders; should that fail, gpu_suite.py maps
# them itself) and the wheels in .whl/ into $X2DFD_SITE (default /tmp/site, put on PYTHONPATH). Without
# bitsandbytes the QLoRA and 4/8-bit parts are skipped with the reason. $PYTHON picks the interpreter (python3).
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 1
PY=${PYTHON:-python3}

has() { "$PY" -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('$1') is None)" 2>/dev/null; }

if ! has x2dfd.feature_assessment; then
    echo "gpu_suite.sh: installing the project (pip install -e ., offline, no deps)" >&2
    "$PY" -m pip install -q --no-deps --no-build-isolation --no-index -e . >&2 \
        || echo "gpu_suite.sh: pip install -e . failed; gpu_suite.py maps the stage folders itself" >&2
fi
shopt -s nullglob
wheels=(.whl/*.whl)
if ((${#wheels[@]})) && ! has bitsandbytes; then
    SITE=${X2DFD_SITE:-/tmp/site}
    if [ ! -d "$SITE/bitsandbytes" ]; then
        echo "gpu_suite.sh: installing ${wheels[*]} into $SITE" >&2
        "$PY" -m pip install -q --no-index --no-deps --no-compile --target "$SITE" "${wheels[@]}" >&2 \
            || echo "gpu_suite.sh: wheel install failed; the bitsandbytes parts will be skipped" >&2
    fi
    export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
fi
exec "$PY" bench/gpu_suite.py "$@"
