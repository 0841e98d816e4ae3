#!/usr/bin/env bash
# GPU check, sized to finish within 8 minutes on one GPU.
# On the lent device machine (python3 there has CUDA torch, e3nn, lightning, tensorboard;
# ase, vesin and lmdb travel as wheels). Once per checkout, here:
#   echo /.whl/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#       --implementation cp --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
#       -d .whl ase vesin lmdb
#   (ase also needs its pure-python dependencies if absent there: check with pip show)
#   and, for cuEquivariance in the tensor-product benchmark (about 43 MB more, optional),
#   the same download with --platform manylinux_2_28_x86_64 added, of cuequivariance
#   cuequivariance-torch cuequivariance-ops-torch-cu12 cuequivariance-ops-cu12 opt-einsum
#   (CUDA 12 builds; they need torch >= 2.11 there)
# then run this script through the device tool with carry [".whl"]:
#   bash tools/gpu_check.sh
# Figures go to $OUT/gpu_check.json (or ./gpu_check.json) and stdout, one line per figure.
# MD modes: eager, aot, aot+graphs, eager+graphs (CUDA graphs on the fixed-shape neighbour
# list; each graphs row gives its captures and, if capturing failed, why; every non-eager
# row the largest force difference to a plain eager call at the final positions).
set -uo pipefail
cd "$(dirname "$0")/.."
if [ -d .whl ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/site:$PWD
else
    export PYTHONPATH=$PWD
fi
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
out="${OUT:-.}/gpu_check.json"
timeout 420 python3 tools/gpu_check.py --device cuda --out "$out" "$@"
echo "exit $? (124 = stopped at the 420 s limit; the JSON holds what was measured)"
# Tensor products on the GPU against e3nn and cuEquivariance; cueq rows
# say "skipped" where the package is not installed.
timeout 50 python3 tools/bench_tp.py --device cuda --lmax 1 2 3 --channels 32 --edges 100000 \
    --repeats 5 --impl cg gaunt-grid gaunt-fourier e3nn-uvu cueq
echo "bench_tp exit $? (124 = stopped at the 50 s limit)"
