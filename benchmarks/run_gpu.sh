#!/usr/bin/env bash
# Benchmark the text- and image-slider training loops on a CUDA GPU with a random full-size SDXL.
#
# Checks that the Python packages are importable (installing missing ones from wheels in
# $WHEELS, default benchmarks/wheels, when that folder exists; otherwise it tries PyPI, and if that
# fails it lists what is missing), checks the full-size configs' parameter counts, builds the random
# model into $MODEL_DIR (once) and runs benchmarks/bench_train.py. Results: $OUT (or
# benchmarks/results)/bench_train.json and bench_train.log.
#
#   bash benchmarks/run_gpu.sh                      # bf16, 512 px, 2 warm-up + 5 timed iterations
#   ITERATIONS=10 WARMUP=2 bash benchmarks/run_gpu.sh
#   bash benchmarks/run_gpu.sh fetch-wheels         # on a machine WITH internet: put the wheels the
#                                                   # CUDA image lacks (diffusers, importlib_metadata)
#                                                   # into benchmarks/wheels, to copy along
# Environment: PYTHON (python3), OUT, MODEL_DIR (/tmp/random-sdxl-base), WHEELS, ITERATIONS (5),
# WARMUP (2), RESOLUTION (512), PRECISION (bf16), EXTRA_ARGS (passed on to bench_train.py).
set -uo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
OUT_DIR=${OUT:-benchmarks/results}
MODEL_DIR=${MODEL_DIR:-/tmp/random-sdxl-base}
WHEELS=${WHEELS:-benchmarks/wheels}

if [ "${1:-}" = "fetch-wheels" ]; then
    exec "$PY" -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux2014_x86_64 -d "$WHEELS" "diffusers==${DIFFUSERS_VERSION:-0.42.1}" importlib_metadata==8.7.0
fi
mkdir -p "$OUT_DIR"
export PYTHONUNBUFFERED=1

# import name -> pip name
declare -A PIP_NAME=([torch]=torch [diffusers]=diffusers [transformers]=transformers [safetensors]=safetensors
                     [yaml]=pyyaml [PIL]=pillow [numpy]=numpy [tqdm]=tqdm [importlib_metadata]=importlib_metadata)

missing_packages() {
    local names=()
    for module in torch diffusers transformers safetensors yaml PIL numpy tqdm; do
        if ! err=$("$PY" -c "import $module" 2>&1); then
            names+=("${PIP_NAME[$module]}")
            echo "  cannot import $module: $(echo "$err" | tail -n 1)" >&2
        fi
    done
    # diffusers needs importlib_metadata, which the CUDA images often lack.
    if ! "$PY" -c "import importlib_metadata" 2>/dev/null; then names+=(importlib_metadata); fi
    echo "${names[@]:-}"
}

echo "python: $(command -v "$PY") ($("$PY" --version 2>&1))"
missing=$(missing_packages)
if [ -n "$missing" ]; then
    echo "missing Python packages: $missing"
    if compgen -G "$WHEELS/*.whl" >/dev/null; then
        echo "installing from wheels in $WHEELS"
        "$PY" -m pip install -q --no-index --find-links "$WHEELS" $missing || true
    else
        echo "no wheels in $WHEELS; trying the package index (fails without internet)"
        "$PY" -m pip install -q --timeout 15 --retries 0 $missing || true
    fi
    missing=$(missing_packages)
    if [ -n "$missing" ]; then
        cat >&2 <<EOF
still missing: $missing
This machine cannot install them. On a machine with internet, from the repository root, run
  python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \\
      --platform manylinux2014_x86_64 -d benchmarks/wheels $missing
(pin versions that match the GPU machine's torch/transformers, e.g. diffusers==0.42.1
importlib_metadata==8.7.0), copy benchmarks/wheels along and run this script again.
EOF
        exit 2
    fi
fi
"$PY" -c "import torch, diffusers, transformers; print('torch', torch.__version__, 'cuda', torch.version.cuda, \
'| diffusers', diffusers.__version__, '| transformers', transformers.__version__); \
assert torch.cuda.is_available(), 'no CUDA GPU visible to torch'; print('gpu:', torch.cuda.get_device_name())" || exit 3
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader

{
    echo "== full-size parameter counts (meta device) =="
    "$PY" benchmarks/random_sdxl.py --count
    echo "== benchmark =="
    "$PY" benchmarks/bench_train.py --model-dir "$MODEL_DIR" --device cuda \
        --precision "${PRECISION:-bf16}" --resolution "${RESOLUTION:-512}" \
        --iterations "${ITERATIONS:-5}" --warmup "${WARMUP:-2}" \
        --out "$OUT_DIR/bench_train.json" ${EXTRA_ARGS:-}
} 2>&1 | tee "$OUT_DIR/bench_train.log"
status=${PIPESTATUS[0]}
echo "exit status $status; results in $OUT_DIR/bench_train.json"
exit "$status"
